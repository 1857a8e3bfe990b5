// Writes as the moshpit client does: each write its own POST on its own connection, a
// direct write followed on the next tick by a broadcast; streams opened without an Accept
// header and read line by line (every non-empty line a row, as moshpit's parser does).
// Prints one JSON line: {"trials", "swapped", "rows"}, rows being the initiator's rows
// that are not [event, data] pairs of a known event.
// Usage: node ordering.js http://127.0.0.1:PORT/prefix TRIALS [HOLD_MS]
var http = require('http');
var base = process.argv[2];
var trials = Number(process.argv[3] || 100);
var holdMs = Number(process.argv[4] || 0);

function open(url, onRow) {
  var req = http.get(url, { agent: false }, function (res) {
    if (res.statusCode !== 200) { console.error('status', res.statusCode); process.exit(3); }
    var buf = '';
    res.setEncoding('utf8');
    res.on('data', function (chunk) {
      buf += chunk;
      var lines = buf.split('\n');
      buf = lines.pop();
      var event = null;
      lines.forEach(function (line) {
        if (!line) return;
        // moshpit: every non-empty line is a row, its value the text after the first ': '.
        var value = line.split(': ')[1];
        if (line.indexOf('event: ') === 0) { event = value; return; }
        var data;
        try { data = value === undefined ? undefined : JSON.parse(value); } catch (e) { data = value; }
        onRow(line.indexOf('data: ') === 0 ? [event, data] : [undefined, line]);
      });
    });
  });
  return req;
}

function post(id, body) {
  var payload = JSON.stringify(body);
  var req = http.request(base + '/' + id, {
    method: 'POST', agent: false,
    headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload) }
  }, function (res) { res.resume(); });
  req.on('error', function (e) { console.error('post failed', e.message); process.exit(4); });
  req.end(payload);
}

var me = null, peer = null, got = [], swapped = 0, done = 0, odd = [];

function trial(n) {
  // The peer's two writes, as moshpit sends them: one POST each, the second a tick later.
  post(me.id, { token: peer.token, cid: me.cid, data: { n: n, kind: 'direct' } });
  process.nextTick(function () {
    post(me.id, { token: peer.token, data: { n: n, kind: 'broadcast' } });
  });
}

open(base, function (row) {
  if (row[0] === 'connect' && !me) {
    me = row[1];
    open(base + '/' + me.id, function (peerRow) {
      if (peerRow[0] === 'connect' && !peer) { peer = peerRow[1]; trial(0); }
    });
    return;
  }
  if (row[0] === 'signal') {
    got.push(row[1]);
    if (got.length === 2) {
      if (got[0].kind !== 'direct') swapped++;
      got = [];
      done++;
      if (done === trials) {
        var finish = function () {
          console.log(JSON.stringify({ trials: done, swapped: swapped, rows: odd }));
          process.exit(0);
        };
        if (holdMs) setTimeout(finish, holdMs); else finish();
      } else {
        trial(done);
      }
    }
  } else if (row[0] !== 'join') {
    odd.push(row);
  }
});
setTimeout(function () { console.error('timed out after ' + done + ' trials'); process.exit(2); }, 60000 + holdMs);
