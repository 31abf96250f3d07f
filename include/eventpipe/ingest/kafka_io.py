"""The drain's Kafka side: the ingest group's consumer, reading planned ranges, committing and measuring lag.

The group never auto-commits: offsets advance only in ``commit_offsets``, which the drain calls once,
after its manifest is complete (every record indexed or dead-lettered and acknowledged).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata

from eventpipe.ingest.offsets import PartitionRange
from eventpipe.settings import Settings

CONSUMER_GROUP = "eventpipe-ingest"


def group_consumer(settings: Settings, topic: str, batch_size: int) -> KafkaConsumer:
    """A consumer of the ingest group that never auto-commits: offsets advance only in ``commit_offsets``."""
    return KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=CONSUMER_GROUP,
        client_id=f"eventpipe-drain-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )


def read_ranges(
    consumer: KafkaConsumer, ranges: list[PartitionRange], batch_size: int, idle_timeout_s: float = 60.0
) -> Iterator[list[ConsumerRecord]]:
    """Yield batches of exactly the records inside ``ranges`` (end exclusive)."""
    active = {TopicPartition(r.topic, r.partition): r for r in ranges if r.size > 0}
    if not active:
        return
    consumer.assign(list(active))
    for tp, planned in active.items():
        consumer.seek(tp, planned.start)
    last_progress = time.monotonic()
    while active:
        polled = consumer.poll(timeout_ms=1000, max_records=batch_size)
        batch: list[ConsumerRecord] = []
        for tp, records in polled.items():
            planned = active.get(tp)
            if planned is not None:
                batch.extend(record for record in records if record.offset < planned.end)
        for tp in list(active):
            if consumer.position(tp) >= active[tp].end:
                consumer.pause(tp)
                del active[tp]
        if batch:
            last_progress = time.monotonic()
            yield batch
        elif time.monotonic() - last_progress > idle_timeout_s:
            missing = {f"{tp.topic}/{tp.partition}": (consumer.position(tp), r.end) for tp, r in active.items()}
            raise TimeoutError(f"no records for {idle_timeout_s:.0f}s while draining; position/end: {missing}")


def commit_offsets(consumer: KafkaConsumer, ranges: list[PartitionRange]) -> None:
    """Advance (never rewind) the group's committed offsets, so lag tools see progress even on backfills."""
    offsets = {}
    for planned in ranges:
        tp = TopicPartition(planned.topic, planned.partition)
        committed = consumer.committed(tp) or 0
        if planned.end > committed:
            offsets[tp] = OffsetAndMetadata(planned.end, "", -1)
    if offsets:
        consumer.commit(offsets)


def group_lag(consumer: KafkaConsumer, topic: str) -> int:
    """Records of ``topic`` past the group's committed offsets: what lag dashboards show."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    ends = consumer.end_offsets(partitions)
    return sum(max(0, ends[tp] - (consumer.committed(tp) or 0)) for tp in partitions)
