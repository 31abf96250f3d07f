"""Kafka and Elasticsearch as StatefulSets on the devstack cluster (``eventpipe devstack k8s-stateful``).

Opt-in, after ``devstack k8s`` (which brings the CSI driver and its encrypted class): builds the registry-free
service images (``devstack.images``, skipped when current), copies them into the node's containerd, creates the
encrypted class's key Secret in each namespace, applies ``devstack/kubernetes/deploy/stateful`` and waits until
every pod is Ready. Idempotent; returns seconds per step.
"""

from __future__ import annotations

import json
import time

from devstack.cluster import csi, image
from devstack.cluster.kubernetes import CONTAINERD_SOCKET, kubectl
from devstack.images.services import build_service_image, tag
from devstack.runtime import REPO_ROOT, DevstackError, TimedSteps

OVERLAY = REPO_ROOT / "devstack" / "kubernetes" / "deploy" / "stateful"
# (namespace, StatefulSet, image name, image version): the tags devstack.images builds
WORKLOADS = (("kafka", "kafka", "kafka", "4.4.0"), ("elastic", "elasticsearch", "elasticsearch", "9.5.3"))


def _say(message: str) -> None:
    print(f"[k8s-stateful] {message}", flush=True)


def service_images() -> list[str]:
    """Build (or find current) the Kafka and Elasticsearch images; their tags."""
    refs = []
    for _, _, name, version in WORKLOADS:
        ref = str(build_service_image(name)["tag"])
        if ref != tag(name, version):
            raise DevstackError(f"image {ref} is not the {version} deploy/stateful names; update both together")
        refs.append(ref)
    return refs


def namespaces_and_keys() -> None:
    """The namespaces first, then each one's volume key Secret, so no claim waits for its node-stage secret.

    ``eventpipe`` too: the storage-expand ServiceAccount lives there, and ``devstack k8s`` may not have applied
    ``deploy/`` yet (its own labels are merged in when it does).
    """
    items = [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"app.kubernetes.io/part-of": "eventpipe"}},
        }
        for ns in (*(w[0] for w in WORKLOADS), "eventpipe")
    ]
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    for namespace, *_ in WORKLOADS:
        csi.volume_key_secret(namespace)


def wait_ready(timeout_s: float = 900.0) -> None:
    """Every replica of both StatefulSets Ready (OnDelete sets have no rollout status: count Ready replicas)."""
    deadline = time.monotonic() + timeout_s
    pending: dict[str, str] = {}
    while time.monotonic() < deadline:
        pending = {}
        for namespace, name, *_ in WORKLOADS:
            sts = json.loads(kubectl("-n", namespace, "get", "statefulset", name, "-o", "json"))
            ready, wanted = sts.get("status", {}).get("readyReplicas", 0), sts["spec"]["replicas"]
            if ready < wanted:
                pending[name] = f"{ready}/{wanted} ready"
        if not pending:
            return
        time.sleep(5)
    raise DevstackError(f"StatefulSets not ready after {timeout_s:.0f}s: {pending}")


def deploy_stateful(*, build: bool = True, timeout_s: float = 900.0) -> dict[str, float]:
    step = TimedSteps(_say)
    timings = step.timings

    refs = [tag(name, version) for *_, name, version in WORKLOADS]
    if build:
        step("service images", service_images)
    for ref in refs:
        step(f"import {ref}", lambda ref=ref: image.import_image(CONTAINERD_SOCKET, ref))
    step("namespaces and volume keys", namespaces_and_keys)
    step("apply -k devstack/kubernetes/deploy/stateful", lambda: kubectl("apply", "-k", str(OVERLAY), timeout=180))
    step("pods ready", lambda: wait_ready(timeout_s))
    return timings
