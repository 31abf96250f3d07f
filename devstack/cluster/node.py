"""The devstack cluster's fixed addresses, state paths and its admin ``kubectl``.

Kept apart from ``kubernetes`` (which starts and stops the node) so that the modules the node starts, such as
the CSI driver, can name the cluster without importing the module that imports them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from devstack.cluster import binaries
from devstack.runtime import DevstackError, subdir

NODE_NAME = "devstack"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
API_PORT = 6443
ETCD_CLIENT_PORT = 22379
ETCD_PEER_PORT = 22380
RUNTIME_ROOT = Path("/var/lib/eventpipe-k8s")
RUNTIME_STATE = Path("/run/eventpipe-k8s")
CONTAINERD_SOCKET = str(RUNTIME_STATE / "containerd" / "containerd.sock")


def state_dir() -> Path:
    return subdir("kubernetes")


def pki_dir() -> Path:
    return state_dir() / "pki"


def kubeconfig() -> Path:
    """The cluster-admin kubeconfig (for the devstack itself, tests and ``kubectl``)."""
    return state_dir() / "admin.kubeconfig"


def kubectl_binary() -> Path:
    return binaries.bin_dir() / "kubectl"


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 120) -> str:
    """Run the pinned kubectl as cluster admin; raise with its stderr when ``check`` and it fails."""
    result = subprocess.run(
        [str(kubectl_binary()), f"--kubeconfig={kubeconfig()}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise DevstackError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout
