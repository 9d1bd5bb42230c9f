#!/usr/bin/env node
// Counts which backend answers /keelson.test.Who/Name through @grpc/grpc-js
// with the xds:/// resolver of @grpc/grpc-js-xds (proxyless xDS).
//
//   node who_client.js TARGET [--calls N] [--header-calls M] [--header NAME=VALUE] [--timeout-ms T]
//
// Makes N RPCs without extra metadata, then M RPCs carrying the header
// metadata (default x-user=jason), one at a time on one client, and prints one
// JSON line {"plain": {NAME: COUNT}, "header": {...}, "errors": {CODE: COUNT}}.
// Exits 0 when every RPC got an answer; the first failed RPC ends the run (so
// a broken route costs one deadline, not one per call), exit 1 (the JSON is
// printed either way); bad arguments exit 2. The method is generic: request and
// response are raw bytes, the response the server's name. grpc-js picks a
// weighted cluster per RPC (gRFC A28), so a weighted route's counts are a
// sample. Every RPC waits for xDS resolution and connecting (waitForReady)
// up to its deadline. For an xds: target the bootstrap comes from
// GRPC_XDS_BOOTSTRAP_CONFIG (inline JSON) or GRPC_XDS_BOOTSTRAP (a file).
// Installed by scripts/install-test-deps (npm ci here).
'use strict';

const METHOD = '/keelson.test.Who/Name';

function usage(msg) {
  if (msg) console.error(`who_client.js: ${msg}`);
  console.error(
    'usage: node who_client.js TARGET [--calls N] [--header-calls M] [--header NAME=VALUE] [--timeout-ms T]',
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = { target: null, calls: 100, headerCalls: 0, header: 'x-user=jason', timeoutMs: 20000 };
  const count = (v, what, min) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) usage(`${what} needs an integer >= ${min}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') usage();
    else if (a === '--calls') o.calls = count(argv[++i], a, 0);
    else if (a === '--header-calls') o.headerCalls = count(argv[++i], a, 0);
    else if (a === '--timeout-ms') o.timeoutMs = count(argv[++i], a, 1);
    else if (a === '--header') o.header = argv[++i] || '';
    else if (a.startsWith('-')) usage(`unknown option ${a}`);
    else if (o.target === null) o.target = a;
    else usage(`unexpected argument ${a}`);
  }
  if (o.target === null) usage('TARGET is required');
  const eq = o.header.indexOf('=');
  if (eq <= 0) usage('--header must be NAME=VALUE');
  o.headerName = o.header.slice(0, eq).toLowerCase();
  o.headerValue = o.header.slice(eq + 1);
  return o;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.target.startsWith('xds:') && !process.env.GRPC_XDS_BOOTSTRAP_CONFIG && !process.env.GRPC_XDS_BOOTSTRAP) {
    console.error('an xds: target needs GRPC_XDS_BOOTSTRAP_CONFIG or GRPC_XDS_BOOTSTRAP');
    process.exit(2);
  }
  const grpc = require('@grpc/grpc-js');
  require('@grpc/grpc-js-xds').register();
  const client = new grpc.Client(o.target, grpc.credentials.createInsecure());

  const call = (withHeader) =>
    new Promise((resolve) => {
      const md = new grpc.Metadata({ waitForReady: true });
      if (withHeader) md.set(o.headerName, o.headerValue);
      client.makeUnaryRequest(
        METHOD,
        (req) => req,
        (bytes) => bytes,
        Buffer.alloc(0),
        md,
        { deadline: Date.now() + o.timeoutMs },
        (err, bytes) => resolve(err ? { err } : { name: bytes.toString('utf8') }),
      );
    });

  const out = { plain: {}, header: {}, errors: {} };
  for (const [phase, n, withHeader] of [
    ['plain', o.calls, false],
    ['header', o.headerCalls, true],
  ]) {
    for (let i = 0; i < n; i++) {
      const r = await call(withHeader);
      if (r.err) {
        const code = grpc.status[r.err.code] || String(r.err.code);
        out.errors[code] = (out.errors[code] || 0) + 1;
        console.error(`rpc failed (${phase}): ${code}: ${r.err.details}`);
        break;
      } else {
        out[phase][r.name] = (out[phase][r.name] || 0) + 1;
      }
    }
    if (Object.keys(out.errors).length > 0) break;
  }
  console.log(JSON.stringify(out));
  client.close();
  process.exit(Object.keys(out.errors).length === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(`who_client.js: ${e.stack || e}`);
  process.exit(1);
});
