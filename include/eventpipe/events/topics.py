"""Topic names and creation; topics carry event time as the record timestamp (CreateTime)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from eventpipe.settings import Settings

SOURCE_TOPICS: dict[str, str] = {"iot": "iot.telemetry", "business": "business.events"}
DLQ_TOPIC = "events.dlq"


def ensure_topics(
    settings: Settings, topics: Iterable[str] = SOURCE_TOPICS.values(), partitions: int = 3, replication: int = 1
) -> None:
    """Create source topics and the compacted DLQ topic (keyed by source coordinates, so reruns dedupe)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap, client_id="eventpipe-admin")
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(name, partitions, replication, topic_configs={"message.timestamp.type": "CreateTime"})
            for name in topics
            if name not in existing
        ]
        if DLQ_TOPIC not in existing:
            wanted.append(NewTopic(DLQ_TOPIC, 1, replication, topic_configs={"cleanup.policy": "compact"}))
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
    finally:
        admin.close()
