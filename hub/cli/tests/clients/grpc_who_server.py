#!/usr/bin/env python3
"""A gRPC server answering /keelson.test.Who/Name with its own name, for the translation tests.

The method is generic (no protobuf codegen): request and response are raw
bytes, the response is the server's --name encoded as UTF-8. Every other
method is UNIMPLEMENTED. Binds 127.0.0.1 on --port (0 = OS-chosen) and prints
one line "listening 127.0.0.1:PORT" once it serves, then runs until
SIGTERM/SIGINT. It also prints "calls N" to stderr on exit.
Run it with target/test-deps/grpc-venv/bin/python (scripts/install-test-deps).
"""
import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc


def identity(b):
    return b


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--name", required=True, help="what /keelson.test.Who/Name answers")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: OS-chosen)")
    args = p.parse_args()

    calls = [0]
    lock = threading.Lock()
    answer = args.name.encode()

    def name(_request, _context):
        with lock:
            calls[0] += 1
        return answer

    handler = grpc.method_handlers_generic_handler(
        "keelson.test.Who",
        {"Name": grpc.unary_unary_rpc_method_handler(name, request_deserializer=identity, response_serializer=identity)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    if port == 0:
        print(f"{args.name}: cannot bind 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    server.start()
    print(f"listening 127.0.0.1:{port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=0).wait()
    print(f"calls {calls[0]}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
