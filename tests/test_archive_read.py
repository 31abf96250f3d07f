"""Reading a day out of Elasticsearch for the archive: sliced point-in-time reads give the same Parquet bytes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pyarrow as pa
import pytest
from elasticsearch import Elasticsearch, helpers

from eventpipe.archive.indices import read_index
from eventpipe.archive.layout import ARCHIVE_SCHEMA
from eventpipe.archive.writer import parquet_bytes
from eventpipe.events.generator import GeneratorConfig, generate, utc
from eventpipe.storage.elastic import IndexAction, bulk_index

pytestmark = pytest.mark.services

START = utc("2031-05-04T00:00:00")


def _scroll_reference(es: Elasticsearch, index: str) -> pa.Table:
    """The archive's former read: one scroll, documents converted in Python, sorted by event id."""
    rows = []
    for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}}, size=1000, scroll="2m"):
        doc = hit["_source"]
        rows.append(
            {
                **{name: doc.get(name) for name in ("event_id", "schema_version", "source", "device_id", "event_type")},
                "event_time": doc["event_time"],
                "metrics": list(doc.get("metrics", {}).items()),
                "attributes": list(doc.get("attributes", {}).items()),
            }
        )
    schema = ARCHIVE_SCHEMA.set(ARCHIVE_SCHEMA.get_field_index("event_time"), pa.field("event_time", pa.string()))
    table = pa.Table.from_pylist(rows, schema=schema)
    times = table["event_time"].cast(ARCHIVE_SCHEMA.field("event_time").type)
    table = table.set_column(schema.get_field_index("event_time"), "event_time", times)
    return table.cast(ARCHIVE_SCHEMA).sort_by("event_id")


@pytest.fixture()
def scratch_index(es: Elasticsearch) -> Iterator[str]:
    """An index with the events mapping that is not behind the events alias (other tests never see it)."""
    template = es.indices.get_index_template(name="eventpipe-events")["index_templates"][0]["index_template"]
    name = f"scratch-archive-read-{uuid.uuid4().hex[:8]}"
    es.indices.create(index=name, mappings=template["template"]["mappings"], settings={"number_of_replicas": 0})
    yield name
    es.indices.delete(index=name, ignore_unavailable=True)


def test_sliced_point_in_time_read_is_byte_identical_to_a_scroll(es: Elasticsearch, scratch_index: str) -> None:
    config = GeneratorConfig(START, START + timedelta(hours=2), rate_per_s=0.6, malformed_rate=0.0, seed=11)
    docs = [r.event.document() for r in generate(config) if r.event is not None]
    docs[0] = {k: v for k, v in docs[0].items() if k != "attributes"}  # absent map: empty, as before
    docs[1]["attributes"] = {}
    for offset, doc in enumerate(docs[2:]):  # the drain adds its Kafka coordinates; the archive drops them
        doc["kafka"] = {"topic": "iot.telemetry", "partition": offset % 3, "offset": offset}
    assert not bulk_index(es, [IndexAction(scratch_index, d["event_id"], d) for d in docs]).rejected
    es.indices.refresh(index=scratch_index)

    reference = _scroll_reference(es, scratch_index)
    assert reference.num_rows == len(docs) > 3 * 700
    expected = parquet_bytes(reference)
    for slices, page in ((1, 5000), (3, 700), (4, 1000)):
        table = read_index(es, scratch_index, slices=slices, page=page)
        assert table.schema == ARCHIVE_SCHEMA
        assert table.equals(reference), (slices, page)
        assert parquet_bytes(table) == expected, (slices, page)
    by_id = {row["event_id"]: row for row in reference.slice(0, 5000).to_pylist()}
    assert by_id[docs[0]["event_id"]]["attributes"] == [] and by_id[docs[1]["event_id"]]["attributes"] == []


def test_missing_index_reads_as_empty(es: Elasticsearch) -> None:
    table = read_index(es, f"scratch-archive-read-missing-{uuid.uuid4().hex[:8]}")
    assert table.num_rows == 0 and table.schema == ARCHIVE_SCHEMA
