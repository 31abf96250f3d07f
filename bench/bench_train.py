"""Training throughput against ceilings measured in the same run, on the same archive files (not a test).

Ceilings: (1) a plain Spark count of the archive days through s3a (scan only); (2) the feature
pass alone: explode metrics, fit the robust baseline, compute the deviation features, count.
Training (``eventpipe.ml.train.train``: features + label join + logistic-regression fit + hold-out evaluation +
registry write) is printed as rows/s and as a ratio to each ceiling, with where its time goes: per
phase (``train: <phase>`` job descriptions) the wall time, Spark jobs, stages, tasks, executor run
time, shuffle and input bytes, read from the Spark UI's REST API.

    python bench/bench_train.py --events 1000000
    python bench/bench_train.py --events 1000000 --keep            # keep the generated archive ...
    python bench/bench_train.py --events 1000000 --bucket bench-ml-…  # ... and reuse it
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Run
from devstack.stack import local_env, up
from eventpipe.archive.layout import committed_days
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.ml.features import add_features, explode_metrics, fit_baseline, read_archive
from eventpipe.ml.registry import PREFIX
from eventpipe.ml.train import train
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
from eventpipe.storage.s3 import delete_keys, ensure_bucket, s3_client
from tests.ml_archive import delete_bucket, write_generated_archive

SEED = 99


def timed(fn):
    began = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - began


def _rest(spark, path: str) -> list[dict]:
    url = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{spark.sparkContext.applicationId}/{path}"
    with urllib.request.urlopen(url, timeout=30) as response:  # the driver's own UI on loopback
        return json.loads(response.read())


def spark_profile(spark, after_job: int) -> dict[str, dict[str, float]]:
    """Per ``train: <phase>`` job description: jobs, stages run (skipped ones are reused shuffles), tasks,
    executor run time and bytes, for the jobs after ``after_job``."""
    stages = {(s["stageId"], s["attemptId"]): s for s in _rest(spark, "stages?status=complete")}
    by_stage: dict[int, dict] = {}
    for stage in stages.values():
        by_stage.setdefault(stage["stageId"], stage)
    out: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for job in _rest(spark, "jobs"):
        if job["jobId"] <= after_job:
            continue
        phase = (job.get("description") or "other").removeprefix("train: ")
        row = out[phase]
        row["jobs"] += 1
        row["stages_run"] += job["numCompletedStages"]
        row["stages_skipped"] += job["numSkippedStages"]
        row["tasks"] += job["numCompletedTasks"]
        for stage_id in job["stageIds"]:
            stage = by_stage.get(stage_id)
            if stage is None or stage.get("status") != "COMPLETE":
                continue
            row["executor_run_s"] += stage["executorRunTime"] / 1000
            row["shuffle_write_mb"] += stage["shuffleWriteBytes"] / 1e6
            row["shuffle_read_mb"] += stage["shuffleReadBytes"] / 1e6
            row["input_mb"] += stage["inputBytes"] / 1e6
    return {phase: {k: round(v, 2) for k, v in row.items()} for phase, row in out.items()}


def last_job(spark) -> int:
    jobs = _rest(spark, "jobs")
    return max((job["jobId"] for job in jobs), default=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the scratch bucket")
    parser.add_argument("--bucket", default="", help="reuse this bucket's archive (from an earlier --keep run)")
    args = parser.parse_args()

    run = Run("train")
    up(["s3"])
    bucket = args.bucket or f"bench-ml-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(local_env()).updated(s3={"bucket": bucket})
    ensure_bucket(settings, settings.s3.bucket)
    s3 = s3_client(settings)
    os.environ["EVENTPIPE_SPARK_UI"] = "1"  # the per-phase profile comes from the UI's REST API
    # Spark's own settings come from the process environment (build_session): the devstack's jars
    os.environ.setdefault("EVENTPIPE_SPARK_JARS_DIR", local_env()["EVENTPIPE_SPARK_JARS_DIR"])
    start = utc("2024-06-01T00:00:00")
    config = GeneratorConfig(
        start,
        start + timedelta(days=args.days),
        rate_per_s=args.events / (args.days * 86400),
        anomaly_rate=0.02,
        seed=SEED,
    )
    try:
        if args.bucket:  # reuse: the archive stays, earlier model versions go (no champion to re-evaluate)
            gen_s = 0.0
            models = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])
            while models:
                delete_keys(s3, bucket, [o["Key"] for o in models])
                models = s3.list_objects_v2(Bucket=bucket, Prefix=PREFIX).get("Contents", [])
        else:
            _generated, gen_s = timed(lambda: write_generated_archive(settings, config))
        spark = build_session(settings, "eventpipe-bench-train")
        days = committed_days(s3, settings.s3.bucket)
        rows = read_archive(spark, s3, settings.s3.bucket, days).count()
        read_archive(spark, s3, settings.s3.bucket, days).count()  # warm-up: JVM, s3a client, file footers

        n_scan, scan_s = timed(lambda: read_archive(spark, s3, settings.s3.bucket, days).count())
        assert n_scan == rows, (n_scan, rows)

        def feature_pass() -> int:
            readings = explode_metrics(read_archive(spark, s3, settings.s3.bucket, days))
            return add_features(readings, fit_baseline(readings)).count()

        n_readings, feat_s = timed(feature_pass)
        before_train = last_job(spark)
        result, train_s = timed(
            lambda: train(settings, days=args.days, truth_prefix=f"ground-truth/seed={SEED}/", spark=spark)
        )
        profile = spark_profile(spark, before_train)

        table = Table(
            title=f"training benchmark: {rows:,} archive rows ({n_readings:,} metric readings), {args.days} days"
        )
        for column in ("stage", "seconds", "archive rows/s", "train rows/s ÷ stage rows/s"):
            table.add_column(column, justify="right" if column != "stage" else "left")
        for stage, seconds in (
            ("ceiling 1: Spark count via s3a", scan_s),
            ("ceiling 2: feature pass (explode+baseline+features)", feat_s),
            ("train (features+labels+LR fit+eval+register)", train_s),
        ):
            table.add_row(stage, f"{seconds:.1f}", f"{rows / seconds:,.0f}", f"{seconds / train_s:.3f}")
        console = Console(width=150)
        console.print(table)
        phases = Table(title="where training's time goes (per phase; Spark UI REST API)")
        columns = ("wall_s", "jobs", "stages_run", "stages_skipped", "tasks", "executor_run_s", "shuffle_write_mb",
                   "shuffle_read_mb", "input_mb")  # fmt: skip
        phases.add_column("phase")
        for column in columns:
            phases.add_column(column, justify="right")
        for phase in [*result.timings, *(p for p in profile if p not in result.timings)]:
            row = {"wall_s": result.timings.get(phase, 0.0), **profile.get(phase, {})}
            phases.add_row(phase, *(f"{row.get(c, 0):g}" for c in columns))
        console.print(phases)
        console.print(
            f"generate+write archive: {gen_s:.1f}s; train stage timings: {result.timings}; "
            f"hold-out F1 {result.evaluation['f1']:.4f} (all-positive {result.evaluation['f1_all_positive']:.4f}); "
            f"train rows/s = {rows / train_s:,.0f} = {train_s / scan_s:.1f}x the scan time, "
            f"{train_s / feat_s:.1f}x the feature pass"
        )
        paths = run.write(
            {
                "events": rows,
                "readings": n_readings,
                "days": args.days,
                "seconds": {
                    "ceiling_scan": round(scan_s, 2),
                    "ceiling_feature_pass": round(feat_s, 2),
                    "train": round(train_s, 2),
                },
                "ratio_train_to_scan": round(train_s / scan_s, 2),
                "ratio_train_to_feature_pass": round(train_s / feat_s, 2),
                "target_seconds": 90,
                "phase_seconds": result.timings,
                "spark_profile": profile,
                "hold_out": result.evaluation,
                "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"),
            },
            [("ceiling 1: count via s3a", scan_s), ("ceiling 2: feature pass", feat_s), ("train", train_s)]
            + [(f"  phase: {k}", v) for k, v in result.timings.items()],
            xlabel="seconds (lower is better)",
            title=f"Spark training on {rows:,} events ({n_readings:,} readings), local[2]",
        )
        console.print(f"results: {', '.join(str(p) for p in paths)}")
    finally:
        if not args.keep and not args.bucket:
            delete_bucket(s3, settings.s3.bucket)
        elif not args.bucket:
            print(f"kept the archive: --bucket {settings.s3.bucket}")


if __name__ == "__main__":
    main()
