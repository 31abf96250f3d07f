"""Elasticsearch client, index templates (mappings in ``mappings.json``) and a bulk writer that retries.

Whole-request failures (connection, 429, 5xx) and per-item 429/5xx are retried with
exponential backoff; per-item rejections that will never succeed (mapping conflicts) are
returned to the caller for the dead-letter path. Exhausted retries raise, so the task fails
before any Kafka offset is committed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout
from elasticsearch import ApiError, Elasticsearch
from elasticsearch.serializer import OrjsonSerializer
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from eventpipe.settings import ElasticSettings, Settings

EVENTS_PREFIX = "eventpipe-events"
EVENTS_ALIAS = "eventpipe-events"
DLQ_INDEX = "eventpipe-dlq"
ROLLUP_INDEX = "eventpipe-rollup-hourly"
MANIFEST_INDEX = "eventpipe-drain-manifests"
ANOMALY_INDEX = "eventpipe-anomalies"

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})

# Field budget of indices with dynamic metric/attribute names (see docs/schema.md): the schema
# bounds one event to MAX_METRICS + MAX_ATTRIBUTES names, a few percent of the limit, and
# fields past the limit are kept in _source (listed in _ignored) instead of rejecting the
# document, so no number of new names can turn valid events into dead letters.
TOTAL_FIELDS_LIMIT = 1000
FIELD_LIMITS: dict[str, object] = {
    "index.mapping.total_fields.limit": TOTAL_FIELDS_LIMIT,
    "index.mapping.total_fields.ignore_dynamic_beyond_limit": True,
}
# Index mappings are package data (mappings.json): the events template, the fixed indices, and
# the dead-letter payload fields (also applied to existing DLQ indices as an additive upgrade).
MAPPINGS: dict[str, Any] = json.loads(resources.files("eventpipe.storage").joinpath("mappings.json").read_text())
DLQ_PAYLOAD_FIELDS: dict[str, object] = MAPPINGS["dlq_payload_fields"]


# Bulk attempts of a client not built by ``client()``: the model's default, never the process environment.
DEFAULT_BULK_ATTEMPTS: int = ElasticSettings.model_fields["retries"].default


class Client(Elasticsearch):
    """An Elasticsearch client that also carries the bulk retry budget of the settings it was built from.

    So a drain's worker processes, which get the caller's settings and build their own client, retry
    exactly as often as the caller asked (``EVENTPIPE_ES_RETRIES``), whatever their environment says.
    """

    bulk_attempts: int = DEFAULT_BULK_ATTEMPTS

    def options(self, **kwargs: Any) -> Client:
        copy = super().options(**kwargs)
        copy.bulk_attempts = self.bulk_attempts
        return copy


def client(settings: Settings) -> Client:
    """A client for ``settings.elastic``: its URL, credentials, request timeout and bulk retries."""
    auth = None
    if settings.elastic.username and settings.elastic.password:
        auth = (settings.elastic.username, settings.elastic.password.get_secret_value())
    # orjson parses bulk responses and scroll pages ~20% faster than the stdlib (measured in bench/)
    es = Client(
        settings.elastic.url,
        basic_auth=auth,
        request_timeout=settings.elastic.timeout_s,
        retry_on_timeout=False,
        max_retries=0,
        serializer=OrjsonSerializer(),
    )
    es.bulk_attempts = settings.elastic.retries
    return es


def ensure_indices(es: Elasticsearch, *, replicas: int) -> None:
    """Install templates and fixed indices; explicit mappings so a bad record cannot change types.

    ``replicas``: ``settings.elastic.replicas`` (``EVENTPIPE_ES_REPLICAS``) of the caller.
    """
    settings = {"number_of_shards": 1, "number_of_replicas": replicas, "refresh_interval": "1s"}
    dynamic_settings = {**settings, **FIELD_LIMITS}
    es.indices.put_index_template(
        name="eventpipe-events",
        index_patterns=[f"{EVENTS_PREFIX}-*"],
        priority=200,
        template={"settings": dynamic_settings, "aliases": {EVENTS_ALIAS: {}}, "mappings": MAPPINGS["events_template"]},
    )
    fixed = {name: dict(mappings) for name, mappings in MAPPINGS["indices"].items()}
    fixed[DLQ_INDEX] = {"properties": {**fixed[DLQ_INDEX]["properties"], **DLQ_PAYLOAD_FIELDS}}
    for name, mappings in fixed.items():
        if not es.indices.exists(index=name):
            try:
                es.indices.create(index=name, settings=dynamic_settings, mappings=mappings)
            except ApiError as exc:
                if exc.meta.status != 400 or "resource_already_exists" not in str(exc):
                    raise
    # additive, idempotent upgrades of indices created by earlier versions
    es.indices.put_mapping(index=DLQ_INDEX, properties=DLQ_PAYLOAD_FIELDS)
    es.indices.put_mapping(index=MANIFEST_INDEX, properties={"kind": {"type": "keyword"}})
    es.indices.put_settings(index=[ROLLUP_INDEX, ANOMALY_INDEX], settings=FIELD_LIMITS)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, (TransportConnectionError, ConnectionTimeout)):
        return True
    return isinstance(exc, ApiError) and exc.meta.status in RETRYABLE_STATUS


@dataclass(frozen=True)
class IndexAction:
    index: str
    doc_id: str
    source: dict[str, object] | bytes  # bytes: the document already serialized as JSON
    ref: object = None  # caller's handle (e.g. Kafka coordinates) for dead-lettering


@dataclass
class BulkOutcome:
    acknowledged: int = 0
    created: int = 0
    rejected: list[tuple[IndexAction, str]] = field(default_factory=list)
    retried_items: int = 0
    seconds: float = 0.0


def _send(es: Elasticsearch, body: bytes) -> dict[str, object]:
    """One bulk request, retried on connection errors, 429 and 5xx (the client's ``bulk_attempts``)."""
    attempts = es.bulk_attempts if isinstance(es, Client) else DEFAULT_BULK_ATTEMPTS
    for attempt in Retrying(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=20),
        reraise=True,
    ):
        with attempt:
            return es.bulk(body=body, refresh=False).body
    raise AssertionError("unreachable")


def bulk_index(es: Elasticsearch, actions: Sequence[IndexAction], *, item_attempts: int = 6) -> BulkOutcome:
    """Index ``actions``; returns rejected ones with reasons, raises when retries are exhausted."""
    outcome = BulkOutcome()
    pending = list(actions)
    started = time.perf_counter()
    for attempt in range(item_attempts):
        if not pending:
            break
        if attempt:
            time.sleep(min(20.0, 0.5 * 2**attempt))
            outcome.retried_items += len(pending)
        body = b"".join(_lines(pending))
        response = _send(es, body)
        retry_later: list[IndexAction] = []
        for action, item in zip(pending, response["items"], strict=True):
            result = item["index"]
            status = result["status"]
            if status < 300:
                outcome.acknowledged += 1
                outcome.created += result.get("result") == "created"
            elif status in RETRYABLE_STATUS:
                retry_later.append(action)
            else:
                error = result.get("error", {})
                outcome.rejected.append((action, f"{error.get('type', status)}: {error.get('reason', '')}"[:2000]))
        pending = retry_later
    if pending:
        raise RuntimeError(f"{len(pending)} documents still rejected as retryable after {item_attempts} attempts")
    outcome.seconds = time.perf_counter() - started
    return outcome


def _lines(actions: Iterable[IndexAction]) -> Iterable[bytes]:
    for action in actions:
        yield orjson.dumps({"index": {"_index": action.index, "_id": action.doc_id}})
        yield b"\n"
        yield action.source if isinstance(action.source, bytes) else orjson.dumps(action.source)
        yield b"\n"
