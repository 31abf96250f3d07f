"""Application-consistent snapshots: pre-hook → snapshot → post-hook (the post-hook always runs).

The pre-hook flushes and write-blocks the indices that are still live (drain manifests,
rollups, dead letters) so the snapshot holds one consistent state of them together with the
quiesced day; ingest tasks that hit the block fail and retry after the post-hook lifts it.
Elasticsearch is snapshotted through its snapshot API; on Kubernetes the pipeline's labelled
PVCs also get CSI ``VolumeSnapshot`` objects, taken while the writes are held.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from elasticsearch import Elasticsearch, NotFoundError

from eventpipe.archive.indices import day_index, existing, late_index, snapshot_name
from eventpipe.errors import InvalidConfiguration
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.elastic import DLQ_INDEX, MANIFEST_INDEX, ROLLUP_INDEX
from eventpipe.storage.s3 import delete_keys, ensure_bucket, s3_client

log = logging.getLogger(__name__)
LIVE_INDICES = (MANIFEST_INDEX, ROLLUP_INDEX, DLQ_INDEX)
HOLD_MARKER = "eventpipe.snapshot-hold"  # index metadata flag: the block is ours to lift


@dataclass
class SnapshotResult:
    day: str
    repository: str
    snapshot: str
    state: str
    indices: list[str]
    reused: bool
    seconds: float
    mirrored_files: int = 0
    volume_snapshots: list[str] = field(default_factory=list)


def repository_body(cfg: ArchiveSettings) -> dict[str, object]:
    if cfg.repository_type == "s3":
        return {
            "type": "s3",
            "settings": {"bucket": cfg.snapshot_bucket, "base_path": cfg.repository, "server_side_encryption": True},
        }
    if not cfg.fs_location:
        raise InvalidConfiguration("EVENTPIPE_SNAPSHOT_FS_LOCATION must be set for an fs snapshot repository")
    return {"type": "fs", "settings": {"location": cfg.fs_location, "compress": True}}


def ensure_repository(es: Elasticsearch, cfg: ArchiveSettings) -> None:
    body = repository_body(cfg)
    es.snapshot.create_repository(name=cfg.repository, repository=body)  # idempotent PUT


def pre_hook(es: Elasticsearch, day: date) -> dict[str, object]:
    """Hold writes on the live indices and flush everything the snapshot will contain."""
    live = existing(es, LIVE_INDICES)
    held = []
    for index in live:
        settings = es.indices.get_settings(index=index, name="index.blocks.write", flat_settings=True)
        if settings.body.get(index, {}).get("settings", {}).get("index.blocks.write") == "true":
            continue  # already blocked by someone else: not ours to lift later
        es.indices.put_settings(index=index, settings={"index.blocks.write": True})
        held.append(index)
    if held:
        # remember which blocks are ours, so the post-hook of a retried run lifts exactly those
        es.indices.put_mapping(index=held, meta={HOLD_MARKER: True})
    targets = [*existing(es, [day_index(day), late_index(day)]), *live]
    if targets:
        es.indices.flush(index=targets, wait_if_ongoing=True)
    return {"day": day.isoformat(), "held": held, "flushed": targets}


def post_hook(es: Elasticsearch) -> dict[str, object]:
    """Lift the holds the pre-hook placed (safe to run any number of times)."""
    released = []
    for index in existing(es, LIVE_INDICES):
        meta = es.indices.get_mapping(index=index)[index]["mappings"].get("_meta", {})
        if meta.get(HOLD_MARKER):
            es.indices.put_settings(index=index, settings={"index.blocks.write": None})
            es.indices.put_mapping(index=index, meta={HOLD_MARKER: False})
            released.append(index)
    return {"released": released}


def take_snapshot(settings: Settings, es: Elasticsearch, cfg: ArchiveSettings, day: date) -> SnapshotResult:
    started = time.perf_counter()
    ensure_repository(es, cfg)
    name = snapshot_name(day)
    indices = [*existing(es, [day_index(day), late_index(day)]), *existing(es, LIVE_INDICES)]
    state, reused = _existing_state(es, cfg.repository, name), True
    if state != "SUCCESS":
        if state is not None:
            es.snapshot.delete(repository=cfg.repository, snapshot=name)
        response = es.snapshot.create(
            repository=cfg.repository,
            snapshot=name,
            indices=",".join(indices),
            include_global_state=False,
            wait_for_completion=True,
            metadata={"day": day.isoformat(), "taken_by": "eventpipe archive"},
        )
        state, reused = response["snapshot"]["state"], False
        if state != "SUCCESS":
            raise RuntimeError(f"snapshot {name} ended in state {state}: {response['snapshot'].get('failures')}")
    result = SnapshotResult(day.isoformat(), cfg.repository, name, state, indices, reused, 0.0)
    if cfg.repository_type == "fs" and cfg.fs_location:
        result.mirrored_files = mirror_fs_repository(settings, cfg)
    if cfg.volume_snapshots:
        from eventpipe.archive.volumes import snapshot_volumes

        result.volume_snapshots = snapshot_volumes(cfg, day, settings.kubernetes)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _existing_state(es: Elasticsearch, repository: str, name: str) -> str | None:
    try:
        snapshots = es.snapshot.get(repository=repository, snapshot=name)["snapshots"]
    except NotFoundError:
        return None
    return snapshots[0]["state"] if snapshots else None


def mirror_fs_repository(settings: Settings, cfg: ArchiveSettings) -> int:
    """Copy an fs repository to the snapshot bucket (blobs are immutable; index-N files are rewritten)."""
    root = Path(cfg.fs_location or "")
    if not root.is_dir():  # e.g. a task pod that does not mount the node's repository: an empty walk would
        # read as "every mirrored object is stale" and delete the whole mirror
        raise InvalidConfiguration(f"the fs snapshot repository {root} is not visible to this task; nothing mirrored")
    s3 = s3_client(settings)
    ensure_bucket(settings, cfg.snapshot_bucket)
    present: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.snapshot_bucket, Prefix=f"{cfg.repository}/"):
        present.update({obj["Key"]: obj["Size"] for obj in page.get("Contents", [])})
    copied = 0
    wanted = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{cfg.repository}/{path.relative_to(root).as_posix()}"
        wanted.add(key)
        mutable = path.name.startswith("index") or path.name.startswith("meta-")
        if key in present and present[key] == path.stat().st_size and not mutable:
            continue
        extra = {"ServerSideEncryption": cfg.sse} if cfg.sse else {}
        s3.put_object(Bucket=cfg.snapshot_bucket, Key=key, Body=path.read_bytes(), **extra)
        copied += 1
    stale = [k for k in present if k not in wanted]
    delete_keys(s3, cfg.snapshot_bucket, stale)
    return copied
