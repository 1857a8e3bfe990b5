// A WHATWG EventSource (the eventsource package, as browsers behave) on a swarm
// and on a channel with Last-Event-ID resume.
// Usage: node eventsource.js http://127.0.0.1:PORT/prefix http://127.0.0.1:PORT
var EventSource = require('eventsource').EventSource;
var base = process.argv[2];
var origin = process.argv[3];
var done = 0;
function finish() { if (++done === 2) process.exit(0); }

var initiator = new EventSource(base);
initiator.addEventListener('connect', function (e) {
  var me = JSON.parse(e.data);
  var peer = new EventSource(base + '/' + me.id);
  peer.addEventListener('signal', function (s) {
    if (JSON.parse(s.data).hello === 'peer') { peer.close(); initiator.close(); finish(); }
  });
  initiator.addEventListener('join', function (j) {
    fetch(base + '/' + me.id, {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ token: me.token, data: { hello: 'peer' }, cid: JSON.parse(j.data).cid })
    });
  });
});
initiator.onerror = function (e) { console.error('initiator error', e.message || e); process.exit(4); };

// Channel: the server closes the stream after the first event; the browser
// reconnects with Last-Event-ID and must get the second event only once.
var seen = [];
var channel = new EventSource(base + '/channels/compat');
channel.onmessage = function (e) {
  seen.push(e.data + '@' + e.lastEventId);
  if (e.data === 'second') {
    channel.close();
    console.log(JSON.stringify(seen));
    finish();
  }
};
channel.onopen = function () {
  if (seen.length === 0) {
    fetch(origin + '/_test/compat_channel', { method: 'POST' });
  }
};
setTimeout(function () { console.error('timed out', JSON.stringify(seen)); process.exit(2); }, 8000);
