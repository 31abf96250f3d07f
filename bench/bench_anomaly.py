"""Anomaly-detection quality and cost on the generator's default mix, in one run (not a test).

Generates the default mix (every kind of ``eventpipe.events.generator.TAXONOMY``) into committed archive
days and Elasticsearch, trains once (``eventpipe.ml.train.train``: the model and, on the same hold-out day,
the robust z-score rule and the random forest), then times hourly scoring of one hold-out hour as Airflow
runs it (``eventpipe ml score --engine python`` in a fresh process, which reads the hour before too).
Writes the per-kind table (model vs baselines), F1, window scores, false alarms per device-day, training
and scoring seconds as JSON + PNG.

    python bench/bench_anomaly.py --events 1000000             # the 1M-event run (4 days)
    python bench/bench_anomaly.py --demo                       # make demo's mix: 3 days at 0.2 events/s
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Run
from devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.events.generator import TAXONOMY, GeneratorConfig, utc
from eventpipe.ml.train import train
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
from eventpipe.storage.s3 import ensure_bucket, s3_client
from tests.ml_archive import delete_bucket, write_generated_archive

DOCS = Path(__file__).resolve().parents[1] / "docs" / "bench"
GOALS = {"f1_gain_over_zscore": 0.15, "recall_per_kind": 0.8, "train_seconds_1m": 90, "hourly_score_seconds": 10}


def kind_table(evaluation: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per kind: how many anomalous events, recall and window score of the model and each baseline."""
    rows = []
    for kind in TAXONOMY:
        row: dict[str, Any] = {"kind": kind, "anomalous_events": evaluation["anomalous_by_kind"].get(kind, 0)}
        for name, ev in (("model", evaluation), *baselines.items()):
            row[f"{name}_recall"] = ev["recall_by_kind"].get(kind)
            row[f"{name}_window"] = ev["window_score_by_kind"].get(kind)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2323)
    parser.add_argument("--demo", action="store_true", help="make demo's mix: 3 days at 0.2 events/s, its seed")
    parser.add_argument("--keep", action="store_true", help="keep the scratch bucket")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()

    if args.demo:
        start, days, rate, seed, stage = utc("2026-01-15T00:00:00"), 3, 0.2, 20260115, "anomaly-demo"
    else:
        start, days, seed, stage = utc("2024-09-01T00:00:00"), args.days, args.seed, "anomaly-1m"
        rate = args.events / (days * 86400)
    run = Run(stage)
    up(DATA_SERVICES)
    env = local_env()
    bucket = f"bench-anomaly-{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(env).updated(s3={"bucket": bucket})
    ensure_bucket(settings, bucket)
    os.environ.setdefault("EVENTPIPE_SPARK_JARS_DIR", env["EVENTPIPE_SPARK_JARS_DIR"])
    config = GeneratorConfig(start, start + timedelta(days=days), rate_per_s=rate, seed=seed)
    console = Console(width=160)
    try:
        began = time.perf_counter()
        archive = write_generated_archive(settings, config)
        gen_s = time.perf_counter() - began
        events = sum(len(v) for v in archive.events.values())
        spark = build_session(settings, "eventpipe-bench-anomaly")
        began = time.perf_counter()
        result = train(settings, days=days, truth_prefix=f"ground-truth/seed={seed}/", spark=spark)
        train_s = time.perf_counter() - began
        spark.stop()

        hour = start + timedelta(days=days - 1, hours=13)
        argv = [sys.executable, "-m", "eventpipe.cli", "ml", "score", "--engine", "python"]
        argv += ["--start", hour.isoformat(), "--end", (hour + timedelta(hours=1)).isoformat()]
        began = time.perf_counter()
        scored = subprocess.run(
            argv, env={**os.environ, **env, "EVENTPIPE_ARCHIVE_BUCKET": bucket}, capture_output=True, text=True
        )
        score_s = time.perf_counter() - began
        if scored.returncode != 0:
            raise SystemExit(scored.stderr[-3000:])
        score_result = json.loads(scored.stdout.strip().splitlines()[-1])

        ev, baselines = result.evaluation, result.baselines
        kinds = kind_table(ev, baselines)
        table = Table(title=f"{stage}: {events:,} events, hold-out {result.test_day} (recall / NAB-style window score)")
        for column in ("kind", "anomalous", "model", "z-score", "forest"):
            table.add_column(column, justify="left" if column == "kind" else "right")

        def cell(recall: float | None, window: float | None) -> str:
            text = "-" if recall is None else f"{recall:.3f}"
            return text + ("" if window is None else f" / {window:.3f}")

        for row in kinds:
            table.add_row(
                row["kind"],
                str(row["anomalous_events"]),
                *(cell(row[f"{n}_recall"], row[f"{n}_window"]) for n in ("model", "zscore", "forest")),
            )
        for label, key in (("precision", "precision"), ("recall", "recall"), ("event F1", "f1")):
            table.add_row(label, "", *(f"{e[key]:.3f}" for e in (ev, baselines["zscore"], baselines["forest"])))
        table.add_row(
            "window score", "", *(f"{e['window_score']:.3f}" for e in (ev, baselines["zscore"], baselines["forest"]))
        )
        table.add_row(
            "false alarms / device-day",
            "",
            *(f"{e['false_alarms_per_device_day']:.2f}" for e in (ev, baselines["zscore"], baselines["forest"])),
        )
        console.print(table)
        gain = ev["f1"] - baselines["zscore"]["f1"]
        console.print(
            f"F1 gain over the z-score: {gain:+.3f}; training {train_s:.1f}s ({result.timings}); "
            f"hourly scoring {score_s:.2f}s for {score_result['events']} events; promoted: {result.reason}"
        )
        paths = run.write(
            {
                "events": events,
                "days": days,
                "rate_per_s": rate,
                "seed": seed,
                "generator": {k: v for k, v in vars(config).items() if k not in ("start", "end")},
                "test_day": result.test_day,
                "f1": {"model": ev["f1"], **{n: b["f1"] for n, b in baselines.items()}},
                "f1_gain_over_zscore": round(gain, 4),
                "per_kind": kinds,
                "model": ev,
                "baselines": baselines,
                "promoted": result.promoted,
                "reason": result.reason,
                "seconds": {
                    "generate_index_archive": round(gen_s, 1),
                    "train": round(train_s, 1),
                    "hourly_score_process": round(score_s, 2),
                },
                "train_phases": result.timings,
                "hourly_score": score_result,
                "goals": GOALS,
            },
            [("z-score F1 x100", 100 * baselines["zscore"]["f1"]), ("forest F1 x100", 100 * baselines["forest"]["f1"])]
            + [("model F1 x100", 100 * ev["f1"])]
            + [(f"model recall x100: {r['kind']}", 100 * (r["model_recall"] or 0)) for r in kinds]
            + [(f"z-score recall x100: {r['kind']}", 100 * (r["zscore_recall"] or 0)) for r in kinds],
            xlabel="F1 / recall x 100 (higher is better)",
            title=f"anomaly detection on the default mix, {events:,} events; train {train_s:.0f}s",
            out=args.out,
        )
        console.print(f"results: {', '.join(str(p) for p in paths)}")
    finally:
        if not args.keep:
            delete_bucket(s3_client(settings), bucket)
        else:
            print(f"kept: bucket {bucket}")


if __name__ == "__main__":
    main()
