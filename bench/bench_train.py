"""Training throughput against ceilings measured in the same run, on the same archive files (not a test).

Ceilings: (1) a plain Spark count of the archive days through s3a (scan only); (2) the feature
pass alone: explode metrics, fit the robust baseline, compute the deviation features, count.
Training (``eventpipe.ml.train.train``: features + label join + logistic-regression fit + hold-out evaluation +
registry write) is printed as rows/s and as a ratio to each ceiling.

    python bench/bench_train.py --events 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventpipe.archive.layout import committed_days
from eventpipe.devstack.stack import local_env, up
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.ml.features import add_features, explode_metrics, fit_baseline, read_archive
from eventpipe.ml.train import train
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
from eventpipe.storage.s3 import ensure_bucket, s3_client
from tests.ml_archive import delete_bucket, write_generated_archive

SEED = 99


def timed(fn):
    began = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the scratch bucket")
    args = parser.parse_args()

    up(["s3"])
    settings = Settings.from_env(local_env()).model_copy(update={"archive_bucket": f"bench-ml-{uuid.uuid4().hex[:8]}"})
    ensure_bucket(settings, settings.archive_bucket)
    s3 = s3_client(settings)
    start = utc("2024-06-01T00:00:00")
    config = GeneratorConfig(
        start,
        start + timedelta(days=args.days),
        rate_per_s=args.events / (args.days * 86400),
        anomaly_rate=0.02,
        seed=SEED,
    )
    try:
        generated, gen_s = timed(lambda: write_generated_archive(settings, config))
        rows = sum(len(v) for v in generated.events.values())
        spark = build_session(settings, "eventpipe-bench-train")
        days = committed_days(s3, settings.archive_bucket)
        read_archive(spark, s3, settings.archive_bucket, days).count()  # warm-up: JVM, s3a client, file footers

        n_scan, scan_s = timed(lambda: read_archive(spark, s3, settings.archive_bucket, days).count())
        assert n_scan == rows, (n_scan, rows)

        def feature_pass() -> int:
            readings = explode_metrics(read_archive(spark, s3, settings.archive_bucket, days))
            return add_features(readings, fit_baseline(readings)).count()

        n_readings, feat_s = timed(feature_pass)
        result, train_s = timed(
            lambda: train(settings, days=args.days, truth_prefix=f"ground-truth/seed={SEED}/", spark=spark)
        )

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
        console.print(
            f"generate+write archive: {gen_s:.1f}s; train stage timings: {result.timings}; "
            f"hold-out F1 {result.evaluation['f1']:.4f} (all-positive {result.evaluation['f1_all_positive']:.4f}); "
            f"train rows/s = {rows / train_s:,.0f} = {train_s / scan_s:.1f}x the scan time, "
            f"{train_s / feat_s:.1f}x the feature pass"
        )
    finally:
        if not args.keep:
            delete_bucket(s3, settings.archive_bucket)


if __name__ == "__main__":
    main()
