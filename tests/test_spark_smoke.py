"""Spark against the real devstack: s3a both ways with pyarrow, the Kafka source; Kubernetes conf rendering."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from devstack.stack import local_env, up
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import K8S_MASTER, build_session, s3a_uri, spark_conf, spark_task_env
from eventpipe.storage.s3 import arrow_fs, ensure_bucket, s3_client

from .ml_archive import delete_bucket


@pytest.fixture(scope="module")
def s3_settings(stack_env: dict[str, str]) -> Iterator[Settings]:
    up(["s3"])
    settings = Settings.from_env(stack_env).updated(s3={"bucket": f"spark-smoke-{uuid.uuid4().hex[:8]}"})
    ensure_bucket(settings, settings.s3.bucket)
    yield settings
    delete_bucket(s3_client(settings), settings.s3.bucket)


@pytest.fixture(scope="module")
def spark(stack_env: dict[str, str]):
    return build_session(Settings.from_env(stack_env), "eventpipe-tests")  # reused process-wide, stopped at exit


@pytest.mark.services
def test_spark_reads_parquet_written_by_pyarrow(s3_settings: Settings, spark) -> None:
    bucket = s3_settings.s3.bucket
    table = pa.table(
        {
            "device_id": [f"dev-{i % 7}" for i in range(5000)],
            "value": [float(i) * 0.5 for i in range(5000)],
            "metrics": pa.array([[("t", float(i))] for i in range(5000)], type=pa.map_(pa.string(), pa.float64())),
        }
    )
    fs = arrow_fs(s3_settings)
    for part in range(2):
        pq.write_table(table.slice(part * 2500, 2500), f"{bucket}/smoke/in/part-{part}.parquet", filesystem=fs)

    frame = spark.read.parquet(s3a_uri(bucket, "smoke/in/"))
    row = frame.selectExpr(
        "count(*) AS n", "sum(value) AS s", "sum(metrics['t']) AS t", "count(DISTINCT device_id) AS d"
    )
    result = row.first()
    assert result["n"] == 5000
    assert result["s"] == pytest.approx(sum(i * 0.5 for i in range(5000)))
    assert result["t"] == pytest.approx(sum(range(5000)))
    assert result["d"] == 7


@pytest.mark.services
def test_spark_writes_parquet_read_by_pyarrow(s3_settings: Settings, spark) -> None:
    bucket = s3_settings.s3.bucket
    uri = s3a_uri(bucket, "smoke/out")
    spark.range(0, 20000, numPartitions=4).selectExpr("id", "id * 2 AS twice", "id % 10 AS bucket").write.mode(
        "overwrite"
    ).partitionBy("bucket").parquet(uri)

    s3 = s3_client(s3_settings)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="smoke/out/")["Contents"]]
    assert "smoke/out/_SUCCESS" in keys
    parts = [k for k in keys if k.endswith(".parquet")]
    assert parts and all(s3.head_object(Bucket=bucket, Key=k).get("ServerSideEncryption") == "AES256" for k in parts)

    table = pq.read_table(f"{bucket}/smoke/out", filesystem=arrow_fs(s3_settings), partitioning="hive")
    assert table.num_rows == 20000
    assert pc.sum(table["twice"]).as_py() == 2 * sum(range(20000))
    assert len(pc.unique(table["bucket"])) == 10


@pytest.mark.services
def test_spark_reads_kafka(stack_env: dict[str, str], spark) -> None:
    from kafka import KafkaProducer

    up(["kafka"])
    topic = f"test-spark-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=stack_env["EVENTPIPE_KAFKA_BOOTSTRAP"], acks="all")
    for i in range(300):
        producer.send(topic, key=str(i % 5).encode(), value=str(i).encode())
    producer.flush()
    producer.close()

    frame = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", stack_env["EVENTPIPE_KAFKA_BOOTSTRAP"])
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .load()
    )
    row = frame.selectExpr("count(*) AS n", "sum(CAST(CAST(value AS STRING) AS INT)) AS s").first()
    assert (row["n"], row["s"]) == (300, sum(range(300)))


def test_kubernetes_conf_has_expected_keys_and_no_secrets() -> None:
    env = {
        "EVENTPIPE_NAMESPACE": "data",
        "EVENTPIPE_IMAGE": "registry.example/eventpipe:1.2.3",
        "EVENTPIPE_SPARK_EXECUTORS": "4",
        "EVENTPIPE_SPARK_EXECUTOR_CORES": "2",
        "EVENTPIPE_SPARK_EXECUTOR_MEMORY": "6g",
        "HOSTNAME": "eventpipe-train-abc123",
        "EVENTPIPE_POD_IP": "10.1.2.3",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-v",
    }
    conf = spark_conf(Settings.from_env({**local_env(), **env}), K8S_MASTER)
    assert conf["spark.master"] == K8S_MASTER
    assert conf["spark.submit.deployMode"] == "client"
    assert conf["spark.kubernetes.namespace"] == "data"
    assert conf["spark.kubernetes.container.image"] == "registry.example/eventpipe:1.2.3"
    assert conf["spark.kubernetes.authenticate.executor.serviceAccountName"] == "eventpipe-spark"
    assert (conf["spark.executor.instances"], conf["spark.executor.cores"], conf["spark.executor.memory"]) == (
        "4",
        "2",
        "6g",
    )
    assert conf["spark.kubernetes.driver.pod.name"] == "eventpipe-train-abc123"
    assert conf["spark.driver.host"] == "10.1.2.3"
    # executors must be told the advertised host, not the 0.0.0.0 bind address (Spark 4.1+ default)
    assert conf["spark.kubernetes.executor.useDriverPodIP"] == "false"
    assert conf["spark.kubernetes.executor.secretKeyRef.AWS_SECRET_ACCESS_KEY"] == "eventpipe-s3:secret-key"
    assert conf["spark.hadoop.fs.s3a.encryption.algorithm"] == "AES256"  # s3a's name for SSE-S3
    assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert "SimpleAWSCredentialsProvider" in conf["spark.hadoop.fs.s3a.aws.credentials.provider"]
    assert "spark.jars" not in conf  # the image carries the jars
    values = " ".join(conf.values())
    assert "AKIDEXAMPLE" not in values and "s3cr3t-v" not in values
    assert not any("access.key" in k or "secret.key" in k for k in conf)


def test_local_conf_and_task_env() -> None:
    conf = spark_conf(
        Settings.from_env({"EVENTPIPE_S3_SSE": "none", "EVENTPIPE_SPARK_DRIVER_MEMORY": "3g"}), "local[2]"
    )
    assert conf["spark.driver.memory"] == "3g"
    assert "spark.hadoop.fs.s3a.encryption.algorithm" not in conf
    assert not any(k.startswith("spark.kubernetes.") for k in conf)
    # empty values (how plain_env passes unset names to pods) mean the defaults
    blank = spark_conf(
        Settings.from_env({"EVENTPIPE_S3_SSE": "", "EVENTPIPE_NAMESPACE": "", "EVENTPIPE_IMAGE": ""}), K8S_MASTER
    )
    assert blank["spark.hadoop.fs.s3a.encryption.algorithm"] == "AES256"
    assert (blank["spark.kubernetes.namespace"], blank["spark.kubernetes.container.image"]) == (
        "eventpipe",
        "eventpipe:0.1.0",
    )
    assert spark_conf(Settings.from_env({"EVENTPIPE_S3_SSE": "aws:kms"}), "local[1]")[
        "spark.hadoop.fs.s3a.encryption.algorithm"
    ] == ("SSE-KMS")
    assert spark_task_env("kubernetes", {})["EVENTPIPE_SPARK_MASTER"] == K8S_MASTER
    assert spark_task_env("local", {"EVENTPIPE_IMAGE": "x:1"}) == {
        "EVENTPIPE_SPARK_MASTER": "local[2]",
        "EVENTPIPE_IMAGE": "x:1",
    }
