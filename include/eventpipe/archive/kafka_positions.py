"""What the snapshot's pre-hook records of Kafka, and how a restored Kafka is checked against it.

Kafka is not paused for its volume copy: each broker's ext4 is frozen while it is copied, so its snapshot is
consistent as after a crash, and log recovery truncates a partition to its last valid batch. What a restore
can promise is every record and every group commit that existed *before* the hold. So the pre-hook records,
before the VolumeSnapshots are taken:

- each partition's end offset (ListOffsets LATEST: the high watermark, i.e. records every in-sync replica
  holds), of every non-internal topic;
- every consumer group's committed offsets. The ingest group's commits are frozen by the hold itself: a
  drain saves its manifest to the held drain-manifest index before and after it reads, and commits only
  after that, so none can commit until the post-hook.

A restored cluster passes when every recorded topic and partition is present, each end offset is at least
the recorded one, the held groups' committed offsets are equal, and other groups' at least the recorded ones
(they were not held). The record is stored next to the day's VolumeSnapshots' restore points, in the
snapshot bucket (``volume-snapshots/date=YYYY-MM-DD/kafka.json``), typed as :class:`KafkaPositions`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timezone

from pydantic import BaseModel, ConfigDict

from eventpipe.ingest.kafka_io import CONSUMER_GROUP
from eventpipe.storage.s3 import delete_keys

HELD_GROUPS = (CONSUMER_GROUP,)
PREFIX = "volume-snapshots"


class KafkaPositions(BaseModel):
    """The pre-hook's record: topic -> partition -> end offset, group -> topic -> partition -> committed."""

    model_config = ConfigDict(extra="forbid")

    day: date
    recorded_at: datetime
    bootstrap: str
    end_offsets: dict[str, dict[int, int]]
    groups: dict[str, dict[str, dict[int, int]]]
    held_groups: list[str]

    @property
    def partitions(self) -> int:
        return sum(len(parts) for parts in self.end_offsets.values())


def positions_key(day: date) -> str:
    return f"{PREFIX}/date={day:%Y-%m-%d}/kafka.json"


def read_positions(bootstrap: str) -> tuple[dict[str, dict[int, int]], dict[str, dict[str, dict[int, int]]]]:
    """End offsets of every non-internal topic and every group's committed offsets, from a live cluster."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="eventpipe-snapshot-positions")
    # 30 s per request, not the consumer's 305 s: a restored cluster still electing leaders is asked again
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, client_id="eventpipe-snapshot-positions", request_timeout_ms=30_000
    )
    try:
        topics = sorted(t for t in admin.list_topics() if not t.startswith("__"))
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends: dict[str, dict[int, int]] = {t: {} for t in topics}
        for tp, offset in consumer.end_offsets(tps).items():
            ends[tp.topic][tp.partition] = int(offset)
        group_ids = sorted(g["group_id"] for g in admin.list_groups())
        groups: dict[str, dict[str, dict[int, int]]] = {}
        if group_ids:
            for group, offsets in admin.list_group_offsets({g: None for g in group_ids}).items():
                committed: dict[str, dict[int, int]] = {}
                for tp, meta in offsets.items():
                    if meta is not None and meta.offset >= 0:
                        committed.setdefault(tp.topic, {})[tp.partition] = int(meta.offset)
                groups[group] = committed
        return ends, groups
    finally:
        consumer.close()
        admin.close()


def record_positions(bootstrap: str, day: date) -> KafkaPositions:
    ends, groups = read_positions(bootstrap)
    return KafkaPositions(
        day=day,
        recorded_at=datetime.now(timezone.utc),
        bootstrap=bootstrap,
        end_offsets=ends,
        groups=groups,
        held_groups=list(HELD_GROUPS),
    )


def save_positions(s3, bucket: str, positions: KafkaPositions, **extra: str) -> str:
    key = positions_key(positions.day)
    s3.put_object(Bucket=bucket, Key=key, Body=positions.model_dump_json(indent=2).encode(), **extra)
    return key


def forget_positions(s3, bucket: str, days: Iterable[date]) -> list[str]:
    """Delete the records of ``days`` (nights whose VolumeSnapshots retention deleted); the keys asked for."""
    keys = [positions_key(day) for day in days]
    delete_keys(s3, bucket, keys)
    return keys


def load_positions(s3, bucket: str, day: date) -> KafkaPositions | None:
    try:
        raw = s3.get_object(Bucket=bucket, Key=positions_key(day))["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    return KafkaPositions.model_validate_json(raw)


def compare(
    recorded: KafkaPositions,
    ends: dict[str, dict[int, int]],
    groups: dict[str, dict[str, dict[int, int]]],
) -> list[str]:
    """Every difference of a restored cluster's positions from the record, one readable line each (none: pass)."""
    problems: list[str] = []
    for topic, parts in sorted(recorded.end_offsets.items()):
        if topic not in ends:
            problems.append(f"topic {topic}: missing ({len(parts)} partitions recorded)")
            continue
        for partition, offset in sorted(parts.items()):
            got = ends[topic].get(partition)
            if got is None:
                problems.append(f"{topic}/{partition}: partition missing (end offset {offset} recorded)")
            elif got < offset:
                problems.append(f"{topic}/{partition}: end offset {got} < recorded {offset} ({offset - got} lost)")
    for group, topics in sorted(recorded.groups.items()):
        held = group in recorded.held_groups
        restored = groups.get(group, {})
        for topic, parts in sorted(topics.items()):
            for partition, offset in sorted(parts.items()):
                got = restored.get(topic, {}).get(partition)
                if got is None:
                    problems.append(f"group {group} {topic}/{partition}: no committed offset (recorded {offset})")
                elif (got != offset) if held else (got < offset):
                    relation = "!=" if held else "<"
                    problems.append(f"group {group} {topic}/{partition}: committed {got} {relation} recorded {offset}")
    return problems
