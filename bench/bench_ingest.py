"""Drain throughput against ceilings measured in the same run (not a test).

Ceilings: (1) raw Kafka consume rate of the same records with kafka-python, no processing;
(2) Elasticsearch bulk ceiling: the same documents pre-serialized into bulk bodies and sent
directly, into a scratch index with the same mapping, by 1, 2 and 4 concurrent senders; the
best of the three is the ceiling. The drain's events/s is printed as a ratio to each, and
written with the load average to bench/results/ingest.json and ingest.png.

    python bench/bench_ingest.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Run
from devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.ingest.drain import INFLIGHT, DrainResult, drain_interval
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


def es_ceiling(settings: Settings, topic: str, expected: int, chunk: int = 5000) -> dict[int, float]:
    """Bulk-index the topic's documents from pre-serialized bodies into a scratch index per sender count.

    Returns docs/s for 1, 2 and 4 concurrent senders (each into a fresh index); the best is the ceiling.
    """
    es = client(settings)
    template = es.indices.get_index_template(name="eventpipe-events")["index_templates"][0]["index_template"]
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False, max_poll_records=chunk
    )
    consumer.assign([TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))])
    consumer.seek_to_beginning()
    docs: list[tuple[str, bytes]] = []
    seen = 0
    while seen < expected:
        for records in consumer.poll(timeout_ms=1000).values():
            for record in records:
                seen += 1
                try:
                    json.loads(record.value)  # the ceiling skips records that are not JSON at all
                except ValueError:
                    continue
                docs.append((f"{record.partition}-{record.offset}", record.value))
    consumer.close()
    rates: dict[int, float] = {}
    for senders in (1, 2, 4):
        scratch = f"bench-ceiling-{uuid.uuid4().hex[:6]}"
        es.indices.create(
            index=scratch,
            mappings=template["template"]["mappings"],
            settings={"number_of_shards": 1, "number_of_replicas": 0},
        )
        bodies = [
            b"".join(
                b'{"index":{"_index":"%s","_id":"%s"}}\n%s\n' % (scratch.encode(), doc_id.encode(), value)
                for doc_id, value in docs[offset : offset + chunk]
            )
            for offset in range(0, len(docs), chunk)
        ]
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=senders) as pool:
            responses = list(pool.map(lambda body: es.bulk(body=body, refresh=False), bodies))
        rates[senders] = len(docs) / (time.perf_counter() - started)
        # only the few malformed-but-JSON records may be refused by the mapping
        refused = sum(item["index"]["status"] >= 300 for r in responses for item in r["items"])
        assert refused <= 0.01 * len(docs), f"{refused} of {len(docs)} ceiling documents were refused"
        es.indices.delete(index=scratch)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's event indices")
    parser.add_argument("--inflight", type=int, default=INFLIGHT, help="drain: bulk requests in flight")
    parser.add_argument("--batch-size", type=int, default=5000, help="drain: records per poll and bulk request")
    parser.add_argument("--topic", help="reuse a topic produced by an earlier run with the same --events")
    parser.add_argument("--stage", default="ingest", help="name of the results files in bench/results/")
    parser.add_argument(
        "--workers",
        default="1,0",
        help="drain process counts to measure, in order (0 = the default: one per CPU); the last is the headline",
    )
    args = parser.parse_args()
    run = Run(args.stage)

    env = local_env()
    up(DATA_SERVICES)
    settings = Settings.from_env(env)
    ensure_indices(client(settings), replicas=settings.elastic.replicas)
    tag = uuid.uuid4().hex[:6]
    topics = {"iot": f"bench-{tag}.iot", "business": f"bench-{tag}.business"}
    span_s = max(3600, args.events // 300)
    end = DAY + timedelta(seconds=span_s)
    console = Console()

    if args.topic:  # a topic an earlier run produced (same --events): skip producing
        topic, malformed = args.topic, None
        probe = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
        tps = [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic) or ())]
        n = sum(probe.end_offsets(tps).values()) - sum(probe.beginning_offsets(tps).values())
        probe.close()
    else:
        with console.status(f"producing {args.events:,} events"):
            produced = produce(
                settings,
                GeneratorConfig(
                    DAY, end, rate_per_s=args.events / span_s, seed=99, business_share=0.0, malformed_rate=0.001
                ),
                topics=topics,
                truth=False,
            )
        topic, malformed = topics["iot"], produced.malformed
        n = produced.by_topic[topic]
    console.print(f"topic {topic}: {n:,} events (reuse with --topic {topic} --events {args.events})")
    with console.status("raw Kafka consume"):
        kafka_rate = kafka_ceiling(settings, topic, n)
    with console.status("Elasticsearch bulk ceiling (1, 2 and 4 senders)"):
        es_rates = es_ceiling(settings, topic, n)
    es_rate = max(es_rates.values())
    es = client(settings)
    drains: dict[str, DrainResult] = {}
    for workers in (int(w) for w in args.workers.split(",")):
        # every variant writes into empty day indices (an overwrite costs Elasticsearch more than a create)
        es.indices.delete(index=f"{EVENTS_PREFIX}-2024.01.*", allow_no_indices=True)
        ensure_indices(es, replicas=settings.elastic.replicas)
        tuned = settings.updated(kafka={"drain_workers": workers})
        with console.status(f"drain, workers={workers or 'default'}"):
            got = drain_interval(tuned, topic, DAY, end, batch_size=args.batch_size, inflight=args.inflight)
        drains[f"{got.workers} process{'es' if got.workers > 1 else ''}"] = got
    result = got
    drain_rate = result.consumed / result.seconds
    rates = {label: r.consumed / r.seconds for label, r in drains.items()}

    table = Table(title=f"ingest benchmark: {n:,} events, {malformed if malformed is not None else '?'} malformed")
    for column in ("measure", "events/s", "drain ratio"):
        table.add_column(column, justify="right")
    table.add_row("raw Kafka consume (ceiling)", f"{kafka_rate:,.0f}", f"{drain_rate / kafka_rate:.2f}")
    for senders, rate in es_rates.items():
        table.add_row(f"ES bulk, pre-serialized, {senders} sender(s)", f"{rate:,.0f}", f"{drain_rate / rate:.2f}")
    table.add_row("ES bulk ceiling (best of 1, 2, 4 senders)", f"{es_rate:,.0f}", f"{drain_rate / es_rate:.2f}")
    for label, rate in rates.items():
        table.add_row(f"drain, {label} (parse+validate+bulk+DLQ+commit)", f"{rate:,.0f}", f"{rate / es_rate:.2f} *")
    console.print(table)
    console.print("* the drain rows' ratio is to the ES bulk ceiling")
    console.print(
        f"drain: {result.consumed:,} consumed, {result.indexed:,} indexed, "
        f"{result.dead_lettered:,} dead letters in {result.seconds:.1f}s (bulk {result.bulk_seconds:.1f}s)"
    )
    json_path, png_path = run.write(
        {
            "events": n,
            "malformed": malformed,
            "topic": topic,
            "drain_config": {"inflight": args.inflight, "batch_size": args.batch_size, "workers": result.workers},
            "events_per_second": {
                "raw_kafka_consume": round(kafka_rate),
                **{f"es_bulk_{senders}_senders": round(rate) for senders, rate in es_rates.items()},
                "es_bulk_ceiling": round(es_rate),
                "drain": round(drain_rate),
                **{f"drain_{label.replace(' ', '_')}": round(rate) for label, rate in rates.items()},
            },
            "drain_ratios_to_es_ceiling": {label: round(rate / es_rate, 3) for label, rate in rates.items()},
            "drain_ratio_to_es_ceiling": round(drain_rate / es_rate, 3),
            "drain_ratio_to_kafka": round(drain_rate / kafka_rate, 3),
            "drain": result.as_dict() | {"partitions": len(result.partitions)},
            "drains": {label: r.as_dict() | {"partitions": len(r.partitions)} for label, r in drains.items()},
        },
        [
            ("ES bulk ceiling (best of 1/2/4 senders)", es_rate),
            *[(f"ES bulk, {senders} sender(s)", rate) for senders, rate in es_rates.items()],
            ("raw Kafka consume", kafka_rate),
            *[(f"drain, {label} ({rate / es_rate:.2f} of ceiling)", rate) for label, rate in rates.items()],
        ],
        xlabel="events/s",
        title=f"Kafka -> Elasticsearch drain, {n:,} events",
    )
    console.print(f"wrote {json_path} and {png_path}")
    if not args.keep:
        client(settings).indices.delete(index=f"{EVENTS_PREFIX}-2024.01.*", allow_no_indices=True)


if __name__ == "__main__":
    main()
