"""Write a quiesced day to S3 as Parquet, committed by a manifest written last.

Files go to a staging prefix, are copied into the partition under revision-numbered names,
and only then is ``_MANIFEST.json`` written; files of an older revision stay readable until
the new manifest replaces it, and files no manifest lists are invisible to readers. A rerun
over unchanged data finds identical checksums and writes nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from elasticsearch import Elasticsearch, NotFoundError

from eventpipe import __version__
from eventpipe.archive.indices import (
    day_bounds,
    day_index,
    id_digest,
    late_index,
    read_index,
    snapshot_name,
)
from eventpipe.archive.layout import manifest_key, partition_prefix, staging_prefix
from eventpipe.archive.manifest import (
    ArchiveManifest,
    ManifestFile,
    SnapshotRefs,
    SourceDigest,
    WriterVersions,
    load_if_committed,
    save,
)
from eventpipe.events.schema import SCHEMA_VERSION
from eventpipe.ingest.manifest import ManifestStore
from eventpipe.ingest.offsets import PartitionRange
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.s3 import delete_keys, ensure_bucket, s3_client

log = logging.getLogger(__name__)


@dataclass
class ArchiveResult:
    day: str
    status: str  # "written" | "unchanged"
    revision: int
    rows: int
    files: int
    bytes: int
    manifest: str
    seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet encoding: the same rows always give the same bytes (and sha256)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", write_statistics=True, row_group_size=128 * 1024)
    return buffer.getvalue()


def _chunks(table: pa.Table, rows: int) -> list[pa.Table]:
    if table.num_rows == 0:
        return []
    return [table.slice(offset, rows) for offset in range(0, table.num_rows, rows)]


def offset_spans(parts: Iterable[PartitionRange]) -> dict[str, dict[str, list[int]]]:
    """Per topic and partition (as a string, a JSON key), [lowest start, highest end) of the non-empty ranges."""
    ranges: dict[str, dict[str, list[int]]] = {}
    for part in parts:
        if part.size == 0:
            continue
        span = ranges.setdefault(part.topic, {}).setdefault(str(part.partition), [part.start, part.end])
        span[0], span[1] = min(span[0], part.start), max(span[1], part.end)
    return ranges


def kafka_ranges(es: Elasticsearch, day: date) -> dict[str, dict[str, list[int]]]:
    """Offset ranges drained for the day, per topic and partition: [first, end) over its intervals."""
    start, end = day_bounds(day)
    return offset_spans(part for manifest in ManifestStore(es).between(start, end) for part in manifest.ranges())


def archive_day(
    settings: Settings, es: Elasticsearch, cfg: ArchiveSettings, day: date, *, volume_snapshots: tuple[str, ...] = ()
) -> ArchiveResult:
    started = time.perf_counter()
    bucket = settings.s3.bucket
    s3 = s3_client(settings)
    ensure_bucket(settings, bucket)
    tables = {name: read_index(es, name, slices=cfg.read_slices) for name in (day_index(day), late_index(day))}
    previous = load_if_committed(s3, bucket, day)
    revision = previous.revision + 1 if previous else 1

    files: list[tuple[str, bytes, int]] = []  # (file stem, content, rows)
    for stem, table in (("part", tables[day_index(day)]), ("late", tables[late_index(day)])):
        for number, chunk in enumerate(_chunks(table, cfg.rows_per_file)):
            files.append((f"{stem}-{number:05d}", parquet_bytes(chunk), chunk.num_rows))
    digests = [hashlib.sha256(content).hexdigest() for _, content, _ in files]

    if previous and [f.sha256 for f in previous.files] == digests:
        log.info("archive of %s unchanged (revision %s)", day, previous.revision)
        return ArchiveResult(
            day.isoformat(), "unchanged", previous.revision, previous.rows, len(files), previous.bytes_total,
            f"s3://{bucket}/{manifest_key(day)}", round(time.perf_counter() - started, 3),
            {k: v.rows for k, v in previous.sources.items()},
        )  # fmt: skip

    extra = {"ServerSideEncryption": cfg.sse} if cfg.sse else {}
    attempt = f"r{revision:04d}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}"
    staging = staging_prefix(day, attempt)
    _delete_prefix(s3, bucket, staging_prefix(day, "").rstrip("/") + "/")  # leftovers of failed attempts
    entries: list[ManifestFile] = []
    staged_keys: list[str] = []
    for (stem, content, rows), digest in zip(files, digests, strict=True):
        staged = f"{staging}{stem}.parquet"
        s3.put_object(Bucket=bucket, Key=staged, Body=content, ChecksumAlgorithm="SHA256", **extra)
        staged_keys.append(staged)
        key = f"{partition_prefix(day)}{stem}-r{revision:04d}.parquet"
        entries.append(ManifestFile(key=key, rows=rows, bytes=len(content), sha256=digest))
    for entry, staged in zip(entries, staged_keys, strict=True):
        s3.copy_object(Bucket=bucket, Key=entry.key, CopySource={"Bucket": bucket, "Key": staged}, **extra)

    combined = pa.concat_tables(list(tables.values()))
    times = combined.column("event_time")
    manifest = ArchiveManifest(
        day=day,
        schema_version=SCHEMA_VERSION,
        revision=revision,
        archived_at=datetime.now(timezone.utc),
        rows=combined.num_rows,
        event_time_min=pc.min(times).as_py() if combined.num_rows else None,
        event_time_max=pc.max(times).as_py() if combined.num_rows else None,
        id_digest=id_digest(combined.column("event_id").to_pylist()),
        sources={
            name: SourceDigest(rows=table.num_rows, id_digest=id_digest(table.column("event_id").to_pylist()))
            for name, table in tables.items()
        },
        kafka_offsets=kafka_ranges(es, day),
        snapshots=_snapshots(es, cfg, day, volume_snapshots),
        files=entries,
        encryption=cfg.sse or None,
        writer=WriterVersions(eventpipe=__version__, pyarrow=pa.__version__),
    )
    save(s3, bucket, manifest, **extra)
    listed = {entry.key for entry in entries} | {manifest_key(day)}
    _delete_prefix(s3, bucket, partition_prefix(day), keep=lambda key: key in listed or key.endswith("_VERIFIED.json"))
    _delete_prefix(s3, bucket, staging)
    return ArchiveResult(
        day.isoformat(),
        "written",
        revision,
        combined.num_rows,
        len(entries),
        manifest.bytes_total,
        f"s3://{bucket}/{manifest_key(day)}",
        round(time.perf_counter() - started, 3),
        {name: table.num_rows for name, table in tables.items()},
    )


def _snapshots(es: Elasticsearch, cfg: ArchiveSettings, day: date, volumes: tuple[str, ...]) -> SnapshotRefs:
    name = snapshot_name(day)
    try:
        found = es.snapshot.get(repository=cfg.repository, snapshot=name)["snapshots"]
        state = found[0]["state"] if found else None
    except NotFoundError:
        state = None
    return SnapshotRefs(
        repository=cfg.repository, elasticsearch=name if state == "SUCCESS" else None, volumes=sorted(volumes)
    )


def _delete_prefix(s3, bucket: str, prefix: str, keep=lambda key: False) -> int:
    doomed = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        doomed += [obj["Key"] for obj in page.get("Contents", []) if not keep(obj["Key"])]
    return delete_keys(s3, bucket, doomed)
