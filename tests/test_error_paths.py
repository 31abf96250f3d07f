"""Error paths of the dead-letter queue, the offset ledger and the drain, against the real Kafka,
Elasticsearch and S3: each ends in the exact error (or the exact dead letter) the code promises.

Every test owns a day of 2021, a year no other test writes into, and fresh topics.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.events.topics import DLQ_TOPIC
from eventpipe.ingest import dlq
from eventpipe.ingest.dlq import (
    ENVELOPE_HEADROOM,
    INLINE_KEY_BYTES,
    ClaimCheck,
    DeadLetter,
    DeadLetterError,
    DlqLimits,
    encode_letters,
    letter_raw,
    write_dead_letters,
)
from eventpipe.ingest.drain import drain_interval
from eventpipe.ingest.kafka_io import CONSUMER_GROUP, group_consumer, read_ranges
from eventpipe.ingest.ledger import check_ledger
from eventpipe.ingest.offsets import PartitionRange
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX
from eventpipe.storage.s3 import s3_client

from .es_support import dead_letters_of, events_of, forget_topics

pytestmark = pytest.mark.services


def _hour(day: int) -> datetime:
    return utc("2021-01-01T10:00:00") + timedelta(days=day)


def _send(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes | None]], when: datetime) -> None:
    """(key, value) records one second apart after ``when``; a value of None is a tombstone."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap, acks="all", max_request_size=4_000_000)
    for i, (key, value) in enumerate(records):
        stamp = int(when.timestamp() * 1000) + 1000 * (i + 1)
        producer.send(topic, key=key, value=value, timestamp_ms=stamp, partition=0).get(timeout=60)
    producer.close()


def _letters_of(es: Elasticsearch, topic: str) -> list[dict[str, object]]:
    es.indices.refresh(index=DLQ_INDEX)
    hits = es.search(index=DLQ_INDEX, query={"term": {"source_topic": topic}}, size=100)["hits"]["hits"]
    return [h["_source"] for h in hits]


def _letter(topic: str, raw: bytes, offset: int = 7, key: bytes | None = None) -> DeadLetter:
    return DeadLetter(topic, 0, offset, 0, raw, "schema", "not JSON", key)


@pytest.fixture()
def fake_topic(services: Settings, es: Elasticsearch) -> Iterator[str]:
    """A source topic name no drain reads: letters written for it are removed afterwards."""
    topic = f"test-{uuid.uuid4().hex[:8]}.iot"
    yield topic
    forget_topics(es, [topic])


# -- dead-letter queue


def test_oversize_key_is_claim_checked_with_its_exact_bytes(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(1)
    iot = topics["iot"]
    key = os.urandom(INLINE_KEY_BYTES + 1)  # one byte past what a letter carries inline
    _send(services, iot, [(key, b"not json at all")], h0)
    result = drain_interval(services, iot, h0, h0 + timedelta(hours=1))
    assert (result.consumed, result.indexed, result.dead_lettered) == (1, 0, 1)
    [doc] = _letters_of(es, iot)
    assert "key_b64" not in doc and doc["key_sha256"] == hashlib.sha256(key).hexdigest()
    bucket, name = str(doc["key_ref"]).removeprefix("s3://").split("/", 1)
    assert s3_client(services).get_object(Bucket=bucket, Key=name)["Body"].read() == key
    assert letter_raw(doc, services) == b"not json at all"  # the value is claim-checked with it


def test_a_letter_too_large_even_as_a_claim_check_fails_with_its_coordinates(services: Settings) -> None:
    # a DLQ limit of 600 bytes: the claim check's digest, preview and reason alone are larger
    limits = DlqLimits(topic_max_message_bytes=ENVELOPE_HEADROOM + 600, producer_max_request_size=1_048_576)
    letter = _letter("test-toolarge.iot", os.urandom(5000), offset=4711)
    with pytest.raises(DeadLetterError, match=r"offset 4711: the letter is \d+ bytes even as a claim check"):
        encode_letters([letter], limits, ClaimCheck(services), _hour(2))


def test_the_broker_refusing_a_letter_fails_the_write(services: Settings, es: Elasticsearch, fake_topic: str) -> None:
    """The letter fits the limits the drain was given, but not the DLQ topic's real max.message.bytes."""
    producer = KafkaProducer(bootstrap_servers=services.kafka.bootstrap, max_request_size=4_000_000, retries=0)
    limits = DlqLimits(topic_max_message_bytes=4_000_000, producer_max_request_size=4_000_000)  # not the real one
    letter = _letter(fake_topic, os.urandom(1_000_000), offset=11)  # ~1.3 MB of base64: over the topic's 1 MB
    try:
        with pytest.raises(
            DeadLetterError, match=rf"topic {fake_topic} partition 0 offset 11 to {DLQ_TOPIC}: MessageSizeTooLarge"
        ) as e:
            write_dead_letters(
                [letter], es=es, producer=producer, interval_start=_hour(3), limits=limits, claims=ClaimCheck(services)
            )
    finally:
        producer.close()
    assert isinstance(e.value.__cause__, MessageSizeTooLargeError)  # the broker's answer, not a client bug
    assert dead_letters_of(es, fake_topic) == 0  # never indexed without the topic's acknowledgement


def test_no_broker_for_the_letter_fails_the_write_with_its_coordinates(
    services: Settings, es: Elasticsearch, fake_topic: str
) -> None:
    """The DLQ producer finds no broker (a closed port): the send's own timeout carries the letter's coordinates."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        closed = sock.getsockname()[1]
    producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{closed}", max_block_ms=2000, api_version=(3, 0))
    limits = DlqLimits(topic_max_message_bytes=1_048_588, producer_max_request_size=1_048_576)
    try:
        with pytest.raises(DeadLetterError, match=rf"topic {fake_topic} partition 0 offset 13 to {DLQ_TOPIC}") as e:
            write_dead_letters(
                [_letter(fake_topic, b"{", offset=13)],
                es=es,
                producer=producer,
                interval_start=_hour(3),
                limits=limits,
                claims=ClaimCheck(services),
            )
    finally:
        producer.close(timeout=5)
    assert isinstance(e.value.__cause__, KafkaTimeoutError)
    assert dead_letters_of(es, fake_topic) == 0


def test_the_index_rejecting_a_letter_fails_the_write(
    services: Settings, es: Elasticsearch, fake_topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead-letter index whose mapping refuses the letter (a strict mapping stands in for a broken template)."""
    strict = f"test-dlq-strict-{uuid.uuid4().hex[:8]}"
    es.indices.create(index=strict, mappings={"dynamic": "strict", "properties": {"reason": {"type": "keyword"}}})
    monkeypatch.setattr(dlq, "DLQ_INDEX", strict)
    producer = KafkaProducer(bootstrap_servers=services.kafka.bootstrap, acks="all")
    limits = dlq.read_limits(services, producer)
    try:
        with pytest.raises(DeadLetterError, match=rf"rejected 1 records, first topic {fake_topic} .*strict_dynamic"):
            write_dead_letters(
                [_letter(fake_topic, b"{broken", offset=12)],
                es=es,
                producer=producer,
                interval_start=_hour(4),
                limits=limits,
                claims=ClaimCheck(services),
            )
    finally:
        producer.close()
        es.indices.delete(index=strict)


def test_letter_raw_refuses_a_claim_check_object_that_changed(services: Settings, fake_topic: str) -> None:
    payload = os.urandom(3000)
    limits = DlqLimits(topic_max_message_bytes=ENVELOPE_HEADROOM + 2000, producer_max_request_size=1_048_576)
    [(_, doc, _)] = encode_letters([_letter(fake_topic, payload)], limits, ClaimCheck(services), _hour(5))
    assert letter_raw(doc, services) == payload
    bucket, key = str(doc["payload_ref"]).removeprefix("s3://").split("/", 1)
    s3 = s3_client(services)
    s3.put_object(Bucket=bucket, Key=key, Body=payload[:-1] + b"\x00")  # corrupted in place
    try:
        with pytest.raises(ValueError, match="does not match its sha256"):
            letter_raw(doc, services)
        with pytest.raises(ValueError, match="needs settings to read S3"):
            letter_raw(doc)
    finally:
        s3.delete_object(Bucket=bucket, Key=key)  # content-addressed: a later put recreates it exactly


# -- drain


def test_tombstones_mid_batch_are_dead_lettered_and_the_rest_lands(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(6)
    iot = topics["iot"]
    before = produce(services, GeneratorConfig(h0, h0 + timedelta(minutes=20), 0.05, seed=61, malformed_rate=0.0),
                     topics=topics, truth=False)  # fmt: skip
    # tombstones (null values, as log compaction writes them) between the hour's events, inside one batch
    _send(services, iot, [(b"dev-00001", None), (b"dev-00002", None)], h0 + timedelta(minutes=10))
    after = produce(services, GeneratorConfig(h0 + timedelta(minutes=20), h0 + timedelta(minutes=40), 0.05, seed=62,
                                              malformed_rate=0.0), topics=topics, truth=False)  # fmt: skip
    events = before.by_topic[iot] + after.by_topic[iot]
    result = drain_interval(services, iot, h0, h0 + timedelta(hours=1), batch_size=500)
    assert (result.consumed, result.indexed, result.dead_lettered) == (events + 2, events, 2)
    assert events_of(es, iot) == events
    letters = _letters_of(es, iot)
    assert [d["size"] for d in letters] == [0, 0] and all(d["error_kind"] == "schema" for d in letters)
    assert all(letter_raw(d) == b"" for d in letters)


def test_a_plan_past_the_log_end_fails_on_the_idle_timeout_with_the_positions(
    services: Settings, topics: dict[str, str]
) -> None:
    """A planned range the log no longer reaches (as after a truncation): the reader gives up, naming where."""
    iot = topics["iot"]
    _send(services, iot, [(b"dev-00001", b"{}")] * 3, _hour(10))  # offsets 0, 1, 2 of partition 0
    consumer = group_consumer(services, iot, 100)
    read: list[int] = []
    try:
        with pytest.raises(
            TimeoutError, match=rf"no records for 2s while draining; position/end: {{'{iot}/0': \(3, 5\)}}"
        ):
            for batch in read_ranges(consumer, [PartitionRange(iot, 0, 0, 5)], 100, idle_timeout_s=2):
                read += [record.offset for record in batch]
    finally:
        consumer.close(autocommit=False)
    assert read == [0, 1, 2]  # every record there was, then the timeout


def test_an_earlier_interval_never_rewinds_the_committed_offsets(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(7)
    iot = topics["iot"]
    produce(services, GeneratorConfig(h0, h0 + timedelta(hours=2), 0.2, seed=71), topics=topics, truth=False)
    later = drain_interval(services, iot, h0 + timedelta(hours=1), h0 + timedelta(hours=2))
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap, group_id=CONSUMER_GROUP)
    try:
        after_later = {int(p["partition"]): consumer.committed(TopicPartition(iot, int(p["partition"]))) for p in
                       later.partitions}  # fmt: skip
        assert after_later == {int(p["partition"]): int(p["end"]) for p in later.partitions}
        earlier = drain_interval(services, iot, h0, h0 + timedelta(hours=1))  # a backfill of the hour before
        assert earlier.consumed > 0
        assert all(int(p["end"]) <= after_later[int(p["partition"])] for p in earlier.partitions)
        for partition, offset in after_later.items():
            assert consumer.committed(TopicPartition(iot, partition)) == offset  # not moved back
    finally:
        consumer.close()


# -- offset ledger


def test_ledger_drains_at_most_max_records_and_the_next_check_the_rest(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    h0 = _hour(8)
    iot = topics["iot"]
    produce(services, GeneratorConfig(h0, h0 + timedelta(hours=3), 0.05, seed=81, malformed_rate=0.05), topics=topics,
            truth=False)  # fmt: skip
    first = drain_interval(services, iot, h0, h0 + timedelta(hours=1))
    last = drain_interval(services, iot, h0 + timedelta(hours=2), h0 + timedelta(hours=3))
    uncovered = check_ledger(services, iot, dry_run=True).uncovered  # the middle hour: no run drained it
    assert uncovered > 10
    budget = uncovered // 3
    part = check_ledger(services, iot, max_records=budget)
    assert (part.uncovered, part.drained, part.remaining) == (uncovered, budget, uncovered - budget)
    rest = check_ledger(services, iot, max_records=budget * 10)
    assert (rest.uncovered, rest.drained, rest.remaining) == (uncovered - budget, uncovered - budget, 0)
    total = first.consumed + last.consumed + uncovered
    assert events_of(es, iot) + dead_letters_of(es, iot) == total  # every offset once, across the split
    assert part.indexed + part.dead_lettered + rest.indexed + rest.dead_lettered == uncovered


def test_ledger_of_a_topic_that_does_not_exist_says_so(services: Settings) -> None:
    missing = f"test-{uuid.uuid4().hex[:8]}.absent"
    with pytest.raises(LookupError, match=rf"topic '{missing}' does not exist or has no partitions"):
        check_ledger(services, missing)
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap)
    try:
        assert missing not in consumer.topics()  # the check did not create it on the way
    finally:
        consumer.close()
