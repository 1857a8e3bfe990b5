// A WHATWG EventSource (the eventsource package, as browsers behave) joined to a
// swarm; prints one JSON row per happening: [event, data].
// Usage: node resume_peer.js http://127.0.0.1:PORT/prefix/SWARM
var EventSource = require('eventsource').EventSource;
var es = new EventSource(process.argv[2]);
var opened = false;
function row(kind, data) { console.log(JSON.stringify([kind, data === undefined ? null : data])); }
es.addEventListener('connect', function (e) { row('connect', JSON.parse(e.data)); });
es.addEventListener('signal', function (e) { row('signal', JSON.parse(e.data)); });
es.onopen = function () { if (opened) row('open'); opened = true; };
es.onerror = function (e) {
  if (process.env.DEBUG_ES) console.error('error', e.status, e.message);
  if (es.readyState === EventSource.CLOSED) { row('closed'); process.exit(0); }
  row('error');
};
setTimeout(function () { process.exit(2); }, 15000);
