"""Cloud VolumeSnapshots of the stateful services' claims, and the objects that restore them in another cluster.

A migration ships every labelled PVC of Kafka and Elasticsearch to S3 through a cloud VolumeSnapshotClass (one
pass while ingest is live, one after the pause: the store is content-addressed, so the second pass uploads only
the delta), then, in the target cluster, pre-provisions one VolumeSnapshotContent per snapshot handle, a
VolumeSnapshot bound to it, and a PVC named as the StatefulSet's claim template expects, restored from it. The
StatefulSet then adopts the claims by name. This is the CSI-only path Velero's data mover and Portworx's
cloudsnap restores take; nothing here knows the storage vendor beyond the class and driver names it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from eventpipe.k8s.schemas import volume_snapshot

GROUP, VERSION = "snapshot.storage.k8s.io", "v1"
SNAPSHOT_LABEL = "eventpipe.io/migration"
# labels the StatefulSets' claim templates set and a restored claim keeps (so the archive still finds it)
KEPT_LABELS = ("app.kubernetes.io/name", "eventpipe.io/snapshot")


class Claim(BaseModel):
    """A PVC to carry over: where it is, how large, and the labels its claim template gave it."""

    namespace: str
    name: str
    storage: str  # the requested size, as a quantity ("2Gi")
    labels: dict[str, str] = {}


class CloudSnapshot(BaseModel):
    """One claim's snapshot of one pass, once readyToUse: its handle is what the target restores."""

    namespace: str
    pvc: str
    name: str
    handle: str
    restore_size: int
    storage: str
    labels: dict[str, str] = {}


def snapshot_name(pvc: str, label: str) -> str:
    """Deterministic per pass, so a retried pass finds its snapshots instead of taking new ones."""
    return f"{pvc}-{label}"[:253]


def snapshot_manifests(claims: list[Claim], label: str, snapshot_class: str) -> list[dict[str, Any]]:
    """The (schema-validated) VolumeSnapshots of one pass over ``claims``."""
    return [
        volume_snapshot(
            snapshot_name(c.name, label),
            c.namespace,
            c.name,
            snapshot_class=snapshot_class,
            labels={SNAPSHOT_LABEL: label[:63], "eventpipe.io/pvc": c.name[:63]},
        )
        for c in claims
    ]


def content_name(snap: CloudSnapshot) -> str:
    return f"migrated-{snap.namespace}-{snap.name}"[:253]


def restore_manifests(
    snap: CloudSnapshot, *, driver: str, snapshot_class: str, storage_class: str
) -> list[dict[str, Any]]:
    """VolumeSnapshotContent (pre-provisioned, Retain), the VolumeSnapshot bound to it, and the claim ``pvc``
    restored from it, in ``storage_class`` (one that can read the snapshot's store)."""
    vs_name = f"{snap.name}-restore"[:253]
    content = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VolumeSnapshotContent",
        "metadata": {"name": content_name(snap), "labels": {SNAPSHOT_LABEL: "restore"}},
        "spec": {
            "deletionPolicy": "Retain",  # the cloud copy outlives the objects: it is the migration's restore point
            "driver": driver,
            "source": {"snapshotHandle": snap.handle},
            "volumeSnapshotClassName": snapshot_class,
            "volumeSnapshotRef": {"name": vs_name, "namespace": snap.namespace},
        },
    }
    snapshot = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VolumeSnapshot",
        "metadata": {"name": vs_name, "namespace": snap.namespace, "labels": {SNAPSHOT_LABEL: "restore"}},
        "spec": {"source": {"volumeSnapshotContentName": content_name(snap)}},
    }
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": snap.pvc,
            "namespace": snap.namespace,
            "labels": {**{k: v for k, v in snap.labels.items() if k in KEPT_LABELS}, SNAPSHOT_LABEL: "restore"},
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": storage_class,
            "resources": {"requests": {"storage": snap.storage}},
            "dataSource": {"apiGroup": GROUP, "kind": "VolumeSnapshot", "name": vs_name},
        },
    }
    return [content, snapshot, claim]


class Kube:
    """The Kubernetes API of one cluster, by its kubeconfig (a migration talks to two)."""

    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def claims(self, namespace: str, selector: str) -> list[Claim]:
        found = self.core.list_namespaced_persistent_volume_claim(namespace, label_selector=selector).items
        return sorted(
            (
                Claim(
                    namespace=namespace,
                    name=pvc.metadata.name,
                    storage=pvc.spec.resources.requests["storage"],
                    labels=pvc.metadata.labels or {},
                )
                for pvc in found
            ),
            key=lambda c: c.name,
        )

    def create(self, obj: dict[str, Any]) -> None:
        """Create ``obj``; one that exists already (a retried step) is left as it is."""
        from kubernetes.client.exceptions import ApiException

        kind, meta = obj["kind"], obj["metadata"]
        try:
            if kind == "PersistentVolumeClaim":
                self.core.create_namespaced_persistent_volume_claim(meta["namespace"], obj)
            elif kind == "Secret":
                self.core.create_namespaced_secret(meta["namespace"], obj)
            elif kind == "VolumeSnapshotContent":
                self.custom.create_cluster_custom_object(GROUP, VERSION, "volumesnapshotcontents", obj)
            elif kind == "VolumeSnapshot":
                self.custom.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], "volumesnapshots", obj)
            else:
                raise ValueError(f"cannot create a {kind}")
        except ApiException as exc:
            if exc.status != 409:
                raise

    def snapshot_status(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "volumesnapshots", name)
        return obj.get("status") or {}

    def content_status(self, name: str) -> dict[str, Any]:
        return self.custom.get_cluster_custom_object(GROUP, VERSION, "volumesnapshotcontents", name).get("status") or {}

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        return dict(self.core.read_namespaced_secret(name, namespace).data or {})


class SnapshotRefused(RuntimeError):
    """A VolumeSnapshot failed in a way no retry fixes on its own (the store refused the credentials, the
    class lacks its Secret): the controller keeps retrying it, but waiting only delays the verdict."""


# gRPC codes of the CSI driver's CreateSnapshot that need an operator (devstack/csi/cloud.go's s3Status,
# targetFrom); Unavailable, Aborted and the like are a cut or a race that the controller's retry resumes
REFUSALS = ("code = PermissionDenied", "code = InvalidArgument")


def wait_ready(
    kube: Kube, names: list[tuple[str, str]], timeout_s: float, *, clock: Callable[[], float] = time.monotonic
) -> dict[tuple[str, str], dict[str, Any]]:
    """Wait until every (namespace, VolumeSnapshot) is readyToUse; its status. An error the snapshot controller
    reports is retried by it (a cut upload resumes), so it only decides the message when the time is up; a
    refusal (``REFUSALS``) raises ``SnapshotRefused`` at once, naming the snapshot and the driver's words."""
    deadline = clock() + timeout_s
    ready: dict[tuple[str, str], dict[str, Any]] = {}
    errors: dict[str, str] = {}
    while True:
        for key in [k for k in names if k not in ready]:
            status = kube.snapshot_status(*key)
            if message := (status.get("error") or {}).get("message"):
                errors[f"{key[0]}/{key[1]}"] = message
                if any(code in message for code in REFUSALS) and not status.get("readyToUse"):
                    raise SnapshotRefused(f"VolumeSnapshot {key[0]}/{key[1]}: {message}")
            if status.get("readyToUse"):
                ready[key] = status
                errors.pop(f"{key[0]}/{key[1]}", None)
        if len(ready) == len(names):
            return ready
        if clock() > deadline:
            pending = sorted(f"{ns}/{n}" for ns, n in names if (ns, n) not in ready)
            detail = f"; last errors: {errors}" if errors else ""
            raise TimeoutError(f"VolumeSnapshots not readyToUse after {timeout_s:.0f}s: {pending}{detail}")
        time.sleep(1)


def take_pass(
    kube: Kube, claims: list[Claim], label: str, snapshot_class: str, timeout_s: float = 900
) -> list[CloudSnapshot]:
    """One snapshot of every claim (created together, so they are as close in time as the API allows)."""
    objects = snapshot_manifests(claims, label, snapshot_class)
    for obj in objects:
        kube.create(obj)
    keys = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects]
    statuses = wait_ready(kube, keys, timeout_s)
    taken = []
    for claim, key in zip(claims, keys, strict=True):
        content = kube.content_status(statuses[key]["boundVolumeSnapshotContentName"])
        taken.append(
            CloudSnapshot(
                namespace=claim.namespace,
                pvc=claim.name,
                name=key[1],
                handle=content["snapshotHandle"],
                restore_size=int(content.get("restoreSize", 0)),
                storage=claim.storage,
                labels=claim.labels,
            )
        )
    return taken


def store_chunks(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    """Chunk key -> size in a cloud snapshot store: the bytes a pass uploaded are the new keys' sizes."""
    chunks: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/chunks/"):
        chunks.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
    return chunks


def uploaded(before: dict[str, int], after: dict[str, int]) -> tuple[int, int]:
    """(chunks, bytes) in ``after`` but not ``before``: what one pass shipped (content addressing: a chunk
    already stored by any earlier snapshot is never sent again)."""
    new = set(after) - set(before)
    return len(new), sum(after[k] for k in new)
