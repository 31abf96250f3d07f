"""Runtime configuration: one typed model, read from the environment so pods and local runs share one contract.

Every setting is a field of a section (``kafka``, ``elastic``, ``s3``, ``archive``, ``spark``,
``kubernetes``, ``ml``, ``metrics``) whose validation alias is its documented environment variable
(``EVENTPIPE_ES_URL``, ``AWS_ACCESS_KEY_ID``, ...). Field metadata says where a setting travels:
``plain`` ones are passed to every task (``PLAIN_ENV``), ``spark`` ones to Spark tasks, ``secret``
ones only by Kubernetes Secret reference (``SECRET_ENV``), never in argv. So adding a setting is
adding one field here; the task environments follow from it.

Secrets (passwords, keys) come only from the environment, which on Kubernetes is filled from
Secrets by name. ``EVENTPIPE_<SECTION>__<FIELD>`` (e.g. ``EVENTPIPE_ELASTIC__TIMEOUT_S``) also
works; the documented names win when both are set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

DEFAULT_NAMESPACE = "eventpipe"
DEFAULT_IMAGE = "eventpipe:0.1.0"


def env(
    name: str,
    default: Any = None,
    *,
    plain: bool = False,
    spark: bool = False,
    secret: tuple[str, str] | None = None,
    empty_is_none: bool = False,
    description: str | None = None,
) -> Any:
    """A field read from the environment variable ``name``.

    ``plain``: passed to every task; ``spark``: passed to Spark tasks when set on the deployment;
    ``secret``: (Kubernetes Secret, key) it is mounted from; ``empty_is_none``: "" means None
    rather than the default (an empty S3 endpoint means AWS S3 itself).
    """
    extra = {"plain": plain, "spark": spark, "secret": list(secret) if secret else None, "empty_is_none": empty_is_none}
    return Field(default, validation_alias=name, description=description, json_schema_extra=extra)


class Section(BaseModel):
    """Fields by name in code (``KafkaSettings(bootstrap=...)``), by env name from the environment."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class KafkaSettings(Section):
    bootstrap: str = env("EVENTPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:9092", plain=True)
    drain_workers: int = env(
        "EVENTPIPE_DRAIN_WORKERS",
        0,
        plain=True,
        description="drain processes per topic: 0 = one per CPU, at most one per partition with records",
    )
    drain_parallel_min: int = env(
        "EVENTPIPE_DRAIN_PARALLEL_MIN_RECORDS",
        50_000,
        plain=True,
        description="intervals with fewer planned records drain in the task process itself",
    )
    # The event-time window (docs/schema.md): event_time must lie within these bounds of the record's
    # own Kafka timestamp, else the record is dead-lettered (event_time_out_of_window).
    event_time_max_past_hours: float = env(
        "EVENTPIPE_EVENT_TIME_MAX_PAST_HOURS",
        168.0,
        plain=True,
        description="how far event_time may lie before the record's Kafka timestamp (7 days)",
    )
    event_time_max_future_minutes: float = env(
        "EVENTPIPE_EVENT_TIME_MAX_FUTURE_MINUTES",
        60.0,
        plain=True,
        description="how far event_time may lie after the record's Kafka timestamp (1 hour)",
    )
    # Topics are created by the setup task (and the generator) when missing; existing topics are never altered.
    topic_partitions: int = env(
        "EVENTPIPE_KAFKA_TOPIC_PARTITIONS", 3, plain=True, description="partitions of a new source topic"
    )
    replication_factor: int = env(
        "EVENTPIPE_KAFKA_REPLICATION_FACTOR", 1, plain=True, description="replicas of a new topic: 1 suits one broker"
    )
    min_insync_replicas: int = env(
        "EVENTPIPE_KAFKA_MIN_INSYNC_REPLICAS", 1, plain=True, description="min.insync.replicas of a new topic"
    )
    # Records carry their event time (CreateTime): a broker's time retention deletes backfilled days at once
    retention_ms: int | None = env(
        "EVENTPIPE_KAFKA_RETENTION_MS",
        plain=True,
        description="retention.ms of a new source topic; unset: the broker's default; -1: by size only",
    )


class ElasticSettings(Section):
    url: str = env("EVENTPIPE_ES_URL", "http://127.0.0.1:9200", plain=True)
    username: str | None = env("EVENTPIPE_ES_USERNAME", secret=("eventpipe-elasticsearch", "username"))
    password: SecretStr | None = env("EVENTPIPE_ES_PASSWORD", secret=("eventpipe-elasticsearch", "password"))
    replicas: int = env("EVENTPIPE_ES_REPLICAS", 0, plain=True, description="replicas of every eventpipe index")
    retries: int = env("EVENTPIPE_ES_RETRIES", 6, plain=True, description="attempts of one bulk request")
    timeout_s: float = env("EVENTPIPE_ES_TIMEOUT", 60.0, description="client request timeout")


class S3Settings(Section):
    endpoint: str | None = env(
        "EVENTPIPE_S3_ENDPOINT", "http://127.0.0.1:9000", plain=True, empty_is_none=True, description="None: AWS S3"
    )
    region: str = env("EVENTPIPE_S3_REGION", "us-east-1", plain=True)
    access_key: SecretStr | None = env("AWS_ACCESS_KEY_ID", secret=("eventpipe-s3", "access-key"))
    secret_key: SecretStr | None = env("AWS_SECRET_ACCESS_KEY", secret=("eventpipe-s3", "secret-key"))
    bucket: str = env(
        "EVENTPIPE_ARCHIVE_BUCKET", "eventpipe-archive", plain=True, description="archive, models, claim checks"
    )
    s3a_connections: int = env("EVENTPIPE_S3A_CONNECTIONS", 64, description="Spark s3a connection pool")


class ArchiveSettings(Section):
    # Elasticsearch snapshot repository: "s3" in production (repository-s3 into the snapshot bucket);
    # "fs" on the devstack, whose node is built from Maven Central jars where repository-s3 is not
    # published. An fs repository is mirrored to the snapshot bucket after every snapshot.
    repository: str = env("EVENTPIPE_SNAPSHOT_REPOSITORY", "eventpipe-snapshots", plain=True)
    repository_type: Literal["s3", "fs"] = env("EVENTPIPE_SNAPSHOT_REPOSITORY_TYPE", "s3", plain=True)
    snapshot_bucket: str = env("EVENTPIPE_SNAPSHOT_BUCKET", "eventpipe-snapshots", plain=True)
    fs_location: str | None = env("EVENTPIPE_SNAPSHOT_FS_LOCATION", plain=True)
    sse: str = env(
        "EVENTPIPE_S3_SSE",
        "AES256",
        plain=True,
        spark=True,
        description="S3 ServerSideEncryption requested on every archive object (Spark's writes too)",
    )
    sse_kms_key: str | None = env("EVENTPIPE_S3_SSE_KMS_KEY", spark=True, description="a KMS key id, not a secret")
    retention_days: int = env("EVENTPIPE_RETENTION_DAYS", 30, plain=True)
    snapshot_retention_days: int = env("EVENTPIPE_SNAPSHOT_RETENTION_DAYS", 14, plain=True)
    rows_per_file: int = env("EVENTPIPE_ARCHIVE_ROWS_PER_FILE", 250_000, plain=True)
    read_slices: int = env("EVENTPIPE_ARCHIVE_READ_SLICES", 4, description="parallel slices of one index read")
    volume_snapshots: bool = env("EVENTPIPE_VOLUME_SNAPSHOTS", False, plain=True)
    volume_snapshot_class: str = env("EVENTPIPE_VOLUME_SNAPSHOT_CLASS", "eventpipe-archive", plain=True)
    volume_snapshot_selector: str = env("EVENTPIPE_VOLUME_SNAPSHOT_SELECTOR", "eventpipe.io/snapshot=true", plain=True)
    volume_snapshot_namespaces: str | None = env(
        "EVENTPIPE_VOLUME_SNAPSHOT_NAMESPACES",
        plain=True,
        description="comma-separated namespaces whose labelled PVCs are snapshotted; empty: EVENTPIPE_NAMESPACE",
    )
    snapshot_ready_timeout_s: int = 900


class SparkSettings(Section):
    master: str | None = env("EVENTPIPE_SPARK_MASTER", spark=True, description="unset: local[2], or k8s in pods")
    executors: int = env("EVENTPIPE_SPARK_EXECUTORS", 2, spark=True)
    executor_cores: int = env("EVENTPIPE_SPARK_EXECUTOR_CORES", 1, spark=True)
    executor_request_cores: str | None = env(
        "EVENTPIPE_SPARK_EXECUTOR_REQUEST_CORES", spark=True, description='e.g. "500m"; unset: executor_cores'
    )
    executor_memory: str = env("EVENTPIPE_SPARK_EXECUTOR_MEMORY", "2g", spark=True)
    executor_template: str | None = env("EVENTPIPE_SPARK_EXECUTOR_TEMPLATE", spark=True)
    driver_memory: str = env("EVENTPIPE_SPARK_DRIVER_MEMORY", "2g", spark=True)
    shuffle_partitions: int = env("EVENTPIPE_SPARK_SHUFFLE_PARTITIONS", 8)
    ui: bool = env("EVENTPIPE_SPARK_UI", False)
    log_level: str = env("EVENTPIPE_SPARK_LOG_LEVEL", "WARN")
    jars_dir: str | None = env(
        "EVENTPIPE_SPARK_JARS_DIR", spark=True, description="extra jars of a local Spark outside the image (devstack)"
    )


class KubernetesSettings(Section):
    execution: Literal["kubernetes", "local"] = env("EVENTPIPE_EXECUTION", "kubernetes")
    namespace: str = env("EVENTPIPE_NAMESPACE", DEFAULT_NAMESPACE, plain=True, spark=True)
    image: str = env("EVENTPIPE_IMAGE", DEFAULT_IMAGE, spark=True)
    service_account: str = env("EVENTPIPE_SERVICE_ACCOUNT", "eventpipe-task")
    pod_name: str | None = env("HOSTNAME", description="this pod's name (Spark driver pod)")
    pod_ip: str | None = env("EVENTPIPE_POD_IP", description="this pod's IP (Spark driver host)")
    xcom_path: str | None = env("EVENTPIPE_XCOM_PATH", description="local runner's stand-in for the xcom sidecar")
    kubeconfig: str | None = env("KUBECONFIG", description="the API outside a pod; in a pod, its service account")
    snapshot_fs_claim: str | None = env(
        "EVENTPIPE_SNAPSHOT_FS_CLAIM", description="PVC holding an fs snapshot repository, mounted into task pods"
    )
    # An Airflow outside the cluster (the devstack's) reaches Kafka and Elasticsearch at other addresses than its
    # task pods do: these replace EVENTPIPE_KAFKA_BOOTSTRAP / EVENTPIPE_ES_URL in the pods' environment only.
    pod_kafka_bootstrap: str | None = env(
        "EVENTPIPE_POD_KAFKA_BOOTSTRAP", description="Kafka bootstrap as task pods see it; unset: the worker's"
    )
    pod_es_url: str | None = env("EVENTPIPE_POD_ES_URL", description="Elasticsearch URL as task pods see it")


class MlSettings(Section):
    promotion_margin: float = env(
        "EVENTPIPE_PROMOTION_MARGIN", 0.01, spark=True, description="absolute F1 a challenger must gain"
    )
    git_sha: str | None = env("EVENTPIPE_GIT_SHA", spark=True, description="set in the image")


class MetricsSettings(Section):
    pushgateway_url: str | None = env("EVENTPIPE_PUSHGATEWAY_URL", plain=True)


SECTIONS: dict[str, type[Section]] = {
    "kafka": KafkaSettings,
    "elastic": ElasticSettings,
    "s3": S3Settings,
    "archive": ArchiveSettings,
    "spark": SparkSettings,
    "kubernetes": KubernetesSettings,
    "ml": MlSettings,
    "metrics": MetricsSettings,
}


def env_fields() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(section, field, env name, metadata) of every field read from the environment."""
    for section, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            if isinstance(info.validation_alias, str):
                yield section, name, info.validation_alias, _meta(info)


def _meta(info: FieldInfo) -> dict[str, Any]:
    return info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}


class _NamedEnvSource(PydanticBaseSettingsSource):
    """Each field from its own variable; "" means the default (how plain_env passes unset names)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None) -> None:
        super().__init__(settings_cls)
        self.environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads by env name

    def __call__(self) -> dict[str, Any]:
        values: dict[str, dict[str, Any]] = {}
        for section, _name, var, meta in env_fields():
            raw = self.environ.get(var)
            if raw is None or (raw == "" and not meta.get("empty_is_none")):
                continue
            values.setdefault(section, {})[var] = raw or None
        return values


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVENTPIPE_", env_nested_delimiter="__", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    elastic: ElasticSettings = Field(default_factory=ElasticSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
    ml: MlSettings = Field(default_factory=MlSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _NamedEnvSource(settings_cls), env_settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """From ``environ`` only (the process environment when None): a pure read, for tests and tools."""
        if environ is None:
            return cls()
        # Not model_validate: on a BaseSettings it would add the process environment to ``environ``.
        values = _NamedEnvSource(cls, environ)()
        sections = {name: model.model_validate(values.get(name, {})) for name, model in SECTIONS.items()}
        return cls.model_construct(_fields_set=set(values), **sections)

    def updated(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields replaced: ``s.updated(elastic={"url": proxy})``."""
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise TypeError(f"no settings sections {sorted(unknown)}")
        return self.model_copy(
            update={name: getattr(self, name).model_copy(update=changes) for name, changes in sections.items()}
        )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        # An unknown key would be set silently and read by nobody (e.g. a pre-sections "es_url").
        unknown = set(update or {}) - set(SECTIONS)
        if unknown:
            raise TypeError(f"Settings has sections {sorted(SECTIONS)}, not {sorted(unknown)}; use .updated()")
        return super().model_copy(update=update, deep=deep)

    def task_env(self, flag: Literal["plain", "spark"], *, only_set: bool = False) -> dict[str, str]:
        """Env names and values of the fields flagged ``flag`` (``only_set``: those set explicitly)."""
        out: dict[str, str] = {}
        for section, name, var, meta in env_fields():
            part = getattr(self, section)
            if meta.get(flag) and (not only_set or name in part.model_fields_set):
                out[var] = render(getattr(part, name))
        return out


def render(value: object) -> str:
    """A setting as the environment carries it (None as "", booleans lower-case)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, SecretStr):
        raise TypeError("secrets travel by Secret reference, never as plain env")
    return str(value)


# Non-secret settings passed to every task, locally and in pods, by these names.
PLAIN_ENV: tuple[str, ...] = tuple(var for _, _, var, meta in env_fields() if meta.get("plain"))
# Non-secret Spark settings a Spark task inherits from the Airflow deployment, by these names.
SPARK_TASK_ENV: tuple[str, ...] = tuple(var for _, _, var, meta in env_fields() if meta.get("spark"))


def _secret_env() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for _, _, var, meta in env_fields():
        if meta.get("secret"):
            secret_name, key = meta["secret"]
            out.setdefault(secret_name, {})[key] = var
    return out


# Kubernetes Secret name -> {secret key: env var}. The pod factory mounts exactly these.
SECRET_ENV: dict[str, dict[str, str]] = _secret_env()


@lru_cache(maxsize=1)
def settings() -> Settings:
    """The process's settings, read once (tasks are short-lived processes)."""
    return Settings()
