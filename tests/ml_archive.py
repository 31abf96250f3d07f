"""Generated events as committed archive days, for ML tests and the training benchmark.

Events go into their daily Elasticsearch index and each day is committed by the real archive
writer (``eventpipe.archive.writer.archive_day``), so training reads exactly what the nightly
archive produces; the generator's ground truth goes where ``produce`` puts it.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq
from elasticsearch import Elasticsearch

from eventpipe.archive.indices import day_index, late_index
from eventpipe.archive.layout import manifest_key
from eventpipe.archive.writer import archive_day
from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.events.produce import TRUTH_SCHEMA, truth_key
from eventpipe.events.schema import Event
from eventpipe.settings import Settings
from eventpipe.storage.elastic import IndexAction, bulk_index, client
from eventpipe.storage.s3 import s3_client


@dataclass
class GeneratedArchive:
    config: GeneratorConfig
    days: list[date]
    events: dict[date, list[Event]]
    anomalies: list[dict[str, object]]
    truth_key: str


def write_committed_day(settings: Settings, es: Elasticsearch, day: date, events: list[Event]) -> dict[str, object]:
    """Index the day's events into its daily index, then commit it with the real archive writer."""
    es.indices.delete(index=[day_index(day), late_index(day)], ignore_unavailable=True)
    actions = [IndexAction(day_index(day), e.event_id, e.document()) for e in events]
    for offset in range(0, len(actions), 5000):
        assert not bulk_index(es, actions[offset : offset + 5000]).rejected
    es.indices.refresh(index=day_index(day))
    written = archive_day(settings, es, Settings.from_env().archive, day)
    assert written.rows == len(events)
    return json.loads(s3_client(settings).get_object(Bucket=settings.s3.bucket, Key=manifest_key(day))["Body"].read())


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_generated_archive(settings: Settings, config: GeneratorConfig) -> GeneratedArchive:
    """Generate ``config``'s events, archive one day per UTC date through Elasticsearch, write the ground truth."""
    by_day: dict[date, list[Event]] = defaultdict(list)
    anomalies: list[dict[str, object]] = []
    for record in generate(config):
        if record.event is None:
            continue  # malformed records never reach the archive
        by_day[record.event.event_time.date()].append(record.event)
        if record.anomaly:
            anomalies.append(record.anomaly)
    es = client(settings)
    for day, events in sorted(by_day.items()):
        write_committed_day(settings, es, day, events)
    key = truth_key(config)
    s3 = s3_client(settings)
    s3.put_object(
        Bucket=settings.s3.bucket, Key=key, Body=_parquet(pa.Table.from_pylist(anomalies, schema=TRUTH_SCHEMA))
    )
    return GeneratedArchive(config, sorted(by_day), dict(by_day), anomalies, key)


def delete_bucket(s3, bucket: str) -> None:
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    s3.delete_bucket(Bucket=bucket)
