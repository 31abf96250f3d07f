"""Archive throughput against a ceiling measured in the same run (not a test).

A synthetic closed day of N events is bulk-loaded into its daily index. The archive step
(read the day from Elasticsearch, Parquet-encode deterministically, stage to S3 with SSE,
copy into the partition, write the manifest) is timed, and so are its parts. Ceiling: the
same Arrow table written by a raw ``pyarrow.parquet.write_table`` and one S3 put per file.

    python bench/bench_archive.py --events 1000000
"""

from __future__ import annotations

import argparse
import io
import os
import time
from datetime import date, timedelta

import pyarrow.parquet as pq
from elasticsearch import helpers
from rich.console import Console
from rich.table import Table

from eventpipe.archive.config import ArchiveConfig
from eventpipe.archive.indices import day_bounds, day_index, read_index
from eventpipe.archive.writer import archive_day
from eventpipe.devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.ingest.elastic import IndexAction, bulk_index, client, ensure_indices
from eventpipe.settings import Settings
from eventpipe.storage.s3 import ensure_bucket, s3_client


def load_day(settings: Settings, day: date, events: int) -> int:
    es = client(settings)
    index = day_index(day)
    if es.indices.exists(index=index) and es.count(index=index)["count"] == events:
        return events  # reuse a previous run's day
    es.indices.delete(index=index, ignore_unavailable=True)
    start, end = day_bounds(day)
    config = GeneratorConfig(start, end, rate_per_s=events / 86400, malformed_rate=0.0, seed=99)
    batch: list[IndexAction] = []
    for record in generate(config):
        batch.append(IndexAction(index, record.event.event_id, record.event.document()))  # type: ignore[union-attr]
        if len(batch) == 5000:
            bulk_index(es, batch)
            batch = []
    if batch:
        bulk_index(es, batch)
    es.indices.refresh(index=index)
    return int(es.count(index=index)["count"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    for key, value in local_env().items():
        os.environ.setdefault(key, value)
    up(DATA_SERVICES)
    settings = Settings.from_env()
    es = client(settings)
    ensure_indices(es)
    cfg = ArchiveConfig.from_env()
    day = date(2024, 6, 1) + timedelta(days=args.events % 97)
    console = Console()
    console.print(f"loading {args.events} events into {day_index(day)} …")
    rows = load_day(settings, day, args.events)

    began = time.perf_counter()
    scanned = sum(1 for _ in helpers.scan(es, index=day_index(day), size=5000, scroll="5m"))
    scan_s = time.perf_counter() - began  # ceiling of the read: the scroll alone, no conversion

    began = time.perf_counter()
    table = read_index(es, day_index(day))
    read_s = time.perf_counter() - began

    # ceiling: raw pyarrow write of the same rows + one put per file (same file split and SSE)
    s3 = s3_client(settings)
    ensure_bucket(settings, settings.archive_bucket)
    began = time.perf_counter()
    ceiling_bytes = 0
    for number, offset in enumerate(range(0, table.num_rows, cfg.rows_per_file)):
        buffer = io.BytesIO()
        pq.write_table(table.slice(offset, cfg.rows_per_file), buffer, compression="zstd")
        body = buffer.getvalue()
        ceiling_bytes += len(body)
        s3.put_object(
            Bucket=settings.archive_bucket, Key=f"bench/ceiling/part-{number:05d}.parquet", Body=body,
            ServerSideEncryption=cfg.sse,
        )  # fmt: skip
    ceiling_s = time.perf_counter() - began

    s3.delete_object(Bucket=settings.archive_bucket, Key=f"events/date={day.isoformat()}/_MANIFEST.json")
    began = time.perf_counter()
    result = archive_day(settings, es, cfg, day)
    archive_s = time.perf_counter() - began

    out = Table(title=f"archive of {rows} rows ({result.bytes / 1e6:.1f} MB Parquet, {result.files} files)")
    for column in ("step", "seconds", "rows/s", "MB/s", "ratio to ceiling"):
        out.add_column(column)
    mb = result.bytes / 1e6
    out.add_row("ceiling: pyarrow write + S3 put", f"{ceiling_s:.2f}", f"{rows / ceiling_s:,.0f}",
                f"{ceiling_bytes / 1e6 / ceiling_s:.1f}", "1.00")  # fmt: skip
    out.add_row("archive write (ES read + encode + stage + copy + manifest)", f"{archive_s:.2f}",
                f"{rows / archive_s:,.0f}", f"{mb / archive_s:.1f}", f"{ceiling_s / archive_s:.2f}")  # fmt: skip
    out.add_row("  of which: read day from Elasticsearch", f"{read_s:.2f}", f"{rows / read_s:,.0f}", "",
                f"{ceiling_s / read_s:.2f}")  # fmt: skip
    out.add_row("  read ceiling: raw scroll of the same index", f"{scan_s:.2f}", f"{scanned / scan_s:,.0f}", "",
                f"read/scroll {scan_s / read_s:.2f}")  # fmt: skip
    out.add_row("archive minus ES read", f"{archive_s - read_s:.2f}", f"{rows / (archive_s - read_s):,.0f}",
                f"{mb / (archive_s - read_s):.1f}", f"{ceiling_s / (archive_s - read_s):.2f}")  # fmt: skip
    console.print(out)


if __name__ == "__main__":
    main()
