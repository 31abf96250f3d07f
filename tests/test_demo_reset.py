"""The demo's check for a topic a drill has written at today's times, on the real Kafka."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from kafka import KafkaProducer

from devstack.cluster.data_reset import later_records
from eventpipe.events.topics import ensure_topics
from eventpipe.settings import Settings

pytestmark = pytest.mark.services

DEMO_END = datetime(2026, 1, 18, tzinfo=timezone.utc)


def _send(settings: Settings, topic: str, partition: int, when: datetime) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    try:
        stamp = int(when.timestamp() * 1000)
        producer.send(topic, value=b"{}", partition=partition, timestamp_ms=stamp).get(timeout=60)
    finally:
        producer.close()


def test_later_records_names_each_partition_holding_a_record_stamped_after_the_demo(
    services: Settings, topics: dict[str, str]
) -> None:
    ensure_topics(services, topics.values())
    iot, business = topics["iot"], topics["business"]
    _send(services, iot, 0, datetime(2026, 1, 15, 12, tzinfo=timezone.utc))
    _send(services, business, 1, datetime(2026, 1, 17, 23, 59, 59, 999000, tzinfo=timezone.utc))
    assert later_records(services, DEMO_END, topics.values()) == {}  # the demo's own days: a replay, no reset

    _send(services, iot, 2, datetime(2026, 12, 7, 9, tzinfo=timezone.utc))  # a drill's record, at today's time
    _send(services, business, 1, DEMO_END)  # the boundary itself is the next interval's
    assert later_records(services, DEMO_END, topics.values()) == {iot: [2], business: [1]}
    assert later_records(services, DEMO_END, ["no-such-topic-for-the-demo"]) == {}
