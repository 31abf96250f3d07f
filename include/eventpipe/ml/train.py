"""Train the anomaly model on committed archive days; register it; promote it only if clearly better.

Split by time, never at random: the baseline and the model see the earlier days, the last
selected day is the hold-out (what the model will face next is later data, and readings of one
hour are correlated). Precision, recall and F1 are counted exactly at event level (an event is
flagged if any of its metrics is), which is what scoring writes. The current champion is
re-evaluated on the same hold-out, so the promotion compares like with like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any

from eventpipe.archive.layout import committed_days, manifest_key
from eventpipe.archive.manifest import load as load_manifest
from eventpipe.errors import InvalidArgument
from eventpipe.events.produce import TRUTH_PREFIX
from eventpipe.ml.features import (
    FEATURES,
    HISTORY_MS,
    POINT_FEATURES,
    add_features,
    explode_metrics,
    fit_baseline,
    fit_levels,
    read_archive,
    with_labels,
    with_levels,
)
from eventpipe.ml.registry import Registry, code_version
from eventpipe.ml.scorer import export_scorer
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session, s3a_uri
from eventpipe.storage.s3 import s3_client

if TYPE_CHECKING:
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
# what features, labels, the fit and the event-level evaluation need of an exploded reading
TRAIN_COLUMNS = (
    "event_id",
    "event_time",
    "device_id",
    "kind",
    "metric",
    "value",
    "hour",
    "day",
    "label",
    "truth_kind",
    "window_id",
)
BASELINES = ("zscore", "forest")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    max_iter: int = 100
    reg_param: float = 1e-4
    tol: float = 1e-6
    thresholds: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(2, 19))  # tuned on training data
    # the robust z-score rule's cut-offs in |z|, tuned on training days like the model's
    z_thresholds: tuple[float, ...] = tuple(round(2.0 + 0.25 * i, 2) for i in range(33))
    forest_trees: int = 10
    forest_depth: int = 6


@dataclass
class Evaluation:
    """Event-level figures on the hold-out day (an event is flagged if any of its readings is)."""

    events: int
    anomalous_events: int
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    f1_all_positive: float  # the trivial "flag everything" baseline, for scale
    recall_by_kind: dict[str, float] = field(default_factory=dict)
    anomalous_by_kind: dict[str, int] = field(default_factory=dict)
    windows: int = 0  # episodes of the sustained kinds on the hold-out day
    windows_detected: int = 0
    window_score: float = 0.0  # NAB-style: one per window, 1 for a detection at its start, ~0 at its end, 0 missed
    window_score_by_kind: dict[str, float] = field(default_factory=dict)
    device_days: int = 0
    false_alarms_per_device_day: float = 0.0


@dataclass
class TrainResult:
    version: int
    promoted: bool
    reason: str
    champion: int | None
    previous_champion: int | None
    train_days: list[str]
    test_day: str
    train_rows: int
    evaluation: dict[str, Any]
    baselines: dict[str, dict[str, Any]]
    champion_f1_on_holdout: float | None
    margin: float
    model_uri: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def select_days(
    available: Sequence[date], *, days: int | None = None, since: date | None = None, until: date | None = None
) -> tuple[list[date], date]:
    """(training days, hold-out day): the last ``days`` committed days, or those in [since, until]."""
    chosen = [d for d in available if (since is None or d >= since) and (until is None or d <= until)]
    if days:
        chosen = chosen[-days:]
    if len(chosen) < 2:
        raise InvalidArgument(f"need at least 2 committed archive days (train + hold-out), found {len(chosen)}")
    return chosen[:-1], chosen[-1]


def pipeline(params: TrainParams) -> Pipeline:
    """Metric one-hot + point and temporal deviation features → logistic regression.

    Logistic regression rather than trees: the signal is monotone in the (log) deviations, the model is
    a few coefficients one can read in ``metrics.json`` and in ``eventpipe ml explain``, each feature's
    contribution to a score is its coefficient times its value, it fits in a handful of passes over cached
    data, and the Spark-free scorer reproduces it exactly.
    """
    from pyspark.ml.classification import LogisticRegression

    return _assembled(
        FEATURES,
        LogisticRegression(
            labelCol="label",
            featuresCol="features",
            maxIter=params.max_iter,
            regParam=params.reg_param,
            tol=params.tol,
        ),
    )


def forest_pipeline(params: TrainParams) -> Pipeline:
    """The standard-model baseline: a random forest on the point features only (no device history).

    It shows what a capable off-the-shelf classifier gets from each reading alone, so the gap to the
    model is what the temporal features add. Few, shallow trees: it must stay cheap on 2 cores.
    """
    from pyspark.ml.classification import RandomForestClassifier

    forest = RandomForestClassifier(
        labelCol="label",
        featuresCol="features",
        numTrees=params.forest_trees,
        maxDepth=params.forest_depth,
        seed=params.seed,
        subsamplingRate=0.5,
    )
    return _assembled(POINT_FEATURES, forest)


def _assembled(features: Sequence[str], estimator: Any) -> Pipeline:
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import OneHotEncoder, StringIndexer, VectorAssembler

    return Pipeline(
        stages=[
            StringIndexer(
                inputCol="metric", outputCol="metric_idx", handleInvalid="keep", stringOrderType="alphabetAsc"
            ),
            OneHotEncoder(inputCols=["metric_idx"], outputCols=["metric_vec"], handleInvalid="keep"),
            VectorAssembler(inputCols=[*features, "metric_vec"], outputCol="features"),
            estimator,
        ]
    )


def tune_threshold(predictions: DataFrame, candidates: Sequence[float]) -> float:
    """The probability cut-off with the best F1 on the *training* readings (ties: closest to 0.5)."""
    from pyspark.sql import functions as F

    y = F.col("label") == 1.0
    aggs = []
    for i, t in enumerate(candidates):
        hit = F.col("p_anomaly") >= F.lit(t)
        aggs += [F.sum((hit & y).cast("long")).alias(f"tp{i}"), F.sum(hit.cast("long")).alias(f"pp{i}")]
    row = predictions.agg(F.sum(y.cast("long")).alias("pos"), *aggs).first()
    assert row is not None

    def f1(i: int) -> float:
        tp, pp, pos = row[f"tp{i}"] or 0, row[f"pp{i}"] or 0, row["pos"] or 0
        return 2 * tp / (pp + pos) if pp + pos else 0.0

    best = max(range(len(candidates)), key=lambda i: (round(f1(i), 9), -abs(candidates[i] - 0.5)))
    return candidates[best]


def predict(model: PipelineModel, rows: DataFrame, threshold: float = 0.5) -> DataFrame:
    """Adds ``p_anomaly`` (probability of the anomaly class) and ``flagged``."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    scored = model.transform(rows).withColumn("p_anomaly", vector_to_array("probability").getItem(1))
    return scored.withColumn("flagged", F.col("p_anomaly") >= F.lit(threshold))


def zscore_predict(rows: DataFrame, threshold: float) -> DataFrame:
    """The robust z-score rule: flag a reading whose |z| against its (kind, metric, hour) baseline is past
    the cut-off (tuned on training days). What a team would write without a model."""
    from pyspark.sql import functions as F

    return rows.withColumns({"p_anomaly": F.col("abs_z"), "flagged": F.col("abs_z") >= F.lit(threshold)})


def nab_weight(first_hit: float) -> float:
    """NAB's scaled sigmoid of a detection's position in its window (-1 at the start, 0 at the end): ~0.99 for
    a detection at the start, 0 at the end, so detecting early scores higher."""
    import math

    return 2.0 / (1.0 + math.exp(5.0 * first_hit)) - 1.0


def evaluate(predictions: DataFrame) -> Evaluation:
    """Exact event-level counts (an event is flagged if any of its readings is), recall per anomaly kind, a
    window score for sustained kinds and false alarms per device-day."""
    from pyspark.sql import functions as F

    events = (
        predictions.groupBy("event_id", "event_time")
        .agg(
            F.max(F.col("flagged").cast("int")).alias("p"),
            F.max(F.col("label").cast("int")).alias("y"),
            F.max("truth_kind").alias("truth_kind"),
            F.max("window_id").alias("window_id"),
            F.first("device_id").alias("device_id"),
        )
        .cache()
    )
    row = events.agg(
        F.count("*").alias("n"),
        F.coalesce(F.sum("y"), F.lit(0)).alias("pos"),
        F.coalesce(F.sum(F.col("p") * F.col("y")), F.lit(0)).alias("tp"),
        F.coalesce(F.sum(F.col("p") * (1 - F.col("y"))), F.lit(0)).alias("fp"),
        F.coalesce(F.sum((1 - F.col("p")) * F.col("y")), F.lit(0)).alias("fn"),
        F.countDistinct("device_id", F.to_date("event_time")).alias("device_days"),
    ).first()
    assert row is not None
    kinds = sorted(
        events.where("y = 1").groupBy("truth_kind").agg(F.count("*").alias("n"), F.sum("p").alias("hit")).collect(),
        key=lambda r: str(r["truth_kind"]),
    )
    windows = (
        events.where("y = 1 and window_id is not null")
        .groupBy("window_id", "truth_kind")
        .agg(
            F.min(F.unix_millis("event_time")).alias("lo"),
            F.max(F.unix_millis("event_time")).alias("hi"),
            F.min(F.when(F.col("p") == 1, F.unix_millis("event_time"))).alias("hit"),
        )
        .collect()
    )
    events.unpersist()
    n, pos, tp, fp, fn = (int(row[k]) for k in ("n", "pos", "tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rate = pos / n if n else 0.0
    scores: dict[str, list[float]] = {}
    for w in windows:
        span = max(w["hi"] - w["lo"], 1)
        weight = 0.0 if w["hit"] is None else nab_weight((w["hit"] - w["hi"]) / span)
        scores.setdefault(w["truth_kind"], []).append(weight)
    every = [v for values in scores.values() for v in values]
    device_days = int(row["device_days"])
    return Evaluation(
        n,
        pos,
        tp,
        fp,
        fn,
        round(precision, 6),
        round(recall, 6),
        round(f1, 6),
        round(2 * rate / (1 + rate), 6),
        recall_by_kind={r["truth_kind"]: round(int(r["hit"]) / int(r["n"]), 4) for r in kinds},
        anomalous_by_kind={r["truth_kind"]: int(r["n"]) for r in kinds},
        windows=len(windows),
        windows_detected=sum(w["hit"] is not None for w in windows),
        window_score=round(sum(every) / len(every), 4) if every else 0.0,
        window_score_by_kind={k: round(sum(v) / len(v), 4) for k, v in sorted(scores.items())},
        device_days=device_days,
        false_alarms_per_device_day=round(fp / device_days, 4) if device_days else 0.0,
    )


def promotion(
    f1: float, champion: int | None, champion_f1: float | None, baselines: dict[str, dict[str, Any]], margin: float
) -> tuple[bool, str]:
    """Promote only past the margin over the champion *and* every baseline on the same hold-out: a model that
    a z-score rule matches is not worth its training, however it compares with the last model."""
    rivals = {name: float(b["f1"]) for name, b in baselines.items()}
    if champion is not None:
        rivals[f"champion v{champion}"] = champion_f1 or 0.0
    best = max(rivals, key=lambda name: rivals[name]) if rivals else None
    if best is None:
        return True, "no champion and no baseline"
    against = ", ".join(f"{name} {value:.4f}" for name, value in rivals.items())
    if f1 >= rivals[best] + margin:
        first = " (no champion yet)" if champion is None else ""
        return True, f"F1 {f1:.4f} >= best of ({against}) + {margin}{first}"
    return False, f"F1 {f1:.4f} < {best} {rivals[best]:.4f} + {margin} (rivals: {against})"


def read_truth(spark: SparkSession, s3, bucket: str, prefix: str) -> DataFrame:
    """Ground-truth anomalies (event_id, metric, event_time) from every Parquet file under ``prefix``."""
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if obj["Key"].endswith(".parquet")
    ]
    if not keys:
        raise ValueError(f"no ground-truth Parquet under s3://{bucket}/{prefix}: nothing to learn labels from")
    # mergeSchema: truth written before the taxonomy lacks magnitude and window_id
    return spark.read.option("mergeSchema", "true").parquet(*(s3a_uri(bucket, k) for k in sorted(keys)))


def _manifests(s3, bucket: str, days: Sequence[date]) -> list[dict[str, Any]]:
    """Lineage of the days trained on: each manifest's key, the sha256 of its stored bytes and its rows."""
    out = []
    for day in days:
        manifest = load_manifest(s3, bucket, day)
        out.append(
            {
                "day": day.isoformat(),
                "manifest_key": manifest_key(day),
                "manifest_sha256": manifest.sha256,
                "rows": manifest.rows,
            }
        )
    return out


class _Phases:
    """Times named phases and labels their Spark jobs ("train: <phase>"), so the UI and its REST API
    attribute every stage, shuffle and task to a phase (bench/bench_train.py reads them)."""

    def __init__(self, spark: SparkSession, timings: dict[str, float]) -> None:
        self.spark = spark
        self.timings = timings

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.spark.sparkContext.setJobDescription(f"train: {name}")
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - tick, 2)
            self.spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]


def train(
    settings: Settings,
    *,
    days: int | None = None,
    since: date | None = None,
    until: date | None = None,
    truth_prefix: str = f"{TRUTH_PREFIX}/",
    params: TrainParams | None = None,
    margin: float | None = None,
    spark: SparkSession | None = None,
) -> TrainResult:
    """Fit on the selected days, evaluate on the last, register the version, maybe promote it."""
    from pyspark.sql import functions as F

    params = params or TrainParams()
    margin = settings.ml.promotion_margin if margin is None else margin
    started = time.perf_counter()
    timings: dict[str, float] = {}
    spark = spark or build_session(settings, "eventpipe-ml-train")
    s3 = s3_client(settings)
    bucket = settings.s3.bucket
    train_days, test_day = select_days(committed_days(s3, bucket), days=days, since=since, until=until)
    lineage_days = _manifests(s3, bucket, [*train_days, test_day])

    phase = _Phases(spark, timings)
    with phase("read"):
        # One pass over S3: read, explode, label, keep only what training and evaluation use, cache.
        # Every later pass (4 baseline aggregations, features, fit, threshold, evaluation) reads memory.
        rows = explode_metrics(read_archive(spark, s3, bucket, [*train_days, test_day]))
        lo = datetime.combine(train_days[0], datetime.min.time(), tzinfo=timezone.utc)
        hi = datetime.combine(test_day, datetime.max.time(), tzinfo=timezone.utc)
        truth = read_truth(spark, s3, bucket, truth_prefix).where(F.col("event_time").between(lo, hi))
        labelled = with_labels(rows, truth).select(*TRAIN_COLUMNS).cache()
        labelled.count()
        train_rows = labelled.where(F.col("day") < F.lit(test_day))

    with phase("baseline"):
        kind_baseline = fit_baseline(train_rows).cache()
        baseline = with_levels(kind_baseline, fit_levels(train_rows, kind_baseline)).cache()
        baseline.count()
    with phase("features"):
        # all days in one pass: the hold-out's first hour has the day before as its history, as hourly scoring does
        featured = add_features(labelled, baseline).cache()
        train_set = featured.where(F.col("day") < F.lit(test_day))
        test_set = featured.where(F.col("day") == F.lit(test_day))
        n_train = train_set.count()
        labelled.unpersist()
    with phase("fit"):
        model = pipeline(params).fit(train_set)
    with phase("threshold"):
        threshold = tune_threshold(predict(model, train_set), params.thresholds)
    with phase("evaluate"):
        evaluation = evaluate(predict(model, test_set, threshold))
    log.info("hold-out %s: %s", test_day, evaluation)
    baselines: dict[str, dict[str, Any]] = {}
    with phase("baselines"):
        z_threshold = tune_threshold(train_set.withColumn("p_anomaly", F.col("abs_z")), params.z_thresholds)
        baselines["zscore"] = {"threshold": z_threshold, **asdict(evaluate(zscore_predict(test_set, z_threshold)))}
        forest = forest_pipeline(params).fit(train_set)
        forest_threshold = tune_threshold(predict(forest, train_set), params.thresholds)
        forest_eval = evaluate(predict(forest, test_set, forest_threshold))
        baselines["forest"] = {"threshold": forest_threshold, **asdict(forest_eval)}
    log.info("baselines on %s: %s", test_day, baselines)

    registry = Registry(settings, s3=s3)
    champion = registry.champion()
    champion_f1: float | None = None
    if champion is not None:
        with phase("champion"):
            champ_model, champ_baseline = registry.load(spark, champion.version)
            champ_threshold = registry.threshold(champion.version)
            champ_rows = add_features(featured.select(*TRAIN_COLUMNS), champ_baseline)
            champ_rows = champ_rows.where(F.col("day") == F.lit(test_day))
            champion_f1 = evaluate(predict(champ_model, champ_rows, champ_threshold)).f1

    version = registry.next_version()
    with phase("register"):
        registry.save(
            version,
            model,
            baseline,
            metrics={
                "hold_out_day": test_day.isoformat(),
                "threshold": threshold,
                **asdict(evaluation),
                "baselines": baselines,
            },
            lineage={
                "archive": lineage_days,
                "train_days": [d.isoformat() for d in train_days],
                "test_day": test_day.isoformat(),
                "truth_prefix": f"s3://{bucket}/{truth_prefix}",
                "code": code_version(settings.ml.git_sha),
                "spark_version": spark.version,
                "params": asdict(params),
                "threshold": threshold,
                "features": list(FEATURES),
                "history_ms": HISTORY_MS,
                "train_rows": n_train,
                "created_at": datetime.now(timezone.utc).isoformat(),
            },
            scorer=export_scorer(model, baseline, threshold, spark.version),
        )

    promoted, reason = promotion(evaluation.f1, champion.version if champion else None, champion_f1, baselines, margin)
    if promoted:
        registry.promote(version, evaluation.f1, reason)
    for frame in (featured, baseline, kind_baseline):
        frame.unpersist()
    return TrainResult(
        version=version,
        promoted=promoted,
        reason=reason,
        champion=version if promoted else (champion.version if champion else None),
        previous_champion=champion.version if champion else None,
        train_days=[d.isoformat() for d in train_days],
        test_day=test_day.isoformat(),
        train_rows=n_train,
        evaluation=asdict(evaluation),
        baselines=baselines,
        champion_f1_on_holdout=champion_f1,
        margin=margin,
        model_uri=registry.model_uri(version),
        seconds=round(time.perf_counter() - started, 2),
        timings=timings,
    )
