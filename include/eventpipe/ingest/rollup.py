"""Hourly per-device rollups, recomputed from the events for the hours a drain touched.

A rollup document is a pure function of the events in its hour, so recomputing after a
rerun, a backfill or a late event overwrites it with the right numbers (same ``_id``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone

from elasticsearch import Elasticsearch

from eventpipe.storage.elastic import EVENTS_ALIAS, EVENTS_PREFIX, ROLLUP_INDEX, IndexAction, bulk_index

AGGREGATIONS_PER_PAGE = 40_000


def metric_names(es: Elasticsearch, day: datetime | None = None) -> list[str]:
    """Metric fields mapped in the event indices (of ``day`` only, its late index included, when given).

    Per day, so metric names that appear on one day do not widen every other day's rollups.
    """
    pattern = f"{EVENTS_PREFIX}-*{day.strftime('%Y.%m.%d')}" if day else f"{EVENTS_PREFIX}-*"
    mappings = es.indices.get_mapping(index=pattern, allow_no_indices=True, ignore_unavailable=True).body
    names: set[str] = set()
    for index in mappings.values():
        props = index["mappings"].get("properties", {}).get("metrics", {}).get("properties", {})
        names.update(props)
    return sorted(names)


def rollup_hours(es: Elasticsearch, hours: Iterable[datetime], *, page: int = 500) -> int:
    """Recompute the rollup documents of ``hours``; returns how many documents were written."""
    hours = sorted({h.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0) for h in hours})
    if not hours:
        return 0
    es.indices.refresh(index=f"{EVENTS_PREFIX}-*", allow_no_indices=True)
    written = 0
    for hour in hours:
        metrics = metric_names(es, hour)
        # two metric aggregations per name and device: keep one response's sketches bounded
        devices_per_page = max(10, min(page, AGGREGATIONS_PER_PAGE // max(1, 2 * len(metrics))))
        actions = [
            IndexAction(ROLLUP_INDEX, f"{doc['device_id']}|{doc['hour']}", doc)
            for doc in _hour_docs(es, hour, metrics, devices_per_page)
        ]
        for chunk_start in range(0, len(actions), 2000):
            outcome = bulk_index(es, actions[chunk_start : chunk_start + 2000])
            if outcome.rejected:
                raise RuntimeError(f"rollup index rejected documents: {outcome.rejected[0][1]}")
            written += outcome.acknowledged
    es.indices.refresh(index=ROLLUP_INDEX)
    return written


def _hour_docs(es: Elasticsearch, hour: datetime, metrics: list[str], page: int) -> Iterator[dict[str, object]]:
    aggs: dict[str, object] = {"source": {"terms": {"field": "source", "size": 2}}}
    for name in metrics:
        aggs[f"s_{name}"] = {"stats": {"field": f"metrics.{name}"}}
        aggs[f"p_{name}"] = {"percentiles": {"field": f"metrics.{name}", "percents": [95]}}
    composite: dict[str, object] = {"size": page, "sources": [{"device_id": {"terms": {"field": "device_id"}}}]}
    query = {"range": {"event_time": {"gte": hour.isoformat(), "lt": (hour + timedelta(hours=1)).isoformat()}}}
    computed_at = datetime.now(timezone.utc).isoformat()
    while True:
        response = es.search(
            index=EVENTS_ALIAS, size=0, query=query, aggs={"devices": {"composite": composite, "aggs": aggs}}
        )
        agg = response["aggregations"]["devices"]
        for bucket in agg["buckets"]:
            stats = {}
            for name in metrics:
                s = bucket[f"s_{name}"]
                if s["count"]:
                    stats[name] = {
                        "count": s["count"],
                        "min": s["min"],
                        "max": s["max"],
                        "avg": s["avg"],
                        "p95": bucket[f"p_{name}"]["values"]["95.0"],
                    }
            sources = bucket["source"]["buckets"]
            yield {
                "device_id": bucket["key"]["device_id"],
                "source": sources[0]["key"] if sources else None,
                "hour": hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "count": bucket["doc_count"],
                "metrics": stats,
                "computed_at": computed_at,
            }
        if "after_key" not in agg or not agg["buckets"]:
            return
        composite["after"] = agg["after_key"]
