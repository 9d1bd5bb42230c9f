"""Watches Services in `default` with the official Python client and survives 410s.

Usage: watch_relist.py KUBECONFIG. Prints one JSON line per step:
{"list": [names], "rv": RV} after each (re)list, {"type", "name", "rv"} per event,
{"gone": 410} when the watch expired. Exits 0 after the event for a Service named
"done". The 410 handling is the client's documented pattern: Watch.stream retries
one 410 ERROR event itself, then raises ApiException(410); the caller relists.
"""
import json
import sys

from kubernetes import client, config, watch


def say(obj):
    print(json.dumps(obj), flush=True)


def main():
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()

    def relist():
        listed = v1.list_namespaced_service("default")
        say({"list": [s.metadata.name for s in listed.items], "rv": listed.metadata.resource_version})
        return listed.metadata.resource_version

    rv = relist()
    while True:
        try:
            stream = watch.Watch().stream(v1.list_namespaced_service, "default", resource_version=rv, timeout_seconds=60)
            for event in stream:
                meta = event["object"].metadata
                say({"type": event["type"], "name": meta.name, "rv": meta.resource_version})
                rv = meta.resource_version
                if meta.name == "done":
                    return 0
        except client.exceptions.ApiException as e:
            if e.status != 410:
                raise
            say({"gone": e.status, "reason": e.reason})
            rv = relist()
        # A stream that ended cleanly (dropped, timeout) is resumed from the last RV.


if __name__ == "__main__":
    sys.exit(main())
