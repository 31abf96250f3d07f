"""Quiesce a closed day: every ingest interval of it drained, then flushed and write-blocked.

After the block, the day's index no longer changes, so the snapshot, the Parquet export and
the verification all see the same documents. Events that arrive later for that day are
indexed into the day's late index by the drain (see ``eventpipe.ingest.bulk_pipeline``).

Offsets no complete manifest covers (holes the offset ledger has not drained yet, see
``eventpipe.ingest.ledger``) may hold records of any day, so they keep every day open: the
day closes once the ledger drained them; records it finds after the day closed go to the
late index and the late sweep.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from elasticsearch import Elasticsearch

from eventpipe.archive.indices import day_bounds, day_index, existing, late_index
from eventpipe.ingest.ledger import holes
from eventpipe.ingest.manifest import ManifestStore


class DayNotClosed(RuntimeError):
    """Some ingest interval of the day has not completed; the archive must wait."""


@dataclass
class QuiesceResult:
    day: str
    topics: list[str]
    intervals: int
    blocked: list[str]
    documents: int
    gaps: dict[str, list[str]] = field(default_factory=dict)


def uncovered(start: datetime, end: datetime, intervals: Iterable[tuple[datetime, datetime]]) -> list[str]:
    """The parts of [start, end) no interval covers, as ``start/end`` ISO strings (empty = covered).

    Intervals may overlap, nest or extend past the bounds (a backfill with another schedule).
    """
    cursor = start
    missing: list[str] = []
    for lo, hi in sorted(intervals):
        if lo > cursor:
            missing.append(f"{cursor.isoformat()}/{min(lo, end).isoformat()}")
        cursor = max(cursor, hi)
        if cursor >= end:
            break
    if cursor < end:
        missing.append(f"{cursor.isoformat()}/{end.isoformat()}")
    return missing


def coverage_gaps(es: Elasticsearch, day: date, topics: list[str]) -> dict[str, list[str]]:
    """Per topic, the parts of the day not covered by *complete* drain manifests (empty = closed)."""
    start, end = day_bounds(day)
    store = ManifestStore(es)
    gaps: dict[str, list[str]] = {}
    for topic in topics:
        complete = [
            (m.interval_start, m.interval_end) for m in store.between(start, end, topic) if m.status == "complete"
        ]
        missing = uncovered(start, end, complete)
        missing += [f"offsets {h.partition}:{h.start}-{h.end}" for h in holes(topic, list(store.for_topic(topic)))]
        if missing:
            gaps[topic] = missing
    return gaps


def quiesce_day(es: Elasticsearch, day: date, topics: list[str], *, require_closed: bool = True) -> QuiesceResult:
    gaps = coverage_gaps(es, day, topics)
    if gaps and require_closed:
        raise DayNotClosed(f"ingest of {day} is not complete; undrained intervals: {gaps}")
    index = day_index(day)
    if not es.indices.exists(index=index):
        es.indices.create(index=index)  # an empty day is archived as an empty, verified partition
    es.indices.refresh(index=index)
    es.indices.flush(index=index, wait_if_ongoing=True)
    es.indices.add_block(index=index, block="write")
    late = existing(es, [late_index(day)])
    start, end = day_bounds(day)
    intervals = len(ManifestStore(es).between(start, end))
    documents = int(es.count(index=[index, *late])["count"])
    return QuiesceResult(day.isoformat(), topics, intervals, [index], documents, gaps)


def day_is_closed(day: str, topics: str | list[str] | None = None) -> bool:
    """Sensor callable (runs on the Airflow worker): has every ingest interval of ``day`` completed?

    ``topics`` may be a comma-separated string, which is what a templated op_kwarg renders to.
    """
    from eventpipe.params import parse_day, parse_topics
    from eventpipe.settings import Settings
    from eventpipe.storage.elastic import client

    es = client(Settings.from_env())
    try:
        return not coverage_gaps(es, parse_day(day), parse_topics(topics))
    finally:
        es.close()
