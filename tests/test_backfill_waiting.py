"""A backfill that finds nothing says where its interval's late records wait, and which run drains them.

Real Kafka and Elasticsearch, a one-partition topic and a day of this test's own: records of a past day
reach the topic after records stamped a day later were drained (a device uploading a buffered day).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from kafka import KafkaProducer

from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.events.topics import ensure_topics
from eventpipe.ingest.drain import drain_interval
from eventpipe.settings import Settings

pytestmark = pytest.mark.services


def _send(settings: Settings, topic: str, start: datetime, count: int) -> None:
    """``count`` valid IoT events stamped in the half hour after ``start``, with fresh ids, to partition 0."""
    config = GeneratorConfig(start, start + timedelta(minutes=30), count / 1800, business_share=0, malformed_rate=0)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    for record in generate(config):
        assert record.event is not None
        event = record.event.model_copy(update={"event_id": f"wait-{uuid.uuid4().hex}"})
        value = json.dumps(event.document()).encode()
        producer.send(topic, key=record.key.encode(), value=value, partition=0, timestamp_ms=record.timestamp_ms)
    producer.flush(timeout=30)
    producer.close()


def test_backfill_of_a_day_whose_records_arrived_late_says_which_run_drains_them(
    services: Settings, stack_env: dict[str, str]
) -> None:
    day = datetime(2019, 1, 1, tzinfo=timezone.utc) + timedelta(days=random.randrange(365))  # this test's own
    next_day = day + timedelta(days=1)
    topic = f"test-{uuid.uuid4().hex[:8]}.iot"
    one_partition = services.model_copy(update={"kafka": services.kafka.model_copy(update={"topic_partitions": 1})})
    ensure_topics(one_partition, [topic])

    _send(services, topic, next_day + timedelta(hours=10), 10)  # offsets 0-9, stamped the next day
    live = drain_interval(services, topic, next_day + timedelta(hours=10), next_day + timedelta(hours=11))
    assert (live.consumed, live.waiting) == (10, None)
    _send(services, topic, day + timedelta(hours=5), 7)  # offsets 10-16: the day, uploaded late

    argv = ["drain", "--start", day.isoformat(), "--end", next_day.isoformat(), "--topics", topic]
    backfill = subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", *argv],
        env={**os.environ, **stack_env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert backfill.returncode == 0, backfill.stderr[-3000:]
    result = json.loads(backfill.stdout.strip().splitlines()[-1])
    after = f"[{(next_day + timedelta(hours=11)).isoformat()}, {(next_day + timedelta(hours=12)).isoformat()})"
    assert result["consumed"] == 0
    assert result["topics"][0]["waiting"] == {
        "records": 7,
        "ranges": [{"partition": 0, "first": 10, "last": 16, "records": 7}],
        "drained_by": f"the ingest run of {after} (after the last drained)",
        "scanned": 7,
        "complete": True,
    }
    assert (
        f"no records of {topic} in the planned ranges of [{day.isoformat()}, {next_day.isoformat()}), but 7 records "
        "with timestamps in it wait beyond the last drained offset (partition 0: offsets 10-16); "
        f"the ingest run of {after} (after the last drained) drains them into their own hours"
    ) in backfill.stderr

    # that run drains them, into the day's hour; a second backfill of the day then has nothing waiting
    named = drain_interval(services, topic, next_day + timedelta(hours=11), next_day + timedelta(hours=12))
    assert (named.consumed, named.indexed, named.touched_hours) == (7, 7, [(day + timedelta(hours=5)).isoformat()])
    again = drain_interval(services, topic, day, next_day)
    assert (again.replayed, again.consumed, again.waiting) == (True, 0, None)
