"""Broken device clocks against real Kafka and Elasticsearch (issue #20): the event-time window, the
new-index budget, index-creation failures as their own dead-letter kind, and stricter metric values.

Each test writes to a topic of its own (one partition used, so offsets follow the send order) and to
hours of 2018 chosen per run; indices for the skewed days it creates are deleted afterwards.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaProducer

from devstack.monitoring import PROMETHEUS_PORT, pushgateway_url
from devstack.stack import GROUPS, service, up
from eventpipe.events.generator import utc
from eventpipe.events.schema import MAX_EXACT_INTEGER
from eventpipe.ingest.bulk_pipeline import existing_event_indices
from eventpipe.ingest.dlq import letter_raw
from eventpipe.ingest.drain import drain_interval
from eventpipe.ingest.window import BUDGET_EXCEEDED, INDEX_CREATION, OUT_OF_WINDOW, EventTimeWindow
from eventpipe.metrics import push_shard_usage
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS, EVENTS_PREFIX
from eventpipe.storage.shards import MAX_SHARDS_SETTING, shard_usage

from .es_support import delete_matching
from .polling import eventually

pytestmark = pytest.mark.services

WINDOW = EventTimeWindow()  # the defaults: 7 days back, 1 hour ahead
EVENTPIPE = str(Path(sys.executable).parent / "eventpipe")


def _hour() -> datetime:
    """An hour of 2018 picked per run: no other module uses that year (index-creation test deletes its day)."""
    return utc("2018-01-10T07:00:00") + timedelta(days=random.randrange(330), hours=random.randrange(12))


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _event(event_id: str, when: datetime, metrics: dict[str, object] | None = None) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "source": "iot",
            "device_id": "dev-clock",
            "event_type": "telemetry",
            "event_time": _iso(when),
            "metrics": {"temperature": 21.5} if metrics is None else metrics,
        },
        separators=(",", ":"),
    ).encode()


def _day_index(when: datetime) -> str:
    return f"{EVENTS_PREFIX}-{when:%Y.%m.%d}"


class _Sender:
    """Records to partition 0 of a fresh topic, each with the Kafka timestamp the test chooses."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", linger_ms=20)
        self.topic = topic
        self.sent: dict[str, bytes] = {}

    def send(self, event_id: str, value: bytes, kafka_time: datetime) -> None:
        self.sent[event_id] = value
        self.producer.send(self.topic, value=value, key=event_id.encode(), partition=0, timestamp_ms=_ms(kafka_time))

    def close(self) -> None:
        self.producer.flush(timeout=60)
        self.producer.close()


def _letters(es: Elasticsearch, topic: str) -> dict[str, list[dict[str, object]]]:
    """This topic's dead letters by error_kind."""
    es.indices.refresh(index=DLQ_INDEX)
    hits = es.search(index=DLQ_INDEX, query={"term": {"source_topic": topic}}, size=10_000)["hits"]["hits"]
    out: dict[str, list[dict[str, object]]] = {}
    for hit in hits:
        out.setdefault(str(hit["_source"]["error_kind"]), []).append(hit["_source"])
    return out


@pytest.fixture()
def own_data(es: Elasticsearch, topics: dict[str, str]) -> Iterator[dict[str, object]]:
    """The topic, and the indices and letters the test leaves behind, removed afterwards."""
    owned: dict[str, object] = {"topic": topics["iot"], "indices": set()}
    yield owned
    for index in sorted(owned["indices"] & existing_event_indices(es)):  # type: ignore[operator]
        es.indices.delete(index=index, ignore_unavailable=True)
    delete_matching(es, DLQ_INDEX, {"term": {"source_topic": topics["iot"]}})


def test_an_hour_of_skewed_clocks_cannot_multiply_indices_and_the_next_day_indexes(
    services: Settings, es: Elasticsearch, own_data: dict[str, object]
) -> None:
    """Thousands of valid events over thousands of days in one Kafka hour (the issue's outage).

    Most come from devices whose clock is wrong while the producer's timestamp is true: outside the
    window, dead-lettered. 600 come from a producer that stamps the Kafka timestamp with the broken
    clock too, each on a day of 1971-1999 of its own: inside the window of their own timestamp, so
    only the new-index budget (8 or 9 days for an hourly drain) stops them.
    """
    started = time.monotonic()
    topic = str(own_data["topic"])
    hour = _hour()
    budget = WINDOW.new_index_budget(hour, hour + timedelta(hours=1))
    assert budget in (8, 9)  # 9 when the hour ends past 23:00, so its future hour reaches the next day
    before = existing_event_indices(es)
    shards_before = shard_usage(es)
    tag = uuid.uuid4().hex[:8]
    sender = _Sender(services, topic)

    sender.send(f"first-{tag}", _event(f"first-{tag}", hour), hour)  # the interval starts here
    skewed: dict[str, datetime] = {}
    days = [datetime(1900, 1, 1, 12, tzinfo=timezone.utc) + timedelta(days=30 * i) for i in range(2400)]
    days += [utc("1970-01-01T00:00:10"), utc("9999-12-31T23:59:59"), hour + timedelta(hours=2)]  # reset, jump
    for i, when in enumerate(days):
        kafka_time = hour + timedelta(seconds=1 + i)
        if WINDOW.reason(_ms(when), _ms(kafka_time)) is None:
            continue  # a day of 1900-2097 that happens to be this week: not skewed
        skewed[f"skew-{tag}-{i}"] = when
        sender.send(f"skew-{tag}-{i}", _event(f"skew-{tag}-{i}", when), kafka_time)
    shift = random.randrange(17)
    stamped = [datetime(1971, 1, 1, 12, tzinfo=timezone.utc) + timedelta(days=shift + 17 * j) for j in range(600)]
    for j, when in enumerate(stamped):
        sender.send(f"stamped-{tag}-{j}", _event(f"stamped-{tag}-{j}", when), when)  # Kafka time = broken clock
    for k in range(200):
        when = hour + timedelta(minutes=50, seconds=k)
        sender.send(f"ok-{tag}-{k}", _event(f"ok-{tag}-{k}", when), when)
    next_day = hour + timedelta(days=1)
    for k in range(50):
        when = next_day + timedelta(seconds=10 * k)
        sender.send(f"next-{tag}-{k}", _event(f"next-{tag}-{k}", when), when)
    sender.close()
    stamped_indices = {_day_index(when) for when in stamped}
    own_data["indices"] = stamped_indices - before  # only the test's own ancient days are removed afterwards

    result = drain_interval(services, topic, hour, hour + timedelta(hours=1))

    hour_day_new = _day_index(hour) not in before
    stamped_existing = len(stamped_indices & before)
    stamped_new = budget - hour_day_new
    assert result.consumed == 1 + len(skewed) + 600 + 200
    assert result.out_of_window == len(skewed) > 2300
    assert result.over_budget == 600 - stamped_existing - stamped_new
    assert result.index_creation_failed == 0
    assert result.indexed == 1 + 200 + stamped_existing + stamped_new
    assert result.dead_lettered == result.out_of_window + result.over_budget
    assert len(result.new_indices) == budget  # the index count grows by the window's days, not by 2400
    assert set(result.new_indices) <= stamped_indices | {_day_index(hour)}
    after = existing_event_indices(es)
    assert not {_day_index(utc("1970-01-01T00:00:10")), _day_index(utc("9999-12-31T23:59:59"))} & (after - before)
    legitimate = stamped_indices | {_day_index(hour)}  # hour + 2 h (skewed) may fall on the hour's own day
    assert not ({_day_index(when) for when in skewed.values()} - legitimate) & (after - before)

    letters = _letters(es, topic)
    assert Counter({kind: len(found) for kind, found in letters.items()}) == {
        OUT_OF_WINDOW: result.out_of_window,
        BUDGET_EXCEEDED: result.over_budget,
    }
    by_id = {json.loads(letter_raw(letter))["event_id"]: letter for letter in letters[OUT_OF_WINDOW]}
    assert set(by_id) == set(skewed)
    epoch = next(i for i, when in skewed.items() if when == utc("1970-01-01T00:00:10"))
    assert letter_raw(by_id[epoch]) == sender.sent[epoch]  # exact bytes
    reason = str(by_id[epoch]["reason"])
    assert reason.startswith("event_time 1970-01-01T00:00:10.000+00:00 is ")
    assert " before the record's Kafka timestamp " in reason and "; the window allows 7 days, 0:00:00 before" in reason
    assert f"Kafka timestamp {hour.date().isoformat()}T" in reason
    future = next(i for i, when in skewed.items() if when.year == 9999)  # the series ends in 2097
    assert "9999-12-31T23:59:59.000+00:00" in str(by_id[future]["reason"])
    assert "after the record's Kafka timestamp" in str(by_id[future]["reason"])
    over = letters[BUDGET_EXCEEDED][0]
    assert f"does not exist and this drain already created {budget} new indices" in str(over["reason"])
    es.indices.refresh(index=EVENTS_ALIAS)
    assert es.count(index=EVENTS_ALIAS, query={"term": {"kafka.topic": topic}})["count"] == result.indexed

    following = drain_interval(services, topic, next_day, next_day + timedelta(hours=1))
    assert (following.consumed, following.indexed, following.dead_lettered) == (50, 50, 0)
    assert es.indices.exists(index=_day_index(next_day))
    after_next = existing_event_indices(es)
    shards_after = shard_usage(es)
    seconds = round(time.monotonic() - started, 1)
    print(  # the closing note quotes these
        "SKEWED-HOUR",
        json.dumps(
            {
                "hour": hour.isoformat(),
                "records": result.consumed,
                "distinct_event_days": len(skewed) + 600 + 1,
                "event_indices_before": len(before),
                "event_indices_after_skewed_hour": len(after),
                "event_indices_after_next_day": len(after_next),
                "new_indices_skewed_hour": result.new_indices,
                "shards_open_before_after": [shards_before.open, shards_after.open],
                "shard_limit": shards_after.limit,
                "indexed": result.indexed,
                "dead_lettered": result.dead_lettered,
                "out_of_window": result.out_of_window,
                "over_budget": result.over_budget,
                "drain_seconds": result.seconds,
                "next_day": [following.consumed, following.indexed, following.dead_lettered],
                "test_seconds": seconds,
            }
        ),
    )
    assert seconds < 60


def test_replayed_records_are_judged_by_their_own_timestamp_not_the_interval(
    services: Settings, es: Elasticsearch, own_data: dict[str, object]
) -> None:
    """A backfill re-produces old events now: the live hour's drain indexes them into their own days.

    Kafka timestamp now with event_time 6 days ago (inside the window), and one carrying its original
    timestamp of 30 days ago (set by the producer): both indexed. The one 8 days back with a current
    timestamp is out of the window of its own timestamp.
    """
    topic = str(own_data["topic"])
    hour = _hour()
    tag = uuid.uuid4().hex[:8]
    sender = _Sender(services, topic)
    sender.send(f"live-{tag}", _event(f"live-{tag}", hour + timedelta(minutes=1)), hour + timedelta(minutes=1))
    six_days = hour - timedelta(days=6, minutes=5)
    sender.send(f"replay6-{tag}", _event(f"replay6-{tag}", six_days), hour + timedelta(minutes=2))
    original = hour - timedelta(days=30)
    sender.send(f"replay30-{tag}", _event(f"replay30-{tag}", original), original)
    eight_days = hour - timedelta(days=8)
    sender.send(f"late8-{tag}", _event(f"late8-{tag}", eight_days), hour + timedelta(minutes=3))
    sender.close()

    result = drain_interval(services, topic, hour, hour + timedelta(hours=1))

    assert (result.consumed, result.indexed, result.out_of_window, result.dead_lettered) == (4, 3, 1, 1)
    es.indices.refresh(index=EVENTS_ALIAS)
    for event_id, when in ((f"replay6-{tag}", six_days), (f"replay30-{tag}", original)):
        [hit] = es.search(index=EVENTS_ALIAS, query={"term": {"event_id": event_id}})["hits"]["hits"]
        assert hit["_index"] == _day_index(when)
    [letter] = _letters(es, topic)[OUT_OF_WINDOW]
    assert letter_raw(letter) == sender.sent[f"late8-{tag}"]
    assert "is 8 days, 0:03:00 before the record's Kafka timestamp" in str(letter["reason"])


def test_boolean_and_inexact_metrics_are_dead_lettered_with_their_reason(
    services: Settings, es: Elasticsearch, own_data: dict[str, object]
) -> None:
    topic = str(own_data["topic"])
    hour = _hour()
    tag = uuid.uuid4().hex[:8]
    sender = _Sender(services, topic)
    values: dict[str, object] = {
        "bool": True,
        "false": False,
        "big": MAX_EXACT_INTEGER + 1,
        "edge": MAX_EXACT_INTEGER,
        "plain": 21,
    }
    for i, (name, value) in enumerate(values.items()):
        when = hour + timedelta(seconds=i + 1)
        sender.send(f"{name}-{tag}", _event(f"{name}-{tag}", when, {"temp": value}), when)
    sender.close()

    result = drain_interval(services, topic, hour, hour + timedelta(hours=1))

    assert (result.consumed, result.indexed, result.dead_lettered) == (5, 2, 3)
    letters = {json.loads(letter_raw(letter))["event_id"]: letter for letter in _letters(es, topic)["schema"]}
    assert set(letters) == {f"bool-{tag}", f"false-{tag}", f"big-{tag}"}
    boolean = "metrics.temp: Value error, a boolean is not a metric value (send 1 or 0, or use an attribute)"
    assert letters[f"bool-{tag}"]["reason"] == letters[f"false-{tag}"]["reason"] == boolean
    assert letters[f"big-{tag}"]["reason"] == (
        "metrics.temp: Value error, integer 9007199254740993 is beyond 2**53 and cannot be stored exactly as a double"
    )
    es.indices.refresh(index=EVENTS_ALIAS)
    [edge] = es.search(index=EVENTS_ALIAS, query={"term": {"event_id": f"edge-{tag}"}})["hits"]["hits"]
    assert edge["_source"]["metrics"]["temp"] == float(MAX_EXACT_INTEGER)


def test_an_index_elasticsearch_refuses_to_create_is_its_own_dead_letter_kind_and_replays(
    services: Settings, es: Elasticsearch, own_data: dict[str, object]
) -> None:
    """Elasticsearch refusing to create a day's index (here: ``action.auto_create_index`` excluding that one
    day, the same per-item failure path as the shard limit) is reported as such, and a rerun of the
    interval once it is allowed indexes the events (the manifest replays the same offsets)."""
    topic = str(own_data["topic"])
    hour = _hour()
    index = _day_index(hour)
    es.indices.delete(index=index, ignore_unavailable=True)  # a day of this run's own; nothing else uses it
    tag = uuid.uuid4().hex[:8]
    sender = _Sender(services, topic)
    for i in range(5):
        when = hour + timedelta(seconds=i + 1)
        sender.send(f"refused-{tag}-{i}", _event(f"refused-{tag}-{i}", when), when)
    sender.close()
    own_data["indices"] = {index}
    original = es.cluster.get_settings(flat_settings=True)["persistent"].get("action.auto_create_index")
    es.cluster.put_settings(persistent={"action.auto_create_index": f"-{index},+*"})
    try:
        result = drain_interval(services, topic, hour, hour + timedelta(hours=1))
    finally:
        es.cluster.put_settings(persistent={"action.auto_create_index": original})

    assert (result.consumed, result.indexed, result.index_creation_failed, result.dead_lettered) == (5, 0, 5, 5)
    letters = _letters(es, topic)
    assert set(letters) == {INDEX_CREATION}
    reason = str(letters[INDEX_CREATION][0]["reason"])
    assert reason.startswith(f"Elasticsearch could not create daily index {index}: index_not_found_exception: ")
    assert "action.auto_create_index" in reason

    rerun = drain_interval(services, topic, hour, hour + timedelta(hours=1))
    assert rerun.replayed and (rerun.indexed, rerun.dead_lettered, rerun.new_indices) == (5, 0, [index])


def _prometheus(path: str, **params: str) -> Any:
    response = httpx.get(f"http://127.0.0.1:{PROMETHEUS_PORT}{path}", params=params, timeout=10.0)
    response.raise_for_status()
    return response.json()["data"]


def _budget_alerts() -> list[dict[str, Any]]:
    alerts = _prometheus("/api/v1/alerts")["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == "EventpipeShardBudgetHigh"]


def _rule_groups() -> list[dict[str, Any]] | None:
    try:
        return _prometheus("/api/v1/rules")["groups"]
    except httpx.ConnectError:
        return None  # another test session is (re)starting the shared monitoring


def _setup(env: dict[str, str]) -> dict[str, Any]:
    run = subprocess.run([EVENTPIPE, "setup"], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def _scraped_open(value: int) -> bool:
    found = _prometheus("/api/v1/query", query='eventpipe_es_shards_open{job="eventpipe",task="shards"}')["result"]
    return bool(found) and int(float(found[0]["value"][1])) == value


@pytest.mark.monitoring
def test_shard_budget_alert_fires_in_prometheus_when_the_budget_is_nearly_used(
    services: Settings, stack_env: dict[str, str], es: Elasticsearch
) -> None:
    """`eventpipe setup` reports the real usage (alert absent); a reading at ~90 % of the limit makes
    EventpipeShardBudgetHigh fire; the next `eventpipe setup` resolves it.

    The nearly used budget is real: ``cluster.max_shards_per_node`` is lowered until the open shards are
    ~90 % of the limit, read and pushed exactly as setup does, and restored at once (under a second, so
    other tests creating indices meanwhile are not refused).
    """
    up(GROUPS["monitoring"])
    rules = eventually(_rule_groups, "Prometheus answering its API")
    if not any(rule["name"] == "EventpipeShardBudgetHigh" for group in rules for rule in group["rules"]):
        service("prometheus").reload()  # started earlier from rules without this alert
    env = {**os.environ, **stack_env, "EVENTPIPE_PUSHGATEWAY_URL": pushgateway_url()}
    pushing = Settings.from_env(env)

    reported = _setup(env)["shards"]
    usage = shard_usage(es)
    assert reported["limit"] == usage.limit == usage.max_shards_per_node * usage.data_nodes
    assert reported["used_percent"] < 80
    eventually(lambda: _scraped_open(reported["open"]), "the setup's reading in Prometheus")
    time.sleep(4)  # two rule evaluations and the devstack's 2 s `for:` past the scrape
    assert _budget_alerts() == []

    original = es.cluster.get_settings(flat_settings=True)["persistent"].get(MAX_SHARDS_SETTING)
    per_node = max(1, int(usage.open / 0.9 / usage.data_nodes))
    try:
        es.cluster.put_settings(persistent={MAX_SHARDS_SETTING: per_node})
        nearly_full = shard_usage(es)
    finally:
        es.cluster.put_settings(persistent={MAX_SHARDS_SETTING: original})
    assert nearly_full.limit == per_node * usage.data_nodes and 0.8 < nearly_full.ratio <= 1.0
    try:
        assert push_shard_usage(pushing, nearly_full)
        firing = eventually(
            lambda: [a for a in _budget_alerts() if a["state"] == "firing"], "EventpipeShardBudgetHigh firing"
        )
        assert firing[0]["labels"]["severity"] == "warning"
        assert firing[0]["annotations"]["summary"].startswith("Elasticsearch has ")
        assert firing[0]["annotations"]["runbook_url"] == "docs/runbook.md#eventpipeshardbudgethigh"
    finally:
        after = _setup(env)["shards"]  # the real reading again
    assert after["limit"] == usage.limit
    eventually(lambda: not _budget_alerts(), "the alert resolving after setup's next reading")
