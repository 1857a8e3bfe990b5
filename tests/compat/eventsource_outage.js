// WHATWG EventSources (the eventsource package, as browsers behave) opened
// while the hub's broker is down: one on a channel, one creating a swarm.
// Each line of stdout is a JSON record of what happened, for the test to follow;
// the script exits 0 once the channel delivered a message and the swarm connected,
// 3 if an EventSource gave up (readyState CLOSED), 2 on timeout.
// Usage: node eventsource_outage.js http://127.0.0.1:PORT/prefix SECONDS
var EventSource = require('eventsource').EventSource;
var base = process.argv[2];
var seconds = Number(process.argv[3] || 30);
function log(record) { console.log(JSON.stringify(record)); }

var done = { channel: false, swarm: false };
function finish(which) {
  done[which] = true;
  if (done.channel && done.swarm) { channel.close(); swarm.close(); process.exit(0); }
}
function watch(name, source) {
  source.onopen = function () { log({ source: name, type: 'open' }); };
  source.onerror = function () {
    log({ source: name, type: 'error', readyState: source.readyState });
    if (source.readyState === EventSource.CLOSED) { process.exit(3); }
  };
}

var channel = new EventSource(base + '/channels/outage');
watch('channel', channel);
channel.onmessage = function (e) {
  log({ source: 'channel', type: 'message', data: e.data });
  finish('channel');
};

var swarm = new EventSource(base);
watch('swarm', swarm);
swarm.addEventListener('connect', function (e) {
  log({ source: 'swarm', type: 'connect', id: JSON.parse(e.data).id });
  finish('swarm');
});

setTimeout(function () { log({ type: 'timeout' }); process.exit(2); }, seconds * 1000);
