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
    from pyspark.sql import Column, DataFrame, SparkSession

MIN_POINTS = 20
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
KEYS = ("kind", "metric")
# log1p: deviations span orders of magnitude; a linear model needs them on a compressive scale
FEATURES = ("log_abs_z", "log_abs_z_day", "log_rel_dev")


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


def add_features(rows: DataFrame, baseline: DataFrame) -> DataFrame:
    """Rows with deviation features; rows whose (kind, metric) the baseline never saw are dropped."""
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


def with_labels(rows: DataFrame, truth: DataFrame) -> DataFrame:
    """label = 1.0 for the (event, metric) readings the ground truth marks as injected anomalies.

    Joined on event time too: generator ids repeat across spans generated with the same seed.
    """
    from pyspark.sql import functions as F

    marks = truth.select("event_id", "metric", "event_time").distinct().withColumn("label", F.lit(1.0))
    return rows.join(marks, ["event_id", "metric", "event_time"], "left").fillna({"label": 0.0})
