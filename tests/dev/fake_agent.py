"""A stand-in edge agent for the emulator tests: creates its own EdgeAgent (NODE_NAME) with the
kubeconfig in KUBECONFIG and patches status.heartbeatTime a few times a second."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time

import kubernetes
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "edgemodel.io", "v1alpha1", "edgeagents"


def main() -> int:
    node = os.environ["NODE_NAME"]
    signal.signal(signal.SIGTERM, lambda *_: (print("stopped", flush=True), sys.exit(0)))
    api = kubernetes.config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
    custom = kubernetes.client.CustomObjectsApi(api)
    beats = 0
    deadline = time.monotonic() + 120  # never outlive a test run by much
    while time.monotonic() < deadline:
        try:
            try:
                custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, node)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, {
                    "apiVersion": f"{GROUP}/{VERSION}", "kind": "EdgeAgent", "metadata": {"name": node},
                    "spec": {"nodeName": node}})
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, node, {"status": {
                "heartbeatTime": now, "endpoint": f"http://127.0.0.1/{node}"}})
            beats += 1
            print(f"heartbeat {beats}", flush=True)
            if os.environ.get("TRY_OTHER"):
                try:
                    custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, os.environ["TRY_OTHER"],
                                                              {"status": {"endpoint": "hijacked"}})
                    print("other: allowed", flush=True)
                except ApiException as exc:
                    print(f"other: {exc.status}", flush=True)
        except ApiException as exc:
            print(f"api error {exc.status}", flush=True)
        except Exception as exc:  # connection refused during an API outage
            print(f"api down: {type(exc).__name__}", flush=True)
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
