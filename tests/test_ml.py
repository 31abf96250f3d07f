"""Anomaly model end to end on real services: archive → Spark training → S3 registry → scoring into Elasticsearch."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta

import pyarrow.compute as pc
import pytest
from elasticsearch import Elasticsearch

from eventpipe.archive.indices import day_bounds
from eventpipe.archive.layout import manifest_key
from eventpipe.errors import PERMANENT_EXIT_CODE
from eventpipe.events.generator import TAXONOMY, GeneratorConfig, utc
from eventpipe.events.schema import daily_index
from eventpipe.ml.explain import explain
from eventpipe.ml.features import FEATURES, HISTORY_MS, add_features, explode_metrics, read_archive
from eventpipe.ml.registry import PREFIX, Registry
from eventpipe.ml.score import ScorerMissing, anomaly_id, read_archive_interval, read_elasticsearch, score
from eventpipe.ml.scorer import score_readings
from eventpipe.ml.train import predict, train
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
from eventpipe.storage.elastic import ANOMALY_INDEX, EVENTS_ALIAS, EVENTS_PREFIX, IndexAction, bulk_index
from eventpipe.storage.s3 import ensure_bucket, s3_client

from .es_support import delete_matching
from .ml_archive import GeneratedArchive, delete_bucket, write_generated_archive

pytestmark = [pytest.mark.services, pytest.mark.slow]

SEED = 4242
START = utc("2025-03-01T00:00:00")
TRUTH = f"ground-truth/seed={SEED}/"


@pytest.fixture(scope="module")
def ml_settings(services: Settings) -> Iterator[Settings]:
    """A bucket of its own, so other tests' archive days and models never mix in."""
    settings = services.updated(s3={"bucket": f"ml-test-{uuid.uuid4().hex[:8]}"})
    ensure_bucket(settings, settings.s3.bucket)
    yield settings
    delete_bucket(s3_client(settings), settings.s3.bucket)


@pytest.fixture(scope="module")
def archive(ml_settings: Settings) -> GeneratedArchive:
    config = GeneratorConfig(START, START + timedelta(days=3), rate_per_s=0.5, anomaly_rate=0.02, seed=SEED)
    return write_generated_archive(ml_settings, config)


@pytest.fixture(scope="module")
def spark(ml_settings: Settings):
    return build_session(ml_settings, "eventpipe-tests")


@pytest.fixture(scope="module")
def first_training(ml_settings: Settings, archive: GeneratedArchive, spark):
    return train(ml_settings, days=3, truth_prefix=TRUTH, spark=spark, margin=0.01)


def test_training_beats_trivial_baseline_and_registers_lineage(
    ml_settings: Settings, archive: GeneratedArchive, first_training
) -> None:
    result = first_training
    print("first training:", result)
    assert (result.version, result.promoted, result.champion) == (1, True, 1)
    assert result.train_days == ["2025-03-01", "2025-03-02"] and result.test_day == "2025-03-03"
    ev = result.evaluation
    assert ev["events"] == len(archive.events[archive.days[-1]])
    assert ev["anomalous_events"] == sum(1 for a in archive.anomalies if a["event_time"].date() == archive.days[-1])
    assert ev["f1"] > 0.6 and ev["f1"] > ev["f1_all_positive"] + 0.5, ev
    assert ev["precision"] > 0.6 and ev["recall"] > 0.6, ev
    # the baselines ran on the same hold-out, and the model beats both (the promotion rule): the z-score clearly
    zscore, forest = result.baselines["zscore"], result.baselines["forest"]
    assert (zscore["events"], forest["events"]) == (ev["events"], ev["events"])
    assert ev["f1"] >= max(zscore["f1"], forest["f1"]) + 0.01 and ev["f1"] >= zscore["f1"] + 0.1, result.baselines
    assert set(ev["recall_by_kind"]) == set(TAXONOMY) == set(zscore["recall_by_kind"]), ev["recall_by_kind"]
    assert ev["recall_by_kind"]["stuck"] > zscore["recall_by_kind"]["stuck"] + 0.5  # history sees what z cannot
    assert ev["windows"] == zscore["windows"] > 0 and 0 < ev["window_score"] <= 1
    assert ev["device_days"] > 0 and ev["false_alarms_per_device_day"] < zscore["false_alarms_per_device_day"]

    s3, bucket = s3_client(ml_settings), ml_settings.s3.bucket
    registry = Registry(ml_settings)
    # the retraining test may have added versions already (random order): this one is the first, complete
    assert registry.versions()[0] == result.version
    metrics = registry.read_json(1, "metrics.json")
    assert metrics["f1"] == ev["f1"] and metrics["baselines"]["zscore"]["f1"] == zscore["f1"]
    lineage = registry.read_json(1, "lineage.json")
    for entry, day in zip(lineage["archive"], archive.days, strict=True):
        body = s3.get_object(Bucket=bucket, Key=manifest_key(day))["Body"].read()
        assert entry["manifest_sha256"] == hashlib.sha256(body).hexdigest()
    assert lineage["spark_version"] == "4.3.0" and lineage["code"]["package"]
    assert lineage["params"]["seed"] == 42 and lineage["history_ms"] == HISTORY_MS
    assert [entry["day"] for entry in lineage["archive"]] == [d.isoformat() for d in archive.days]
    assert lineage["code"]["git_sha"]
    champion = json.loads(s3.get_object(Bucket=bucket, Key=f"{PREFIX}champion.json")["Body"].read())
    # promoted v1 when it ran; the retraining test may since have promoted v3 (random order)
    assert result.model_uri.endswith("/models/anomaly/v=0001/model")
    assert champion["version"] in registry.versions()
    assert champion["model_uri"].endswith(f"/models/anomaly/v={champion['version']:04d}/model")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}v=0001/model/")["Contents"]]
    assert any("/model/metadata/" in k for k in keys) and any("/model/stages/" in k for k in keys)


def test_python_scorer_predicts_exactly_like_spark_on_the_holdout(
    ml_settings: Settings, archive: GeneratedArchive, first_training, spark
) -> None:
    """scorer.json + numpy gives the same readings, the same flags and the same probabilities as the PipelineModel."""
    registry = Registry(ml_settings)
    artifact = registry.scorer(first_training.version)
    assert artifact is not None and artifact.threshold == registry.threshold(first_training.version)
    holdout = date.fromisoformat(first_training.test_day)

    model, baseline = registry.load(spark, first_training.version)
    events = read_archive(spark, s3_client(ml_settings), ml_settings.s3.bucket, [holdout])
    by_spark = {
        (r["event_id"], r["metric"]): (r["p_anomaly"], r["flagged"])
        for r in predict(model, add_features(explode_metrics(events), baseline), artifact.threshold)
        .select("event_id", "metric", "p_anomaly", "flagged")
        .collect()
    }

    table = read_archive_interval(ml_settings, *day_bounds(holdout))
    assert table.num_rows == len(archive.events[holdout])
    scored = score_readings(artifact, table)
    ids = pc.take(table.column("event_id"), scored.column("row")).to_pylist()
    by_python = {
        (event_id, metric): (p, flagged)
        for event_id, metric, p, flagged in zip(
            ids,
            scored.column("metric").to_pylist(),
            scored.column("p_anomaly").to_pylist(),
            scored.column("flagged").to_pylist(),
            strict=True,
        )
    }
    assert len(by_python) == scored.num_rows  # one reading per (event, metric)
    assert by_python.keys() == by_spark.keys()
    flagged = {key for key, (_, hit) in by_spark.items() if hit}
    assert flagged and {key for key, (_, hit) in by_python.items() if hit} == flagged
    assert {event_id for event_id, _ in flagged} == {event_id for (event_id, _), (_, hit) in by_python.items() if hit}
    worst = max(abs(by_python[key][0] - by_spark[key][0]) for key in by_spark)
    assert worst <= 1e-9, worst


def test_retraining_promotes_only_past_the_margin(ml_settings: Settings, first_training, spark) -> None:
    same = train(ml_settings, days=3, truth_prefix=TRUTH, spark=spark, margin=0.01)
    assert (same.version, same.promoted, same.champion) == (2, False, 1)
    # deterministic: same data and seed give the same F1, and the champion is re-scored on the same hold-out
    assert same.evaluation["f1"] == first_training.evaluation["f1"] == same.champion_f1_on_holdout

    no_margin = train(ml_settings, days=3, truth_prefix=TRUTH, spark=spark, margin=0.0)
    assert (no_margin.version, no_margin.promoted, no_margin.previous_champion) == (3, True, 1)
    registry = Registry(ml_settings)
    assert registry.versions() == [1, 2, 3]
    assert registry.champion().version == 3


def test_score_without_champion_says_so(services: Settings) -> None:
    empty = services.updated(s3={"bucket": f"ml-empty-{uuid.uuid4().hex[:8]}"})
    ensure_bucket(empty, empty.s3.bucket)
    try:
        result = score(empty, START, START + timedelta(hours=1))
        assert (result.status, result.model_version, result.anomalies) == ("no_champion", None, 0)
    finally:
        delete_bucket(s3_client(empty), empty.s3.bucket)


def _index_events(es: Elasticsearch, archive: GeneratedArchive, lo: datetime, hi: datetime) -> int:
    """Index the archive's events of [lo, hi) into a window cleared first: scoring counts the window's events
    and anomalies, and a run of other code (another generator, another test) may have left its own there."""
    window = {"range": {"event_time": {"gte": lo.isoformat(), "lt": hi.isoformat()}}}
    delete_matching(es, EVENTS_ALIAS, window)
    delete_matching(es, ANOMALY_INDEX, window)  # and the anomalies scored from them
    events = [e for day in archive.days for e in archive.events[day] if lo <= e.event_time < hi]
    outcome = bulk_index(
        es, [IndexAction(daily_index(EVENTS_PREFIX, e.event_time), e.event_id, e.document()) for e in events]
    )
    assert not outcome.rejected
    es.indices.refresh(index=f"{EVENTS_PREFIX}-*")
    return len(events)


def _anomaly_count(es: Elasticsearch, version: int, lo: datetime, hi: datetime) -> int:
    es.indices.refresh(index=ANOMALY_INDEX)
    query = {
        "bool": {
            "filter": [
                {"term": {"model_version": str(version)}},
                {"range": {"event_time": {"gte": lo.isoformat(), "lt": hi.isoformat()}}},
            ]
        }
    }
    return es.count(index=ANOMALY_INDEX, query=query)["count"]


def test_scoring_writes_anomalies_idempotently(
    ml_settings: Settings,
    archive: GeneratedArchive,
    first_training,
    es: Elasticsearch,
    spark,
    stack_env: dict[str, str],
) -> None:
    lo = START + timedelta(days=2, hours=6)
    hi = lo + timedelta(hours=6)
    indexed = _index_events(es, archive, lo, hi)
    champion = Registry(ml_settings).champion().version

    first = score(ml_settings, lo, hi, spark=spark, es=es)
    assert (first.status, first.model_version, first.events, first.engine) == ("scored", champion, indexed, "python")
    truth = {a["event_id"] for a in archive.anomalies if lo <= a["event_time"] < hi}
    assert first.anomalies > 0.6 * len(truth) and first.rejected == 0
    assert _anomaly_count(es, champion, lo, hi) == first.anomalies

    found = min(truth & _flagged_ids(es, champion, lo, hi))  # not set order: a failure must replay
    doc = es.get(index=ANOMALY_INDEX, id=anomaly_id(found, champion))
    assert doc["_source"]["model_version"] == str(champion) and doc["_source"]["metric"] in doc["_source"]["metrics"]
    # lineage: the version the document names leads to its archive days, manifest digests and code
    lineage = Registry(ml_settings).read_json(int(doc["_source"]["model_version"]), "lineage.json")
    assert [e["day"] for e in lineage["archive"]] == [d.isoformat() for d in archive.days]
    assert all(len(e["manifest_sha256"]) == 64 for e in lineage["archive"]) and lineage["code"]["package"]
    # explain: the features and contributions add up to the score that was written, bit for bit: explain reads
    # one hour before the event, the scoring run one hour before the interval, and a reading's features are a
    # pure function of its own frames
    why = explain(ml_settings, found, es=es)
    assert why["model_version"] == champion and why["event_id"] == found
    top = max(why["readings"], key=lambda r: r["p_anomaly"])
    assert top["metric"] == doc["_source"]["metric"] and round(top["p_anomaly"], 6) == doc["_source"]["score"]
    terms = sum(top["contributions"][name] for name in top["features"])
    assert terms + top["metric_weight"] + top["intercept"] == top["logit"]
    assert top["check_p_from_logit"] == pytest.approx(top["p_anomaly"], abs=1e-12)  # math.exp, not numpy's
    artifact = Registry(ml_settings).scorer(champion)
    read = read_elasticsearch(es, lo - timedelta(milliseconds=artifact.history_ms), hi)
    ids = read.column("event_id").to_pylist()
    in_run = next(
        r
        for r in score_readings(artifact, read, since=lo).to_pylist()
        if ids[r["row"]] == found and r["metric"] == top["metric"]
    )
    assert (in_run["logit"], in_run["p_anomaly"], in_run["z"]) == (top["logit"], top["p_anomaly"], top["z"])
    assert {name: in_run[name] for name in top["features"]} == top["features"]
    run = subprocess.run(
        [sys.executable, "-m", "eventpipe.cli", "ml", "explain", "--event-id", found],
        env={**os.environ, **stack_env, "EVENTPIPE_ARCHIVE_BUCKET": ml_settings.s3.bucket},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["readings"][0]["contributions"]

    written = _anomaly_sources(es, champion, lo, hi)
    again = score(ml_settings, lo, hi, spark=spark, es=es)
    assert (again.anomalies, again.created) == (first.anomalies, 0)
    assert _anomaly_count(es, champion, lo, hi) == first.anomalies
    assert _anomaly_sources(es, champion, lo, hi) == written  # every score, z and value, exactly

    from_archive = score(ml_settings, lo, hi, source="archive", spark=spark, es=es)
    assert (from_archive.events, from_archive.anomalies, from_archive.created) == (indexed, first.anomalies, 0)
    assert _anomaly_sources(es, champion, lo, hi) == written  # the archive's row order changes nothing

    # Spark (bulk rescoring) flags the same events: same count, and every id it writes already exists
    by_spark = score(ml_settings, lo, hi, engine="spark", spark=spark, es=es)
    assert (by_spark.engine, by_spark.events, by_spark.readings) == ("spark", indexed, first.readings)
    assert (by_spark.anomalies, by_spark.created) == (first.anomalies, 0)
    by_spark_archive = score(ml_settings, lo, hi, source="archive", engine="spark", spark=spark, es=es)
    assert (by_spark_archive.events, by_spark_archive.anomalies, by_spark_archive.created) == (
        indexed,
        first.anomalies,
        0,
    )


def _anomaly_sources(es: Elasticsearch, version: int, lo: datetime, hi: datetime) -> dict[str, dict]:
    es.indices.refresh(index=ANOMALY_INDEX)
    hits = es.search(
        index=ANOMALY_INDEX,
        size=10000,
        query={
            "bool": {
                "filter": [
                    {"term": {"model_version": str(version)}},
                    {"range": {"event_time": {"gte": lo.isoformat(), "lt": hi.isoformat()}}},
                ]
            }
        },
    )["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def test_spark_scores_are_bit_identical_across_partitionings(
    ml_settings: Settings, archive: GeneratedArchive, first_training, spark
) -> None:
    """Bulk rescoring is a pure function of the interval: the input read as 1 or 7 partitions and shuffled into
    3 or 8 partitions gives exactly the same features and probability for every reading, also for six readings
    of one device in the same millisecond (``avg`` over the window added those in shuffle order)."""
    from pyspark.sql import functions as F

    registry = Registry(ml_settings)
    model, baseline = registry.load(spark, first_training.version)
    threshold = registry.threshold(first_training.version)
    lo = START + timedelta(days=2, hours=3)
    hi = lo + timedelta(hours=3)
    events = read_archive(spark, s3_client(ml_settings), ml_settings.s3.bucket, archive.days[-1:])
    events = events.where(
        (F.col("event_time") >= F.lit(lo - timedelta(milliseconds=HISTORY_MS))) & (F.col("event_time") < F.lit(hi))
    )
    iot = F.col("attributes").getItem("device_type").isNotNull() & (F.col("event_time") >= F.lit(lo))
    sample, device = events.where(iot).orderBy("event_id").first(), f"tie-{uuid.uuid4().hex[:8]}"
    ties = [
        {
            **sample.asDict(),
            "event_id": f"tie-{i}",
            "device_id": device,
            "event_time": sample["event_time"] + timedelta(minutes=1 if i == 6 else 0),
            "metrics": {name: value * (1 + 0.173 * i) + 1e-9 * i for name, value in sample["metrics"].items()},
        }
        for i in range(7)
    ]
    events = events.unionByName(
        spark.createDataFrame([tuple(t[c] for c in events.columns) for t in ties], events.schema)
    )
    columns = ["event_id", "metric", "z", *FEATURES, "p_anomaly"]

    def scored(partitions: int, shuffle: int) -> dict[tuple[str, str], tuple]:
        before = spark.conf.get("spark.sql.shuffle.partitions")
        spark.conf.set("spark.sql.shuffle.partitions", str(shuffle))
        try:
            featured = add_features(explode_metrics(events.repartition(partitions)), baseline)
            rows = predict(model, featured.where(F.col("event_time") >= F.lit(lo)), threshold).select(columns).collect()
        finally:
            spark.conf.set("spark.sql.shuffle.partitions", before)
        return {(r["event_id"], r["metric"]): tuple(r[c] for c in columns[2:]) for r in rows}

    one, seven = scored(1, 3), scored(7, 8)
    assert len(one) > 1000 and {event_id for event_id, _ in one} >= {t["event_id"] for t in ties}
    assert one == seven


def _flagged_ids(es: Elasticsearch, version: int, lo: datetime, hi: datetime) -> set[str]:
    hits = es.search(
        index=ANOMALY_INDEX,
        size=10000,
        query={
            "bool": {
                "filter": [
                    {"term": {"model_version": str(version)}},
                    {"range": {"event_time": {"gte": lo.isoformat(), "lt": hi.isoformat()}}},
                ]
            }
        },
        source_includes=["event_id"],
    )["hits"]["hits"]
    return {h["_source"]["event_id"] for h in hits}


@pytest.fixture()
def without_scorer(ml_settings: Settings, first_training) -> Iterator[Settings]:
    """A registry of its own holding the module's models and champion, but no scorer.json (an older version)."""
    settings = ml_settings.updated(s3={"bucket": f"ml-noscorer-{uuid.uuid4().hex[:8]}"})
    ensure_bucket(settings, settings.s3.bucket)
    s3 = s3_client(ml_settings)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=ml_settings.s3.bucket, Prefix=PREFIX):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/scorer.json"):
                source = {"Bucket": ml_settings.s3.bucket, "Key": obj["Key"]}
                s3.copy_object(Bucket=settings.s3.bucket, Key=obj["Key"], CopySource=source)
    yield settings
    delete_bucket(s3, settings.s3.bucket)


def test_python_engine_without_scorer_fails_permanently(
    without_scorer: Settings, stack_env: dict[str, str], es: Elasticsearch
) -> None:
    """No scorer.json: a retry finds the same registry, so the task fails at once (exit 3), never retried."""
    champion = Registry(without_scorer).champion()
    assert champion is not None and Registry(without_scorer).scorer(champion.version) is None
    lo = START + timedelta(days=2, hours=6)
    with pytest.raises(ScorerMissing, match=f"champion v{champion.version} has no scorer.json"):
        score(without_scorer, lo, lo + timedelta(hours=1), engine="python", es=es)
    env = {**os.environ, **stack_env, "EVENTPIPE_ARCHIVE_BUCKET": without_scorer.s3.bucket}
    argv = [sys.executable, "-m", "eventpipe.cli", "ml", "score", "--start", lo.isoformat()]
    argv += ["--end", (lo + timedelta(hours=1)).isoformat(), "--engine", "python"]
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == PERMANENT_EXIT_CODE, run.stderr[-2000:]
    assert "has no scorer.json" in run.stderr


def test_auto_engine_without_scorer_falls_back_to_spark(
    without_scorer: Settings, ml_settings: Settings, archive: GeneratedArchive, es: Elasticsearch, spark
) -> None:
    """``auto`` on a champion without scorer.json scores with Spark: the same anomalies as the python engine."""
    lo = START + timedelta(days=2, hours=14)
    hi = lo + timedelta(hours=2)
    indexed = _index_events(es, archive, lo, hi)
    by_python = score(ml_settings, lo, hi, engine="python", es=es)
    fallback = score(without_scorer, lo, hi, engine="auto", spark=spark, es=es)
    assert (fallback.status, fallback.engine, fallback.events) == ("scored", "spark", indexed)
    assert (fallback.model_version, fallback.readings, fallback.anomalies) == (
        by_python.model_version,
        by_python.readings,
        by_python.anomalies,
    )


def test_score_of_an_interval_without_events_says_so(ml_settings: Settings, first_training, es: Elasticsearch) -> None:
    """An hour no test writes into (1999): status no_events, nothing written, for either engine's path."""
    lo = utc("1999-01-01T00:00:00")
    result = score(ml_settings, lo, lo + timedelta(hours=1), engine="python", es=es)
    assert (result.status, result.events, result.anomalies, result.created) == ("no_events", 0, 0, 0)
    assert result.message == f"no events in [{lo.isoformat()}, {(lo + timedelta(hours=1)).isoformat()})"
