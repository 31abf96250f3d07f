"""Names of a day's Elasticsearch indices and its snapshot, and reading a day out of them.

A closed day has two indices: ``eventpipe-events-YYYY.MM.DD`` (write-blocked when the day is
quiesced) and ``eventpipe-events-late-YYYY.MM.DD``, which receives events that arrive for a
day after it was blocked. Both match the events template and alias, so searches and rollups
see late events; the archive re-commits the day when late events appear.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa
from elasticsearch import Elasticsearch, NotFoundError, helpers

from eventpipe.archive.layout import ARCHIVE_SCHEMA
from eventpipe.ingest.elastic import EVENTS_PREFIX

LATE_PREFIX = f"{EVENTS_PREFIX}-late"
SNAPSHOT_PREFIX = "eventpipe"
_DAY_INDEX = re.compile(rf"^{re.escape(EVENTS_PREFIX)}-(?:late-)?(\d{{4}})\.(\d{{2}})\.(\d{{2}})$")


def day_index(day: date) -> str:
    return f"{EVENTS_PREFIX}-{day:%Y.%m.%d}"


def late_index(day: date) -> str:
    return f"{LATE_PREFIX}-{day:%Y.%m.%d}"


def snapshot_name(day: date) -> str:
    return f"{SNAPSHOT_PREFIX}-{day:%Y.%m.%d}"


def index_day(name: str) -> date | None:
    """The day an events index holds, or None for any other index."""
    match = _DAY_INDEX.match(name)
    return date(*map(int, match.groups())) if match else None


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def existing(es: Elasticsearch, names: Iterable[str]) -> list[str]:
    return [name for name in names if es.indices.exists(index=name)]


def read_index(es: Elasticsearch, index: str) -> pa.Table:
    """Every document of ``index`` as an Arrow table in the archive schema, sorted by event id.

    Fields are gathered column-wise and converted by Arrow (timestamps parsed in one cast), which
    keeps Python work per document to a few list appends.
    """
    names = ("event_id", "schema_version", "source", "device_id", "event_type", "event_time")
    columns: dict[str, list[object]] = {name: [] for name in names}
    metrics: list[object] = []
    attributes: list[object] = []
    appenders = [columns[name].append for name in names]
    try:
        for hit in helpers.scan(es, index=index, query={"query": {"match_all": {}}}, size=5000, scroll="5m"):
            doc = hit["_source"]
            for name, append in zip(names, appenders, strict=True):
                append(doc.get(name))
            metrics.append(list(doc.get("metrics", {}).items()))
            attributes.append(list(doc.get("attributes", {}).items()))
    except NotFoundError:
        pass
    fields = {field.name: field.type for field in ARCHIVE_SCHEMA}
    arrays = {name: pa.array(columns[name], type=fields[name]) for name in names if name != "event_time"}
    arrays["event_time"] = pa.array(columns["event_time"], type=pa.string()).cast(fields["event_time"])
    arrays["metrics"] = pa.array(metrics, type=fields["metrics"])
    arrays["attributes"] = pa.array(attributes, type=fields["attributes"])
    table = pa.Table.from_pydict({field.name: arrays[field.name] for field in ARCHIVE_SCHEMA}, schema=ARCHIVE_SCHEMA)
    return table.sort_by("event_id")


def id_digest(ids: Iterable[str]) -> str:
    """Order-independent fingerprint of a set of event ids (sha256 of the sorted ids)."""
    digest = hashlib.sha256()
    for event_id in sorted(ids):
        digest.update(event_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def index_ids(es: Elasticsearch, index: str) -> list[str]:
    """Document ids of an index without fetching sources (cheap enough for verification)."""
    try:
        return [hit["_id"] for hit in helpers.scan(es, index=index, _source=False, size=10_000, scroll="5m")]
    except NotFoundError:
        return []
