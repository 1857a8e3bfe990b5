// koa-signal's README example, unchanged but for the URL: request + ssejson.
// Usage: node koa_example.js http://127.0.0.1:PORT/prefix
var request = require('request');
var ssejson = require('ssejson');
var base = process.argv[2];

var initiator = request({ url: base }),
  token, id;
initiator
  .pipe(ssejson.parse('connect'))
  .on('data', function (data) {
    token = data.token;
    id = data.id;
    request({ url: base + '/' + id })
      .pipe(ssejson.parse('signal'))
      .on('data', function (data) {
        console.log(data.greeting);
        process.exit(0);
      });
  });
initiator
  .pipe(ssejson.parse('join'))
  .on('data', function (data) {
    request.post({
      url: base + '/' + id,
      form: {
        token: token,
        data: {
          greeting: 'hello ' + data.cid
        }
      }
    });
  });
setTimeout(function () { console.error('timed out'); process.exit(2); }, 8000);
