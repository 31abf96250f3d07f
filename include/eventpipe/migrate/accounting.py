"""Exact offset accounting: every Kafka offset of a topic is indexed or dead-lettered exactly once.

Counts cannot show it (a duplicate and a gap cancel out), so the offsets themselves are compared: each
partition's accounted range [start, end) (a whole log, or the offsets some intervals' drains covered) against
the offsets the events index (``kafka.offset``) and the dead letters (``offset``) carry inside it. Run after
a migration, with ingest drained to the log end, on the target.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from elasticsearch import Elasticsearch
from pydantic import BaseModel, Field

from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS

Offsets = Iterable[tuple[str, int, int]]  # (topic, partition, offset)


class PartitionAccount(BaseModel):
    topic: str
    partition: int
    log_start: int
    log_end: int
    indexed: int = 0
    dead_lettered: int = 0
    missing: list[int] = Field(default_factory=list)  # in the log, in neither index (first 20)
    duplicated: list[int] = Field(default_factory=list)  # more than once across both (first 20)
    missing_count: int = 0
    duplicated_count: int = 0

    @property
    def exact(self) -> bool:
        return not (self.missing_count or self.duplicated_count)


class Accounting(BaseModel):
    partitions: list[PartitionAccount]
    offsets: int = 0
    indexed: int = 0
    dead_lettered: int = 0
    exact: bool = True


def account(ranges: dict[tuple[str, int], tuple[int, int]], indexed: Offsets, dead: Offsets) -> Accounting:
    """Compare each partition's log range with the offsets found indexed and dead-lettered."""
    seen: dict[tuple[str, int], Counter[int]] = {key: Counter() for key in ranges}
    kinds: dict[tuple[str, int], Counter[str]] = {key: Counter() for key in ranges}
    for kind, offsets in (("indexed", indexed), ("dead_lettered", dead)):
        for topic, partition, offset in offsets:
            key = (topic, partition)
            if key not in ranges or not ranges[key][0] <= offset < ranges[key][1]:
                continue  # outside the accounted ranges: other topics', other intervals'
            seen[key][offset] += 1
            kinds[key][kind] += 1
    parts = []
    for (topic, partition), (start, end) in sorted(ranges.items()):
        counts = seen[(topic, partition)]
        missing = [o for o in range(start, end) if o not in counts]
        dupes = sorted(o for o, n in counts.items() if n > 1)
        parts.append(
            PartitionAccount(
                topic=topic,
                partition=partition,
                log_start=start,
                log_end=end,
                indexed=kinds[(topic, partition)]["indexed"],
                dead_lettered=kinds[(topic, partition)]["dead_lettered"],
                missing=missing[:20],
                duplicated=dupes[:20],
                missing_count=len(missing),
                duplicated_count=len(dupes),
            )
        )
    return Accounting(
        partitions=parts,
        offsets=sum(p.log_end - p.log_start for p in parts),
        indexed=sum(p.indexed for p in parts),
        dead_lettered=sum(p.dead_lettered for p in parts),
        exact=all(p.exact for p in parts),
    )


def elastic_offsets(
    es: Elasticsearch, topics: list[str]
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(indexed, dead-lettered) offsets of ``topics`` as stored in Elasticsearch, read with a scroll."""
    from elasticsearch import helpers

    es.indices.refresh(index=f"{EVENTS_ALIAS},{DLQ_INDEX}", ignore_unavailable=True)
    events = [
        (h["_source"]["kafka"]["topic"], int(h["_source"]["kafka"]["partition"]), int(h["_source"]["kafka"]["offset"]))
        for h in helpers.scan(
            es,
            index=EVENTS_ALIAS,
            query={"query": {"terms": {"kafka.topic": topics}}},
            _source=["kafka"],
            size=5000,
            ignore_unavailable=True,
        )
    ]
    letters = [
        (h["_source"]["source_topic"], int(h["_source"]["partition"]), int(h["_source"]["offset"]))
        for h in helpers.scan(
            es,
            index=DLQ_INDEX,
            query={"query": {"terms": {"source_topic": topics}}},
            _source=["source_topic", "partition", "offset"],
            size=5000,
            ignore_unavailable=True,
        )
    ]
    return events, letters
