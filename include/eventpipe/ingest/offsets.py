"""Translate a data interval into per-partition Kafka offset ranges.

Offset ``O(t)`` is the first offset whose timestamp is >= t (``offsets_for_times``); an
interval [s, e) drains [O(s), O(e)). Because O is monotone and, once a record at or after t
exists, fixed forever, adjacent intervals share their boundary offset: no gap, no overlap.
Manifests of neighbouring intervals anchor the boundaries when they exist, so a record that
arrives late (timestamp before a boundary already drained) lands in the next interval
instead of being skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kafka import KafkaConsumer, TopicPartition


@dataclass(frozen=True)
class PartitionRange:
    topic: str
    partition: int
    start: int
    end: int  # exclusive

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)

    def as_dict(self) -> dict[str, int | str]:
        return {"topic": self.topic, "partition": self.partition, "start": self.start, "end": self.end}


def offsets_at(consumer: KafkaConsumer, topic: str, when: datetime) -> dict[int, int]:
    """O(when) per partition; partitions with no record at/after ``when`` get their end offset."""
    partitions = sorted(consumer.partitions_for_topic(topic) or [])
    if not partitions:
        raise LookupError(f"topic {topic!r} does not exist or has no partitions")
    tps = [TopicPartition(topic, p) for p in partitions]
    stamp = int(when.timestamp() * 1000)
    found = consumer.offsets_for_times({tp: stamp for tp in tps})
    ends = consumer.end_offsets(tps)
    return {tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp]) for tp in tps}


def interval_ranges(
    consumer: KafkaConsumer,
    topic: str,
    start: datetime,
    end: datetime,
    *,
    previous_end: dict[int, int] | None = None,
    next_start: dict[int, int] | None = None,
) -> list[PartitionRange]:
    """Offset ranges for [start, end), anchored to neighbouring manifests when known."""
    if end <= start:
        raise ValueError(f"empty interval: {start} .. {end}")
    lo = offsets_at(consumer, topic, start)
    hi = offsets_at(consumer, topic, end)
    ranges = []
    for partition in sorted(lo):
        first = (previous_end or {}).get(partition, lo[partition])
        last = (next_start or {}).get(partition, hi[partition])
        ranges.append(PartitionRange(topic, partition, first, max(first, last)))
    return ranges
