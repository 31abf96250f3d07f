"""One SparkSession factory for every Spark job, local (devstack) or on Kubernetes.

``EVENTPIPE_SPARK_MASTER`` picks where executors run: ``local[2]`` by default (the devstack and
tests), ``k8s://https://kubernetes.default.svc`` in production. On Kubernetes the driver runs in
client mode inside the Airflow task pod (profile ``spark-driver``) and asks the API server for
executor pods running the same ``EVENTPIPE_IMAGE``, under the ``eventpipe-spark`` service account.
The image carries the extra jars (hadoop-aws, AWS SDK modules, Kafka source; see
``devstack/maven/spark/pom.xml``) in ``$SPARK_HOME/jars``, so ``spark.jars`` is set only locally,
from ``eventpipe.devstack.spark.spark_jars()``.

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


def _s3a_conf(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    conf = {
        "spark.hadoop.fs.s3a.aws.credentials.provider": ",".join(CREDENTIAL_PROVIDERS),
        "spark.hadoop.fs.s3a.endpoint.region": settings.s3_region,
        "spark.hadoop.fs.s3a.path.style.access": "true" if settings.s3_endpoint else "false",
        "spark.hadoop.fs.s3a.connection.maximum": env.get("EVENTPIPE_S3A_CONNECTIONS") or "64",
        "spark.hadoop.fs.s3a.attempts.maximum": "5",
    }
    if settings.s3_endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = settings.s3_endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(settings.s3_endpoint.startswith("https")).lower()
    # Server-side encryption of everything Spark writes: EVENTPIPE_S3_SSE as the archive writer reads it
    # (S3 header values, default AES256 = SSE-S3; "none" disables), translated to s3a's names.
    sse = env.get("EVENTPIPE_S3_SSE") or "AES256"
    if sse.lower() != "none":
        conf["spark.hadoop.fs.s3a.encryption.algorithm"] = S3A_SSE_ALIASES.get(sse, sse)
        if env.get("EVENTPIPE_S3_SSE_KMS_KEY"):  # a key id/ARN, not a secret
            conf["spark.hadoop.fs.s3a.encryption.key"] = env["EVENTPIPE_S3_SSE_KMS_KEY"]
    return conf


def _local_conf(env: Mapping[str, str]) -> dict[str, str]:
    return {
        "spark.driver.memory": env.get("EVENTPIPE_SPARK_DRIVER_MEMORY") or "2g",
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.ui.enabled": "true" if env.get("EVENTPIPE_SPARK_UI") else "false",
        "spark.ui.showConsoleProgress": "false",
    }


def _k8s_conf(env: Mapping[str, str]) -> dict[str, str]:
    """Client mode: this pod is the driver; executors are pods it owns (deleted with it)."""
    namespace = env.get("EVENTPIPE_NAMESPACE") or "eventpipe"
    conf = {
        "spark.submit.deployMode": "client",
        "spark.kubernetes.namespace": namespace,
        "spark.kubernetes.container.image": env.get("EVENTPIPE_IMAGE") or "eventpipe:0.1.0",
        "spark.kubernetes.container.image.pullPolicy": "IfNotPresent",
        "spark.kubernetes.authenticate.driver.serviceAccountName": SPARK_SERVICE_ACCOUNT,
        "spark.kubernetes.authenticate.executor.serviceAccountName": SPARK_SERVICE_ACCOUNT,
        "spark.executor.instances": env.get("EVENTPIPE_SPARK_EXECUTORS") or "2",
        "spark.executor.cores": env.get("EVENTPIPE_SPARK_EXECUTOR_CORES") or "1",
        "spark.executor.memory": env.get("EVENTPIPE_SPARK_EXECUTOR_MEMORY") or "2g",
        # the scheduler's reservation may be below the cores Spark uses (e.g. "500m" on a small node)
        "spark.kubernetes.executor.request.cores": env.get("EVENTPIPE_SPARK_EXECUTOR_REQUEST_CORES")
        or env.get("EVENTPIPE_SPARK_EXECUTOR_CORES")
        or "1",
        "spark.kubernetes.executor.limit.cores": env.get("EVENTPIPE_SPARK_EXECUTOR_CORES") or "1",
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
    if env.get("HOSTNAME"):  # the task pod's name: executors get it as ownerReference, so they die with it
        conf["spark.kubernetes.driver.pod.name"] = env["HOSTNAME"]
        conf["spark.kubernetes.executor.podNamePrefix"] = env["HOSTNAME"][:40].rstrip("-")  # Spark adds -exec-N
    if env.get("EVENTPIPE_POD_IP"):
        conf["spark.driver.host"] = env["EVENTPIPE_POD_IP"]
    if env.get("EVENTPIPE_SPARK_EXECUTOR_TEMPLATE"):  # security context, tolerations, ...
        conf["spark.kubernetes.executor.podTemplateFile"] = env["EVENTPIPE_SPARK_EXECUTOR_TEMPLATE"]
    # Executors read S3 credentials from the same Secret as task pods: a reference, not the value.
    for secret_key, env_name in SECRET_ENV["eventpipe-s3"].items():
        conf[f"spark.kubernetes.executor.secretKeyRef.{env_name}"] = f"eventpipe-s3:{secret_key}"
    return conf


def spark_conf(settings: Settings, master: str, env: Mapping[str, str]) -> dict[str, str]:
    """Every Spark setting for ``master``, secrets excluded; pure, so it is testable without a cluster."""
    conf = {
        "spark.master": master,
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.shuffle.partitions": env.get("EVENTPIPE_SPARK_SHUFFLE_PARTITIONS") or "8",
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        # Redact anything secret-looking that a user adds by hand, in the UI and event logs.
        "spark.redaction.regex": "(?i)secret|password|token|access[.]key|credential",
    }
    conf.update(_s3a_conf(settings, env))
    if master.startswith("k8s://"):
        conf.update(_k8s_conf(env))
    elif master.startswith("local"):
        conf.update(_local_conf(env))
    return conf


def build_session(settings: Settings, app_name: str, *, master: str | None = None) -> SparkSession:
    """A configured SparkSession (reused if one is already running in this process)."""
    from pyspark.sql import SparkSession

    env = dict(os.environ)
    master = master or env.get("EVENTPIPE_SPARK_MASTER") or LOCAL_MASTER
    if master.startswith("k8s://") and not env.get("EVENTPIPE_POD_IP"):
        env["EVENTPIPE_POD_IP"] = socket.gethostbyname(socket.gethostname())
    conf = spark_conf(settings, master, env)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the JVM inherits it: no hostname lookup
        if not _jars_in_image():
            from eventpipe.devstack.spark import spark_jars

            conf["spark.jars"] = ",".join(str(path) for path in spark_jars())
    builder = SparkSession.builder.appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(env.get("EVENTPIPE_SPARK_LOG_LEVEL") or "WARN")
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    if settings.s3_access_key and settings.s3_secret_key:
        hadoop.set("fs.s3a.access.key", settings.s3_access_key.get_secret_value())
        hadoop.set("fs.s3a.secret.key", settings.s3_secret_key.get_secret_value())
    return spark


def _jars_in_image() -> bool:
    """The image copies the extra jars into pyspark's own jars dir (no Maven, read-only root there)."""
    import pyspark

    return any((Path(pyspark.__file__).parent / "jars").glob("hadoop-aws-*.jar"))


def s3a_uri(bucket: str, key: str) -> str:
    return f"s3a://{bucket}/{key.lstrip('/')}"


# Non-secret Spark settings a Spark task inherits from the Airflow deployment, by these names.
SPARK_TASK_ENV = (
    "EVENTPIPE_SPARK_MASTER",
    "EVENTPIPE_IMAGE",
    "EVENTPIPE_NAMESPACE",
    "EVENTPIPE_SPARK_EXECUTORS",
    "EVENTPIPE_SPARK_EXECUTOR_CORES",
    "EVENTPIPE_SPARK_EXECUTOR_REQUEST_CORES",
    "EVENTPIPE_SPARK_EXECUTOR_MEMORY",
    "EVENTPIPE_SPARK_EXECUTOR_TEMPLATE",
    "EVENTPIPE_SPARK_DRIVER_MEMORY",
    "EVENTPIPE_S3_SSE",
    "EVENTPIPE_S3_SSE_KMS_KEY",
    "EVENTPIPE_PROMOTION_MARGIN",
    "EVENTPIPE_GIT_SHA",
)


def spark_task_env(mode: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Env for a Spark task: the deployment's Spark settings; master defaults to Kubernetes in pods."""
    env = os.environ if env is None else env
    out = {name: env[name] for name in SPARK_TASK_ENV if env.get(name)}
    out.setdefault("EVENTPIPE_SPARK_MASTER", K8S_MASTER if mode == "kubernetes" else LOCAL_MASTER)
    return out
