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


def ensure_topics(settings: Settings, topics: Iterable[str] = SOURCE_TOPICS.values()) -> None:
    """Create missing source topics and the compacted DLQ topic (keyed by source coordinates, so reruns dedupe).

    Partitions, replication factor and ``min.insync.replicas`` are ``settings.kafka``'s; with producers'
    ``acks=all`` a write then survives the loss of ``replication_factor - min_insync_replicas`` brokers.
    Existing topics are left as they are.
    """
    kafka = settings.kafka
    durability = {"min.insync.replicas": str(kafka.min_insync_replicas)}
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="eventpipe-admin")
    try:
        existing = set(admin.list_topics())
        source = {"message.timestamp.type": "CreateTime", **durability}
        if kafka.retention_ms is not None:
            source["retention.ms"] = str(kafka.retention_ms)
        wanted = [
            NewTopic(name, kafka.topic_partitions, kafka.replication_factor, topic_configs=source)
            for name in topics
            if name not in existing
        ]
        if DLQ_TOPIC not in existing:
            compacted = {"cleanup.policy": "compact", **durability}
            wanted.append(NewTopic(DLQ_TOPIC, 1, kafka.replication_factor, topic_configs=compacted))
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(wanted)
    finally:
        admin.close()
