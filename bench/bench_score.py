"""Hourly scoring, end to end in the task, against a floor measured in the same run (not a test).

A champion is trained with Spark on two generated archive days in a scratch bucket; one hour of
events of the following day is indexed into Elasticsearch. Then the task's command,
``eventpipe ml score --start … --end …``, runs as a fresh process (as Airflow runs it) with
``--engine spark`` (before: the PipelineModel in a local Spark session) and ``--engine python``
(after: the champion's scorer.json with pyarrow/numpy). Floor: a fresh Python process that
imports the scoring module and only reads the hour's events from Elasticsearch.

    python bench/bench_score.py --rate 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Run
from devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.events.generator import GeneratorConfig, generate, utc
from eventpipe.events.schema import daily_index
from eventpipe.ml.score import anomaly_id
from eventpipe.ml.train import train
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
from eventpipe.storage.elastic import ANOMALY_INDEX, EVENTS_PREFIX, IndexAction, bulk_index, client
from eventpipe.storage.s3 import ensure_bucket, s3_client
from tests.ml_archive import delete_bucket, write_generated_archive

SEED = 7117
START = utc("2029-04-01T00:00:00")
HOUR = START + timedelta(days=2, hours=13)
FLOOR = """
import sys
from eventpipe.events.generator import utc
from eventpipe.storage.elastic import client
from eventpipe.ml.score import read_elasticsearch
from eventpipe.settings import Settings
print(read_elasticsearch(client(Settings.from_env()), utc(sys.argv[1]), utc(sys.argv[2])).num_rows)
"""


def timed_process(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the process and its waited-for descendants, last stdout line).

    CPU seconds barely depend on how loaded the shared machine is; wall seconds do.
    """
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{argv} failed:\n{done.stderr[-3000:]}")
    cpu_s = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
    return seconds, cpu_s, done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=3.0, help="events/s in the scored hour")
    parser.add_argument("--train-rate", type=float, default=0.25, help="events/s on the two training days")
    parser.add_argument("--repeat", type=int, default=2, help="each variant best-of-N, interleaved")
    args = parser.parse_args()

    env = {**os.environ, **local_env()}
    # Spark's own settings come from the process environment (build_session): the devstack's jars
    os.environ.setdefault("EVENTPIPE_SPARK_JARS_DIR", env["EVENTPIPE_SPARK_JARS_DIR"])
    run = Run("score")
    up(DATA_SERVICES)
    console = Console(width=150)
    settings = Settings.from_env(env).updated(s3={"bucket": f"bench-score-{uuid.uuid4().hex[:8]}"})
    env["EVENTPIPE_ARCHIVE_BUCKET"] = settings.s3.bucket
    ensure_bucket(settings, settings.s3.bucket)
    s3 = s3_client(settings)
    es = client(settings)
    events: list = []
    try:
        with console.status("training a champion on two generated days (Spark)"):
            config = GeneratorConfig(
                START, START + timedelta(days=2), rate_per_s=args.train_rate, anomaly_rate=0.02, seed=SEED
            )
            write_generated_archive(settings, config)
            spark = build_session(settings, "eventpipe-bench-score")
            trained = train(settings, days=2, truth_prefix=f"ground-truth/seed={SEED}/", spark=spark)
            spark.stop()
        hour = GeneratorConfig(HOUR, HOUR + timedelta(hours=1), rate_per_s=args.rate, anomaly_rate=0.02, seed=SEED + 1)
        events = [r.event for r in generate(hour) if r.event is not None]
        actions = [IndexAction(daily_index(EVENTS_PREFIX, e.event_time), e.event_id, e.document()) for e in events]
        for offset in range(0, len(actions), 5000):
            assert not bulk_index(es, actions[offset : offset + 5000]).rejected
        es.indices.refresh(index=f"{EVENTS_PREFIX}-*")

        interval = [HOUR.isoformat(), (HOUR + timedelta(hours=1)).isoformat()]
        eventpipe = str(Path(sys.executable).with_name("eventpipe"))
        score = [eventpipe, "ml", "score", "--start", interval[0], "--end", interval[1], "--engine"]
        variants = {
            "floor: python + read the hour from ES": [sys.executable, "-c", FLOOR, *interval],
            "before: ml score --engine spark": [*score, "spark"],
            "after: ml score --engine python": [*score, "python"],
        }
        timings: dict[str, list[float]] = {name: [] for name in variants}
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        outputs: dict[str, object] = {}
        for _ in range(args.repeat):
            for name, argv in variants.items():
                seconds, cpu_s, last = timed_process(argv, env)
                timings[name].append(round(seconds, 2))
                cpu[name].append(round(cpu_s, 2))
                outputs[name] = last if name.startswith("floor") else json.loads(last)
        best = {name: min(values) for name, values in timings.items()}
        best_cpu = {name: min(values) for name, values in cpu.items()}
        floor_s, spark_s, python_s = best.values()
        by_spark, by_python = outputs[list(variants)[1]], outputs[list(variants)[2]]
        assert isinstance(by_spark, dict) and isinstance(by_python, dict)
        assert by_spark["anomalies"] == by_python["anomalies"] and by_python["created"] == 0, (by_spark, by_python)

        table = Table(title=f"scoring one hour: {len(events):,} events, {by_python['anomalies']} anomalies")
        for column in ("task command (fresh process)", "wall s (best)", "all runs", "floor ÷ this", "CPU s (best)"):
            table.add_column(column, justify="left" if column.startswith("task") else "right")
        for name, seconds in best.items():
            table.add_row(
                name,
                f"{seconds:.2f}",
                ", ".join(map(str, timings[name])),
                f"{floor_s / seconds:.2f}",
                f"{best_cpu[name]:.2f}",
            )
        console.print(table)
        console.print(
            f"speed-up {spark_s / python_s:.1f}x; in-process seconds: spark {by_spark['seconds']}, "
            f"python {by_python['seconds']}; champion v{trained.version} F1 {trained.evaluation['f1']:.4f}"
        )
        paths = run.write(
            {
                "events": len(events),
                "anomalies": by_python["anomalies"],
                "best_seconds": best,
                "all_seconds": timings,
                "best_cpu_seconds": best_cpu,
                "all_cpu_seconds": cpu,
                "in_process_seconds": {"spark": by_spark["seconds"], "python": by_python["seconds"]},
                "ratio_floor_to_after": round(floor_s / python_s, 3),
                "speedup": round(spark_s / python_s, 2),
                "target_seconds": 10,
            },
            [(name, seconds) for name, seconds in best.items()],
            xlabel="seconds, wall clock of the task's process (lower is better)",
            title=f"hourly scoring of {len(events):,} events",
        )
        console.print(f"results: {', '.join(str(p) for p in paths)}")
    finally:  # the devstack node has no reindex module (no _delete_by_query): delete this run's anomalies by id
        ids = [anomaly_id(e.event_id, 1) for e in events]  # the scratch bucket's only version
        for offset in range(0, len(ids), 5000):
            body = [{"delete": {"_index": ANOMALY_INDEX, "_id": doc_id}} for doc_id in ids[offset : offset + 5000]]
            es.bulk(operations=body)
        es.indices.delete(index=f"{EVENTS_PREFIX}-2029.04.0*", allow_no_indices=True)
        delete_bucket(s3, settings.s3.bucket)


if __name__ == "__main__":
    main()
