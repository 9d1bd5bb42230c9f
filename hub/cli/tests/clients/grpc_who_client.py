#!/usr/bin/env python3
"""Counts which backend answers /keelson.test.Who/Name (proxyless xDS for xds:/// targets).

Makes --calls RPCs without extra metadata, then --header-calls RPCs carrying
the --header NAME=VALUE metadata, one at a time on one channel, and prints one
JSON line: {"plain": {NAME: COUNT, ...}, "header": {...}, "errors": {CODE: COUNT}}.
Exits 0 when every RPC got an answer; the first failed RPC ends the run
(so a broken route costs one deadline, not one per call), exit 1 (the JSON is
printed either way). gRPC picks a weighted cluster per RPC (gRFC A28), so the counts
of a weighted route are a sample. The first RPC waits for xDS resolution
(wait_for_ready) up to --timeout seconds; the others use the same deadline.
For an xds:/// target the bootstrap comes from GRPC_XDS_BOOTSTRAP_CONFIG
(inline JSON) or GRPC_XDS_BOOTSTRAP (a file); without either it exits 2.
Run it with target/test-deps/grpc-venv/bin/python (scripts/install-test-deps).
"""
import argparse
import collections
import json
import os
import sys

import grpc

METHOD = "/keelson.test.Who/Name"


def identity(b):
    return b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", help="channel target, e.g. xds:///who.default.svc.cluster.local:50051")
    p.add_argument("--calls", type=int, default=100, help="RPCs without the header (default 100)")
    p.add_argument("--header-calls", type=int, default=0, help="RPCs with the header (default 0)")
    p.add_argument("--header", default="x-user=jason", help="metadata NAME=VALUE of the header RPCs")
    p.add_argument("--timeout", type=float, default=20.0, help="deadline of each RPC in seconds (default 20)")
    args = p.parse_args()
    if args.calls < 0 or args.header_calls < 0 or args.timeout <= 0:
        p.error("--calls and --header-calls must be >= 0, --timeout > 0")
    key, sep, value = args.header.partition("=")
    if not sep or not key:
        p.error("--header must be NAME=VALUE")
    if args.target.startswith("xds:") and not (
        os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG") or os.environ.get("GRPC_XDS_BOOTSTRAP")
    ):
        print("an xds: target needs GRPC_XDS_BOOTSTRAP_CONFIG or GRPC_XDS_BOOTSTRAP", file=sys.stderr)
        return 2

    counts = {"plain": collections.Counter(), "header": collections.Counter()}
    errors = collections.Counter()
    with grpc.insecure_channel(args.target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=identity, response_deserializer=identity)
        for phase, n, metadata in (("plain", args.calls, None), ("header", args.header_calls, ((key.lower(), value),))):
            for _ in range(n):
                try:
                    reply = call(b"", timeout=args.timeout, wait_for_ready=True, metadata=metadata)
                    counts[phase][reply.decode()] += 1
                except grpc.RpcError as e:
                    errors[e.code().name] += 1
                    print(f"rpc failed ({phase}): {e.code().name}: {e.details()}", file=sys.stderr, flush=True)
                    break
            if errors:
                break
    print(json.dumps({"plain": counts["plain"], "header": counts["header"], "errors": errors}), flush=True)
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
