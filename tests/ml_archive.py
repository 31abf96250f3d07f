"""Generated events as committed archive days (the archive contract, written with pyarrow).

A stand-in for the archive writer in ML tests and the training benchmark: Parquet parts in
``events/date=YYYY-MM-DD/``, then ``_MANIFEST.json`` (rows, files with sha256) written last,
and the generator's ground truth where ``produce`` puts it.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from eventpipe.archive.layout import ARCHIVE_SCHEMA, manifest_key, partition_prefix
from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.events.produce import truth_key
from eventpipe.events.schema import SCHEMA_VERSION, Event

TRUTH_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("device_id", pa.string()),
        ("metric", pa.string()),
        ("kind", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
    ]
)


@dataclass
class GeneratedArchive:
    config: GeneratorConfig
    days: list[date]
    events: dict[date, list[Event]]
    anomalies: list[dict[str, object]]
    truth_key: str


def archive_row(event: Event) -> dict[str, object]:
    return {
        "event_id": event.event_id,
        "schema_version": event.schema_version,
        "source": event.source,
        "device_id": event.device_id,
        "event_type": event.event_type,
        "event_time": event.event_time,
        "metrics": list(event.metrics.items()),
        "attributes": list(event.attributes.items()),
    }


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_committed_day(s3, bucket: str, day: date, events: list[Event], *, parts: int = 2) -> dict[str, object]:
    table = pa.Table.from_pylist([archive_row(e) for e in events], schema=ARCHIVE_SCHEMA)
    size = -(-table.num_rows // parts)
    files = []
    for i in range(parts):
        chunk = table.slice(i * size, size)
        body = _parquet(chunk)
        key = f"{partition_prefix(day)}part-{i:05d}.parquet"
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        files.append(
            {"key": key, "rows": chunk.num_rows, "bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        )
    manifest = {"day": day.isoformat(), "schema_version": SCHEMA_VERSION, "rows": table.num_rows, "files": files}
    s3.put_object(Bucket=bucket, Key=manifest_key(day), Body=json.dumps(manifest).encode())
    return manifest


def write_generated_archive(s3, bucket: str, config: GeneratorConfig) -> GeneratedArchive:
    """Generate ``config``'s events, commit one archive day per UTC date, write the ground truth."""
    by_day: dict[date, list[Event]] = defaultdict(list)
    anomalies: list[dict[str, object]] = []
    for record in generate(config):
        if record.event is None:
            continue  # malformed records never reach the archive
        by_day[record.event.event_time.date()].append(record.event)
        if record.anomaly:
            anomalies.append(record.anomaly)
    for day, events in sorted(by_day.items()):
        write_committed_day(s3, bucket, day, events)
    key = truth_key(config)
    s3.put_object(Bucket=bucket, Key=key, Body=_parquet(pa.Table.from_pylist(anomalies, schema=TRUTH_SCHEMA)))
    return GeneratedArchive(config, sorted(by_day), dict(by_day), anomalies, key)


def delete_bucket(s3, bucket: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)
