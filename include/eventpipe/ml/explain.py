"""`eventpipe ml explain`: why a scored event got its score, from the version that scored it.

The model is a logistic regression, so a reading's score is exactly ``sigmoid(intercept + metric weight +
sum(coefficient x feature))``: each feature's contribution is its coefficient times its value, and the
contributions (added in ``features`` order), the metric weight and the intercept give the scorer's logit
bit for bit. The event and its device's history (``history_ms`` before it) are read from Elasticsearch
and featurised by the version's ``scorer.json``, as hourly scoring does; the features are a pure function
of the reading's frames, so they equal what the scoring run computed from its longer read.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from elasticsearch import Elasticsearch

from eventpipe.errors import InvalidArgument
from eventpipe.ml.registry import Registry
from eventpipe.ml.score import read_elasticsearch
from eventpipe.ml.scorer import score_readings
from eventpipe.settings import Settings
from eventpipe.storage.elastic import EVENTS_ALIAS, client


def explain(
    settings: Settings, event_id: str, *, version: int | None = None, es: Elasticsearch | None = None
) -> dict[str, Any]:
    """Features, per-feature contributions, probability and lineage of each reading of ``event_id``."""
    es = es or client(settings)
    registry = Registry(settings)
    if version is None:
        champion = registry.champion()
        if champion is None:
            raise InvalidArgument("no champion registered; give --version")
        version = champion.version
    artifact = registry.scorer(version)
    if artifact is None:
        raise InvalidArgument(
            f"model v{version} has no scorer.json: run `eventpipe ml export-scorer --version {version}`"
        )
    hits = es.search(index=EVENTS_ALIAS, query={"term": {"event_id": event_id}}, size=1)["hits"]["hits"]
    if not hits:
        raise InvalidArgument(f"no event {event_id!r} in {EVENTS_ALIAS}")
    when = datetime.fromisoformat(hits[0]["_source"]["event_time"].replace("Z", "+00:00"))
    history = timedelta(milliseconds=artifact.history_ms)
    table = read_elasticsearch(es, when - history, when + timedelta(milliseconds=1))
    scored = score_readings(artifact, table, since=when).to_pylist()
    ids = table.column("event_id").to_pylist()
    readings = []
    for reading in (r for r in scored if ids[r["row"]] == event_id):
        metric = reading["metric"]
        slot = artifact.metric_labels.index(metric) if metric in artifact.metric_labels else len(artifact.metric_labels)
        # exact, unrounded: with the metric weight and the intercept, added in ``artifact.features`` order, they
        # give the scorer's own logit bit for bit (rounded terms missed it by up to 4e-6)
        contributions = {
            name: coefficient * reading[name]
            for name, coefficient in zip(artifact.features, artifact.feature_coefficients, strict=True)
        }
        readings.append(
            {
                "metric": metric,
                "value": reading["value"],
                "baseline_median": reading["baseline_median"],
                "z": reading["z"],
                "features": {name: reading[name] for name in artifact.features},
                "contributions": dict(sorted(contributions.items(), key=lambda kv: -abs(kv[1]))),
                "metric_weight": artifact.metric_coefficients[slot],
                "intercept": artifact.intercept,
                "logit": reading["logit"],
                "p_anomaly": reading["p_anomaly"],
                "check_p_from_logit": 1.0 - 1.0 / (1.0 + math.exp(reading["logit"])),
                "flagged": reading["flagged"],
            }
        )
    lineage = registry.read_json(version, "lineage.json") or {}
    return {
        "event_id": event_id,
        "event_time": when.isoformat(),
        "device_id": hits[0]["_source"]["device_id"],
        "model_version": version,
        "threshold": artifact.threshold,
        "history_read": f"{(when - history).isoformat()} .. {when.isoformat()}",
        "readings": readings,
        "lineage": {
            "train_days": lineage.get("train_days"),
            "test_day": lineage.get("test_day"),
            "archive": lineage.get("archive"),
            "code": lineage.get("code"),
        },
    }
