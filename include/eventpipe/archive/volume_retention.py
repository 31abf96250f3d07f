"""Retention of the archive's VolumeSnapshots: the newest ``EVENTPIPE_SNAPSHOT_RETENTION_DAYS`` nights are kept.

The nightly snapshot step takes one VolumeSnapshot per labelled data claim (six a night with Kafka and
Elasticsearch on the cluster). Only those are considered: labelled ``eventpipe.io/day`` and ``eventpipe.io/pvc``
and named ``<pvc>-YYYYMMDD`` as :func:`eventpipe.archive.volumes.snapshot_objects` names them, in the snapshot
namespaces. Nights are counted, not aged: a nightly that stopped running never prunes the last restore points.
Oldest nights go first. A snapshot a restore is using stays: a claim whose ``dataSource`` names it and that is
not Bound yet, or a copy of it (another VolumeSnapshotContent on the same snapshot handle, as the Kafka restore
drill makes in its scratch namespace). Before its VolumeSnapshot is deleted, the bound content is switched to
``deletionPolicy: Delete``: the archive's class retains contents (an accidental delete keeps the data), and
retention is the deliberate delete that frees the storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from eventpipe.archive.volumes import GROUP, PLURAL, VERSION, kube_clients, qualified, snapshot_namespaces
from eventpipe.settings import ArchiveSettings, KubernetesSettings

DAY_LABEL, PVC_LABEL = "eventpipe.io/day", "eventpipe.io/pvc"
CONTENTS = "volumesnapshotcontents"


@dataclass(frozen=True)
class NightlySnapshot:
    namespace: str
    name: str
    day: date
    content: str | None = None  # bound VolumeSnapshotContent
    handle: str | None = None  # the driver's snapshot handle


@dataclass
class VolumeRetentionResult:
    keep_nights: int
    nights: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # name -> why a snapshot past the kept nights stays
    emptied_nights: list[str] = field(default_factory=list)  # nights with no snapshot left: their records go too


def archive_snapshot(obj: dict[str, Any]) -> NightlySnapshot | None:
    """``obj`` as a nightly archive snapshot, or None when the archive did not create it (never pruned)."""
    meta = obj.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return None  # already being deleted (its content may be gone): not a night's restore point any more
    labels = meta.get("labels") or {}
    day_text, pvc = labels.get(DAY_LABEL), labels.get(PVC_LABEL)
    if not day_text or not pvc:
        return None
    try:
        day = date.fromisoformat(day_text)
    except ValueError:
        return None
    if meta.get("name") != f"{pvc}-{day:%Y%m%d}"[:253]:
        return None
    status = obj.get("status") or {}
    return NightlySnapshot(meta["namespace"], meta["name"], day, status.get("boundVolumeSnapshotContentName"))


def list_archive_snapshots(custom: Any, namespace: str) -> list[NightlySnapshot]:
    """The nightly archive's VolumeSnapshots in ``namespace`` (labelled, and named as the archive names them)."""
    selector = f"{DAY_LABEL},{PVC_LABEL}"
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, label_selector=selector)
    return [snap for snap in map(archive_snapshot, listed["items"]) if snap is not None]


def choose_prunable(
    snapshots: list[NightlySnapshot], keep_nights: int, in_use: set[tuple[str, str]]
) -> tuple[list[NightlySnapshot], dict[tuple[str, str], str]]:
    """The snapshots to delete, oldest night first, and those past the kept nights that stay, with why.

    ``keep_nights`` below 1 counts as 1: the newest night is never pruned. ``in_use``: (namespace, name) of
    snapshots a restore is reading.
    """
    nights = sorted({s.day for s in snapshots}, reverse=True)
    kept_nights = set(nights[: max(1, keep_nights)])
    prune, stay = [], {}
    for snap in sorted(snapshots, key=lambda s: (s.day, s.namespace, s.name)):
        if snap.day in kept_nights:
            continue
        if (snap.namespace, snap.name) in in_use:
            stay[(snap.namespace, snap.name)] = "a restore is using it"
            continue
        prune.append(snap)
    return prune, stay


def emptied_nights(snapshots: list[NightlySnapshot], prune: list[NightlySnapshot]) -> list[date]:
    """Nights of which no snapshot is left once ``prune`` is deleted (their pre-hook records can go too)."""
    left = {s.day for s in snapshots if s not in prune}
    return sorted({s.day for s in prune} - left)


def restores_in_use(
    snapshots: list[NightlySnapshot], claims: list[dict[str, Any]], contents: list[dict[str, Any]]
) -> set[tuple[str, str]]:
    """Snapshots a restore reads: named by a not-yet-Bound claim's dataSource, or whose handle another
    VolumeSnapshotContent (a copy, e.g. the Kafka drill's in its scratch namespace) also points at."""
    busy = set()
    for claim in claims:
        source = claim.get("spec", {}).get("dataSource") or {}
        if source.get("kind") == "VolumeSnapshot" and claim.get("status", {}).get("phase") != "Bound":
            busy.add((claim["metadata"]["namespace"], source.get("name")))
    own = {s.content for s in snapshots if s.content}
    copied = {
        c.get("spec", {}).get("source", {}).get("snapshotHandle") for c in contents if c["metadata"]["name"] not in own
    } - {None}
    busy |= {(s.namespace, s.name) for s in snapshots if s.handle and s.handle in copied}
    return busy


def prune_volume_snapshots(
    cfg: ArchiveSettings, kube: KubernetesSettings, *, dry_run: bool = False
) -> VolumeRetentionResult:
    """Delete the archive's VolumeSnapshots older than the newest ``cfg.snapshot_retention_days`` nights."""
    core, _, custom = kube_clients(kube)
    contents = custom.list_cluster_custom_object(GROUP, VERSION, CONTENTS)["items"]
    handles = {c["metadata"]["name"]: c.get("status", {}).get("snapshotHandle") for c in contents}
    snapshots: list[NightlySnapshot] = []
    claims: list[dict[str, Any]] = []
    for namespace in snapshot_namespaces(cfg, kube):
        snapshots.extend(
            replace(snap, handle=handles.get(snap.content or "")) for snap in list_archive_snapshots(custom, namespace)
        )
        pvcs = core.list_namespaced_persistent_volume_claim(namespace)
        claims.extend(core.api_client.sanitize_for_serialization(pvcs)["items"])
    prune, stay = choose_prunable(snapshots, cfg.snapshot_retention_days, restores_in_use(snapshots, claims, contents))
    result = VolumeRetentionResult(cfg.snapshot_retention_days, sorted({s.day.isoformat() for s in snapshots}))
    result.kept = {qualified(ns, name, kube.namespace): why for (ns, name), why in stay.items()}
    result.emptied_nights = [day.isoformat() for day in emptied_nights(snapshots, prune)]
    for snap in prune:
        if not dry_run:
            delete_archive_snapshot(custom, snap.namespace, snap.name, snap.content)
        result.deleted.append(qualified(snap.namespace, snap.name, kube.namespace))
    return result


def delete_archive_snapshot(custom: Any, namespace: str, name: str, content: str | None) -> None:
    """Delete a VolumeSnapshot and free its data: its bound content (retained by the archive's class) is
    switched to ``deletionPolicy: Delete`` first. Either object already gone counts as done."""
    if content:
        body = {"spec": {"deletionPolicy": "Delete"}}
        _unless_gone(custom.patch_cluster_custom_object, GROUP, VERSION, CONTENTS, content, body)
    _unless_gone(custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)


def _unless_gone(call: Any, *args: Any) -> None:
    """``call(*args)``; a 404 means a retention before this one, or a deletion in progress, got there first."""
    from kubernetes.client.exceptions import ApiException

    try:
        call(*args)
    except ApiException as exc:
        if exc.status != 404:
            raise
