"""Retention gated on verification: an index or snapshot past its age goes only if its day verified.

Before deleting a day's indices the ids in Elasticsearch are checked against the verified
manifest once more, so late events that arrived after verification are never deleted unarchived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from elasticsearch import Elasticsearch, NotFoundError

from eventpipe.archive.indices import SNAPSHOT_PREFIX, id_digest, index_day, index_ids
from eventpipe.archive.manifest import is_verified, load
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.elastic import EVENTS_PREFIX
from eventpipe.storage.s3 import s3_client


@dataclass
class RetentionResult:
    today: str
    deleted_indices: list[str] = field(default_factory=list)
    deleted_snapshots: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # name -> why it was kept


def apply_retention(
    settings: Settings,
    es: Elasticsearch,
    cfg: ArchiveSettings,
    today: date,
    *,
    dry_run: bool = False,
    only: set[date] | None = None,
) -> RetentionResult:
    """``only`` limits the run to some days (a targeted cleanup); by default every day is considered."""
    s3, bucket = s3_client(settings), settings.s3.bucket
    result = RetentionResult(today.isoformat())
    verified: dict[date, bool] = {}

    def safe(day: date) -> bool:
        if day not in verified:
            verified[day] = is_verified(s3, bucket, day)
        return verified[day]

    index_cutoff = today - timedelta(days=cfg.retention_days)
    for name in sorted(es.indices.get(index=f"{EVENTS_PREFIX}-*", expand_wildcards="open,closed")):
        day = index_day(name)
        if day is None or day >= index_cutoff or (only is not None and day not in only):
            continue
        if not safe(day):
            result.kept[name] = "archive of the day not verified"
            continue
        expected = load(s3, bucket, day).source(name)
        if expected is None or id_digest(index_ids(es, name)) != expected.id_digest:
            result.kept[name] = "holds documents the verified archive does not (re-archive pending)"
            continue
        if not dry_run:
            es.indices.delete(index=name)
        result.deleted_indices.append(name)

    snapshot_cutoff = today - timedelta(days=cfg.snapshot_retention_days)
    try:
        snapshots = es.snapshot.get(repository=cfg.repository, snapshot=f"{SNAPSHOT_PREFIX}-*")["snapshots"]
    except NotFoundError:
        snapshots = []
    for snap in snapshots:
        day = date.fromisoformat(snap.get("metadata", {}).get("day", "9999-12-31"))
        if day >= snapshot_cutoff or (only is not None and day not in only):
            continue
        if not safe(day):
            result.kept[snap["snapshot"]] = "archive of the day not verified"
            continue
        if not dry_run:
            es.snapshot.delete(repository=cfg.repository, snapshot=snap["snapshot"])
        result.deleted_snapshots.append(snap["snapshot"])
    return result
