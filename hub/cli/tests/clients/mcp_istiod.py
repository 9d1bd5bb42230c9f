#!/usr/bin/env python3
"""An MCP-over-xDS client that behaves on the wire like istiod's config-source
client, for hub/cli/tests/real_mcp.rs.

There is no istiod binary on this machine. istiod, given
`configSources: [{address: xds://HOST:PORT}]`, runs the ADS client of
istio/istio pkg/adsc/adsc.go (pilot/pkg/bootstrap/configcontroller.go). This
script does what that client does, written from its observable behaviour
(shared/PROTOCOL.md sections 2a and 5), not from its code:

- ONE SotW stream, envoy.service.discovery.v3.AggregatedDiscoveryService/
  StreamAggregatedResources, receive limit MaxInt32, plaintext;
- node id `sidecar~<ip>~<pod>.istio-system~istio-system.svc.cluster.local`,
  metadata GENERATOR=api, ISTIO_REVISION=<rev>, ISTIO_VERSION=65536.65536.65536
  (adsc's default); the node goes on the first request and on every ACK;
- initial requests: core/v1alpha1/MeshConfig, then one wildcard request per
  Istio type of the chosen version set (no type.googleapis.com/ prefix), each
  with a timestamp (Go's time.Now().String()) as its response_nonce;
- every response: type_url must be one requested, verbatim; each item must be
  Any(istio.mcp.v1alpha1.Resource) named "<ns>/<name>" whose body is
  Any(type.googleapis.com/istio.<package>.<Kind>) and decodes with the class
  generated from the project's own .proto files, with no unknown field
  anywhere; then an ACK {type_url, response_nonce, version_info, node}.
  MeshConfig is a bare Any(istio.mesh.v1alpha1.MeshConfig) and a non-empty one
  is not ACKed (adsc skips it).

adsc never NACKs; `--nack-type T` NACKs the first response of type T (what
adsc's "add hook to inject nacks" TODO would do) so a test can see the server's
NACK handling from a real client.

The Python for the Istio messages is generated at run time with grpc_tools'
protoc from `--proto-dir` (proto/proto) into `--gen-dir`; Envoy's discovery
messages come from the xds-protos package. Output: one JSON object per line on
stdout (see `report`). A protocol violation prints the reason on stderr and
exits 1. The client runs until its stdin closes (exit 0) or `--timeout`
seconds pass (exit 2).
"""

import argparse
import datetime
import glob
import importlib
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time

import grpc
from google.protobuf import json_format, struct_pb2, unknown_fields

MESH_CONFIG = "core/v1alpha1/MeshConfig"
RESOURCE_ANY = "type.googleapis.com/istio.mcp.v1alpha1.Resource"
MESH_CONFIG_ANY = "type.googleapis.com/istio.mesh.v1alpha1.MeshConfig"

# The body message of each kind: always its proto package, whatever version
# the GVK names (Go's networking/v1 types alias v1alpha3's).
BODY_MESSAGE = {
    "VirtualService": "istio.networking.v1alpha3.VirtualService",
    "DestinationRule": "istio.networking.v1alpha3.DestinationRule",
    "Gateway": "istio.networking.v1alpha3.Gateway",
    "ServiceEntry": "istio.networking.v1alpha3.ServiceEntry",
    "Sidecar": "istio.networking.v1alpha3.Sidecar",
    "WorkloadEntry": "istio.networking.v1alpha3.WorkloadEntry",
    "WorkloadGroup": "istio.networking.v1alpha3.WorkloadGroup",
    "EnvoyFilter": "istio.networking.v1alpha3.EnvoyFilter",
    "ProxyConfig": "istio.networking.v1beta1.ProxyConfig",
    "AuthorizationPolicy": "istio.security.v1beta1.AuthorizationPolicy",
    "PeerAuthentication": "istio.security.v1beta1.PeerAuthentication",
    "RequestAuthentication": "istio.security.v1beta1.RequestAuthentication",
    "Telemetry": "istio.telemetry.v1alpha1.Telemetry",
    "WasmPlugin": "istio.extensions.v1alpha1.WasmPlugin",
}

# google.rpc.Code INTERNAL, what Envoy puts in its NACKs.
NACK_CODE = 13


class Violation(Exception):
    """The server broke a rule istiod relies on."""


def generate(proto_dir, gen_dir):
    """Python for every .proto under proto_dir/istio, generated once per
    gen_dir (clients sharing it race on an atomic rename); returns the
    top-level message classes by full name."""
    from grpc_tools import protoc

    # The legacy Galley services (mcp.proto) are not part of MCP over xDS,
    # and they import google/rpc/status.proto, which grpc_tools lacks.
    legacy = "istio/mcp/v1alpha1/mcp.proto"
    files = sorted(
        rel
        for rel in (
            os.path.relpath(p, proto_dir).replace(os.sep, "/")
            for p in glob.glob(os.path.join(proto_dir, "istio", "**", "*.proto"), recursive=True)
        )
        if rel != legacy
    )
    if not files:
        raise SystemExit(f"no .proto files under {proto_dir}/istio")
    out = os.path.join(gen_dir, "py")
    if not os.path.isdir(out):
        os.makedirs(gen_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=gen_dir, prefix=".gen-")
        # google/protobuf/*.proto come with grpc_tools.
        wkt = os.path.join(os.path.dirname(protoc.__file__), "_proto")
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{wkt}", f"--python_out={tmp}"] + files)
        if rc != 0:
            raise SystemExit(f"protoc failed ({rc}) on {proto_dir}")
        try:
            os.rename(tmp, out)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another client got there first
    sys.path.insert(0, out)
    classes = {}
    for f in files:
        module = importlib.import_module(f[: -len(".proto")].replace("/", ".") + "_pb2")
        for name in module.DESCRIPTOR.message_types_by_name:
            cls = getattr(module, name)
            classes[cls.DESCRIPTOR.full_name] = cls
    return classes


def unknown_field_paths(msg, path):
    """Where `msg` (recursively) holds fields its schema does not know."""
    found = [path] if len(unknown_fields.UnknownFieldSet(msg)) else []
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type is not None:
                for key, v in value.items():
                    found += unknown_field_paths(v, f"{path}.{field.name}[{key!r}]")
        elif field.is_repeated:
            for i, v in enumerate(value):
                found += unknown_field_paths(v, f"{path}.{field.name}[{i}]")
        else:
            found += unknown_field_paths(value, f"{path}.{field.name}")
    return found


def parse_exact(cls, data, what):
    """`data` parsed as `cls`, which must account for every byte: no
    unknown fields at any depth (checked by walking the message, and by the
    size after discarding unknown fields, which recurses by itself)."""
    try:
        msg = cls.FromString(data)
    except Exception as e:  # DecodeError, and upb's variants of it
        raise Violation(f"{what}: does not parse as {cls.DESCRIPTOR.full_name}: {e}")
    paths = unknown_field_paths(msg, cls.DESCRIPTOR.name)
    stripped = cls()
    stripped.CopyFrom(msg)
    stripped.DiscardUnknownFields()
    if paths or stripped.ByteSize() != msg.ByteSize():
        raise Violation(f"{what}: unknown fields in {cls.DESCRIPTOR.full_name} at {paths or '?'}")
    return msg


def go_time_now(start_monotonic_ns):
    """time.Now().String() as Go prints it, monotonic reading included:
    `2006-01-02 15:04:05.999999999 +0000 UTC m=+0.000000001`."""
    ns = time.time_ns()
    stamp = datetime.datetime.fromtimestamp(ns // 10**9, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    frac = f".{ns % 10**9:09d}".rstrip("0").rstrip(".")
    mono = (time.monotonic_ns() - start_monotonic_ns) / 1e9
    return f"{stamp}{frac} +0000 UTC m=+{mono:.9f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True, help="HOST:PORT of the ADS server")
    ap.add_argument("--proto-dir", required=True, help="the project's proto root (proto/proto)")
    ap.add_argument("--gen-dir", required=True, help="where to put the generated Python")
    ap.add_argument(
        "--types",
        required=True,
        help="comma-separated Istio type URLs to request after MeshConfig, in istiod's order "
        "(the Rust test passes keelson-loadtest's list for the Istio version it plays)",
    )
    ap.add_argument("--revision", default="", help="ISTIO_REVISION node metadata")
    ap.add_argument("--pod", default="istiod-0", help="pod name in the node id")
    ap.add_argument("--nack-type", help="NACK the first response of this type_url")
    ap.add_argument("--nack-message", default="rejected by the test client")
    ap.add_argument("--timeout", type=float, default=60.0, help="exit 2 after this many seconds")
    args = ap.parse_args()

    # Envoy's discovery messages (xds-protos). Imported after the generated
    # Istio modules would be fine too: the two share no proto package.
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
    from google.rpc import status_pb2

    classes = generate(args.proto_dir, args.gen_dir)
    resource_cls = classes["istio.mcp.v1alpha1.Resource"]
    mesh_cls = classes["istio.mesh.v1alpha1.MeshConfig"]
    istio_types = [t for t in args.types.split(",") if t]
    requested = [MESH_CONFIG] + istio_types
    if args.nack_type and args.nack_type not in requested:
        raise SystemExit(f"--nack-type {args.nack_type} is not among the requested types")

    metadata = struct_pb2.Struct()
    metadata.update({"GENERATOR": "api", "ISTIO_REVISION": args.revision, "ISTIO_VERSION": "65536.65536.65536"})
    node = base_pb2.Node(
        id=f"sidecar~127.0.0.1~{args.pod}.istio-system~istio-system.svc.cluster.local", metadata=metadata
    )

    outbox = queue.Queue()
    stop = threading.Event()

    def requests():
        while True:
            r = outbox.get()
            if r is None:
                return
            yield r

    start_ns = time.monotonic_ns()
    for i, t in enumerate(requested):
        r = discovery_pb2.DiscoveryRequest(type_url=t, response_nonce=go_time_now(start_ns))
        if i == 0:
            r.node.CopyFrom(node)
        outbox.put(r)

    channel = grpc.insecure_channel(args.server, options=[("grpc.max_receive_message_length", 2**31 - 1)])
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    call = stub.StreamAggregatedResources(requests())

    exit_code = {"code": 0}

    def finish(code, why):
        if not stop.is_set():
            exit_code["code"] = code
            if why:
                print(why, file=sys.stderr, flush=True)
            stop.set()
            call.cancel()
            outbox.put(None)

    def watch_stdin():
        sys.stdin.read()  # returns at EOF: the test closed our stdin
        finish(0, "")

    threading.Thread(target=watch_stdin, daemon=True).start()
    timer = threading.Timer(args.timeout, finish, (2, f"timed out after {args.timeout} s"))
    timer.daemon = True
    timer.start()

    accepted = {}  # type_url -> last ACKed version_info (for NACKs)
    answered = set()
    nacked_once = set()
    count = 0

    def out(obj):
        print(json.dumps(obj, sort_keys=True), flush=True)

    try:
        for resp in call:
            count += 1
            report = handle(resp, requested, classes, resource_cls, mesh_cls)
            t = resp.type_url
            if t == args.nack_type and t not in nacked_once:
                nacked_once.add(t)
                outbox.put(
                    discovery_pb2.DiscoveryRequest(
                        type_url=t,
                        response_nonce=resp.nonce,
                        version_info=accepted.get(t, ""),
                        node=node,
                        error_detail=status_pb2.Status(code=NACK_CODE, message=args.nack_message),
                    )
                )
                report["reply"] = "nack"
            elif t == MESH_CONFIG and len(resp.resources) > 0:
                report["reply"] = "none"  # adsc `continue`s before its ACK
            else:
                accepted[t] = resp.version_info
                outbox.put(
                    discovery_pb2.DiscoveryRequest(
                        type_url=t, response_nonce=resp.nonce, version_info=resp.version_info, node=node
                    )
                )
                report["reply"] = "ack"
            report["n"] = count
            out(report)
            if t != MESH_CONFIG and t not in answered:
                answered.add(t)
                # adsc's HasSynced: one response for every Istio type asked.
                if answered >= set(istio_types):
                    out({"event": "synced", "n": count})
    except Violation as v:
        finish(1, f"violation: {v}")
    except grpc.RpcError as e:
        if not stop.is_set():
            finish(1, f"stream ended: {e.code()} {e.details()}")
    else:
        if not stop.is_set():
            finish(1, "stream ended by the server")
    timer.cancel()
    channel.close()
    sys.exit(exit_code["code"])


def handle(resp, requested, classes, resource_cls, mesh_cls):
    """Checks one response the way istiod consumes it; its report."""
    t = resp.type_url
    if t not in requested:
        raise Violation(f"response type_url {t!r} was never requested (asked: {requested})")
    report = {"event": "response", "type_url": t, "version_info": resp.version_info, "nonce": resp.nonce}
    if t == MESH_CONFIG:
        report["items"] = []
        report["mesh_config"] = None
        if len(resp.resources) > 1:
            raise Violation(f"MeshConfig response holds {len(resp.resources)} items, expected at most 1")
        if resp.resources:
            any_ = resp.resources[0]
            if any_.type_url != MESH_CONFIG_ANY:
                raise Violation(f"MeshConfig Any is {any_.type_url!r}, expected {MESH_CONFIG_ANY}")
            mesh = parse_exact(mesh_cls, any_.value, "MeshConfig")
            report["mesh_config"] = json_format.MessageToDict(mesh)
        return report
    kind = t.rsplit("/", 1)[-1]
    want_body = BODY_MESSAGE[kind]
    items, names = [], set()
    for i, any_ in enumerate(resp.resources):
        where = f"{t} item {i}"
        if any_.type_url != RESOURCE_ANY:
            raise Violation(f"{where}: Any is {any_.type_url!r}, expected {RESOURCE_ANY}")
        res = parse_exact(resource_cls, any_.value, where)
        if not res.HasField("metadata") or not res.HasField("body"):
            raise Violation(f"{where}: Resource without metadata or body")
        name = res.metadata.name
        if len(name.split("/")) != 2:
            raise Violation(f"{where}: name {name!r} is not <namespace>/<name> (istiod drops it)")
        if name in names:
            raise Violation(f"{where}: {name} appears twice")
        names.add(name)
        prefix, _, message = res.body.type_url.partition("type.googleapis.com/")
        if prefix or message != want_body:
            raise Violation(f"{where} ({name}): body is {res.body.type_url!r}, expected type.googleapis.com/{want_body}")
        body = parse_exact(classes[message], res.body.value, f"{where} ({name}) body")
        items.append(
            {
                "name": name,
                "version": res.metadata.version,
                "create_time": res.metadata.create_time.ToJsonString() if res.metadata.HasField("create_time") else None,
                "labels": dict(res.metadata.labels),
                "annotations": dict(res.metadata.annotations),
                "body_type": message,
                "body": json_format.MessageToDict(body),
            }
        )
    report["items"] = items
    return report


if __name__ == "__main__":
    main()
