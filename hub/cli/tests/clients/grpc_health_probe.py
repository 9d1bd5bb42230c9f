#!/usr/bin/env python3
"""One grpc.health.v1 Health.Check through a gRPC channel (proxyless xDS for xds:/// targets).

Prints the serving status ("SERVING", "NOT_SERVING", ...) on stdout and exits 0
only on SERVING; on an RPC error prints its code and details on stderr, exit 1.
For an xds:/// target the bootstrap comes from GRPC_XDS_BOOTSTRAP_CONFIG (inline
JSON) or GRPC_XDS_BOOTSTRAP (a file); without either it exits 2.
With --hold it keeps the channel (and so its xDS stream) open after printing
the status until its stdin closes, so a test can look at the control plane's
view of a connected client.
Run it with target/test-deps/grpc-venv/bin/python (scripts/install-test-deps).
"""
import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", help="channel target, e.g. xds:///svc.test:50051 or 127.0.0.1:50051")
    p.add_argument("--timeout", type=float, default=20.0, help="RPC deadline in seconds (default 20)")
    p.add_argument("--service", default="", help="health service name (default: the server as a whole)")
    p.add_argument("--hold", action="store_true", help="after printing the status, keep the channel open until stdin closes")
    args = p.parse_args()
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    if args.target.startswith("xds:") and not (
        os.environ.get("GRPC_XDS_BOOTSTRAP_CONFIG") or os.environ.get("GRPC_XDS_BOOTSTRAP")
    ):
        print("an xds: target needs GRPC_XDS_BOOTSTRAP_CONFIG or GRPC_XDS_BOOTSTRAP", file=sys.stderr)
        return 2

    with grpc.insecure_channel(args.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            # wait_for_ready: wait through xDS resolution and connecting until
            # the deadline instead of failing on the first transient failure.
            resp = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                wait_for_ready=True,
            )
        except grpc.RpcError as e:
            print(f"rpc failed: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status), flush=True)
        if args.hold:
            sys.stdin.read()
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
