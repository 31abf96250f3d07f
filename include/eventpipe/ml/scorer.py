"""The champion as a small artifact that scores in Python (pyarrow + numpy), without starting Spark.

Hourly scoring of a few thousand events spent ~95% of its time starting a JVM and a Spark
session. The trained pipeline is tiny: a robust baseline table and one logistic regression over
three deviation features plus a one-hot of the metric. ``export_scorer`` writes exactly that
(``scorer.json`` next to the Spark PipelineModel, at training time) and ``score_table`` recomputes
the features and the probability with the same formulas as ``eventpipe.ml.features`` and Spark's
``LogisticRegressionModel``, so predictions equal Spark's (tests compare them on the hold-out).
Spark stays the engine for training and for bulk rescoring.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, Field

from eventpipe.ml.features import (
    BURST_MS,
    FEATURES,
    HISTORY_MS,
    LEVEL_HOUR,
    MAD_TO_SIGMA,
    MIN_POINTS,
    RECENT_MS,
)

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame

SCORER_NAME = "scorer.json"
FORMAT = 2  # 2: temporal features, device levels (baseline rows with hour LEVEL_HOUR and a device_id)


class Baseline(BaseModel):
    """Columnar copy of the Spark baseline: one entry per (kind, metric, hour); hour -1 is the whole day;
    hour ``LEVEL_HOUR`` holds a device's own level (its ``device_id`` set, ``median`` = the level)."""

    kind: list[str]
    metric: list[str]
    hour: list[int]
    median: list[float]
    mad: list[float]
    n: list[int]
    device_id: list[str | None] = Field(default_factory=list, description="empty before format 2")


class ScoringArtifact(BaseModel):
    format: int = FORMAT
    features: list[str] = Field(description="continuous features, in the order of the coefficients")
    feature_coefficients: list[float]
    metric_labels: list[str] = Field(description="StringIndexer labels; any other metric is 'unknown'")
    metric_coefficients: list[float] = Field(description="one per label, then one for an unknown metric")
    intercept: float
    threshold: float
    min_points: int = MIN_POINTS
    mad_to_sigma: float = MAD_TO_SIGMA
    baseline: Baseline
    spark_version: str | None = None
    history_ms: int = Field(HISTORY_MS, description="how far before an interval the scorer reads")


def export_scorer(
    model: PipelineModel, baseline: DataFrame, threshold: float, spark_version: str | None = None
) -> ScoringArtifact:
    """Read the coefficients and one-hot layout out of the fitted pipeline; collect the (small) baseline.

    Layout of the assembled vector: ``FEATURES`` then the metric one-hot. The indexer
    (``handleInvalid=keep``) maps an unseen metric to ``len(labels)``; the encoder's vector size and
    the slot of each index follow ``OneHotEncoderModel`` (an index at or past the size is all zeros).
    """
    indexer, encoder, _assembler, lr = model.stages
    labels = list(indexer.labelsArray[0])
    if lr.numClasses != 2:
        raise ValueError(f"expected a binary logistic regression, got {lr.numClasses} classes")
    coefficients = [float(c) for c in lr.coefficients.toArray()]
    categories = int(encoder.categorySizes[0])
    keep, drop_last = encoder.getHandleInvalid() == "keep", encoder.getDropLast()
    size = categories + (1 if keep and not drop_last else 0) - (1 if drop_last and not keep else 0)
    if len(coefficients) != len(FEATURES) + size:
        raise ValueError(f"{len(coefficients)} coefficients, expected {len(FEATURES)} features + {size} one-hot")
    one_hot = coefficients[len(FEATURES) :]

    def weight(index: int) -> float:
        slot = index if index < categories else (categories if keep else None)
        return one_hot[slot] if slot is not None and slot < size else 0.0

    metric_coefficients = [weight(i) for i in range(len(labels) + 1)]
    rows = baseline.orderBy(
        "kind", "metric", "hour", *(["device_id"] if "device_id" in baseline.columns else [])
    ).collect()
    return ScoringArtifact(
        features=list(FEATURES),
        feature_coefficients=coefficients[: len(FEATURES)],
        metric_labels=labels,
        metric_coefficients=metric_coefficients,
        intercept=float(lr.intercept),
        threshold=threshold,
        baseline=Baseline(
            kind=[r["kind"] for r in rows],
            metric=[r["metric"] for r in rows],
            hour=[int(r["hour"]) for r in rows],
            median=[float(r["median"]) for r in rows],
            mad=[float(r["mad"]) for r in rows],
            n=[int(r["n"]) for r in rows],
            device_id=[r.asDict().get("device_id") for r in rows],
        ),
        spark_version=spark_version,
    )


def _entries(maps: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A map column as list<struct<key, value>>, which the list kernels accept (slices respected)."""
    entry = maps.type.key_field.with_name("key"), maps.type.item_field.with_name("value")
    array = maps.combine_chunks() if isinstance(maps, pa.ChunkedArray) else maps
    return array.cast(pa.list_(pa.struct(entry)))


def reading_count(events: pa.Table) -> int:
    """How many (event, metric) readings the events hold, i.e. rows of ``explode_readings`` before the baseline."""
    return int(pc.sum(pc.list_value_length(_entries(events.column("metrics")))).as_py() or 0)


def explode_readings(events: pa.Table) -> pa.Table:
    """One row per (event, metric), like ``features.explode_metrics``: ``row`` points back at the event."""
    metrics = _entries(events.column("metrics"))
    lengths = pc.fill_null(pc.list_value_length(metrics), 0).to_numpy(zero_copy_only=False)
    parent = np.repeat(np.arange(len(metrics), dtype=np.int64), lengths)
    pairs = pc.list_flatten(metrics)
    device_type = pc.map_lookup(events.column("attributes"), pa.scalar("device_type"), "first")
    kind = pc.coalesce(device_type, events.column("event_type"))
    rows = pa.array(parent)
    millis = pc.cast(events.column("event_time"), pa.timestamp("ms", tz="UTC")).cast(pa.int64())
    return pa.table(
        {
            "row": rows,
            "device_id": pc.take(events.column("device_id"), rows),
            "kind": pc.take(kind, rows),
            "metric": pairs.field("key"),
            "value": pairs.field("value"),
            "hour": pc.take(pc.hour(events.column("event_time")), rows).cast(pa.int32()),
            "ts": pc.take(millis, rows),
        }
    )


def _greatest_floor(median: np.ndarray, mad: np.ndarray, sigma: float) -> np.ndarray:
    """features._scale: robust sigma, floored at 1e-3 of max(|median|, 1)."""
    return np.maximum(mad * sigma, np.maximum(np.abs(median), 1.0) * 1e-3)


def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.dictionary_encode(array).indices.to_numpy(zero_copy_only=False)


def _frames(keys: list[np.ndarray], ts: np.ndarray, tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, sorted composite key, its inverse): rows sorted by ``keys``, time, then ``tiebreak``; one int64 per
    row whose high bits number the series and low 41 bits hold the epoch milliseconds (good until 2039), so a
    time range inside a series is one ``searchsorted`` away, as Spark's ``rangeBetween`` over the series.

    ``tiebreak`` (the summed value) orders readings of one series at the same millisecond by value, not by
    their arrival order, so a frame's sum does not depend on how the events were read."""
    order = np.lexsort((tiebreak, ts, *reversed(keys)))
    change = np.zeros(len(order), dtype=bool)
    for key in keys:
        sorted_key = key[order]
        change[1:] |= sorted_key[1:] != sorted_key[:-1]
    series = np.cumsum(change).astype(np.int64)
    composite = (series << 41) | ts[order]
    return order, composite, np.argsort(order)


def frame_sums(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``sum(values[lo:hi])`` per row, added left to right from 0.0: the order in which Spark's sliding window
    frame sums its rows.

    Not a difference of running sums: that one carries the rounding of every value before the frame (other
    series, and as much history as the caller happened to read), so scoring, ``explain`` and a rescoring of
    the same reading disagreed in the last bits. Work is the frames' total length, as in Spark.
    """
    sums = np.zeros(len(lo))
    active = np.flatnonzero(hi > lo)
    step = 0
    while active.size:
        sums[active] += values[lo[active] + step]
        step += 1
        active = active[hi[active] > lo[active] + step]
    return sums


def _temporal(readings: pa.Table, u: np.ndarray) -> dict[str, np.ndarray]:
    """``features.add_features``' window functions in numpy: counts and means over time ranges of a series.

    Every value is a pure function of its series' readings in the frame (see ``frame_sums``)."""
    device, kind, metric = (_codes(readings.column(c)) for c in ("device_id", "kind", "metric"))
    ts = readings.column("ts").to_numpy()
    order, key, back = _frames([device, kind, metric], ts, u)

    def left(offset: int) -> np.ndarray:
        return np.searchsorted(key, key - offset, side="left")

    now_left, now_right = left(0), np.searchsorted(key, key, side="right")
    u_sorted = u[order]
    prev_lo, recent_lo = left(HISTORY_MS), left(RECENT_MS)
    n_prev = now_left - prev_lo
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prev = np.where(n_prev > 0, frame_sums(u_sorted, prev_lo, now_left) / n_prev, 0.0)
        mean_recent = frame_sums(u_sorted, recent_lo, now_right) / (now_right - recent_lo)
    n_burst = now_right - left(BURST_MS)
    value = readings.column("value").to_numpy()
    _same_order, same_key, same_back = _frames([device, kind, metric, value], ts, value)
    n_same = (
        np.searchsorted(same_key, same_key, side="left") - np.searchsorted(same_key, same_key - HISTORY_MS, "left")
    )[same_back]
    expected = n_prev * (BURST_MS / HISTORY_MS)
    return {
        "log_abs_u": np.log1p(np.abs(u)),
        "log_jump": np.log1p(np.abs(u_sorted - mean_prev))[back],
        "log_level": np.log1p(np.abs(mean_recent))[back],
        "log_same": np.log1p(n_same.astype(np.float64)),
        "log_rate": (np.log1p((n_burst - 1).astype(np.float64)) - np.log1p(expected))[back],
    }


def featurize(artifact: ScoringArtifact, readings: pa.Table) -> pa.Table:
    """``features.add_features`` in Arrow: readings whose (kind, metric) the baseline lacks are dropped."""
    b = artifact.baseline
    table = pa.table(
        {
            "kind": b.kind,
            "metric": b.metric,
            "hour": pa.array(b.hour, pa.int32()),
            "median": pa.array(b.median, pa.float64()),
            "mad": pa.array(b.mad, pa.float64()),
            "n": pa.array(b.n, pa.int64()),
            "device_id": pa.array(b.device_id or [None] * len(b.hour), pa.string()),
        }
    )
    level_mask = pc.equal(table.column("hour"), LEVEL_HOUR)
    levels = (
        table.filter(level_mask)
        .select(["device_id", "kind", "metric", "median"])
        .rename_columns(["device_id", "kind", "metric", "level"])
    )
    table = table.filter(pc.invert(level_mask)).drop_columns(["device_id"])
    day_mask = pc.equal(table.column("hour"), -1)
    daily = table.filter(day_mask).select(["kind", "metric", "median", "mad"])
    daily = daily.rename_columns(["kind", "metric", "median_d", "mad_d"])
    hourly = table.filter(pc.invert(day_mask)).rename_columns(["kind", "metric", "hour", "median_h", "mad_h", "n_h"])
    joined = readings.join(daily, ["kind", "metric"], join_type="inner")
    joined = joined.join(hourly, ["kind", "metric", "hour"], join_type="left outer")
    joined = joined.join(levels, ["device_id", "kind", "metric"], join_type="left outer").sort_by("row")

    def col(name: str) -> np.ndarray:
        return joined.column(name).to_numpy()

    n_h = pc.fill_null(joined.column("n_h"), 0).to_numpy()
    use_hour = n_h >= artifact.min_points
    median_d, mad_d = col("median_d"), col("mad_d")
    median_h = pc.fill_null(joined.column("median_h"), 0.0).to_numpy()
    mad_h = pc.fill_null(joined.column("mad_h"), 0.0).to_numpy()
    median = np.where(use_hour, median_h, median_d)
    mad = np.where(use_hour, mad_h, mad_d)
    value = col("value")
    z = (value - median) / _greatest_floor(median, mad, artifact.mad_to_sigma)
    z_day = (value - median_d) / _greatest_floor(median_d, mad_d, artifact.mad_to_sigma)
    rel_dev = np.abs(value - median) / np.maximum(np.abs(median), 1.0)
    u = z - pc.fill_null(joined.column("level"), 0.0).to_numpy()
    features = {
        "baseline_median": median,
        "z": z,
        "log_abs_z": np.log1p(np.abs(z)),
        "log_abs_z_day": np.log1p(np.abs(z_day)),
        "log_rel_dev": np.log1p(rel_dev),
        **(_temporal(joined, u) if joined.num_rows else {}),
    }
    keep = joined.select(["row", "kind", "metric", "value", "hour", "ts"])
    for name, values in features.items():
        keep = keep.append_column(name, pa.array(values, pa.float64()))
    return keep


def logits(artifact: ScoringArtifact, features: pa.Table) -> np.ndarray:
    """The margin Spark's LogisticRegressionModel computes: the features' terms in ``artifact.features`` order,
    then the metric's weight, then the intercept (``explain`` adds its contributions up in this order)."""
    margin = np.zeros(features.num_rows)
    for name, coefficient in zip(artifact.features, artifact.feature_coefficients, strict=True):
        margin += features.column(name).to_numpy() * coefficient
    index = pc.fill_null(pc.index_in(features.column("metric"), pa.array(artifact.metric_labels)), -1).to_numpy()
    index = np.where(index < 0, len(artifact.metric_labels), index)
    margin += np.asarray(artifact.metric_coefficients)[index]
    margin += artifact.intercept
    return margin


def probability(margin: np.ndarray) -> np.ndarray:
    """P(anomaly) as Spark's binary LogisticRegressionModel computes it: p0 = 1/(1+e^m), p1 = 1 - p0."""
    return 1.0 - 1.0 / (1.0 + np.exp(margin))


def score_readings(artifact: ScoringArtifact, events: pa.Table, since: datetime | None = None) -> pa.Table:
    """Every scored reading: the features, ``logit``, ``p_anomaly`` and ``flagged`` (p >= the tuned threshold).

    ``since``: the events before it are history only (the temporal features' look-back): read, not scored.
    """
    features = featurize(artifact, explode_readings(events))
    if since is not None:
        features = features.filter(pc.greater_equal(features.column("ts"), int(since.timestamp() * 1000)))
    margin = logits(artifact, features)
    p = probability(margin)
    features = features.append_column("logit", pa.array(margin, pa.float64()))
    features = features.append_column("p_anomaly", pa.array(p, pa.float64()))
    return features.append_column("flagged", pa.array(p >= artifact.threshold))


def flagged_events(artifact: ScoringArtifact, events: pa.Table, since: datetime | None = None) -> list[dict[str, Any]]:
    """One dict per flagged event: its most anomalous reading (ties: metric name), with the event's fields."""
    readings = score_readings(artifact, events, since).filter(pc.field("flagged"))
    best: dict[tuple[str, Any], dict[str, Any]] = {}
    for reading in readings.to_pylist():
        event = events.slice(reading["row"], 1).to_pylist()[0]
        key = (event["event_id"], event["event_time"])
        current = best.get(key)
        if current is None or (-reading["p_anomaly"], reading["metric"]) < (-current["p_anomaly"], current["metric"]):
            best[key] = {**event, **reading}
    return list(best.values())
