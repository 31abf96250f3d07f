"""Score a data interval with the champion model and write anomalies to Elasticsearch, idempotently.

Events come from Elasticsearch (alias ``eventpipe-events``, ``event_time`` in [start, end), read
with a point in time and ``search_after`` so concurrent indexing cannot shift pages) or from
committed archive days. Two engines compute the same predictions: ``python`` scores with the
champion's ``scorer.json`` (baseline + coefficients, pyarrow/numpy; see ``eventpipe.ml.scorer``)
and is what the hourly task uses, because starting Spark cost ~95% of an hour's scoring;
``spark`` loads the PipelineModel, for bulk rescoring and for versions trained before the
artifact existed (``auto`` picks ``python`` when the champion has one). There is no
Elasticsearch connector for Spark 4 yet, so Elasticsearch is read and written with the Python
client and the events are handed to Spark as Arrow.

Each anomalous event becomes one document with id ``<event_id>|v<model version>``: rerunning an
interval overwrites the same documents, and a new champion adds its own. Without a champion
the result says so (status ``no_champion``); it is not an error, the first training just has
not happened yet.
"""

from __future__ import annotations

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from elasticsearch import Elasticsearch, NotFoundError

from eventpipe.archive.indices import day_index, existing, late_index
from eventpipe.archive.layout import ARCHIVE_SCHEMA, committed_days
from eventpipe.archive.manifest import committed_files
from eventpipe.errors import InvalidArgument, PermanentError
from eventpipe.ml import scorer
from eventpipe.ml.features import add_features, explode_metrics, read_archive
from eventpipe.ml.registry import Registry
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
from eventpipe.storage.elastic import ANOMALY_INDEX, IndexAction, bulk_index, client
from eventpipe.storage.s3 import s3_client

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)
SOURCES = ("elasticsearch", "archive")
ENGINES = ("auto", "python", "spark")


class ScorerMissing(PermanentError):
    """``--engine python`` asked for, but the champion has no scorer.json: a retry finds the same registry
    (export the scorer, or score with ``auto``/``spark``), so the task fails at once with exit code 3."""


_FIELDS = ["event_id", "schema_version", "source", "device_id", "event_type", "event_time", "metrics", "attributes"]


@dataclass
class ScoreResult:
    status: str  # scored | no_champion | no_events
    message: str
    model_version: int | None
    source: str
    interval_start: str
    interval_end: str
    events: int = 0
    readings: int = 0
    anomalies: int = 0
    created: int = 0
    rejected: int = 0
    seconds: float = 0.0
    engine: str = ""


def anomaly_id(event_id: str, version: int) -> str:
    return f"{event_id}|v{version}"


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def read_elasticsearch(es: Elasticsearch, start: datetime, end: datetime, *, page: int = 5000) -> pa.Table:
    """Every event of [start, end) from its days' indices, as an Arrow table in the archive schema.

    The point in time covers only the interval's day (and late) indices, not the whole events alias:
    a point in time over the alias fails (503) when any other day's index is created or deleted while
    it is open, which a drain or retention running beside the scoring does.
    """
    columns: dict[str, list[Any]] = {name: [] for name in _FIELDS}
    first, last = (
        start.astimezone(timezone.utc).date(),
        (end - timedelta(microseconds=1)).astimezone(timezone.utc).date(),
    )
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    indices = existing(es, [name for day in days for name in (day_index(day), late_index(day))])
    if not indices:
        return ARCHIVE_SCHEMA.empty_table()
    try:
        pit = es.open_point_in_time(index=",".join(indices), keep_alive="2m")["id"]
    except NotFoundError:
        return ARCHIVE_SCHEMA.empty_table()
    try:
        after: list[Any] | None = None
        while True:
            response = es.search(
                pit={"id": pit, "keep_alive": "2m"},
                size=page,
                query={"range": {"event_time": {"gte": _iso(start), "lt": _iso(end)}}},
                sort=[{"event_time": "asc"}, {"_shard_doc": "asc"}],
                search_after=after,
                source_includes=_FIELDS,
                track_total_hits=False,
            )
            hits = response["hits"]["hits"]
            if not hits:
                break
            pit = response.get("pit_id", pit)
            after = hits[-1]["sort"]
            for hit in hits:
                doc = hit["_source"]
                columns["event_id"].append(doc["event_id"])
                columns["schema_version"].append(doc.get("schema_version", 1))
                columns["source"].append(doc["source"])
                columns["device_id"].append(doc["device_id"])
                columns["event_type"].append(doc["event_type"])
                columns["event_time"].append(datetime.fromisoformat(doc["event_time"].replace("Z", "+00:00")))
                columns["metrics"].append(list((doc.get("metrics") or {}).items()))
                columns["attributes"].append(list((doc.get("attributes") or {}).items()))
    finally:
        es.close_point_in_time(id=pit)
    return pa.Table.from_pydict(columns, schema=ARCHIVE_SCHEMA)


def _interval_days(settings: Settings, s3, start: datetime, end: datetime) -> list[date]:
    last: date = (end - timedelta(milliseconds=1)).astimezone(timezone.utc).date()
    first = start.astimezone(timezone.utc).date()
    return [d for d in committed_days(s3, settings.s3.bucket) if first <= d <= last]


def read_archive_interval(settings: Settings, start: datetime, end: datetime) -> pa.Table:
    """Events of [start, end) from the committed archive files (manifest-listed), without Spark."""
    s3 = s3_client(settings)
    keys = [k for day in _interval_days(settings, s3, start, end) for k in committed_files(s3, settings.s3.bucket, day)]

    def read(key: str) -> pa.Table:
        body = s3.get_object(Bucket=settings.s3.bucket, Key=key)["Body"].read()
        return pq.read_table(io.BytesIO(body)).select(ARCHIVE_SCHEMA.names).cast(ARCHIVE_SCHEMA)

    with ThreadPoolExecutor(max_workers=4) as pool:
        tables = list(pool.map(read, keys))
    if not tables:
        return ARCHIVE_SCHEMA.empty_table()
    ts = ARCHIVE_SCHEMA.field("event_time").type
    table = pa.concat_tables(tables)
    return table.filter(
        (pc.field("event_time") >= pa.scalar(start, ts)) & (pc.field("event_time") < pa.scalar(end, ts))
    )


def _archive_events(spark: SparkSession, settings: Settings, start: datetime, end: datetime) -> DataFrame | None:
    from pyspark.sql import functions as F

    s3 = s3_client(settings)
    days = _interval_days(settings, s3, start, end)
    if not days:
        return None
    events = read_archive(spark, s3, settings.s3.bucket, days)
    return events.where((F.col("event_time") >= F.lit(start)) & (F.col("event_time") < F.lit(end)))


def flagged_events(
    spark: SparkSession,
    events: DataFrame,
    model,
    baseline: DataFrame,
    threshold: float,
    since: datetime | None = None,
) -> DataFrame:
    """One row per flagged event: its most anomalous reading, with the event's full metrics.

    ``since``: events before it are the look-back history of the temporal features, not scored.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from eventpipe.ml.train import predict

    featured = add_features(explode_metrics(events), baseline)
    if since is not None:
        featured = featured.where(F.col("event_time") >= F.lit(since))
    predictions = predict(model, featured, threshold).where("flagged")
    best = Window.partitionBy("event_id", "event_time").orderBy(F.desc("p_anomaly"), F.asc("metric"))
    top = predictions.withColumn("rank", F.row_number().over(best)).where("rank = 1")
    return top.join(events.select("event_id", "event_time", "metrics"), ["event_id", "event_time"])


def _spark_rows(
    settings: Settings,
    registry: Registry,
    version: int,
    result: ScoreResult,
    spark: SparkSession | None,
    es: Elasticsearch,
    start: datetime,
    end: datetime,
) -> list[Any]:
    """Flagged rows scored by the Spark PipelineModel (bulk rescoring, versions without scorer.json)."""
    from pyspark.sql import functions as F

    spark = spark or build_session(settings, "eventpipe-ml-score")
    since = start - history(registry, version)
    if result.source == "elasticsearch":
        table = read_elasticsearch(es, since, end)
        events = spark.createDataFrame(table) if table.num_rows else None
    else:
        events = _archive_events(spark, settings, since, end)
    if events is None:
        return []
    events = events.cache()
    in_interval = events.where(F.col("event_time") >= F.lit(start))
    result.events = in_interval.count()
    if not result.events:
        return []
    model, baseline = registry.load(spark, version)
    result.readings = explode_metrics(in_interval).count()
    rows = flagged_events(spark, events, model, baseline, registry.threshold(version), since=start).collect()
    events.unpersist()
    return rows


def history(registry: Registry, version: int) -> timedelta:
    """How far before an interval scoring reads: the version's temporal features look back this far, so
    the interval's first readings get the same features as in training (0 for versions without them)."""
    lineage = registry.read_json(version, "lineage.json") or {}
    return timedelta(milliseconds=int(lineage.get("history_ms", 0)))


def _python_rows(
    settings: Settings, artifact: scorer.ScoringArtifact, result: ScoreResult, es: Elasticsearch, start, end
) -> list[dict[str, Any]]:
    """Flagged rows scored by the exported artifact: no JVM, the hourly path.

    It reads ``artifact.history_ms`` before the interval too (one hour: the devices' recent readings the
    temporal features need at the hour boundary) and scores only the interval's events.
    """
    since = start - timedelta(milliseconds=artifact.history_ms)
    if result.source == "elasticsearch":
        table = read_elasticsearch(es, since, end)
    else:
        table = read_archive_interval(settings, since, end)
    ts = ARCHIVE_SCHEMA.field("event_time").type
    interval = table.filter(pc.field("event_time") >= pa.scalar(start, ts))
    result.events = interval.num_rows
    if not interval.num_rows:
        return []
    result.readings = scorer.reading_count(interval)
    return scorer.flagged_events(artifact, table, since=start)


def score(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    source: str = "elasticsearch",
    engine: str = "auto",
    spark: SparkSession | None = None,
    es: Elasticsearch | None = None,
    chunk: int = 2000,
) -> ScoreResult:
    """Score [start, end) with the champion; write its anomalies to ``eventpipe-anomalies``."""
    if source not in SOURCES:
        raise InvalidArgument(f"source must be one of {SOURCES}, not {source!r}")
    if engine not in ENGINES:
        raise InvalidArgument(f"engine must be one of {ENGINES}, not {engine!r}")
    started = time.perf_counter()
    result = ScoreResult("scored", "", None, source, start.isoformat(), end.isoformat())
    registry = Registry(settings)
    champion = registry.champion()
    if champion is None:
        result.status, result.message = "no_champion", "no champion model registered yet; train one first"
        return result
    result.model_version = champion.version
    es = es or client(settings)

    artifact = None if engine == "spark" else registry.scorer(champion.version)
    if engine == "python" and artifact is None:
        hint = "run `eventpipe ml export-scorer`, or score with --engine auto"
        raise ScorerMissing(f"champion v{champion.version} has no {scorer.SCORER_NAME}: {hint}")
    if artifact is not None:
        result.engine = "python"
        rows = _python_rows(settings, artifact, result, es, start, end)
    else:
        result.engine = "spark"
        rows = _spark_rows(settings, registry, champion.version, result, spark, es, start, end)
    if not result.events:
        result.status, result.message = "no_events", f"no events in [{start.isoformat()}, {end.isoformat()})"
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    actions = [
        IndexAction(
            ANOMALY_INDEX,
            anomaly_id(row["event_id"], champion.version),
            {
                "event_id": row["event_id"],
                "device_id": row["device_id"],
                "source": row["source"],
                "event_type": row["event_type"],
                "kind": row["kind"],
                "event_time": _iso(row["event_time"]),
                "metric": row["metric"],
                "value": row["value"],
                "baseline_median": row["baseline_median"],
                "z_score": round(row["z"], 4),
                "score": round(row["p_anomaly"], 6),
                "model_version": str(champion.version),
                "metrics": dict(row["metrics"]),
            },
        )
        for row in rows
    ]
    for offset in range(0, len(actions), chunk):
        outcome = bulk_index(es, actions[offset : offset + chunk])
        result.created += outcome.created
        result.rejected += len(outcome.rejected)
        for action, reason in outcome.rejected[:5]:
            log.error("anomaly %s rejected: %s", action.doc_id, reason)
    result.anomalies = len(actions) - result.rejected
    result.message = (
        f"{result.anomalies} anomalies among {result.events} events (model v{champion.version}, {result.engine})"
    )
    result.seconds = round(time.perf_counter() - started, 3)
    return result
