#!/usr/bin/env node
// One grpc.health.v1 Health.Check through @grpc/grpc-js with the xds:///
// resolver of @grpc/grpc-js-xds (proxyless xDS).
//
//   node health_probe.js TARGET [--timeout-ms N] [--hold]
//
// Prints the serving status ("SERVING", "NOT_SERVING", ...) on stdout and
// exits 0 only on SERVING; an RPC error prints its code and details on stderr,
// exit 1; bad arguments exit 2. For an xds: target the bootstrap comes from
// GRPC_XDS_BOOTSTRAP_CONFIG (inline JSON) or GRPC_XDS_BOOTSTRAP (a file).
// With --hold it keeps the channel (and so its xDS stream) open after printing
// the status until its stdin closes.
// No protobuf codegen: the request (HealthCheckRequest{service: ""}) is the
// empty message, and the response's field 1 (status, a varint) is decoded by
// hand. Installed by scripts/install-test-deps (npm ci here).
'use strict';

const STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];

function usage(msg) {
  if (msg) console.error(`health_probe.js: ${msg}`);
  console.error('usage: node health_probe.js TARGET [--timeout-ms N] [--hold]');
  process.exit(2);
}

function parseArgs(argv) {
  let target = null;
  let timeoutMs = 20000;
  let hold = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-h' || a === '--help') usage();
    else if (a === '--hold') hold = true;
    else if (a === '--timeout-ms') {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v <= 0) usage('--timeout-ms needs a positive integer');
      timeoutMs = v;
    } else if (a.startsWith('-')) usage(`unknown option ${a}`);
    else if (target === null) target = a;
    else usage(`unexpected argument ${a}`);
  }
  if (target === null) usage('TARGET is required');
  return { target, timeoutMs, hold };
}

// Reads a base-128 varint at buf[pos]; returns [value, nextPos].
function varint(buf, pos) {
  let value = 0;
  let shift = 0;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    value += (b & 0x7f) * 2 ** shift;
    if ((b & 0x80) === 0) return [value, pos];
    shift += 7;
    if (shift > 63) throw new Error('varint too long');
  }
}

// HealthCheckResponse: field 1 `status` (enum, varint). Other fields skipped.
function decodeStatus(buf) {
  let status = 0; // proto3 default: UNKNOWN
  let pos = 0;
  while (pos < buf.length) {
    let key;
    [key, pos] = varint(buf, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) {
      let v;
      [v, pos] = varint(buf, pos);
      if (field === 1) status = v;
    } else if (wire === 2) {
      let len;
      [len, pos] = varint(buf, pos);
      pos += len;
    } else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else throw new Error(`unsupported wire type ${wire}`);
  }
  if (pos > buf.length) throw new Error('truncated message');
  return status;
}

function main() {
  const { target, timeoutMs, hold } = parseArgs(process.argv.slice(2));
  if (target.startsWith('xds:') && !process.env.GRPC_XDS_BOOTSTRAP_CONFIG && !process.env.GRPC_XDS_BOOTSTRAP) {
    console.error('an xds: target needs GRPC_XDS_BOOTSTRAP_CONFIG or GRPC_XDS_BOOTSTRAP');
    process.exit(2);
  }
  const grpc = require('@grpc/grpc-js');
  require('@grpc/grpc-js-xds').register();

  const client = new grpc.Client(target, grpc.credentials.createInsecure());
  const deadline = Date.now() + timeoutMs;
  // waitForReady: wait through xDS resolution and connecting until the
  // deadline rather than failing on the first transient failure.
  client.makeUnaryRequest(
    '/grpc.health.v1.Health/Check',
    (req) => req,
    (bytes) => bytes,
    Buffer.alloc(0),
    new grpc.Metadata({ waitForReady: true }),
    { deadline },
    (err, bytes) => {
      if (err) {
        console.error(`rpc failed: ${grpc.status[err.code] || err.code}: ${err.details}`);
        process.exit(1);
      }
      let status;
      try {
        status = decodeStatus(bytes);
      } catch (e) {
        console.error(`bad HealthCheckResponse ${bytes.toString('hex')}: ${e.message}`);
        process.exit(1);
      }
      console.log(STATUS[status] || `STATUS_${status}`);
      const code = status === 1 ? 0 : 1;
      if (!hold) process.exit(code);
      process.stdin.on('end', () => process.exit(code));
      process.stdin.resume();
    },
  );
}

main();
