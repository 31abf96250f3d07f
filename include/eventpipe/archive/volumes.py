"""CSI VolumeSnapshots of the labelled PVCs (Kubernetes only), taken inside the write hold.

The PVCs are looked up in each namespace of ``EVENTPIPE_VOLUME_SNAPSHOT_NAMESPACES`` (default: the pipeline's
own), e.g. ``kafka`` and ``elastic`` where ``deploy/stateful`` keeps its data claims: a VolumeSnapshot must live
in its PVC's namespace. Names outside the pipeline's namespace are reported as ``namespace/name``.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Any

from eventpipe.k8s import load_config
from eventpipe.k8s.schemas import volume_snapshot
from eventpipe.settings import ArchiveSettings, KubernetesSettings

GROUP, VERSION, PLURAL = "snapshot.storage.k8s.io", "v1", "volumesnapshots"


def snapshot_objects(cfg: ArchiveSettings, day: date, pvcs: list[str], namespace: str) -> list[dict[str, Any]]:
    """The (schema-validated) VolumeSnapshot objects for ``pvcs``; names are deterministic per day."""
    return [
        volume_snapshot(
            f"{pvc}-{day:%Y%m%d}"[:253],
            namespace,
            pvc,
            snapshot_class=cfg.volume_snapshot_class,
            labels={"eventpipe.io/day": f"{day:%Y-%m-%d}", "eventpipe.io/pvc": pvc[:63]},
        )
        for pvc in pvcs
    ]


def night_snapshots(
    custom: Any, live: dict[str, Any], namespace: str, day: date, failed: type[Exception]
) -> list[dict[str, Any]]:
    """Each replica's VolumeSnapshot of ``day`` for the live StatefulSet ``live``, in ordinal order.

    All must exist and be readyToUse: a scratch cluster restored from part of a night would be checked against
    a whole night's record. Raises ``failed`` (the caller's error) naming the first that is not.
    """
    from kubernetes.client.exceptions import ApiException

    (template,) = live["spec"]["volumeClaimTemplates"]
    statefulset = live["metadata"]["name"]
    snapshots = []
    for n in range(live["spec"]["replicas"]):
        name = f"{template['metadata']['name']}-{statefulset}-{n}-{day:%Y%m%d}"[:253]
        try:
            snap = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise failed(f"no VolumeSnapshot {namespace}/{name}: the night was not snapshotted") from exc
            raise
        if not snap.get("status", {}).get("readyToUse"):
            raise failed(f"VolumeSnapshot {namespace}/{name} is not readyToUse")
        snapshots.append(snap)
    return snapshots


def kube_clients(kube: KubernetesSettings) -> tuple[Any, Any, Any]:
    """(CoreV1Api, AppsV1Api, CustomObjectsApi) in the pod's cluster, or the kubeconfig's."""
    from kubernetes import client

    load_config(kube.kubeconfig)
    return client.CoreV1Api(), client.AppsV1Api(), client.CustomObjectsApi()


def snapshot_namespaces(cfg: ArchiveSettings, kube: KubernetesSettings) -> list[str]:
    """The namespaces whose labelled PVCs are snapshotted, in the order given (default: the pipeline's)."""
    named = [ns.strip() for ns in (cfg.volume_snapshot_namespaces or "").split(",") if ns.strip()]
    return list(dict.fromkeys(named)) or [kube.namespace]


def qualified(namespace: str, name: str, home: str) -> str:
    """``name`` in the pipeline's own namespace ``home``, else ``namespace/name``."""
    return name if namespace == home else f"{namespace}/{name}"


def snapshot_volumes(cfg: ArchiveSettings, day: date, kube: KubernetesSettings) -> list[str]:
    """Create (or reuse) one VolumeSnapshot per labelled PVC and wait until all are readyToUse."""
    from kubernetes.client.exceptions import ApiException

    core, _, custom = kube_clients(kube)
    wanted: list[tuple[str, str]] = []  # (namespace, VolumeSnapshot name)
    for namespace in snapshot_namespaces(cfg, kube):
        claims = core.list_namespaced_persistent_volume_claim(namespace, label_selector=cfg.volume_snapshot_selector)
        for obj in snapshot_objects(cfg, day, sorted(pvc.metadata.name for pvc in claims.items), namespace):
            try:
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
            except ApiException as exc:
                if exc.status != 409:  # already exists: a retry of the same day
                    raise
            wanted.append((namespace, obj["metadata"]["name"]))
    deadline = time.monotonic() + cfg.snapshot_ready_timeout_s
    pending = set(wanted)
    while pending:
        for namespace, name in sorted(pending):
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status", {})
            if status.get("error"):
                raise RuntimeError(f"VolumeSnapshot {namespace}/{name} failed: {status['error']}")
            if status.get("readyToUse"):
                pending.discard((namespace, name))
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"VolumeSnapshots not readyToUse after {cfg.snapshot_ready_timeout_s}s: {pending}")
        if pending:
            time.sleep(5)
    return [qualified(namespace, name, kube.namespace) for namespace, name in wanted]
