"""Model registry on S3: immutable numbered versions and a champion pointer.

Layout under ``s3://<bucket>/models/anomaly/``::

    v=0001/model/          Spark PipelineModel (written by Spark through s3a)
    v=0001/baseline/       robust baseline the features need at scoring time (Parquet)
    v=0001/scorer.json     baseline + coefficients + threshold: scores without Spark (eventpipe.ml.scorer)
    v=0001/metrics.json    hold-out precision/recall/F1
    v=0001/lineage.json    archive days + manifest sha256, code and Spark versions, params
    champion.json          {"version": 1, ...}: which version scoring uses

A version is complete once ``lineage.json`` exists (it is written after the model, baseline,
scorer and metrics); ``champion.json`` is written last of all, so scoring never sees a half-written model.
JSON goes through boto3; Spark artifacts through s3a.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventpipe import __version__
from eventpipe.ml.scorer import SCORER_NAME, ScoringArtifact, export_scorer
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import s3a_uri
from eventpipe.storage.s3 import ensure_bucket, s3_client

if TYPE_CHECKING:
    from pyspark.ml import PipelineModel
    from pyspark.sql import DataFrame, SparkSession

PREFIX = "models/anomaly/"
CHAMPION = "champion.json"
_VERSION_DIR = re.compile(r"v=(\d{4,})/$")


@dataclass(frozen=True)
class Champion:
    version: int
    f1: float
    promoted_at: str


def code_version(sha: str | None) -> dict[str, str | None]:
    """Package version plus the git commit: ``sha`` (EVENTPIPE_GIT_SHA, set in the image) or the checkout's."""
    if not sha:
        # git finds the checkout from this file's directory (an editable install); no devstack import
        here = Path(__file__).resolve().parent
        try:
            done = subprocess.run(
                ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
            )
            sha = done.stdout.strip() if done.returncode == 0 else None
        except OSError:
            sha = None
    return {"package": __version__, "git_sha": sha or None}


class Registry:
    def __init__(self, settings: Settings, *, prefix: str = PREFIX, s3=None) -> None:
        self.settings = settings
        self.bucket = settings.s3.bucket
        self.prefix = prefix
        self.s3 = s3 or s3_client(settings)

    # -- layout
    def version_prefix(self, version: int) -> str:
        return f"{self.prefix}v={version:04d}/"

    def model_uri(self, version: int) -> str:
        return s3a_uri(self.bucket, self.version_prefix(version) + "model")

    def baseline_uri(self, version: int) -> str:
        return s3a_uri(self.bucket, self.version_prefix(version) + "baseline")

    # -- listing
    def _version_dirs(self) -> list[int]:
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                match = _VERSION_DIR.search(common["Prefix"])
                if match:
                    found.append(int(match.group(1)))
        return sorted(found)

    def versions(self) -> list[int]:
        """Complete versions (lineage.json written), oldest first."""
        return [v for v in self._version_dirs() if self._exists(self.version_prefix(v) + "lineage.json")]

    def next_version(self) -> int:
        """One past every version directory, complete or not: a failed attempt's number is never reused."""
        dirs = self._version_dirs()
        return (dirs[-1] if dirs else 0) + 1

    # -- JSON documents
    def _exists(self, key: str) -> bool:
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
        except self.s3.exceptions.ClientError:
            return False
        return True

    def _put_json(self, key: str, data: dict[str, Any]) -> None:
        body = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def _get_json(self, key: str) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(body)

    def write_json(self, version: int, name: str, data: dict[str, Any]) -> None:
        self._put_json(self.version_prefix(version) + name, data)

    def read_json(self, version: int, name: str) -> dict[str, Any] | None:
        return self._get_json(self.version_prefix(version) + name)

    def threshold(self, version: int) -> float:
        """The probability cut-off tuned when the version was trained."""
        return float((self.read_json(version, "lineage.json") or {}).get("threshold", 0.5))

    # -- Spark artifacts
    def save(
        self,
        version: int,
        model: PipelineModel,
        baseline: DataFrame,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        scorer: ScoringArtifact | None = None,
    ) -> None:
        """Write a version; lineage.json last, which marks it complete."""
        ensure_bucket(self.settings, self.bucket)
        model.write().overwrite().save(self.model_uri(version))
        baseline.coalesce(1).write.mode("overwrite").parquet(self.baseline_uri(version))
        if scorer is not None:
            self.write_scorer(version, scorer)
        self.write_json(version, "metrics.json", metrics)
        self.write_json(version, "lineage.json", lineage)

    def load(self, spark: SparkSession, version: int) -> tuple[PipelineModel, DataFrame]:
        from pyspark.ml import PipelineModel

        model = PipelineModel.load(self.model_uri(version))
        baseline = spark.read.parquet(self.baseline_uri(version))
        return model, baseline

    # -- the Spark-free scorer
    def write_scorer(self, version: int, scorer: ScoringArtifact) -> None:
        self._put_json(self.version_prefix(version) + SCORER_NAME, scorer.model_dump())

    def scorer(self, version: int) -> ScoringArtifact | None:
        """The version's scoring artifact, or None for versions trained before it existed."""
        data = self.read_json(version, SCORER_NAME)
        return ScoringArtifact.model_validate(data) if data else None

    def export_scorer(self, spark: SparkSession, version: int) -> ScoringArtifact:
        """Write scorer.json for an existing version from its Spark model, baseline and threshold."""
        model, baseline = self.load(spark, version)
        artifact = export_scorer(model, baseline, self.threshold(version), spark.version)
        self.write_scorer(version, artifact)
        return artifact

    # -- champion
    def champion(self) -> Champion | None:
        data = self._get_json(self.prefix + CHAMPION)
        if not data:
            return None
        return Champion(int(data["version"]), float(data["f1"]), str(data["promoted_at"]))

    def promote(self, version: int, f1: float, reason: str) -> Champion:
        previous = self.champion()
        champion = Champion(version, f1, datetime.now(timezone.utc).isoformat())
        self._put_json(
            self.prefix + CHAMPION,
            {
                "version": version,
                "f1": f1,
                "promoted_at": champion.promoted_at,
                "previous": previous.version if previous else None,
                "reason": reason,
                "model_uri": self.model_uri(version),
            },
        )
        return champion
