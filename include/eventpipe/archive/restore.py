"""Restore drills: a snapshot into a scratch index, an archived day from S3, both checked against the manifest."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from datetime import date

import pyarrow.parquet as pq
from elasticsearch import Elasticsearch

from eventpipe.archive.indices import day_index, id_digest, index_ids, snapshot_name
from eventpipe.archive.manifest import SourceDigest, load
from eventpipe.archive.snapshot import ensure_repository
from eventpipe.archive.verify import VerificationFailed, failure, read_archived_ids
from eventpipe.errors import ManifestMismatch
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.elastic import IndexAction, bulk_index
from eventpipe.storage.s3 import s3_client

SCRATCH_PREFIX = "restore-"


@dataclass
class RestoreResult:
    day: str
    source: str  # "snapshot" | "archive"
    index: str
    documents: int
    expected: int
    matches: bool
    seconds: float
    problems: list[str] = field(default_factory=list)


def _check(result: RestoreResult, es: Elasticsearch, expected: SourceDigest) -> RestoreResult:
    es.indices.refresh(index=result.index)
    ids = index_ids(es, result.index)
    result.documents = len(ids)
    if len(ids) != expected.rows or id_digest(ids) != expected.id_digest:
        result.problems.append(f"{result.index}: {len(ids)} documents do not match the manifest's {expected.rows}")
    result.matches = not result.problems
    if result.problems:
        raise VerificationFailed("; ".join(result.problems))
    return result


def restore_snapshot(settings: Settings, es: Elasticsearch, cfg: ArchiveSettings, day: date) -> RestoreResult:
    """Restore the day's index from its snapshot as ``restore-<index>`` and compare with the manifest."""
    started = time.perf_counter()
    manifest = load(s3_client(settings), settings.s3.bucket, day)
    source, scratch = day_index(day), SCRATCH_PREFIX + day_index(day)
    ensure_repository(es, cfg)
    es.indices.delete(index=scratch, ignore_unavailable=True)
    es.snapshot.restore(
        repository=cfg.repository,
        snapshot=snapshot_name(day),
        indices=source,
        rename_pattern="(.+)",
        rename_replacement=f"{SCRATCH_PREFIX}$1",
        include_aliases=False,
        index_settings={"index.number_of_replicas": 0, "index.blocks.write": False},
        wait_for_completion=True,
    )
    expected = manifest.source(source)
    if expected is None:
        raise ManifestMismatch(f"the manifest of {day} records no index {source}")
    result = RestoreResult(day.isoformat(), "snapshot", scratch, 0, expected.rows, False, 0.0)
    result = _check(result, es, expected)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def restore_archive(settings: Settings, es: Elasticsearch, day: date, *, into: str | None = None) -> RestoreResult:
    """Load an archived day from S3 (checksums verified) into ``into`` (default: a scratch index).

    Into ``eventpipe-events-YYYY.MM.DD`` of a new cluster this is also the migration replay.
    """
    started = time.perf_counter()
    s3, bucket = s3_client(settings), settings.s3.bucket
    manifest = load(s3, bucket, day)
    problems: list[str] = []
    read_archived_ids(s3, bucket, manifest, problems)  # checksums first: never load a corrupt file
    if problems:
        raise failure("", problems)
    target = into or SCRATCH_PREFIX + "archive-" + day_index(day)
    if not into:
        es.indices.delete(index=target, ignore_unavailable=True)
        template = es.indices.get_index_template(name="eventpipe-events")["index_templates"][0]["index_template"]
        es.indices.create(index=target, mappings=template["template"]["mappings"], settings={"number_of_replicas": 0})
    for entry in manifest.files:
        table = pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=entry.key)["Body"].read()))
        actions = []
        for row in table.to_pylist():
            row["event_time"] = row["event_time"].strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
            row["metrics"], row["attributes"] = dict(row["metrics"]), dict(row["attributes"])
            actions.append(IndexAction(target, row["event_id"], row))
        for offset in range(0, len(actions), 5000):
            outcome = bulk_index(es, actions[offset : offset + 5000])
            if outcome.rejected:
                raise VerificationFailed(f"{len(outcome.rejected)} archived rows rejected: {outcome.rejected[0][1]}")
    expected = SourceDigest(rows=manifest.rows, id_digest=manifest.id_digest)
    result = RestoreResult(day.isoformat(), "archive", target, 0, manifest.rows, False, 0.0)
    result = _check(result, es, expected)
    result.seconds = round(time.perf_counter() - started, 3)
    return result
