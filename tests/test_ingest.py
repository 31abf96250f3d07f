"""Interval drains against real Kafka and Elasticsearch: exactly once, replayable, nothing lost."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timedelta

import pytest
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from eventpipe.events.generator import GeneratorConfig, generate, utc
from eventpipe.events.produce import produce
from eventpipe.ingest.drain import drain_interval
from eventpipe.ingest.kafka_io import CONSUMER_GROUP
from eventpipe.ingest.rollup import rollup_hours
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS, ROLLUP_INDEX

from .es_support import dead_letters_of, delete_matching, events_of
from .faults import CuttableProxy

pytestmark = pytest.mark.services


def _hours(seed: int) -> tuple[datetime, datetime, datetime, datetime]:
    """Each test owns a different day of 2022, a year no other test writes into (the Airflow tests draw random
    hours of 2026), so rollups (per device and hour, over every topic) never mix tests."""
    h0 = utc("2022-01-01T10:00:00") + timedelta(days=seed % 300)
    return h0, h0 + timedelta(hours=1), h0 + timedelta(hours=2), h0 + timedelta(hours=3)


def _produce(settings: Settings, topics: dict[str, str], seed: int, **kw: float):
    h0, _, h2, _ = _hours(seed)
    config = GeneratorConfig(h0, h2, rate_per_s=kw.pop("rate", 0.5), seed=seed, **kw)  # type: ignore[arg-type]
    return config, produce(settings, config, topics=topics, truth=False)


def _drain_all(settings: Settings, topics: dict[str, str], start: datetime, end: datetime, **kw):
    return [drain_interval(settings, t, start, end, **kw) for t in topics.values()]


def test_drain_twice_gives_the_same_result(services: Settings, es: Elasticsearch, topics: dict[str, str]) -> None:
    _, produced = _produce(services, topics, seed=101, malformed_rate=0.02)
    H0, _H1, H2, _H3 = _hours(101)
    first = _drain_all(services, topics, H0, H2)
    second = _drain_all(services, topics, H0, H2)
    assert sum(r.consumed for r in first) == produced.produced
    assert sum(r.indexed for r in first) == produced.valid
    assert sum(r.dead_lettered for r in first) == produced.malformed > 0
    assert [r.partitions for r in second] == [r.partitions for r in first]
    assert all(r.replayed for r in second) and not any(r.replayed for r in first)
    assert sum(r.indexed for r in second) == produced.valid
    assert sum(r.created for r in second) == 0  # same ids: overwritten, not added
    for topic in topics.values():
        assert events_of(es, topic) == produced.by_topic[topic] - dead_letters_of(es, topic)
    assert sum(dead_letters_of(es, t) for t in topics.values()) == produced.malformed


def test_adjacent_intervals_cover_every_record_exactly_once(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _, produced = _produce(services, topics, seed=202)
    H0, H1, H2, _H3 = _hours(202)
    first = _drain_all(services, topics, H0, H1)
    second = _drain_all(services, topics, H1, H2)
    assert sum(r.consumed for r in first + second) == produced.produced
    assert all(r.consumed > 0 for r in first + second)
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap)
    for a, b in zip(first, second, strict=True):
        ends = consumer.end_offsets([TopicPartition(a.topic, p["partition"]) for p in a.partitions])
        for pa, pb in zip(a.partitions, b.partitions, strict=True):
            assert pa["start"] == 0 and pa["end"] == pb["start"]  # contiguous: no gap, no overlap
            assert pb["end"] == ends[TopicPartition(a.topic, pa["partition"])]
    consumer.close()
    for topic in topics.values():
        assert events_of(es, topic) == produced.by_topic[topic] - dead_letters_of(es, topic)


def test_offsets_committed_after_acknowledged_write(services: Settings, topics: dict[str, str]) -> None:
    _produce(services, topics, seed=303)
    H0, _H1, H2, _H3 = _hours(303)
    results = _drain_all(services, topics, H0, H2)
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap, group_id=CONSUMER_GROUP)
    for result in results:
        for p in result.partitions:
            assert consumer.committed(TopicPartition(result.topic, int(p["partition"]))) == p["end"]
    consumer.close()


def test_late_event_lands_in_next_interval_and_updates_its_hour(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _produce(services, topics, seed=404, malformed_rate=0.0)
    H0, H1, H2, H3 = _hours(404)
    iot = topics["iot"]
    drain_interval(services, iot, H0, H1)
    drain_interval(services, iot, H1, H2)
    rollup_hours(es, [H0])
    late = next(r for r in generate(GeneratorConfig(H0, H1, rate_per_s=0.02, seed=405)) if r.topic_kind == "iot")
    producer = KafkaProducer(bootstrap_servers=services.kafka.bootstrap)
    # a fresh id per run, so a rerun against the same Elasticsearch still adds exactly one event
    value = json.dumps(late.event.model_copy(update={"event_id": f"late-{uuid.uuid4().hex}"}).document()).encode()
    producer.send(iot, key=late.key.encode(), value=value, timestamp_ms=late.timestamp_ms).get(timeout=30)
    producer.close()
    before = es.get(index=ROLLUP_INDEX, id=f"{late.key}|{H0.strftime('%Y-%m-%dT%H:%M:%SZ')}", ignore=[404])
    result = drain_interval(services, iot, H2, H3)
    assert result.consumed == 1 and result.indexed == 1
    assert result.touched_hours == [H0.isoformat()]
    rollup_hours(es, [utc(h) for h in result.touched_hours])
    after = es.get(index=ROLLUP_INDEX, id=f"{late.key}|{H0.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    before_count = before["_source"]["count"] if before.get("found") else 0
    assert after["_source"]["count"] == before_count + 1


def test_rollup_matches_the_events(services: Settings, es: Elasticsearch, topics: dict[str, str]) -> None:
    H0, H1, H2, _H3 = _hours(505)
    # a rollup counts every event of its hour on any topic, and every seed shares the device ids: clear the
    # window this test owns of what an earlier (or interrupted) run left, so the events are exactly its own
    delete_matching(es, EVENTS_ALIAS, {"range": {"event_time": {"gte": H0.isoformat(), "lt": H2.isoformat()}}})
    config, _ = _produce(services, topics, seed=505, malformed_rate=0.0, rate=1.0)
    results = _drain_all(services, topics, H0, H2)
    hours = {utc(h) for r in results for h in r.touched_hours}
    assert hours == {H0, H1}
    rollup_hours(es, hours)
    events = [r.event for r in generate(config) if r.event and r.topic_kind == "iot"]
    device = events[0].device_id
    in_hour = [e for e in events if e.device_id == device and e.event_time < H1]
    metric = sorted(in_hour[0].metrics)[0]
    values = [e.metrics[metric] for e in in_hour]
    doc = es.get(index=ROLLUP_INDEX, id=f"{device}|{H0.strftime('%Y-%m-%dT%H:%M:%SZ')}")["_source"]
    stats = doc["metrics"][metric]
    assert doc["count"] == len(in_hour)
    assert stats["count"] == len(values)
    assert stats["min"] == pytest.approx(min(values)) and stats["max"] == pytest.approx(max(values))
    assert stats["avg"] == pytest.approx(sum(values) / len(values))
    assert stats["min"] <= stats["p95"] <= stats["max"]


def test_elasticsearch_rejection_goes_to_dlq_and_rest_of_batch_lands(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _, produced = _produce(services, topics, seed=606, malformed_rate=0.0)
    H0, H1, H2, _H3 = _hours(606)
    iot = topics["iot"]
    bad = next(r for r in generate(GeneratorConfig(H0, H1, rate_per_s=0.02, seed=607)) if r.topic_kind == "iot")
    # valid by schema, but the day index maps attributes.colour as a number (as a changed template would)
    day_index = f"eventpipe-events-{H0.strftime('%Y.%m.%d')}"
    es.options(ignore_status=400).indices.create(index=day_index)
    es.indices.put_mapping(index=day_index, properties={"attributes": {"properties": {"colour": {"type": "long"}}}})
    value = bad.value.replace(b'"attributes":{', b'"attributes":{"colour":"red",', 1)
    producer = KafkaProducer(bootstrap_servers=services.kafka.bootstrap)
    producer.send(iot, key=bad.key.encode(), value=value, timestamp_ms=bad.timestamp_ms).get(timeout=30)
    producer.close()
    result = drain_interval(services, iot, H0, H2)
    assert result.dead_lettered == 1
    assert result.indexed == produced.by_topic[iot]
    es.indices.refresh(index=DLQ_INDEX)
    hits = es.search(index=DLQ_INDEX, query={"term": {"source_topic": iot}})["hits"]["hits"]
    assert len(hits) == 1
    assert hits[0]["_source"]["error_kind"] == "elasticsearch"
    assert "colour" in hits[0]["_source"]["reason"]


def test_elasticsearch_outage_mid_drain_fails_then_retry_is_exact(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _, produced = _produce(services, topics, seed=707, malformed_rate=0.01, rate=1.0)
    H0, _H1, H2, _H3 = _hours(707)
    iot = topics["iot"]
    proxy = CuttableProxy(int(services.elastic.url.rsplit(":", 1)[1]), cut_after_bytes=300_000)
    flaky = services.updated(elastic={"url": proxy.url, "retries": 2})
    try:
        with pytest.raises(TransportConnectionError):  # the cut connection, after the bulk retries: the task fails
            drain_interval(flaky, iot, H0, H2, batch_size=300)
        indexed_before = events_of(es, iot)
        assert 0 < indexed_before < produced.by_topic[iot]  # the outage really hit mid-drain
        consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap, group_id=CONSUMER_GROUP)
        assert all(consumer.committed(TopicPartition(iot, p)) is None for p in range(3))  # nothing committed
        proxy.heal()
        result = drain_interval(flaky, iot, H0, H2, batch_size=300)  # the retry
        assert result.replayed
        assert result.consumed == produced.by_topic[iot]
        assert events_of(es, iot) + dead_letters_of(es, iot) == produced.by_topic[iot]
        assert all(consumer.committed(TopicPartition(iot, p["partition"])) == p["end"] for p in result.partitions)
        consumer.close()
    finally:
        proxy.close()


def test_dry_run_writes_nothing(services: Settings, es: Elasticsearch, topics: dict[str, str]) -> None:
    _, produced = _produce(services, topics, seed=808)
    H0, _H1, H2, _H3 = _hours(808)
    results = _drain_all(services, topics, H0, H2, dry_run=True)
    assert sum(r.consumed for r in results) == produced.produced
    assert all(events_of(es, t) == 0 for t in topics.values())


def test_the_drain_closes_the_elasticsearch_client_it_creates(
    services: Settings, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long-lived process (an Airflow worker, the ledger) runs many drains: each closes its client's pool."""
    from eventpipe.ingest import drain as drain_module
    from eventpipe.storage.elastic import client as real_client

    made: list[Elasticsearch] = []
    closed: list[Elasticsearch] = []

    def tracked(settings: Settings) -> Elasticsearch:
        es = real_client(settings)  # the real client, its close() observed
        close = es.close
        es.close = lambda: (closed.append(es), close())[-1]  # type: ignore[method-assign]
        made.append(es)
        return es

    monkeypatch.setattr(drain_module, "client", tracked)
    _, produced = _produce(services, topics, seed=929)
    H0, _H1, H2, _H3 = _hours(929)
    result = drain_interval(services, topics["iot"], H0, H2)
    assert result.consumed == produced.by_topic[topics["iot"]] > 0
    assert len(made) == 1 and closed == made


def _parallel(settings: Settings) -> Settings:
    """Worker processes even for a test-sized interval."""
    return settings.updated(kafka={"drain_workers": 2, "drain_parallel_min": 1})


def test_worker_processes_drain_exactly_what_one_process_does(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _, produced = _produce(services, topics, seed=909, malformed_rate=0.02, rate=1.0)
    H0, _H1, H2, _H3 = _hours(909)
    iot = topics["iot"]
    # the day is this test's own: clear what an earlier run left, so every document must be created anew
    delete_matching(es, EVENTS_ALIAS, {"range": {"event_time": {"gte": H0.isoformat(), "lt": H2.isoformat()}}})
    result = drain_interval(_parallel(services), iot, H0, H2, batch_size=500)
    assert result.workers == 2  # 3 partitions with records, 2 workers asked for
    assert result.consumed == produced.by_topic[iot]
    assert result.indexed + result.dead_lettered == result.consumed and result.dead_lettered > 0
    assert events_of(es, iot) == result.indexed == result.created
    assert dead_letters_of(es, iot) == result.dead_lettered
    assert len(result.touched_hours) == 2
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap, group_id=CONSUMER_GROUP)
    assert all(consumer.committed(TopicPartition(iot, int(p["partition"]))) == p["end"] for p in result.partitions)
    consumer.close()
    again = drain_interval(services, iot, H0, H2, batch_size=500)  # the same plan in one process
    assert again.replayed and again.workers == 1
    assert (again.consumed, again.indexed, again.dead_lettered) == (
        result.consumed,
        result.indexed,
        result.dead_lettered,
    )
    assert again.created == 0 and events_of(es, iot) == result.indexed  # same ids: nothing added
    assert again.touched_hours == result.touched_hours


def test_a_failing_worker_fails_the_drain_and_commits_nothing(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _, produced = _produce(services, topics, seed=919, malformed_rate=0.01, rate=1.0)
    H0, _H1, H2, _H3 = _hours(919)
    iot = topics["iot"]
    proxy = CuttableProxy(int(services.elastic.url.rsplit(":", 1)[1]), cut_after_bytes=600_000)
    flaky = _parallel(services.updated(elastic={"url": proxy.url, "retries": 2}))
    try:
        with pytest.raises(TransportConnectionError):  # a worker's cut connection, re-raised by the task
            drain_interval(flaky, iot, H0, H2, batch_size=300)
        assert 0 < events_of(es, iot) < produced.by_topic[iot]  # the outage hit the workers mid-drain
        consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap, group_id=CONSUMER_GROUP)
        assert all(consumer.committed(TopicPartition(iot, p)) is None for p in range(3))  # nothing committed
        proxy.heal()
        result = drain_interval(flaky, iot, H0, H2, batch_size=300)
        assert result.replayed and result.workers == 2
        assert result.consumed == produced.by_topic[iot]
        assert events_of(es, iot) + dead_letters_of(es, iot) == produced.by_topic[iot]
        assert all(consumer.committed(TopicPartition(iot, p["partition"])) == p["end"] for p in result.partitions)
        consumer.close()
    finally:
        proxy.close()


@pytest.mark.parametrize(("cpu_max", "limit"), [("200000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)])
def test_available_cpus_follows_the_pod_cpu_limit(tmp_path, cpu_max: str, limit: int | None) -> None:
    from eventpipe.ingest.workers import available_cpus

    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(path) == (min(limit, affinity) if limit else affinity)
    assert available_cpus(tmp_path / "missing") == affinity


def test_partition_groups_balance_records_and_skip_empty_partitions() -> None:
    from eventpipe.ingest.offsets import PartitionRange
    from eventpipe.ingest.workers import partition_groups

    ranges = [PartitionRange("t", p, 0, size) for p, size in enumerate([400, 300, 299, 0])]
    assert [[r.partition for r in g] for g in partition_groups(ranges, 2)] == [[0], [1, 2]]
    assert [[r.partition for r in g] for g in partition_groups(ranges, 8)] == [[0], [1], [2]]
    assert partition_groups([PartitionRange("t", 0, 5, 5)], 2) == []
