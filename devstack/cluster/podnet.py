"""Where pods of the devstack cluster find the host's services: the node IP on the cluster's own bridge.

Kafka, Elasticsearch and the S3 server listen on loopback for local mode. When the bridge exists at their
launch they also listen on ``NODE_IP``, so task pods and Spark executors reach them; Kafka advertises that
address on a listener of its own (pods cannot use a broker address of 127.0.0.1).
"""

from __future__ import annotations

import errno
import socket

BRIDGE = "k8sbr0"
NODE_IP = "10.244.0.1"
BRIDGE_MAC = "02:65:70:f4:00:01"  # locally administered; fixed, so the node IP's MAC never changes under pods
KAFKA_POD_PORT = 9094


def present() -> bool:
    """True when ``NODE_IP`` is assigned on this host (the kubernetes service created its bridge)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((NODE_IP, 0))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def pod_env() -> dict[str, str]:
    """The devstack settings as a pod sees them (plain values only; credentials come from Secrets)."""
    return {
        "EVENTPIPE_KAFKA_BOOTSTRAP": f"{NODE_IP}:{KAFKA_POD_PORT}",
        "EVENTPIPE_ES_URL": f"http://{NODE_IP}:9200",
        "EVENTPIPE_S3_ENDPOINT": f"http://{NODE_IP}:9000",
    }
