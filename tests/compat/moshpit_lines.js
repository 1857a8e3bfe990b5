// Reads a swarm as the moshpit client does: no Accept header, and of each
// line the text after the first ": " is JSON-parsed. Prints [event, data] rows.
// Usage: node moshpit_lines.js http://127.0.0.1:PORT/prefix
var http = require('http');
var base = process.argv[2];

function open(url, onRow) {
  http.get(url, function (res) {
    if (res.statusCode !== 200) { console.error('status', res.statusCode); process.exit(3); }
    var buf = '';
    res.setEncoding('utf8');
    res.on('data', function (chunk) {
      buf += chunk;
      var blocks = buf.split('\n\n');
      buf = blocks.pop();
      blocks.forEach(function (block) {
        if (block.charAt(0) === ':') return; // keep-alive comment
        var lines = block.split('\n');
        var event = lines[0].split(': ')[1];
        var data = JSON.parse(lines[1].split(': ')[1]);
        onRow([event, data]);
      });
    });
  });
}

function post(id, body) {
  var payload = JSON.stringify(body);
  var req = http.request(base + '/' + id, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }
  });
  req.end(payload);
}

open(base, function (row) {
  console.log(JSON.stringify(row));
  var data = row[1];
  if (row[0] === 'connect') {
    var me = data;
    open(base + '/' + data.id, function (peerRow) {
      console.log(JSON.stringify(['peer'].concat(peerRow)));
      if (peerRow[0] === 'connect') {
        post(me.id, { token: peerRow[1].token, data: { message: 'ping', from: peerRow[1].cid } });
      } else if (peerRow[0] === 'signal') {
        process.exit(0);
      }
    });
  }
});
setTimeout(function () { console.error('timed out'); process.exit(2); }, 8000);
