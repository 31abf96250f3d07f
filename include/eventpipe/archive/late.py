"""Late events for already archived days: found in the late indices, re-committed as a new revision."""

from __future__ import annotations

from dataclasses import dataclass, field

from elasticsearch import Elasticsearch

from eventpipe.archive.indices import LATE_PREFIX, id_digest, index_day, index_ids, late_index
from eventpipe.archive.manifest import load_if_committed
from eventpipe.archive.verify import verify_day
from eventpipe.archive.writer import archive_day
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.s3 import s3_client


@dataclass
class LateSweepResult:
    checked: list[str] = field(default_factory=list)
    rearchived: dict[str, int] = field(default_factory=dict)  # day -> new revision


def sweep_late(settings: Settings, es: Elasticsearch, cfg: ArchiveSettings) -> LateSweepResult:
    """Re-archive (and verify) every archived day whose late index gained events since its manifest."""
    s3 = s3_client(settings)
    result = LateSweepResult()
    for name in sorted(es.indices.get(index=f"{LATE_PREFIX}-*", allow_no_indices=True)):
        day = index_day(name)
        manifest = load_if_committed(s3, settings.s3.bucket, day) if day else None
        if day is None or manifest is None:
            continue  # the day is not archived yet: its nightly run will include the late index
        result.checked.append(day.isoformat())
        es.indices.refresh(index=name)
        late = manifest.source(late_index(day))
        recorded = late.id_digest if late else None
        if id_digest(index_ids(es, name)) != recorded:
            written = archive_day(settings, es, cfg, day)
            verify_day(settings, es, cfg, day)
            result.rearchived[day.isoformat()] = written.revision
    return result
