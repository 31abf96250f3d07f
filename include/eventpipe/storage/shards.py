"""The cluster's shard budget: open shards against ``cluster.max_shards_per_node`` x data nodes.

Elasticsearch refuses to create an index once the open (non-frozen) shards would pass that limit,
and every new day needs a new daily index, so a full budget turns a healthy "green" cluster into one
where each new day's events fail. ``eventpipe setup`` and every drain report the usage (metrics
``eventpipe_es_shards_open`` / ``eventpipe_es_shards_limit``; alert EventpipeShardBudgetHigh at 80 %).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from elasticsearch import Elasticsearch

MAX_SHARDS_SETTING = "cluster.max_shards_per_node"


@dataclass(frozen=True)
class ShardUsage:
    open: int  # shards of open indices, replicas and unassigned ones included (what the limit counts)
    limit: int  # max_shards_per_node x data nodes
    max_shards_per_node: int
    data_nodes: int

    @property
    def ratio(self) -> float:
        return self.open / self.limit if self.limit else 1.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "used_percent": round(100 * self.ratio, 1)}


def shard_usage(es: Elasticsearch) -> ShardUsage:
    """Read the usage as Elasticsearch's own check counts it; the setting as it resolves (transient first)."""
    health = es.cluster.health().body
    opened = health["active_shards"] + health["initializing_shards"] + health["unassigned_shards"]
    flat = es.cluster.get_settings(include_defaults=True, flat_settings=True).body
    per_node = next(
        int(flat[scope][MAX_SHARDS_SETTING])
        for scope in ("transient", "persistent", "defaults")
        if MAX_SHARDS_SETTING in flat.get(scope, {})
    )
    nodes = int(health["number_of_data_nodes"])
    return ShardUsage(opened, per_node * nodes, per_node, nodes)
