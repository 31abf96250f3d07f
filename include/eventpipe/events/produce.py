"""Send generated events to Kafka and keep the ground truth apart, in S3."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
from kafka import KafkaProducer

from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.events.topics import SOURCE_TOPICS, ensure_topics
from eventpipe.settings import Settings
from eventpipe.storage.s3 import ensure_bucket, s3_client

TRUTH_PREFIX = "ground-truth"


@dataclass
class ProduceResult:
    produced: int
    valid: int
    malformed: int
    anomalies: int
    by_topic: dict[str, int]
    truth_uri: str | None
    seconds: float


def produce(
    settings: Settings,
    config: GeneratorConfig,
    *,
    realtime: bool = False,
    truth: bool = True,
    topics: dict[str, str] = SOURCE_TOPICS,
) -> ProduceResult:
    """Produce the stream (timestamps = event time); ``realtime`` paces sends to the event clock."""
    ensure_topics(settings, topics.values())
    producer = KafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        compression_type="gzip",
        retries=5,
    )
    counts = {topic: 0 for topic in topics.values()}
    malformed = 0
    anomalies: list[dict[str, object]] = []
    started = time.perf_counter()
    wall_start = time.time()
    try:
        for record in generate(config):
            if realtime:
                delay = (record.timestamp_ms / 1000 - config.start.timestamp()) - (time.time() - wall_start)
                if delay > 0:
                    time.sleep(delay)
            topic = topics[record.topic_kind]
            producer.send(topic, key=record.key.encode(), value=record.value, timestamp_ms=record.timestamp_ms)
            counts[topic] += 1
            malformed += record.malformed is not None
            if record.anomaly:
                anomalies.append(record.anomaly)
        producer.flush()
    finally:
        producer.close()
    truth_uri = _write_truth(settings, config, anomalies) if truth else None
    produced = sum(counts.values())
    return ProduceResult(
        produced,
        produced - malformed,
        malformed,
        len(anomalies),
        counts,
        truth_uri,
        round(time.perf_counter() - started, 3),
    )


def truth_key(config: GeneratorConfig) -> str:
    return (
        f"{TRUTH_PREFIX}/seed={config.seed}/"
        f"{config.start.strftime('%Y%m%dT%H%M%S')}_{config.end.strftime('%Y%m%dT%H%M%S')}.parquet"
    )


TRUTH_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("device_id", pa.string()),
        ("metric", pa.string()),
        ("kind", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("magnitude", pa.float64()),  # in sigma of the metric's noise (eventpipe.events.generator.TAXONOMY)
        ("window_id", pa.string()),  # the episode of a sustained kind; null for point kinds
    ]
)


def _write_truth(settings: Settings, config: GeneratorConfig, anomalies: list[dict[str, object]]) -> str:
    table = pa.Table.from_pylist(anomalies, schema=TRUTH_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    ensure_bucket(settings, settings.s3.bucket)
    key = truth_key(config)
    s3_client(settings).put_object(Bucket=settings.s3.bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{settings.s3.bucket}/{key}"
