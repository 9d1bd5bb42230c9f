"""Lists Services in all namespaces with the official Python client and prints their
names as one JSON line; on an API error prints {"status": CODE, "reason": ...}.

Usage: list_services.py kubeconfig PATH
       list_services.py incluster DIR   (KUBERNETES_SERVICE_HOST/PORT from the environment;
                                         DIR holds token and ca.crt, as mounted in a pod)
"""
import json
import os
import sys

from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader


def main():
    mode, where = sys.argv[1], sys.argv[2]
    if mode == "kubeconfig":
        config.load_kube_config(config_file=where)
    else:
        InClusterConfigLoader(
            token_filename=os.path.join(where, "token"), cert_filename=os.path.join(where, "ca.crt")
        ).load_and_set()
    try:
        services = client.CoreV1Api().list_service_for_all_namespaces()
    except ApiException as e:
        print(json.dumps({"status": e.status, "reason": e.reason}), flush=True)
        return
    print(json.dumps(sorted(s.metadata.name for s in services.items)), flush=True)


if __name__ == "__main__":
    main()
