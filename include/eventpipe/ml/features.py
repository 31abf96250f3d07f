"""Deviation features: how far each metric reading is from what is normal for its kind of source at that hour.

Readings are exploded to one row per (event, metric). The baseline is robust (median and MAD,
not mean and standard deviation, so the anomalies in the training data barely move it) and
is computed per (kind, metric, hour of day), where kind is the IoT device type or the business
event type:

* per hour of day, because every metric follows a daily cycle whose amplitude is as large as
  the anomalies themselves (e.g. battery ±10 vs. spikes of 8-12); a whole-day spread would hide
  them;
* per kind rather than per device, because devices of one type share one profile: a per-device,
  per-hour baseline would need ~50x the history for the same precision and would have nothing
  for a device seen for the first time.

An (kind, metric, hour) cell with fewer than ``MIN_POINTS`` readings falls back to the kind's
whole-day baseline. The baseline is fitted on training days only and saved with the model, so
scoring uses exactly the statistics the model was trained against.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING

from eventpipe.archive.manifest import committed_files
from eventpipe.sparkjobs.session import s3a_uri

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession, WindowSpec

MIN_POINTS = 20
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
KEYS = ("kind", "metric")
SERIES = ("device_id", "kind", "metric")  # one device's readings of one metric: the temporal features' unit
LEVEL_HOUR = -2  # baseline rows holding a device's own level (median z on training days), keyed by device_id
HISTORY_MS = 3_600_000  # the temporal features look this far back; hourly scoring reads this much before its start
RECENT_MS = 1_800_000  # "the device's current level": its readings of the last 30 min
BURST_MS = 600_000  # "right now" for the event rate: the last 10 min
POINT_FEATURES = ("log_abs_z", "log_abs_z_day", "log_rel_dev")
# log1p: deviations span orders of magnitude; a linear model needs them on a compressive scale
TEMPORAL_FEATURES = ("log_abs_u", "log_jump", "log_level", "log_same", "log_rate")
FEATURES = (*POINT_FEATURES, *TEMPORAL_FEATURES)


def read_archive(spark: SparkSession, s3, bucket: str, days: Sequence[date]) -> DataFrame:
    """Events of committed days, from exactly the files their manifests list."""
    uris = [s3a_uri(bucket, key) for day in days for key in committed_files(s3, bucket, day)]
    if not uris:
        raise ValueError(f"no archive files for days {[d.isoformat() for d in days]}")
    return spark.read.parquet(*uris)


def _kind() -> Column:
    from pyspark.sql import functions as F

    return F.coalesce(F.col("attributes").getItem("device_type"), F.col("event_type"))


def explode_metrics(events: DataFrame) -> DataFrame:
    """One row per (event, metric) with the kind of source and the UTC hour of day."""
    from pyspark.sql import functions as F

    return events.select(
        "event_id",
        "device_id",
        "source",
        "event_type",
        "event_time",
        _kind().alias("kind"),
        F.explode("metrics").alias("metric", "value"),
    ).withColumns({"hour": F.hour("event_time"), "day": F.to_date("event_time")})


def fit_baseline(rows: DataFrame) -> DataFrame:
    """Median, MAD and count per (kind, metric, hour); hour = -1 holds the whole-day baseline.

    One shuffle: each hourly cell's values are gathered and sorted once; the whole-day cell of a
    (kind, metric) merges its 24 sorted hourly arrays, a few hundred small rows, instead of re-reading the
    readings. Exact percentiles over hash maps (``percentile``) took four aggregations and two joins for the
    same numbers.
    """
    from pyspark.sql import functions as F

    hourly = rows.groupBy(*KEYS, "hour").agg(
        F.sort_array(F.collect_list("value")).alias("values"), F.count("*").alias("n")
    )
    daily = (
        hourly.groupBy(*KEYS)
        .agg(F.sort_array(F.flatten(F.collect_list("values"))).alias("values"), F.sum("n").alias("n"))
        .withColumn("hour", F.lit(-1))
    )
    cells = hourly.unionByName(daily).select(*KEYS, "hour", "values", _median(F.col("values")).alias("median"), "n")
    # sort_array, not array_sort: the latter compares through an interpreted lambda, ~10x slower here
    # one column per step: _median reads its array three times, which must not re-run the sort
    deviations = cells.withColumn(
        "deviations", F.sort_array(F.transform("values", lambda v: F.abs(v - F.col("median"))))
    )
    return deviations.select(*KEYS, "hour", "median", _median(F.col("deviations")).alias("mad"), "n")


def _median(sorted_values: Column) -> Column:
    """Exact median of a sorted array, interpolated as Spark's ``percentile(x, 0.5)`` does."""
    from pyspark.sql import functions as F

    size = F.size(sorted_values)
    lower = F.element_at(sorted_values, F.floor((size + 1) / 2).cast("int"))
    upper = F.element_at(sorted_values, F.ceil((size + 1) / 2).cast("int"))
    return F.when(size > 0, F.lit(0.5) * lower + F.lit(0.5) * upper)


def _scale(median: Column, mad: Column) -> Column:
    """Robust sigma, floored so a constant metric (MAD 0) does not give infinite z-scores."""
    from pyspark.sql import functions as F

    floor = F.greatest(F.abs(median), F.lit(1.0)) * F.lit(1e-3)
    return F.greatest(mad * F.lit(MAD_TO_SIGMA), floor)


def _point_features(rows: DataFrame, baseline: DataFrame) -> DataFrame:
    """The reading against its (kind, metric, hour) baseline: z, z against the whole day, relative deviation."""
    from pyspark.sql import functions as F

    hourly = baseline.where("hour >= 0").select(
        *KEYS, "hour", F.col("median").alias("median_h"), F.col("mad").alias("mad_h"), F.col("n").alias("n_h")
    )
    daily = baseline.where("hour = -1").select(*KEYS, F.col("median").alias("median_d"), F.col("mad").alias("mad_d"))
    joined = rows.join(F.broadcast(daily), list(KEYS)).join(F.broadcast(hourly), [*KEYS, "hour"], "left")
    use_hour = F.col("n_h").isNotNull() & (F.col("n_h") >= MIN_POINTS)
    median = F.when(use_hour, F.col("median_h")).otherwise(F.col("median_d"))
    mad = F.when(use_hour, F.col("mad_h")).otherwise(F.col("mad_d"))
    z = (F.col("value") - median) / _scale(median, mad)
    z_day = (F.col("value") - F.col("median_d")) / _scale(F.col("median_d"), F.col("mad_d"))
    rel_dev = F.abs(F.col("value") - median) / F.greatest(F.abs(median), F.lit(1.0))
    return joined.withColumns(
        {
            "baseline_median": median,
            "z": z,
            "abs_z": F.abs(z),
            "log_abs_z": F.log1p(F.abs(z)),
            "log_abs_z_day": F.log1p(F.abs(z_day)),
            "log_rel_dev": F.log1p(rel_dev),
        }
    ).drop("median_h", "mad_h", "n_h", "median_d", "mad_d")


def fit_levels(rows: DataFrame, baseline: DataFrame) -> DataFrame:
    """Each device's own level: the median z of its readings of a metric on training days, as baseline rows
    (hour ``LEVEL_HOUR``, ``median`` = the level). Devices of one type differ (a thermostat in a warm room);
    without its level a device's normal offset looks like a shift, and a real shift hides in the spread."""
    from pyspark.sql import functions as F

    scored = _point_features(rows, baseline)
    return (
        scored.groupBy(*SERIES)
        .agg(F.median("z").alias("median"), F.lit(0.0).alias("mad"), F.count("*").alias("n"))
        .withColumn("hour", F.lit(LEVEL_HOUR))
    )


def with_levels(baseline: DataFrame, levels: DataFrame) -> DataFrame:
    """One table for the registry and the scorer: (kind, metric, hour) rows with ``device_id`` null, level rows."""
    from pyspark.sql import functions as F

    kinds = baseline.withColumn("device_id", F.lit(None).cast("string"))
    return kinds.unionByName(levels.select(*kinds.columns))


def add_features(rows: DataFrame, baseline: DataFrame) -> DataFrame:
    """Rows with point and temporal features; rows whose (kind, metric) the baseline never saw are dropped.

    Temporal features, per series (device, kind, metric) ordered by event time, each over a time range of
    the series' own earlier readings (so a scorer that reads ``HISTORY_MS`` before its interval computes
    exactly these values at the interval's start):

    * ``log_abs_u``: |z - the device's level|: a 3-5 sigma spike on a device that normally runs warm;
    * ``log_jump``: |u - mean u of the previous hour|: a spike or the onset of a shift against recent behaviour;
    * ``log_level``: |mean u over the last 30 min|: a level shift or drift that persists, which one reading's
      noise hides;
    * ``log_same``: readings of the previous hour with exactly this value: a stuck sensor (noise never repeats);
    * ``log_rate``: readings of the last 10 min against the previous hour's rate: a burst of payments.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    has_levels = "device_id" in baseline.columns
    kinds = baseline.where(F.col("hour") != LEVEL_HOUR) if has_levels else baseline
    point = _point_features(rows, kinds.drop("device_id") if has_levels else kinds)
    if has_levels:
        levels = baseline.where(F.col("hour") == LEVEL_HOUR).select(*SERIES, F.col("median").alias("level"))
        point = point.join(F.broadcast(levels), list(SERIES), "left")
    else:
        point = point.withColumn("level", F.lit(None).cast("double"))
    u = F.col("z") - F.coalesce(F.col("level"), F.lit(0.0))
    series = Window.partitionBy(*SERIES).orderBy("ts")
    previous = series.rangeBetween(-HISTORY_MS, -1)
    same = Window.partitionBy(*SERIES, "value").orderBy("ts").rangeBetween(-HISTORY_MS, -1)
    with_u = point.withColumns({"ts": F.unix_millis("event_time"), "u": u})
    windowed = with_u.withColumns(
        {
            "n_prev": F.count("*").over(previous),
            "mean_prev": _frame_mean(previous),
            "mean_recent": _frame_mean(series.rangeBetween(-RECENT_MS, 0)),
            "n_burst": F.count("*").over(series.rangeBetween(-BURST_MS, 0)),
            "n_same": F.count("*").over(same),
        }
    )
    expected = F.col("n_prev") * F.lit(BURST_MS / HISTORY_MS)
    return windowed.withColumns(
        {
            "log_abs_u": F.log1p(F.abs(F.col("u"))),
            "log_jump": F.log1p(F.abs(F.col("u") - F.coalesce(F.col("mean_prev"), F.lit(0.0)))),
            "log_level": F.log1p(F.abs(F.col("mean_recent"))),
            "log_same": F.log1p(F.col("n_same").cast("double")),
            "log_rate": F.log1p((F.col("n_burst") - 1).cast("double")) - F.log1p(expected),
        }
    ).drop("level", "mean_prev", "mean_recent", "n_burst", "n_same", "n_prev")


def _frame_mean(frame: WindowSpec) -> Column:
    """Mean of ``u`` over a window frame, summed from 0.0 in (ts, u) order: a total order on the frame's values.

    ``avg`` sums the frame in the order its rows arrive, and readings of one series in the same millisecond
    arrive in shuffle order, which changes with the input's partitioning: the same interval could score
    differently in the last bits. Sorted, the sum is a pure function of the frame, and the python scorer
    (``scorer.frame_sums``) adds in the same order.
    """
    from pyspark.sql import functions as F

    values = F.sort_array(F.collect_list(F.when(F.col("u").isNotNull(), F.struct("ts", "u"))).over(frame))
    total = F.aggregate(values, F.lit(0.0), lambda acc, x: acc + x["u"])
    return F.when(F.size(values) > 0, total / F.size(values))


def with_labels(rows: DataFrame, truth: DataFrame) -> DataFrame:
    """label = 1.0 for the (event, metric) readings the ground truth marks as injected anomalies, with the
    anomaly's ``truth_kind`` and ``window_id`` (sustained kinds) for per-kind and per-window evaluation.

    Joined on event time too: generator ids repeat across spans generated with the same seed. Truth files
    written before the taxonomy have no ``window_id``: null.
    """
    from pyspark.sql import functions as F

    window = F.col("window_id") if "window_id" in truth.columns else F.lit(None).cast("string")
    marks = truth.select(
        "event_id", "metric", "event_time", F.col("kind").alias("truth_kind"), window.alias("window_id")
    ).dropDuplicates(["event_id", "metric", "event_time"])
    labelled = rows.join(marks.withColumn("label", F.lit(1.0)), ["event_id", "metric", "event_time"], "left")
    return labelled.fillna({"label": 0.0})
