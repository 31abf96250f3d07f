"""CSI VolumeSnapshots of the pipeline's labelled PVCs (Kubernetes only), taken inside the write hold."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

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


def snapshot_volumes(cfg: ArchiveSettings, day: date, kube: KubernetesSettings) -> list[str]:
    """Create (or reuse) one VolumeSnapshot per labelled PVC and wait until all are readyToUse."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    namespace = kube.namespace
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # the file named here, not the client's default (read from KUBECONFIG once, at its import)
        config.load_kube_config(config_file=kube.kubeconfig)
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    claims = core.list_namespaced_persistent_volume_claim(namespace, label_selector=cfg.volume_snapshot_selector)
    objects = snapshot_objects(cfg, day, sorted(pvc.metadata.name for pvc in claims.items), namespace)
    for obj in objects:
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, obj)
        except ApiException as exc:
            if exc.status != 409:  # already exists: a retry of the same day
                raise
    names = [obj["metadata"]["name"] for obj in objects]
    deadline = time.monotonic() + cfg.snapshot_ready_timeout_s
    pending = set(names)
    while pending:
        for name in sorted(pending):
            status = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status", {})
            if status.get("error"):
                raise RuntimeError(f"VolumeSnapshot {name} failed: {status['error']}")
            if status.get("readyToUse"):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"VolumeSnapshots not readyToUse after {cfg.snapshot_ready_timeout_s}s: {pending}")
        if pending:
            time.sleep(5)
    return names
