"""Where the archive lives in S3 and what its Parquet files look like.

A day is *committed* only when its manifest exists: files are written under a staging
prefix first, copied into the partition, and the manifest (listing every file with its
sha256) is written last. Readers (verification, restore, Spark training) list files from
the manifest, never by globbing the partition, so a half-written day is invisible.
"""

from __future__ import annotations

from datetime import date

import pyarrow as pa

from eventpipe.events.schema import SCHEMA_VERSION

EVENTS_PREFIX = "events"
STAGING_PREFIX = "_staging"
MANIFEST_NAME = "_MANIFEST.json"

ARCHIVE_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("schema_version", pa.int32()),
        ("source", pa.string()),
        ("device_id", pa.string()),
        ("event_type", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("metrics", pa.map_(pa.string(), pa.float64())),
        ("attributes", pa.map_(pa.string(), pa.string())),
    ],
    metadata={"eventpipe.schema_version": str(SCHEMA_VERSION)},
)


def partition_prefix(day: date) -> str:
    """Hive-style partition, so Spark and Athena-style readers see a ``date`` column."""
    return f"{EVENTS_PREFIX}/date={day.isoformat()}/"


def manifest_key(day: date) -> str:
    return partition_prefix(day) + MANIFEST_NAME


def staging_prefix(day: date, attempt: str) -> str:
    return f"{STAGING_PREFIX}/{EVENTS_PREFIX}/date={day.isoformat()}/{attempt}/"


def committed_days(s3, bucket: str) -> list[date]:
    """Days whose manifest exists (the only days a reader may trust)."""
    days = []
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{EVENTS_PREFIX}/", Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            part = common["Prefix"].removeprefix(f"{EVENTS_PREFIX}/date=").rstrip("/")
            day = date.fromisoformat(part)
            try:
                s3.head_object(Bucket=bucket, Key=manifest_key(day))
            except s3.exceptions.ClientError:
                continue
            days.append(day)
    return sorted(days)
