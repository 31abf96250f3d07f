"""Prometheus metrics for batch tasks, pushed to a Pushgateway when one is configured.

Pods are short-lived, so scraping them is pointless; each task pushes its gauges once at
the end under job=eventpipe, grouped by task and topic.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from eventpipe.settings import Settings

log = logging.getLogger(__name__)


def push(settings: Settings, task: str, values: dict[str, float], labels: dict[str, str] | None = None) -> bool:
    """Push ``eventpipe_<name>`` gauges; returns False (and logs) when no gateway is set or it is down."""
    if not settings.pushgateway_url:
        return False
    registry = CollectorRegistry()
    for name, value in values.items():
        Gauge(f"eventpipe_{name}", f"eventpipe {task} {name}", registry=registry).set(value)
    try:
        push_to_gateway(
            settings.pushgateway_url,
            job="eventpipe",
            grouping_key={"task": task, **(labels or {})},
            registry=registry,
            timeout=10,
        )
    except OSError as exc:  # metrics must never fail the data path
        log.warning("pushgateway %s unreachable: %s", settings.pushgateway_url, exc)
        return False
    return True
