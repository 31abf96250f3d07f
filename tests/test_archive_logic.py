"""The archive's pure logic without services: day coverage, offset spans, names, digests, Parquet encoding."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eventpipe.archive.indices import day_bounds, day_index, id_digest, index_day, late_index, snapshot_name
from eventpipe.archive.layout import ARCHIVE_SCHEMA, manifest_key, partition_prefix, staging_prefix
from eventpipe.archive.quiesce import uncovered
from eventpipe.archive.writer import _chunks, offset_spans, parquet_bytes
from eventpipe.ingest.offsets import PartitionRange

DAY = date(2026, 3, 1)
START, END = day_bounds(DAY)


def _hours(first: int, last: int) -> tuple[datetime, datetime]:
    return START + timedelta(hours=first), START + timedelta(hours=last)


def test_day_bounds_are_one_utc_day() -> None:
    start, end = day_bounds(DAY)
    assert start == datetime(2026, 3, 1, tzinfo=timezone.utc) and end - start == timedelta(days=1)


@pytest.mark.parametrize(
    ("intervals", "gaps"),
    [
        ([_hours(h, h + 1) for h in range(24)], []),  # every hourly run completed
        ([], [f"{START.isoformat()}/{END.isoformat()}"]),  # nothing drained yet
        ([_hours(0, 12)], [f"{_hours(12, 24)[0].isoformat()}/{END.isoformat()}"]),  # the afternoon is missing
        (
            [_hours(0, 3), _hours(5, 24)],  # runs 03:00 and 04:00 failed
            [f"{_hours(3, 5)[0].isoformat()}/{_hours(3, 5)[1].isoformat()}"],
        ),
        ([_hours(5, 24), _hours(0, 6), _hours(1, 2)], []),  # overlapping, nested, unsorted: still covered
        ([_hours(0, 24), _hours(-1, 25)], []),  # a wider backfill interval
        (
            [(START - timedelta(hours=2), START + timedelta(hours=1)), _hours(2, 24)],
            [f"{_hours(1, 2)[0].isoformat()}/{_hours(1, 2)[1].isoformat()}"],
        ),
    ],
)
def test_uncovered_parts_of_a_day(intervals: list[tuple[datetime, datetime]], gaps: list[str]) -> None:
    assert uncovered(START, END, intervals) == gaps


def test_offset_spans_merge_the_intervals_of_a_day() -> None:
    parts = [
        PartitionRange("iot", 0, 100, 150),
        PartitionRange("iot", 0, 150, 220),
        PartitionRange("iot", 1, 7, 7),  # an empty hour on this partition: not a span
        PartitionRange("iot", 2, 40, 41),
        PartitionRange("business", 0, 0, 9),
        PartitionRange("iot", 0, 90, 100),  # a late manifest that starts earlier
    ]
    assert offset_spans(parts) == {"iot": {"0": [90, 220], "2": [40, 41]}, "business": {"0": [0, 9]}}
    assert offset_spans([]) == {}


def test_index_and_snapshot_names_round_trip() -> None:
    assert day_index(DAY) == "eventpipe-events-2026.03.01"
    assert late_index(DAY) == "eventpipe-events-late-2026.03.01"
    assert snapshot_name(DAY) == "eventpipe-2026.03.01"
    assert index_day(day_index(DAY)) == DAY == index_day(late_index(DAY))
    assert index_day("eventpipe-events") is None and index_day("eventpipe-events-2026.3.1") is None
    assert index_day("restore-eventpipe-events-2026.03.01") is None  # scratch indices are not days


def test_archive_keys() -> None:
    assert partition_prefix(DAY) == "events/date=2026-03-01/"
    assert manifest_key(DAY) == "events/date=2026-03-01/_MANIFEST.json"
    assert staging_prefix(DAY, "r0001-x") == "_staging/events/date=2026-03-01/r0001-x/"


def test_id_digest_is_order_independent_and_separates_ids() -> None:
    assert id_digest(["b", "a"]) == id_digest(["a", "b"])
    assert id_digest(["ab", "c"]) != id_digest(["a", "bc"])  # ids are delimited, not concatenated
    assert id_digest([]) != id_digest([""])


def _table(rows: int) -> pa.Table:
    times = pa.array([f"2026-03-01T00:00:{i % 60:02d}.{i % 1000:03d}Z" for i in range(rows)]).cast(
        pa.timestamp("ms", tz="UTC")
    )
    columns = {
        "event_id": pa.array([f"e{i:05d}" for i in range(rows)]),
        "schema_version": pa.array([1] * rows, pa.int32()),
        "source": pa.array(["iot"] * rows),
        "device_id": pa.array([f"d{i % 7}" for i in range(rows)]),
        "event_type": pa.array(["telemetry"] * rows),
        "event_time": times,
        "metrics": pa.array([[("t", float(i))] for i in range(rows)], ARCHIVE_SCHEMA.field("metrics").type),
        "attributes": pa.array([[("site", "a")] for _ in range(rows)], ARCHIVE_SCHEMA.field("attributes").type),
    }
    return pa.Table.from_pydict(columns, schema=ARCHIVE_SCHEMA)


def test_parquet_encoding_is_deterministic_and_chunks_cover_every_row() -> None:
    table = _table(1000)
    assert parquet_bytes(table) == parquet_bytes(_table(1000))  # same rows, same bytes, same sha256
    chunks = _chunks(table, 300)
    assert [c.num_rows for c in chunks] == [300, 300, 300, 100]
    assert pa.concat_tables(chunks).equals(table)
    assert _chunks(table.slice(0, 0), 300) == []  # an empty day writes no file
    decoded = pq.read_table(pa.BufferReader(parquet_bytes(chunks[0])))
    assert decoded.schema.metadata[b"eventpipe.schema_version"] == b"1" and decoded.equals(chunks[0])


def test_mirror_refuses_a_repository_it_cannot_see(tmp_path: Path) -> None:
    """A task that does not mount the fs repository must fail, not read "no files" as "delete the mirror"."""
    from eventpipe.archive import snapshot
    from eventpipe.errors import InvalidConfiguration
    from eventpipe.settings import ArchiveSettings, Settings

    cfg = ArchiveSettings(repository_type="fs", fs_location=str(tmp_path / "not-mounted"))
    # an endpoint nothing listens on: reaching S3 at all would fail differently
    unreachable = Settings.from_env({}).updated(s3={"endpoint": "http://127.0.0.1:9"})
    with pytest.raises(InvalidConfiguration, match="not visible to this task"):
        snapshot.mirror_fs_repository(unreachable, cfg)
