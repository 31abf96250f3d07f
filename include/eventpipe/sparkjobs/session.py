"""One SparkSession factory for every Spark job, local (devstack) or on Kubernetes.

``EVENTPIPE_SPARK_MASTER`` picks where executors run: ``local[2]`` by default (the devstack and
tests), ``k8s://https://kubernetes.default.svc`` in production. On Kubernetes the driver runs in
client mode inside the Airflow task pod (profile ``spark-driver``) and asks the API server for
executor pods running the same ``EVENTPIPE_IMAGE``, under the ``eventpipe-spark`` service account.
The image carries the extra jars (hadoop-aws, AWS SDK modules, Kafka source; see
``devstack/maven/spark/pom.xml``) in ``$SPARK_HOME/jars``, so ``spark.jars`` is set only locally,
from ``EVENTPIPE_SPARK_JARS_DIR``, which the devstack sets and fills (this layer never imports it).

Credentials never enter the Spark configuration (it is visible in argv, the UI, event logs and
the driver's ConfigMap): ``spark_conf`` renders only non-secret keys, and ``build_session``
copies the S3 keys from the environment into the live Hadoop configuration, where
``SimpleAWSCredentialsProvider`` reads them. Executor pods get the same variables from the
``eventpipe-s3`` Secret, for ``EnvironmentVariableCredentialsProvider`` next in the chain.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from eventpipe.errors import InvalidConfiguration
from eventpipe.settings import SECRET_ENV, Settings

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

LOCAL_MASTER = "local[2]"
K8S_MASTER = "k8s://https://kubernetes.default.svc"
SPARK_SERVICE_ACCOUNT = "eventpipe-spark"
CREDENTIAL_PROVIDERS = (
    "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
)
S3A_SSE_ALIASES = {"SSE-S3": "AES256", "aws:kms": "SSE-KMS", "aws:kms:dsse": "DSSE-KMS"}
# Fixed ports so a NetworkPolicy can let executors reach the driver pod.
DRIVER_PORT = "7078"
BLOCK_MANAGER_PORT = "7079"


def _s3a_conf(settings: Settings) -> dict[str, str]:
    conf = {
        "spark.hadoop.fs.s3a.aws.credentials.provider": ",".join(CREDENTIAL_PROVIDERS),
        "spark.hadoop.fs.s3a.endpoint.region": settings.s3.region,
        "spark.hadoop.fs.s3a.path.style.access": "true" if settings.s3.endpoint else "false",
        "spark.hadoop.fs.s3a.connection.maximum": str(settings.s3.s3a_connections),
        "spark.hadoop.fs.s3a.attempts.maximum": "5",
    }
    if settings.s3.endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3.endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(settings.s3.endpoint.startswith("https")).lower()
    # Server-side encryption of everything Spark writes: EVENTPIPE_S3_SSE as the archive writer reads it
    # (S3 header values, default AES256 = SSE-S3; "none" disables), translated to s3a's names.
    sse = settings.archive.sse
    if sse.lower() != "none":
        conf["spark.hadoop.fs.s3a.encryption.algorithm"] = S3A_SSE_ALIASES.get(sse, sse)
        if settings.archive.sse_kms_key:  # a key id/ARN, not a secret
            conf["spark.hadoop.fs.s3a.encryption.key"] = settings.archive.sse_kms_key
    return conf


def _local_conf(settings: Settings) -> dict[str, str]:
    return {
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "true" if settings.spark.ui else "false",
        "spark.ui.showConsoleProgress": "false",
    }


def _k8s_conf(settings: Settings) -> dict[str, str]:
    """Client mode: this pod is the driver; executors are pods it owns (deleted with it)."""
    spark, kube = settings.spark, settings.kubernetes
    conf = {
        "spark.submit.deployMode": "client",
        "spark.kubernetes.namespace": kube.namespace,
        "spark.kubernetes.container.image": kube.image,
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        "spark.kubernetes.authenticate.driver.serviceAccountName": SPARK_SERVICE_ACCOUNT,
        "spark.kubernetes.authenticate.executor.serviceAccountName": SPARK_SERVICE_ACCOUNT,
        "spark.executor.instances": str(spark.executors),
        "spark.executor.cores": str(spark.executor_cores),
        "spark.executor.memory": spark.executor_memory,
        # the scheduler's reservation may be below the cores Spark uses (e.g. "500m" on a small node)
        "spark.kubernetes.executor.request.cores": spark.executor_request_cores or str(spark.executor_cores),
        "spark.kubernetes.executor.limit.cores": str(spark.executor_cores),
        "spark.kubernetes.executor.deleteOnTermination": "true",
        "spark.kubernetes.executor.label.app.kubernetes.io/name": "eventpipe",
        "spark.kubernetes.executor.label.app.kubernetes.io/component": "spark-executor",
        # Listen on every interface, advertise spark.driver.host. Since Spark 4.1 executors are handed the
        # *bind* address by default (useDriverPodIP, meant for cluster mode where it is the pod IP): in client
        # mode that is 0.0.0.0, and every executor exits unable to register.
        "spark.driver.bindAddress": "0.0.0.0",
        "spark.kubernetes.executor.useDriverPodIP": "false",
        "spark.driver.port": DRIVER_PORT,
        "spark.blockManager.port": BLOCK_MANAGER_PORT,
        "spark.ui.enabled": "false",
    }
    if kube.pod_name:  # the task pod's name: executors get it as ownerReference, so they die with it
        conf["spark.kubernetes.driver.pod.name"] = kube.pod_name
        conf["spark.kubernetes.executor.podNamePrefix"] = kube.pod_name[:40].rstrip("-")  # Spark adds -exec-N
    if kube.pod_ip:
        conf["spark.driver.host"] = kube.pod_ip
    if spark.executor_template:  # security context, tolerations, ...
        conf["spark.kubernetes.executor.podTemplateFile"] = spark.executor_template
    # Executors read S3 credentials from the same Secret as task pods: a reference, not the value.
    for secret_key, env_name in SECRET_ENV["eventpipe-s3"].items():
        conf[f"spark.kubernetes.executor.secretKeyRef.{env_name}"] = f"eventpipe-s3:{secret_key}"
    return conf


def spark_conf(settings: Settings, master: str) -> dict[str, str]:
    """Every Spark setting for ``master``, secrets excluded; pure, so it is testable without a cluster."""
    conf = {
        "spark.master": master,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Redact anything secret-looking that a user adds by hand, in the UI and event logs.
        "spark.redaction.regex": "(?i)secret|password|token|access[.]key|credential",
    }
    conf.update(_s3a_conf(settings))
    if master.startswith("k8s://"):
        conf.update(_k8s_conf(settings))
    elif master.startswith("local"):
        conf.update(_local_conf(settings))
    return conf


def build_session(settings: Settings, app_name: str, *, master: str | None = None) -> SparkSession:
    """A configured SparkSession (reused if one is already running in this process).

    Everything comes from the caller's ``settings``: connections and credentials, and Spark's own
    (the ``spark``, ``kubernetes`` and ``archive`` sections), which the Spark task env delivers to
    the entry point that read them.
    """
    from pyspark.sql import SparkSession

    master = master or settings.spark.master or LOCAL_MASTER
    if master.startswith("k8s://") and not settings.kubernetes.pod_ip:
        ip = socket.gethostbyname(socket.gethostname())
        settings = settings.updated(kubernetes={"pod_ip": ip})
    conf = spark_conf(settings, master)
    if master.startswith("local"):
        # environment plumbing, not a setting: the JVM started below inherits it (no hostname lookup)
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        if not _jars_in_image():
            conf["spark.jars"] = ",".join(str(path) for path in _local_jars(settings))
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.spark.log_level)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    if settings.s3.access_key and settings.s3.secret_key:
        hadoop.set("fs.s3a.access.key", settings.s3.access_key.get_secret_value())
        hadoop.set("fs.s3a.secret.key", settings.s3.secret_key.get_secret_value())
    return spark


def _local_jars(settings: Settings) -> list[Path]:
    """The extra jars the devstack resolved into ``EVENTPIPE_SPARK_JARS_DIR`` (``eventpipe devstack install``)."""
    jars = sorted(Path(settings.spark.jars_dir).glob("*.jar")) if settings.spark.jars_dir else []
    if not jars:
        raise InvalidConfiguration(
            f"a local Spark outside the image needs its extra jars, but EVENTPIPE_SPARK_JARS_DIR="
            f"{settings.spark.jars_dir!r} holds none: run `eventpipe devstack install` (it sets and fills it)"
        )
    return jars


def _jars_in_image() -> bool:
    """The image copies the extra jars into pyspark's own jars dir (no Maven, read-only root there)."""
    import pyspark

    return any((Path(pyspark.__file__).parent / "jars").glob("hadoop-aws-*.jar"))


def s3a_uri(bucket: str, key: str) -> str:
    return f"s3a://{bucket}/{key.lstrip('/')}"


def spark_task_env(mode: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Env for a Spark task: the deployment's Spark settings (``SPARK_TASK_ENV``, those it sets);
    master defaults to Kubernetes in pods."""
    out = Settings.from_env(env).task_env("spark", only_set=True)
    out.setdefault("EVENTPIPE_SPARK_MASTER", K8S_MASTER if mode == "kubernetes" else LOCAL_MASTER)
    return out
