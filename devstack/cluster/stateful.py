"""Kafka and Elasticsearch as StatefulSets on the devstack cluster (``eventpipe devstack k8s-stateful``).

Opt-in, after ``devstack k8s`` (which brings the CSI driver and its encrypted class): builds the registry-free
service images (``devstack.images``, skipped when current), copies them into the node's containerd, creates the
encrypted class's key Secret in each namespace, applies ``devstack/kubernetes/deploy/stateful`` and waits until
every pod is Ready. Idempotent; returns seconds per step.

Elasticsearch's snapshot repository: the archive's ``fs`` repository on a directory of the node that all three
pods mount through a claim (a static hostPath volume; Pod Security forbids hostPath in pod specs), and the task
pods mount read-only at the same path to mirror it to S3. It is not the host Elasticsearch's repository directory:
two clusters must never write one repository. ``data_env`` is what the demo's ``--data cluster`` gives Airflow.
"""

from __future__ import annotations

import json
import time
from typing import Any

import yaml
from kubernetes.utils import parse_quantity

from devstack.cluster import csi, image
from devstack.cluster.deploy import apply_items, host_path_claim
from devstack.cluster.kubernetes import CONTAINERD_SOCKET, kubectl
from devstack.cluster.podnet import NODE_IP
from devstack.images.services import build_service_image, tag
from devstack.runtime import REPO_ROOT, DevstackError, TimedSteps, subdir

OVERLAY = REPO_ROOT / "devstack" / "kubernetes" / "deploy" / "stateful"
# (namespace, StatefulSet, image name, image version): the tags devstack.images builds
# From the host (the overlay's external.yaml NodePorts); pods use kafka.kafka.svc:9092 and elasticsearch.elastic.svc
HOST_KAFKA_BOOTSTRAP = f"{NODE_IP}:31090"
HOST_ES_URL = f"http://{NODE_IP}:30920"
IN_CLUSTER_ENDPOINTS = {
    "EVENTPIPE_KAFKA_BOOTSTRAP": "kafka.kafka.svc:9092",
    "EVENTPIPE_ES_URL": "http://elasticsearch.elastic.svc:9200",
}
HOST_ENDPOINTS = {"EVENTPIPE_KAFKA_BOOTSTRAP": HOST_KAFKA_BOOTSTRAP, "EVENTPIPE_ES_URL": HOST_ES_URL}
WORKLOADS = (("kafka", "kafka", "kafka", "4.4.0"), ("elastic", "elasticsearch", "elasticsearch", "9.5.3"))
# the restore drill's scratch namespace -> the namespace whose snapshots it restores (eventpipe.archive.kafka_restore)
RESTORE_NAMESPACES = {"kafka-restore": "kafka"}
# The fs repository: mounted here in the Elasticsearch pods (below the image's path.repo) and the task pods
SNAPSHOT_LOCATION = "/usr/share/elasticsearch/snapshots/eventpipe-snapshots"
ES_REPOSITORY_CLAIM = "elasticsearch-snapshots"  # in elastic, read-write (the overlay mounts it)
TASK_REPOSITORY_CLAIM = "eventpipe-devstack-cluster-snapshot-repository"  # in eventpipe, read-only
ES_UID = 1000
# What deploy/stateful promises its clients: topics the pipeline creates get RF 3 and min ISR 2 (the brokers'
# own defaults apply only to auto-created topics) and keep every record, indices 1 replica. Every client of the
# StatefulSets that may create a topic or an index sets these, since an existing topic is never altered: a
# topic made with RF 1 blocks every broker restart's gate, and one made under the brokers' 7-day time retention
# deletes records with old event times on arrival (the demo's January days after a drill made the topics).
DURABILITY_ENV = {
    "EVENTPIPE_KAFKA_REPLICATION_FACTOR": "3",
    "EVENTPIPE_KAFKA_MIN_INSYNC_REPLICAS": "2",
    "EVENTPIPE_KAFKA_RETENTION_MS": "-1",
    "EVENTPIPE_ES_REPLICAS": "1",
}


def data_env() -> dict[str, str]:
    """Settings of a kubernetes-mode Airflow whose tasks use the StatefulSets (the demo's ``--data cluster``).

    The worker (sensors, callbacks) and the host side of the demo reach them on the node IP, the pods through
    their Services. Durability as deploy/stateful sets it (RF 3, min ISR 2, 1 replica per index); the archive's
    snapshot covers the data claims in kafka and elastic. Buckets of their own: the archive, its model registry
    and the snapshot mirror belong to one Elasticsearch and one Kafka, and the host ones already write theirs.
    """
    return {
        **HOST_ENDPOINTS,
        "EVENTPIPE_POD_KAFKA_BOOTSTRAP": IN_CLUSTER_ENDPOINTS["EVENTPIPE_KAFKA_BOOTSTRAP"],
        "EVENTPIPE_POD_ES_URL": IN_CLUSTER_ENDPOINTS["EVENTPIPE_ES_URL"],
        **DURABILITY_ENV,  # the demo's days lie in the past: it needs the retention most
        "EVENTPIPE_ARCHIVE_BUCKET": "eventpipe-archive-cluster",
        "EVENTPIPE_SNAPSHOT_BUCKET": "eventpipe-snapshots-cluster",
        "EVENTPIPE_SNAPSHOT_FS_LOCATION": SNAPSHOT_LOCATION,
        "EVENTPIPE_SNAPSHOT_FS_CLAIM": TASK_REPOSITORY_CLAIM,
        "EVENTPIPE_VOLUME_SNAPSHOTS": "true",
        "EVENTPIPE_VOLUME_SNAPSHOT_NAMESPACES": ",".join(w[0] for w in WORKLOADS),
    }


def snapshot_repository_claims() -> None:
    """The node directory of the StatefulSet cluster's fs repository, owned by Elasticsearch's uid, as two claims:
    read-write for the Elasticsearch pods (``elastic``), read-only for the snapshot task's mirror (``eventpipe``).
    Each claim has its own volume on the same directory (``deploy.host_path_claim``)."""
    import os

    location = subdir("kubernetes", "elasticsearch-snapshots")
    os.chown(location, ES_UID, ES_UID)
    writer = host_path_claim(
        "eventpipe-devstack-es-snapshots", "elastic", ES_REPOSITORY_CLAIM, str(location), "ReadWriteMany"
    )
    reader = host_path_claim(
        "eventpipe-devstack-es-snapshots-ro", "eventpipe", TASK_REPOSITORY_CLAIM, str(location), "ReadOnlyMany"
    )
    apply_items(writer + reader)


def _es_health(timeout_s: float) -> str:
    import httpx

    try:
        url = f"{HOST_ES_URL}/_cluster/health?wait_for_status=green&timeout={int(timeout_s)}s"
        return str(httpx.get(url, timeout=timeout_s + 10).json().get("status"))
    except (httpx.HTTPError, ValueError):
        return "unreachable"


def wait_green(timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    status = "unknown"
    while time.monotonic() < deadline:
        status = _es_health(min(60.0, max(1.0, deadline - time.monotonic())))
        if status == "green":
            return
        time.sleep(5)
    raise DevstackError(f"Elasticsearch (StatefulSet) not green after {timeout_s:.0f}s: {status}")


def roll_outdated(namespace: str = "elastic", name: str = "elasticsearch", timeout_s: float = 900.0) -> list[str]:
    """Restart the pods of an OnDelete StatefulSet that run an older template, one at a time, green between
    (as ECK does); the data stays on their claims. Returns the pods restarted."""
    sts = json.loads(kubectl("-n", namespace, "get", "statefulset", name, "-o", "json"))
    revision = sts.get("status", {}).get("updateRevision")
    restarted = []
    for ordinal in reversed(range(sts["spec"]["replicas"])):
        pod_name = f"{name}-{ordinal}"
        pod = json.loads(kubectl("-n", namespace, "get", "pod", pod_name, "-o", "json"))
        if pod["metadata"].get("labels", {}).get("controller-revision-hash") == revision:
            continue
        wait_green(timeout_s)
        _say(f"restarting {pod_name} onto template {revision}")
        kubectl("-n", namespace, "delete", "pod", pod_name, "--wait=true", timeout=300)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = kubectl("-n", namespace, "get", "pod", pod_name, "-o", "json", "--ignore-not-found")
            pod = json.loads(out) if out.strip() else {}
            labels = pod.get("metadata", {}).get("labels", {})
            ready = any(
                c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
            )
            if labels.get("controller-revision-hash") == revision and ready:
                break
            time.sleep(5)
        else:
            raise DevstackError(f"{pod_name} not Ready on template {revision} after {timeout_s:.0f}s")
        restarted.append(pod_name)
    if restarted:
        wait_green(timeout_s)
    return restarted


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
    for scratch, source in RESTORE_NAMESPACES.items():
        shared_volume_key(source, scratch)


def shared_volume_key(source: str, scratch: str) -> None:
    """``scratch``'s key Secret as a copy of ``source``'s: the drill restores ``source``'s encrypted snapshots there,
    and fscrypt unlocks them only with the key they were written with. Created once, never replaced."""
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": scratch, "labels": {"app.kubernetes.io/part-of": "eventpipe"}}}))  # fmt: skip
    if kubectl("-n", scratch, "get", "secret", csi.VOLUME_KEY_SECRET, "-o", "name", check=False, timeout=15):
        return
    key = json.loads(kubectl("-n", source, "get", "secret", csi.VOLUME_KEY_SECRET, "-o", "json"))["data"]["key"]
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": csi.VOLUME_KEY_SECRET, "namespace": scratch,
                     "labels": {"app.kubernetes.io/managed-by": "eventpipe-devstack"}},
        "type": "Opaque",
        "data": {"key": key},
    }  # fmt: skip
    kubectl("create", "-f", "-", stdin=json.dumps(secret))


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


def keep_grown_claims(rendered: dict[str, Any], live: dict[str, Any] | None) -> dict[str, Any]:
    """``rendered``'s StatefulSet with each claim template at least as large as the live one's.

    ``eventpipe storage expand`` grows the claims and re-creates the StatefulSet with the larger template (as
    Strimzi and ECK do), so a re-apply of the manifests would ask to shrink it, which the API server forbids.
    Expansion only grows: the live size stays. A manifest larger than the live template is an expansion and
    goes through ``storage expand`` (pod by pod, gated), not through an apply.
    """
    if live is None:
        return rendered
    live_sizes = {
        t["metadata"]["name"]: t["spec"]["resources"]["requests"]["storage"]
        for t in live["spec"].get("volumeClaimTemplates", [])
    }
    for template in rendered["spec"].get("volumeClaimTemplates", []):
        requests = template["spec"]["resources"]["requests"]
        live_size = live_sizes.get(template["metadata"]["name"])
        if live_size is None:
            continue
        if parse_quantity(requests["storage"]) > parse_quantity(live_size):
            name = rendered["metadata"]["name"]
            raise DevstackError(
                f"statefulset {name}: claim template {template['metadata']['name']} asks {requests['storage']}, "
                f"the live one has {live_size}; grow it with `eventpipe storage expand --statefulset {name} "
                f"--size {requests['storage']}`, one pod at a time"
            )
        requests["storage"] = live_size
    return rendered


def apply_overlay() -> None:
    """``kubectl apply`` of the rendered overlay, with the claim templates :func:`keep_grown_claims` keeps."""
    # `kubectl kustomize` renders the overlay alone; `apply -k --dry-run=client -o json` would print each existing
    # object as it lives, not as the manifests now say (a changed template was never applied)
    items = [doc for doc in yaml.safe_load_all(kubectl("kustomize", str(OVERLAY), timeout=60)) if doc]
    for item in items:
        if item["kind"] == "StatefulSet":
            meta = item["metadata"]
            out = kubectl("-n", meta["namespace"], "get", "sts", meta["name"], "-o", "json", "--ignore-not-found")
            keep_grown_claims(item, json.loads(out) if out.strip() else None)
    # server-side: no last-applied annotation to go stale (an earlier client-side apply of live objects wrote
    # resourceVersion into it, and every later patch then failed to clear it)
    kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=eventpipe-devstack", "-f", "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}), timeout=180,
    )  # fmt: skip


def deploy_stateful(*, build: bool = True, timeout_s: float = 900.0) -> dict[str, float]:
    step = TimedSteps(_say)
    timings = step.timings

    refs = [tag(name, version) for *_, name, version in WORKLOADS]
    if build:
        step("service images", service_images)
    for ref in refs:
        step(f"import {ref}", lambda ref=ref: image.import_image(CONTAINERD_SOCKET, ref))
    step("namespaces and volume keys", namespaces_and_keys)
    step("snapshot repository claims", snapshot_repository_claims)
    step("apply -k devstack/kubernetes/deploy/stateful", apply_overlay)
    step("pods ready", lambda: wait_ready(timeout_s))
    step("elasticsearch pods on the current template", lambda: roll_outdated(timeout_s=timeout_s))
    return timings
