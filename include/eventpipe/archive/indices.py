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
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, time, timedelta, timezone

import pyarrow as pa
from elasticsearch import Elasticsearch, NotFoundError, helpers

from eventpipe.archive.layout import ARCHIVE_SCHEMA
from eventpipe.settings import ArchiveSettings
from eventpipe.storage.elastic import EVENTS_PREFIX

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


# _source fields the archive keeps; event_time stays a string until one vectorized cast
_SOURCE_FIELDS = ("event_id", "schema_version", "source", "device_id", "event_type", "event_time")
_SOURCE_TYPE = pa.struct(
    [
        *(
            pa.field(f.name, pa.string() if f.name == "event_time" else f.type)
            for f in ARCHIVE_SCHEMA
            if f.name in _SOURCE_FIELDS
        ),
        pa.field("metrics", ARCHIVE_SCHEMA.field("metrics").type),
        pa.field("attributes", ARCHIVE_SCHEMA.field("attributes").type),
    ]
)
# ES's search pool on 2 cores has 4 threads; callers pass settings.archive.read_slices (EVENTPIPE_ARCHIVE_READ_SLICES)
READ_SLICES: int = ArchiveSettings.model_fields["read_slices"].default
READ_PAGE = 5000
PIT_KEEP_ALIVE = "5m"


def _read_slice(es: Elasticsearch, pit: str, slice_id: int, slices: int, page: int) -> list[pa.StructArray]:
    """One slice of the point in time, page by page (search_after on ``_shard_doc``), as Arrow structs.

    Arrow converts each page's ``_source`` dicts in C++ (maps from dicts included), so the Python
    work per document is one list-comprehension step; ``filter_path`` trims what is decoded. No
    ``_source`` filtering: Elasticsearch would parse and re-serialize every source (measured: twice
    the search time), while Arrow simply ignores the fields the archive does not keep.
    """
    pages: list[pa.StructArray] = []
    after: list[object] | None = None
    while True:
        response = es.search(
            pit={"id": pit, "keep_alive": PIT_KEEP_ALIVE},
            slice={"id": slice_id, "max": slices} if slices > 1 else None,
            size=page,
            sort=["_shard_doc"],
            search_after=after,
            track_total_hits=False,
            filter_path=["hits.hits._source", "hits.hits.sort"],
        )
        hits = response.get("hits", {}).get("hits", [])
        if not hits:
            return pages
        pages.append(pa.array([hit["_source"] for hit in hits], type=_SOURCE_TYPE))
        if len(hits) < page:
            return pages
        after = hits[-1]["sort"]


def _empty_maps(column: pa.Array) -> pa.Array:
    """A document without ``metrics``/``attributes`` has an empty map in the archive, never a null."""
    if not column.null_count:
        return column
    return pa.array([value if value is not None else [] for value in column.to_pylist()], type=column.type)


def read_index(es: Elasticsearch, index: str, *, slices: int = READ_SLICES, page: int = READ_PAGE) -> pa.Table:
    """Every document of ``index`` as an Arrow table in the archive schema, sorted by event id.

    A point in time read in ``slices`` parallel slices: while one thread decodes a page,
    Elasticsearch already fetches the others' next pages. Order of arrival does not matter: the
    rows are sorted by event id (the document id, unique in an index), so the Parquet bytes are
    the same as from any other read of the same documents.
    """
    try:
        pit = es.open_point_in_time(index=index, keep_alive=PIT_KEEP_ALIVE)["id"]
    except NotFoundError:
        return ARCHIVE_SCHEMA.empty_table()
    try:
        with ThreadPoolExecutor(max_workers=slices) as pool:
            parts = list(pool.map(lambda i: _read_slice(es, pit, i, slices, page), range(slices)))
    finally:
        es.close_point_in_time(id=pit)
    chunks = [array for part in parts for array in part]
    if not chunks:
        return ARCHIVE_SCHEMA.empty_table()
    docs = pa.chunked_array(chunks, type=_SOURCE_TYPE).combine_chunks()
    fields = {field.name: field.type for field in ARCHIVE_SCHEMA}
    arrays = {name: docs.field(name) for name in fields}
    arrays["event_time"] = arrays["event_time"].cast(fields["event_time"])
    arrays["metrics"] = _empty_maps(arrays["metrics"])
    arrays["attributes"] = _empty_maps(arrays["attributes"])
    table = pa.Table.from_pydict(arrays, schema=ARCHIVE_SCHEMA)
    return table.sort_by("event_id").combine_chunks()


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
