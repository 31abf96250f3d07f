"""The devstack cluster's addresses, state paths and its admin ``kubectl``, per cluster identity.

Kept apart from ``kubernetes`` (which starts and stops the node) so that the modules the node starts, such as
the CSI driver, can name the cluster without importing the module that imports them.

Identity: ``EVENTPIPE_K8S_CLUSTER`` (``source``, the default, keeps every path and port of the one cluster;
``target`` is a second, independent cluster for migration drills): its own etcd data and ports, PKI with its
own CA, node state, container runtime root/state, CSI data root, API port and process names. The two run in
sequence, never together (docs/kubernetes.md, "A second cluster"): the pod network (bridge, node IP, pod CIDR)
and the NodePorts are the same, so host services and host clients reach whichever cluster is up at one address.
The identity is read at import: a process talks to one cluster; tools handling both pass ``cluster=``.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.cluster import binaries
from devstack.runtime import DevstackError, subdir

CLUSTER_ENV = "EVENTPIPE_K8S_CLUSTER"


@dataclass(frozen=True)
class ClusterIdentity:
    """What keeps two devstack clusters apart on one host (besides time: they never run together)."""

    name: str
    api_port: int
    etcd_client_port: int
    etcd_peer_port: int
    runtime_root: Path
    runtime_state: Path
    state_subdir: str  # under the devstack home: etcd, PKI, kubeconfigs, rendered configs
    process_prefix: str  # pidfile and log names of its processes ("" keeps the source's names)

    def proc(self, name: str) -> str:
        return f"{self.process_prefix}{name}"


IDENTITIES = {
    "source": ClusterIdentity("source", 6443, 22379, 22380, Path("/var/lib/eventpipe-k8s"),
                              Path("/run/eventpipe-k8s"), "kubernetes", ""),
    "target": ClusterIdentity("target", 6444, 22381, 22382, Path("/var/lib/eventpipe-k8s-target"),
                              Path("/run/eventpipe-k8s-target"), "kubernetes-target", "target-"),
}  # fmt: skip


def identity(name: str | None = None) -> ClusterIdentity:
    """The named identity, or this process's (``EVENTPIPE_K8S_CLUSTER``, default ``source``)."""
    chosen = name or os.environ.get(CLUSTER_ENV) or "source"
    if chosen not in IDENTITIES:
        raise DevstackError(f"{CLUSTER_ENV}={chosen!r}: unknown cluster; known: {sorted(IDENTITIES)}")
    return IDENTITIES[chosen]


CLUSTER = identity()
NODE_NAME = "devstack"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
DNS_IP = "10.96.0.10"
API_PORT = CLUSTER.api_port
ETCD_CLIENT_PORT = CLUSTER.etcd_client_port
ETCD_PEER_PORT = CLUSTER.etcd_peer_port
RUNTIME_ROOT = CLUSTER.runtime_root
RUNTIME_STATE = CLUSTER.runtime_state
CONTAINERD_SOCKET = str(RUNTIME_STATE / "containerd" / "containerd.sock")


def state_dir(cluster: str | None = None) -> Path:
    return subdir(identity(cluster).state_subdir if cluster else CLUSTER.state_subdir)


def pki_dir(cluster: str | None = None) -> Path:
    return state_dir(cluster) / "pki"


def kubeconfig(cluster: str | None = None) -> Path:
    """The cluster-admin kubeconfig (for the devstack itself, tests and ``kubectl``)."""
    return state_dir(cluster) / "admin.kubeconfig"


def kubectl_binary() -> Path:
    return binaries.bin_dir() / "kubectl"


def kubectl(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120, cluster: str | None = None
) -> str:
    """Run the pinned kubectl as cluster admin (of ``cluster``, default this process's); raise with its stderr
    when ``check`` and it fails."""
    result = subprocess.run(
        [str(kubectl_binary()), f"--kubeconfig={kubeconfig(cluster)}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise DevstackError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root``, deepest first (the order they can be unmounted in)."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((m for m in mounts if m == str(root) or m.startswith(f"{root}/")), key=len, reverse=True)
