"""Prometheus metrics for batch tasks, pushed to a Pushgateway when one is configured.

Pods are short-lived, so scraping them is pointless; each task pushes its gauges once at
the end under job=eventpipe, grouped by task and topic.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from eventpipe.settings import Settings

if TYPE_CHECKING:
    from eventpipe.storage.shards import ShardUsage

log = logging.getLogger(__name__)

# Every series a task pushes (as eventpipe_<name>), so alerts and dashboards cannot drift from the code
# (tests/test_deploy_manifests.py compares deploy/ against this). All are gauges of the last run.
METRICS: dict[str, str] = {
    "records_drained": "events indexed by the last drain of a topic",
    "dlq_records": "records dead-lettered by the last drain of a topic",
    "kafka_lag_records": "records of the topic beyond the group's committed offsets after the last drain",
    "bulk_latency_seconds": "mean Elasticsearch bulk request latency of the last drain",
    "drain_seconds": "duration of the last drain of a topic",
    "es_shards_open": "shards of open Elasticsearch indices (what cluster.max_shards_per_node limits)",
    "es_shards_limit": "cluster.max_shards_per_node x data nodes: open shards past it make index creation fail",
    "ledger_uncovered_offsets": "offsets of the topic no complete drain manifest covered at the last ledger check",
    "ledger_remaining_offsets": "offsets of the topic still uncovered after the last ledger check drained",
    "archive_bytes": "Parquet bytes committed by the last archive write",
    "archive_rows": "rows committed by the last archive write",
    "archive_last_success_timestamp_seconds": "when an archive day last verified",
    "snapshot_duration_seconds": "duration of the last application-consistent snapshot",
    "snapshot_failed": "1 if the last snapshot attempt failed, else 0",
    "task_failed": "1 when a task of the labelled DAG failed (failure callback)",
    "dag_last_success_timestamp": "when the labelled DAG last had a successful run (Airflow plugin)",
    "dag_run_failed": "1 if the labelled DAG's last run failed (Airflow plugin)",
}


def push_shard_usage(settings: Settings, usage: ShardUsage) -> bool:
    """The cluster's shard budget, under its own group (task=shards): the last reading wins."""
    return push(settings, "shards", {"es_shards_open": usage.open, "es_shards_limit": usage.limit})


def push(settings: Settings, task: str, values: dict[str, float], labels: dict[str, str] | None = None) -> bool:
    """Push ``eventpipe_<name>`` gauges; returns False (and logs) when no gateway is set or it is down."""
    unknown = sorted(set(values) - set(METRICS))
    if unknown:
        raise ValueError(f"undeclared metrics {unknown}: add them to eventpipe.metrics.METRICS")
    if not settings.metrics.pushgateway_url:
        return False
    registry = CollectorRegistry()
    for name, value in values.items():
        Gauge(f"eventpipe_{name}", METRICS[name], registry=registry).set(value)
    try:
        push_to_gateway(
            settings.metrics.pushgateway_url,
            job="eventpipe",
            grouping_key={"task": task, **(labels or {})},
            registry=registry,
            timeout=10,
        )
    except OSError as exc:  # metrics must never fail the data path
        log.warning("pushgateway %s unreachable: %s", settings.metrics.pushgateway_url, exc)
        return False
    return True
