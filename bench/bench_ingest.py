"""Drain throughput against ceilings measured in the same run (not a test).

Ceilings: (1) raw Kafka consume rate of the same records with kafka-python, no processing;
(2) Elasticsearch bulk ceiling: the same documents pre-serialized into bulk bodies and sent
directly, into a scratch index with the same mapping. The drain's events/s is printed as a
ratio to each.

    python bench/bench_ingest.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from datetime import timedelta

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

from eventpipe.devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.ingest.drain import drain_interval
from eventpipe.settings import Settings
from eventpipe.storage.elastic import EVENTS_PREFIX, client, ensure_indices

DAY = utc("2024-01-01T00:00:00")


def kafka_ceiling(settings: Settings, topic: str, expected: int) -> float:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        enable_auto_commit=False,
        max_poll_records=5000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    seen, started = 0, time.perf_counter()
    while seen < expected:
        for records in consumer.poll(timeout_ms=1000).values():
            seen += len(records)
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def es_ceiling(settings: Settings, topic: str, expected: int, chunk: int = 5000) -> float:
    """Bulk-index the topic's documents from pre-serialized bodies into a scratch index."""
    es = client(settings)
    template = es.indices.get_index_template(name="eventpipe-events")["index_templates"][0]["index_template"]
    scratch = f"bench-ceiling-{uuid.uuid4().hex[:6]}"
    es.indices.create(
        index=scratch,
        mappings=template["template"]["mappings"],
        settings={"number_of_shards": 1, "number_of_replicas": 0},
    )
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False, max_poll_records=chunk
    )
    consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
    consumer.seek_to_beginning()
    bodies: list[str] = []
    lines: list[str] = []
    seen = 0
    while seen < expected:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                seen += 1
                try:
                    json.loads(record.value)  # the ceiling skips records that are not JSON at all
                except ValueError:
                    continue
                lines.append(json.dumps({"index": {"_index": scratch, "_id": f"{record.partition}-{record.offset}"}}))
                lines.append(record.value.decode())
                if len(lines) >= 2 * chunk:
                    bodies.append("\n".join(lines) + "\n")
                    lines = []
    if lines:
        bodies.append("\n".join(lines) + "\n")
    consumer.close()
    docs = sum(body.count("\n") // 2 for body in bodies)
    started = time.perf_counter()
    for body in bodies:
        es.bulk(body=body, refresh=False)
    elapsed = time.perf_counter() - started
    es.indices.delete(index=scratch)
    return docs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's event indices")
    args = parser.parse_args()

    env = local_env()
    up(DATA_SERVICES)
    settings = Settings.from_env(env)
    ensure_indices(client(settings))
    tag = uuid.uuid4().hex[:6]
    topics = {"iot": f"bench-{tag}.iot", "business": f"bench-{tag}.business"}
    span_s = max(3600, args.events // 300)
    end = DAY + timedelta(seconds=span_s)
    console = Console()

    with console.status(f"producing {args.events:,} events"):
        produced = produce(
            settings,
            GeneratorConfig(
                DAY, end, rate_per_s=args.events / span_s, seed=99, business_share=0.0, malformed_rate=0.001
            ),
            topics=topics,
            truth=False,
        )
    topic = topics["iot"]
    n = produced.by_topic[topic]
    with console.status("raw Kafka consume"):
        kafka_rate = kafka_ceiling(settings, topic, n)
    with console.status("Elasticsearch bulk ceiling"):
        es_rate = es_ceiling(settings, topic, n)
    with console.status("drain"):
        result = drain_interval(settings, topic, DAY, end)
    drain_rate = result.consumed / result.seconds

    table = Table(title=f"ingest benchmark: {n:,} events, {produced.malformed:,} malformed")
    for column in ("measure", "events/s", "drain ratio"):
        table.add_column(column, justify="right")
    table.add_row("raw Kafka consume (ceiling)", f"{kafka_rate:,.0f}", f"{drain_rate / kafka_rate:.2f}")
    table.add_row("ES bulk, pre-serialized (ceiling)", f"{es_rate:,.0f}", f"{drain_rate / es_rate:.2f}")
    table.add_row("drain (parse+validate+bulk+DLQ+commit)", f"{drain_rate:,.0f}", "1.00")
    console.print(table)
    console.print(
        f"drain: {result.consumed:,} consumed, {result.indexed:,} indexed, "
        f"{result.dead_lettered:,} dead letters in {result.seconds:.1f}s (bulk {result.bulk_seconds:.1f}s)"
    )
    if not args.keep:
        client(settings).indices.delete(index=f"{EVENTS_PREFIX}-2024.01.*", allow_no_indices=True)


if __name__ == "__main__":
    main()
