// koa-signal mounted as its README shows, on one port, for python -m bench.
// Usage: node server.js PORT
// koa-signal comes from node_modules/koa-signal (npm install --no-save koa-signal@0.1.1),
// or from the directory named by KOA_SIGNAL (a checkout of the package; its own
// dependencies are resolved from this folder's node_modules, installed by npm ci).
'use strict';
var path = require('path');
var http = require('http');
var koa = require('koa');

var where = process.env.KOA_SIGNAL ? path.resolve(process.env.KOA_SIGNAL) : 'koa-signal';
var signal = require(where);

var app = koa();
app.use(signal());

var port = Number(process.argv[2] || 6767);
http.createServer(app.callback()).listen(port, '127.0.0.1', function () {
  process.stdout.write('koa-signal listening on http://127.0.0.1:' + port + '\n');
});
