// WHATWG EventSources (the eventsource package, as browsers behave), opened and
// closed on command, for tests that break the server side under them.
// stdin, one JSON object a line:
//   {"open": NAME, "url": URL, "events": ["connect", "signal", ...]}
//   {"close": NAME}
// stdout, one JSON object a line, for every thing an EventSource reports:
//   {"source": NAME, "type": "open"}
//   {"source": NAME, "type": "error", "readyState": 0|2}   (2: it gave up for good)
//   {"source": NAME, "type": "event", "event": TYPE, "data": DATA, "id": LAST_EVENT_ID}
// Reconnects are the package's own (Last-Event-ID included); nothing here retries.
var EventSource = require('eventsource').EventSource;
var readline = require('readline');

var sources = {};
function log(record) { process.stdout.write(JSON.stringify(record) + '\n'); }

function open(name, url, events) {
  var source = new EventSource(url);
  sources[name] = source;
  source.onopen = function () { log({ source: name, type: 'open' }); };
  source.onerror = function () {
    log({ source: name, type: 'error', readyState: source.readyState });
  };
  ['message'].concat(events || []).forEach(function (type) {
    source.addEventListener(type, function (e) {
      log({ source: name, type: 'event', event: type, data: e.data, id: e.lastEventId });
    });
  });
}

readline.createInterface({ input: process.stdin }).on('line', function (line) {
  if (!line.trim()) { return; }
  var command = JSON.parse(line);
  if (command.open) {
    open(command.open, command.url, command.events);
  } else if (command.close && sources[command.close]) {
    sources[command.close].close();
    delete sources[command.close];
  }
}).on('close', function () {
  Object.keys(sources).forEach(function (name) { sources[name].close(); });
  process.exit(0);
});
