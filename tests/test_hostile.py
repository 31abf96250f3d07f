"""Hostile input against real Kafka, Elasticsearch and S3: no record stops a drain, none is lost."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timedelta

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from typer.testing import CliRunner

from eventpipe.archive.quiesce import coverage_gaps
from eventpipe.cli import app
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.events.schema import MAX_METRICS
from eventpipe.events.topics import DLQ_TOPIC
from eventpipe.ingest.dlq import DeadLetter, DeadLetterError, DlqLimits, encode_letters, letter_raw
from eventpipe.ingest.drain import drain_interval
from eventpipe.ingest.ledger import check_ledger
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX, TOTAL_FIELDS_LIMIT
from eventpipe.storage.s3 import s3_client

from .es_support import dead_letters_of, events_of

pytestmark = pytest.mark.services


def _hour(seed: int) -> datetime:
    """Days of 2024, apart from the other test modules' days (Kafka rejects future timestamps)."""
    return utc("2024-03-01T10:00:00") + timedelta(days=seed % 300)


def _send(settings: Settings, topic: str, values: list[bytes], when: datetime) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all")
    for i, value in enumerate(values):
        stamp = int(when.timestamp() * 1000) + 1000 * (i + 1)
        producer.send(topic, key=f"hostile-{i}".encode(), value=value, timestamp_ms=stamp).get(timeout=60)
    producer.close()


def _dlq_end() -> int:
    consumer = KafkaConsumer(bootstrap_servers=os.environ.get("EVENTPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    tp = TopicPartition(DLQ_TOPIC, 0)
    end = consumer.end_offsets([tp])[tp]
    consumer.close()
    return end


def _dlq_records(settings: Settings, since: int, topic: str) -> dict[str, dict[str, object]]:
    """Dead letters of ``topic`` written to the DLQ topic at or after offset ``since``, by key."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False)
    tp = TopicPartition(DLQ_TOPIC, 0)
    consumer.assign([tp])
    consumer.seek(tp, since)
    end = consumer.end_offsets([tp])[tp]
    found: dict[str, dict[str, object]] = {}
    while consumer.position(tp) < end:
        for records in consumer.poll(timeout_ms=2000).values():
            for record in records:
                if record.key.decode().startswith(f"{topic}:"):
                    found[record.key.decode()] = json.loads(record.value) | {"_bytes": len(record.value)}
    consumer.close()
    return found


def test_oversized_and_binary_payloads_are_dead_lettered_exactly(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(1)
    config = GeneratorConfig(h0, h0 + timedelta(hours=1), rate_per_s=0.01, seed=901, malformed_rate=0.0)
    produced = produce(services, config, topics=topics, truth=False)
    iot = topics["iot"]
    # near the broker's default max.message.bytes (1048588): its escaped JSON dead letter would not fit
    huge = bytes(range(256)) * 4000 + b"\xff" * 20_000  # 1,044,000 bytes, not UTF-8
    small = b"\xff\xfe\x00 not json \x80\xc3("
    _send(services, iot, [huge, small], h0)
    since = _dlq_end()

    result = drain_interval(services, iot, h0, h0 + timedelta(hours=1))

    assert result.consumed == produced.by_topic[iot] + 2
    assert result.indexed == produced.by_topic[iot]
    assert result.dead_lettered == 2
    es.indices.refresh(index=DLQ_INDEX)
    hits = es.search(index=DLQ_INDEX, query={"term": {"source_topic": iot}}, size=10)["hits"]["hits"]
    docs = {hit["_id"]: hit["_source"] for hit in hits}
    topic_letters = _dlq_records(services, since, iot)
    assert set(docs) == set(topic_letters) and len(docs) == 2
    by_size = {int(doc["size"]): key for key, doc in docs.items()}
    huge_key, small_key = by_size[len(huge)], by_size[len(small)]
    for key, payload in ((huge_key, huge), (small_key, small)):
        for doc in (docs[key], topic_letters[key]):
            assert letter_raw(doc, services) == payload  # bytes exact, from the index and the topic
            assert doc["sha256"] == hashlib.sha256(payload).hexdigest()
            assert doc["error_kind"] == "schema" and doc["reason"]
    # the big one is a claim check: a small letter pointing at a content-addressed S3 object
    assert "raw_b64" not in docs[huge_key] and "payload_ref" not in docs[small_key]
    ref = str(docs[huge_key]["payload_ref"])
    assert ref.endswith(hashlib.sha256(huge).hexdigest())
    bucket, key = ref.removeprefix("s3://").split("/", 1)
    assert s3_client(services).get_object(Bucket=bucket, Key=key)["Body"].read() == huge
    assert int(topic_letters[huge_key]["_bytes"]) < 20_000
    preview = str(topic_letters[huge_key]["preview"])
    assert preview.startswith("\x00\x01") and "\\x80\\x81" in preview  # invalid UTF-8 shown escaped


def test_a_record_that_cannot_be_dead_lettered_fails_with_its_coordinates() -> None:
    class BrokenStore:
        def put(self, data: bytes) -> str:
            raise ConnectionError("S3 unreachable")

    letter = DeadLetter("iot.telemetry", 2, 4711, 0, b"x" * 5000, "schema", "not JSON")
    limits = DlqLimits(topic_max_message_bytes=20_000, producer_max_request_size=1_048_576)
    with pytest.raises(DeadLetterError, match=r"topic iot\.telemetry partition 2 offset 4711"):
        encode_letters([letter], limits, BrokenStore(), utc("2027-01-01T00:00:00"))  # type: ignore[arg-type]
    # small letters need no S3 at all
    fits = DeadLetter("iot.telemetry", 2, 4712, 0, b"x" * 100, "schema", "not JSON")
    [(_, doc, value)] = encode_letters([fits], limits, BrokenStore(), utc("2027-01-01T00:00:00"))  # type: ignore[arg-type]
    assert letter_raw(doc) == b"x" * 100 and len(value) < limits.max_letter_bytes


def _event(when: datetime, event_id: str, metrics: dict[str, float]) -> bytes:
    return json.dumps(
        {
            "event_id": event_id,
            "source": "iot",
            "device_id": "wide-device",
            "event_type": "telemetry",
            "event_time": when.isoformat().replace("+00:00", "Z"),
            "metrics": metrics,
            "attributes": {"region": "eu-west"},
        }
    ).encode()


def test_wide_record_is_dead_lettered_and_new_metric_names_still_index(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(2)
    tag = uuid.uuid4().hex[:8]
    iot = topics["iot"]
    produce(
        services,
        GeneratorConfig(h0, h0 + timedelta(hours=1), 0.005, seed=902, malformed_rate=0.0),
        topics=topics,
        truth=False,
    )
    wide = _event(h0 + timedelta(minutes=1), f"wide-{tag}", {f"w{tag}_{i}": float(i) for i in range(400)})
    later = _event(h0 + timedelta(minutes=2), f"later-{tag}", {f"n{tag}_{i}": float(i) for i in range(MAX_METRICS)})
    _send(services, iot, [wide, later], h0)

    result = drain_interval(services, iot, h0, h0 + timedelta(hours=1))

    assert result.dead_lettered == 1
    es.indices.refresh(index=DLQ_INDEX)
    [letter] = es.search(index=DLQ_INDEX, query={"term": {"source_topic": iot}})["hits"]["hits"]
    assert letter["_source"]["error_kind"] == "schema"
    assert f"at most {MAX_METRICS}" in letter["_source"]["reason"]
    assert letter_raw(letter["_source"]) == wide
    day_index = f"eventpipe-events-{h0.strftime('%Y.%m.%d')}"
    doc = es.get(index=day_index, id=f"later-{tag}")["_source"]
    assert len(doc["metrics"]) == MAX_METRICS
    mapped = es.indices.get_mapping(index=day_index)[day_index]["mappings"]["properties"]["metrics"]["properties"]
    assert not any(name.startswith(f"w{tag}") for name in mapped)
    assert all(f"n{tag}_{i}" in mapped for i in range(MAX_METRICS))


def test_many_new_metric_names_past_the_field_limit_never_reject_valid_events(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(3)
    tag = uuid.uuid4().hex[:8]
    iot = topics["iot"]
    produce(
        services,
        GeneratorConfig(h0, h0 + timedelta(hours=1), 0.002, seed=903, malformed_rate=0.0),
        topics=topics,
        truth=False,
    )
    events = 1 + TOTAL_FIELDS_LIMIT // MAX_METRICS  # together, more names than the index has fields
    values = [
        _event(h0 + timedelta(seconds=10 + i), f"many-{tag}-{i}", {f"m{tag}_{i}_{j}": 1.0 for j in range(MAX_METRICS)})
        for i in range(events)
    ]
    _send(services, iot, values, h0)

    result = drain_interval(services, iot, h0, h0 + timedelta(hours=1))

    assert result.dead_lettered == 0
    day_index = f"eventpipe-events-{h0.strftime('%Y.%m.%d')}"
    es.indices.refresh(index=day_index)
    query = {"prefix": {"event_id": f"many-{tag}-"}}
    assert es.count(index=day_index, query=query)["count"] == events
    # the names past the limit are kept in _source, not mapped
    ignored = es.count(index=day_index, query={"bool": {"filter": [query, {"exists": {"field": "_ignored"}}]}})
    assert ignored["count"] > 0
    last = es.get(index=day_index, id=f"many-{tag}-{events - 1}")["_source"]
    assert len(last["metrics"]) == MAX_METRICS


def test_ledger_drains_out_of_order_records_left_by_a_gap_in_runs(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h = [_hour(4) + timedelta(hours=i) for i in range(6)]
    iot = topics["iot"]

    def gen(lo: datetime, hi: datetime, seed: int) -> None:
        config = GeneratorConfig(lo, hi, rate_per_s=0.01, seed=seed, malformed_rate=0.05)
        produce(services, config, topics=topics, truth=False)

    gen(h[0], h[3], 904)
    # late records, appended after hour 2's: timestamps in hour 0 (already drained) and hour 2
    late = GeneratorConfig(h[0], h[3], rate_per_s=0.002, seed=int(uuid.uuid4().int % 10**6), malformed_rate=0.2)
    produce(services, late, topics=topics, truth=False)
    gen(h[3], h[5], 905)

    first = drain_interval(services, iot, h[0], h[1])
    # the DAG was paused; with catchup=False the next run is hour 4, located by timestamp
    latest = drain_interval(services, iot, h[4], h[5])
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap)
    ends = consumer.end_offsets([TopicPartition(iot, p) for p in range(3)])
    consumer.close()
    total = sum(ends.values())
    expected_holes = total - first.consumed - latest.consumed
    assert expected_holes > 0
    assert any(g.startswith("offsets") for g in coverage_gaps(es, h[0].date(), [iot])[iot])  # the day stays open

    seen = check_ledger(services, iot, dry_run=True)
    assert (seen.uncovered, seen.drained, seen.remaining) == (expected_holes, 0, expected_holes)
    result = check_ledger(services, iot)
    assert (result.uncovered, result.drained, result.remaining) == (expected_holes, expected_holes, 0)
    assert result.indexed + result.dead_lettered == expected_holes and result.dead_lettered > 0
    assert h[0].isoformat() in result.touched_hours  # the late records of an already drained hour

    # every offset of the topic is indexed or dead-lettered, exactly once
    assert events_of(es, iot) + dead_letters_of(es, iot) == total
    assert first.indexed + latest.indexed + result.indexed == events_of(es, iot)
    assert not any(g.startswith("offsets") for g in coverage_gaps(es, h[0].date(), [iot]).get(iot, []))
    # idempotent: the next check finds nothing, through the CLI the DAG task runs
    run = CliRunner().invoke(app, ["ledger", "--topics", iot])
    assert run.exit_code == 0, run.output
    assert json.loads(run.stdout.strip().splitlines()[-1])["uncovered"] == 0
