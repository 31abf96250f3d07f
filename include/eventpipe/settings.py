"""Runtime configuration, read from the environment so pods and local runs share one contract.

Secrets (passwords, keys) come only from the environment, which on Kubernetes is filled
from Secrets by name (see ``SECRET_ENV``); they never appear in argv.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import BaseModel, Field, SecretStr

# Kubernetes Secret name -> {secret key: env var}. The pod factory mounts exactly these.
SECRET_ENV: dict[str, dict[str, str]] = {
    "eventpipe-elasticsearch": {"username": "EVENTPIPE_ES_USERNAME", "password": "EVENTPIPE_ES_PASSWORD"},
    "eventpipe-s3": {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"},
}

# Non-secret settings passed to every task, locally and in pods, by these names.
PLAIN_ENV = (
    "EVENTPIPE_KAFKA_BOOTSTRAP",
    "EVENTPIPE_ES_URL",
    "EVENTPIPE_S3_ENDPOINT",
    "EVENTPIPE_S3_REGION",
    "EVENTPIPE_ARCHIVE_BUCKET",
    "EVENTPIPE_PUSHGATEWAY_URL",
    "EVENTPIPE_ES_REPLICAS",
    "EVENTPIPE_ES_RETRIES",
    # archive (see eventpipe.archive.config)
    "EVENTPIPE_SNAPSHOT_REPOSITORY",
    "EVENTPIPE_SNAPSHOT_REPOSITORY_TYPE",
    "EVENTPIPE_SNAPSHOT_BUCKET",
    "EVENTPIPE_SNAPSHOT_FS_LOCATION",
    "EVENTPIPE_S3_SSE",
    "EVENTPIPE_RETENTION_DAYS",
    "EVENTPIPE_SNAPSHOT_RETENTION_DAYS",
    "EVENTPIPE_ARCHIVE_ROWS_PER_FILE",
    "EVENTPIPE_VOLUME_SNAPSHOTS",
    "EVENTPIPE_VOLUME_SNAPSHOT_CLASS",
    "EVENTPIPE_VOLUME_SNAPSHOT_SELECTOR",
    "EVENTPIPE_NAMESPACE",
)


class Settings(BaseModel):
    kafka_bootstrap: str = Field(default="127.0.0.1:9092")
    es_url: str = Field(default="http://127.0.0.1:9200")
    es_username: str | None = None
    es_password: SecretStr | None = None
    s3_endpoint: str | None = Field(default="http://127.0.0.1:9000", description="None means AWS S3 itself")
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    archive_bucket: str = "eventpipe-archive"
    pushgateway_url: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {
            "kafka_bootstrap": env.get("EVENTPIPE_KAFKA_BOOTSTRAP"),
            "es_url": env.get("EVENTPIPE_ES_URL"),
            "es_username": env.get("EVENTPIPE_ES_USERNAME"),
            "es_password": env.get("EVENTPIPE_ES_PASSWORD"),
            "s3_endpoint": env.get("EVENTPIPE_S3_ENDPOINT"),
            "s3_region": env.get("EVENTPIPE_S3_REGION"),
            "s3_access_key": env.get("AWS_ACCESS_KEY_ID"),
            "s3_secret_key": env.get("AWS_SECRET_ACCESS_KEY"),
            "archive_bucket": env.get("EVENTPIPE_ARCHIVE_BUCKET"),
            "pushgateway_url": env.get("EVENTPIPE_PUSHGATEWAY_URL"),
        }
        if env.get("EVENTPIPE_S3_ENDPOINT") == "":
            values["s3_endpoint"] = None
        return cls(**{k: v for k, v in values.items() if v is not None})


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()
