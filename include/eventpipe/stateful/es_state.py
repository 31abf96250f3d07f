"""Reads the Elasticsearch restart rule's inputs with the elasticsearch client and applies ECK's restart steps.

The node shutdown API lives in x-pack's shutdown module; the registry-free Elasticsearch the devstack
builds from Maven artifacts does not have it (``PUT _nodes/<id>/shutdown`` answers 405). There the
restart relies on delayed allocation alone, which is what lets a returning node reuse its local copies;
the shutdown record adds only that the master knows the departure is planned.
"""

from __future__ import annotations

from elasticsearch import ApiError, Elasticsearch

from eventpipe.stateful.rules import delayed_allocation, restart_shutdown_body

SHUTDOWN_API = "node-shutdown"
DELAYED_ONLY = "delayed-allocation-only"


def health_status(es: Elasticsearch, index: str | None = None) -> str:
    """``green``, ``yellow`` or ``red`` for the cluster (or only ``index``)."""
    return str(es.cluster.health(index=index)["status"])


def wait_for_green(es: Elasticsearch, timeout: str = "5m") -> str:
    """Block until green (or the timeout) inside Elasticsearch; returns the status reached."""
    answer = es.cluster.health(wait_for_status="green", timeout=timeout)
    return str(answer["status"])


def prepare_restart(es: Elasticsearch, node_id: str, reason: str, delay: str = "5m", indices: str = "_all") -> str:
    """Before a node restarts: delay replica reallocation on ``indices``, then register a restart shutdown.

    Returns :data:`SHUTDOWN_API` or, where the cluster has no shutdown API, :data:`DELAYED_ONLY`.
    """
    # a cluster with no index yet (a fresh StatefulSet) has nothing to delay: not an error
    es.indices.put_settings(index=indices, settings=delayed_allocation(delay)["settings"], allow_no_indices=True)
    try:
        es.shutdown.put_node(node_id=node_id, **restart_shutdown_body(reason, delay))
    except ApiError as exc:
        if exc.meta.status != 405:  # 405: no PUT handler, the shutdown module is not installed
            raise
        return DELAYED_ONLY
    return SHUTDOWN_API


def finish_restart(es: Elasticsearch, node_id: str, how: str) -> None:
    """After the node came back: remove its shutdown record (ECK does the same once the pod is ready)."""
    if how == SHUTDOWN_API:
        es.shutdown.delete_node(node_id=node_id)
