"""Reads the Kafka restart rule's inputs from a live cluster with kafka-python's admin client."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from eventpipe.stateful.rules import PartitionState

MIN_ISR = "min.insync.replicas"


def admin_client(bootstrap: str) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="eventpipe-stateful")


def effective_min_isr(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int]:
    """Each topic's effective ``min.insync.replicas``: its override, else the broker default.

    ``config_filter="all"`` makes the broker answer with the value it applies, whatever its source.
    """
    names = sorted(set(topics))
    if not names:
        return {}
    resources = [ConfigResource(ConfigResourceType.TOPIC, t, configs=[MIN_ISR]) for t in names]
    answer = admin.describe_configs(resources, config_filter="all")
    return {topic: int(configs[MIN_ISR]["value"]) for topic, configs in answer["topic"].items()}


def partition_states(admin: KafkaAdminClient, topics: Iterable[str] | None = None) -> list[PartitionState]:
    """Every partition of ``topics`` (default: all, internal ones included) with replicas, ISR and min ISR."""
    described: list[dict[str, Any]] = admin.describe_topics(sorted(topics) if topics is not None else None)
    failed = [t["name"] for t in described if t["error_code"]]
    if failed:
        raise RuntimeError(f"describe topics failed for: {failed}")  # transient (leader moving): retried
    min_isr = effective_min_isr(admin, (t["name"] for t in described))
    return [
        PartitionState(
            topic=t["name"],
            partition=p["partition_index"],
            replicas=tuple(p["replica_nodes"]),
            isr=tuple(p["isr_nodes"]),
            min_isr=min_isr[t["name"]],
        )
        for t in described
        for p in t["partitions"]
    ]


def active_controller(admin: KafkaAdminClient) -> int | None:
    """The KRaft quorum leader (the active controller), from DescribeQuorum on ``__cluster_metadata``.

    Not DescribeCluster's ``controller_id``: under KRaft brokers answer that with a random live broker.
    """
    quorum = admin.describe_metadata_quorum()
    for topic in quorum["topics"]:
        for partition in topic["partitions"]:
            leader = partition["leader_id"]
            return leader if leader >= 0 else None
    return None


def broker_ids(admin: KafkaAdminClient) -> list[int]:
    return sorted(b["broker_id"] for b in admin.describe_cluster()["brokers"])
