"""The production path on a real local cluster: the image, task pods built by the project's own factory,
Secrets by name, XCom through the sidecar, and least-privilege RBAC.

``make test-k8s`` (opt-in: root, and a first build of about an hour, docs/kubernetes.md#first-build-time). The
fixture brings the cluster up idempotently; a missing prerequisite is an error here, never a silent skip.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from elasticsearch import Elasticsearch
from kubernetes.client import models as k8s

from devstack.cluster.deploy import NAMESPACE, kubernetes_connection, prepare, task_env, xcom_sidecar_image
from devstack.cluster.kubernetes import KubernetesCluster, kubeconfig, kubectl
from devstack.cluster.podnet import BRIDGE, BRIDGE_MAC
from devstack.runtime import DevstackError
from devstack.stack import DATA_SERVICES, DEVSTACK_CREDENTIALS, up
from eventpipe.events.generator import GeneratorConfig, utc
from eventpipe.events.produce import produce
from eventpipe.settings import Settings
from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS

from .k8s_support import task_pod

pytestmark = [pytest.mark.k8s, pytest.mark.services]

# the leading "x" keeps the client's exec stream from turning JSON output into a Python repr
XCOM_CMD = ["sh", "-c", "printf x; cat /airflow/xcom/return.json 2>/dev/null || true"]


@dataclass
class PodRun:
    name: str
    exit_code: int | None
    waiting_reason: str
    waiting_message: str
    logs: str
    xcom: dict[str, Any] | None
    start_seconds: float  # creation -> task container running (pod start latency)
    total_seconds: float


@pytest.fixture(scope="session")
def cluster(stack_env: dict[str, str]) -> Iterator[Any]:
    """The local cluster with image, CRDs, deploy/ and Secrets; the API client for it."""
    if os.geteuid() != 0:
        pytest.fail("the k8s tests need root (bridge, iptables, containers): run them as root or deselect -m k8s")
    began = time.monotonic()
    try:
        up(DATA_SERVICES)
        KubernetesCluster().start()
        prepare()
    except DevstackError as err:
        pytest.fail(f"the local Kubernetes cluster could not be prepared:\n{err}")
    print(f"\ncluster ready in {time.monotonic() - began:.1f}s")
    from kubernetes import client, config

    # the xcom sidecar is the devstack's busybox image (no registry: the provider's default alpine cannot be pulled)
    os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = kubernetes_connection(xcom_sidecar_image())
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig())))
    yield api
    api.api_client.close()


@pytest.fixture(scope="module")
def stateful(cluster: Any) -> Any:
    """The cluster with the Kafka and Elasticsearch StatefulSets Ready (``eventpipe devstack k8s-stateful``)."""
    from devstack.cluster.stateful import deploy_stateful

    print(f"\nstateful sets ready: {deploy_stateful()}")
    return cluster


def _pod(task_id: str, args: list[str], *, namespace: str = NAMESPACE, profile: str = "small") -> Any:
    """The pod exactly as the DAG factory (eventpipe.orchestration.tasks) would launch it in kubernetes mode."""
    env = task_env()
    environ = {"EVENTPIPE_NAMESPACE": namespace, "EVENTPIPE_IMAGE": env["EVENTPIPE_IMAGE"]}
    return task_pod(task_id, args, env, environ, profile=profile)


def _run(api: Any, pod: Any, *, timeout: float = 300, expect_start: bool = True) -> PodRun:
    """Create the pod, wait for the task container to finish (or fail to start), read logs and the XCom."""
    from kubernetes.stream import stream

    namespace, name = pod.metadata.namespace, pod.metadata.name
    began = time.monotonic()
    api.create_namespaced_pod(namespace, pod)
    started: float | None = None
    exit_code, reason, message = None, "", ""
    try:
        deadline = began + timeout
        while time.monotonic() < deadline:
            status = api.read_namespaced_pod(name, namespace).status
            base = next((c for c in status.container_statuses or [] if c.name == "base"), None)
            if base and base.state:
                if (base.state.running or base.state.terminated) and started is None:
                    started = time.monotonic() - began
                if base.state.terminated:
                    exit_code = base.state.terminated.exit_code
                    break
                if base.state.waiting and base.state.waiting.reason not in {None, "ContainerCreating"}:
                    reason, message = base.state.waiting.reason, base.state.waiting.message or ""
                    if not expect_start and reason == "CreateContainerConfigError":
                        break
            time.sleep(0.5)
        else:
            raise AssertionError(f"pod {name} did not finish in {timeout}s: {reason} {message}")
        # raw bytes: the client deserialises a log that happens to be one JSON document into a dict (its repr)
        logs = ""
        if exit_code is not None:
            raw = api.read_namespaced_pod_log(name, namespace, container="base", _preload_content=False)
            logs = raw.data.decode()
        xcom = None
        if exit_code == 0:
            out = stream(api.connect_get_namespaced_pod_exec, name, namespace, container="airflow-xcom-sidecar",
                         command=XCOM_CMD, stderr=False, stdin=False, stdout=True, tty=False)  # fmt: skip
            text = out.removeprefix("x").strip()
            xcom = json.loads(text) if text else None  # no return.json: the command emitted nothing
        return PodRun(name, exit_code, reason, message, logs, xcom, started or -1.0, time.monotonic() - began)
    finally:
        api.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_image_runs_the_cli_as_non_root_on_a_read_only_root(cluster: Any) -> None:
    pod = _pod("cli_help", ["--help"])
    spec = pod.spec.containers[0]
    assert spec.security_context.read_only_root_filesystem and pod.spec.security_context.run_as_non_root
    run = _run(cluster, pod)
    print(f"\npod start latency {run.start_seconds:.1f}s, total {run.total_seconds:.1f}s")
    assert run.exit_code == 0, run.logs
    for command in ("drain", "rollup", "archive", "ml"):
        assert command in run.logs


def test_pod_runs_spark_local_mode_against_s3a(cluster: Any, services: Settings) -> None:
    """Spark, Java and pyarrow temp files all land on the /tmp emptyDir (the root filesystem is read-only)."""
    key = f"k8s-test/{uuid.uuid4().hex[:8]}"
    code = (
        "import json, os; from eventpipe.settings import Settings; from eventpipe.sparkjobs.session import "
        "build_session, s3a_uri; s = Settings.from_env(); spark = build_session(s, 'k8s-smoke'); "
        f"uri = s3a_uri(s.s3.bucket, '{key}'); spark.range(1000).write.mode('overwrite').parquet(uri); "
        "n = spark.read.parquet(uri).count(); import pyarrow.parquet as pq; "
        "from eventpipe.results import emit; emit('spark', {'rows': n, 'java': os.environ['JAVA_HOME']})"
    )
    pod = _pod("spark_smoke", ["--help"], profile="spark-driver")
    pod.spec.containers[0].command, pod.spec.containers[0].args = ["python", "-c", code], []
    pod.spec.service_account_name = "eventpipe-task"  # local mode: no executor pods, no API access needed
    run = _run(cluster, pod, timeout=400)
    assert run.exit_code == 0, run.logs[-3000:]
    assert run.xcom == {"rows": 1000, "java": "/opt/java"}


def test_one_ingest_hour_drained_by_a_pod_gives_exact_counts(
    cluster: Any, services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    start = utc("2026-03-01T10:00:00") + timedelta(days=uuid.uuid4().int % 200)
    end = start + timedelta(hours=1)
    produced = produce(
        services, GeneratorConfig(start, end, 0.5, seed=31, malformed_rate=0.02), topics=topics, truth=False
    )
    assert produced.malformed > 0
    args = ["drain", "--start", start.isoformat(), "--end", end.isoformat(), "--topics", ",".join(topics.values())]
    pod = _pod("drain", args, profile="drain")
    # worker processes even for this small hour: spawn must work on the read-only root (semaphores in /dev/shm)
    for name, value in (("EVENTPIPE_DRAIN_WORKERS", "2"), ("EVENTPIPE_DRAIN_PARALLEL_MIN_RECORDS", "1")):
        pod.spec.containers[0].env.append(k8s.V1EnvVar(name=name, value=value))
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["AWS_SECRET_ACCESS_KEY"].value is None
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "eventpipe-s3"
    assert DEVSTACK_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in json.dumps(
        cluster.api_client.sanitize_for_serialization(pod)
    )
    run = _run(cluster, pod)
    assert run.exit_code == 0, run.logs[-3000:]
    assert run.xcom is not None
    assert run.xcom["consumed"] == produced.produced
    assert run.xcom["indexed"] == produced.valid
    assert run.xcom["dead_lettered"] == produced.malformed
    assert all(topic["workers"] == 2 for topic in run.xcom["topics"])
    es.indices.refresh(index=EVENTS_ALIAS)
    es.indices.refresh(index=DLQ_INDEX)
    indexed = sum(es.count(index=EVENTS_ALIAS, query={"term": {"kafka.topic": t}})["count"] for t in topics.values())
    dead = sum(es.count(index=DLQ_INDEX, query={"term": {"source_topic": t}})["count"] for t in topics.values())
    assert (indexed, dead) == (produced.valid, produced.malformed)


def test_node_bridge_mac_stays_fixed_while_pods_come_and_go(cluster: Any) -> None:
    """Pods reach the host services through the bridge; its MAC must not follow the lowest veth's."""
    bridge = Path("/sys/class/net") / BRIDGE
    for _ in range(2):
        run = _run(cluster, _pod("cli_help", ["--help"]))
        assert run.exit_code == 0
        assert (bridge / "addr_assign_type").read_text().strip() == "3"  # set, not inherited from a port
        assert (bridge / "address").read_text().strip() == BRIDGE_MAC


def test_a_pod_whose_secret_is_missing_fails_with_a_clear_error(cluster: Any) -> None:
    namespace = f"eventpipe-nosecret-{uuid.uuid4().hex[:6]}"
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "eventpipe-task", "namespace": namespace},
            },
        ],
    }
    kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    try:
        run = _run(cluster, _pod("drain", ["--help"], namespace=namespace), timeout=120, expect_start=False)
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false")
    assert run.exit_code is None
    assert run.waiting_reason == "CreateContainerConfigError"
    assert 'secret "eventpipe-' in run.waiting_message and "not found" in run.waiting_message


def _can(verb: str, resource: str, namespace: str, account: str) -> bool:
    """``kubectl auth can-i`` as the service account, with the groups its token carries."""
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{account.split(':')[0]}", "system:authenticated"]
    kind, _, sub = resource.partition("/")  # "pods/exec" would read as the pod named "exec"
    out = kubectl(
        "auth", "can-i", verb, kind, *([f"--subresource={sub}"] if sub else []), "-n", namespace,
        f"--as=system:serviceaccount:{account}", *(f"--as-group={g}" for g in groups), check=False,
    ).strip()  # fmt: skip
    assert out in {"yes", "no"}, out
    return out == "yes"


@pytest.mark.parametrize(
    ("account", "verb", "resource", "namespace", "allowed"),
    [
        # task pods: only VolumeSnapshots and reading PVCs, in their own namespace
        ("eventpipe:eventpipe-task", "create", "volumesnapshots.snapshot.storage.k8s.io", "eventpipe", True),
        ("eventpipe:eventpipe-task", "list", "persistentvolumeclaims", "eventpipe", True),
        ("eventpipe:eventpipe-task", "get", "secrets", "eventpipe", False),
        ("eventpipe:eventpipe-task", "create", "pods", "eventpipe", False),
        ("eventpipe:eventpipe-task", "create", "volumesnapshots.snapshot.storage.k8s.io", "default", False),
        ("eventpipe:eventpipe-task", "delete", "persistentvolumeclaims", "eventpipe", False),
        ("eventpipe:eventpipe-task", "list", "nodes", "", False),
        # the Spark driver: executor pods in its namespace, nothing else
        ("eventpipe:eventpipe-spark", "create", "pods", "eventpipe", True),
        ("eventpipe:eventpipe-spark", "create", "pods", "default", False),
        ("eventpipe:eventpipe-spark", "get", "secrets", "eventpipe", False),
        ("eventpipe:eventpipe-spark", "create", "pods/exec", "eventpipe", False),
        # the Airflow worker launches task pods and execs into the xcom sidecar, only in eventpipe
        ("airflow:airflow-worker", "create", "pods", "eventpipe", True),
        ("airflow:airflow-worker", "create", "pods/exec", "eventpipe", True),
        ("airflow:airflow-worker", "get", "secrets", "eventpipe", False),
        ("airflow:airflow-worker", "create", "pods", "kube-system", False),
        ("airflow:airflow-worker", "delete", "namespaces", "", False),
    ],
)
def test_rbac_is_least_privilege(
    cluster: Any, account: str, verb: str, resource: str, namespace: str, allowed: bool
) -> None:
    assert _can(verb, resource, namespace or "default", account) is allowed


class PodWatch:
    """Records the pods matching ``selector`` while a test runs (Spark deletes its executors when it stops)."""

    def __init__(self, api: Any, namespace: str, selector: str) -> None:
        self.api, self.namespace, self.selector = api, namespace, selector
        self.seen: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pod in self.api.list_namespaced_pod(self.namespace, label_selector=self.selector).items:
                known = self.seen.get(pod.metadata.name)
                # keep the latest view that has a running/terminated container (the proof it started)
                if known is None or pod.status.container_statuses:
                    self.seen[pod.metadata.name] = pod
            self._stop.wait(1.0)

    def __enter__(self) -> PodWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _started(pod: Any) -> bool:
    return any(c.state and (c.state.running or c.state.terminated) for c in pod.status.container_statuses or [])


def test_spark_on_kubernetes_runs_executor_pods_on_the_same_image(cluster: Any, services: Settings) -> None:
    """Client mode: the task pod is the driver (service account eventpipe-spark) and asks for 2 executor pods.

    The executors must register with the driver (its pod IP, not the 0.0.0.0 bind address) and do the work:
    the job's tasks report executor host names, and the Parquet round trip through s3a counts every row.
    """
    key = f"k8s-test/{uuid.uuid4().hex[:8]}"
    code = "\n".join(
        [
            "import socket, time",
            "from eventpipe.results import emit",
            "from eventpipe.settings import Settings",
            "from eventpipe.sparkjobs.session import build_session, s3a_uri",
            "s = Settings.from_env()",
            "began = time.time()",
            "spark = build_session(s, 'k8s-executors')",
            "sc = spark.sparkContext",
            "deadline = time.time() + 240",
            "while sc._jsc.sc().getExecutorMemoryStatus().size() - 1 < 2 and time.time() < deadline:",
            "    time.sleep(0.5)",
            "registered = time.time() - began",
            "hosts = sc.parallelize(range(64), 8).map(lambda _: socket.gethostname()).distinct().collect()",
            f"uri = s3a_uri(s.s3.bucket, '{key}')",
            "spark.range(100000).repartition(4).write.mode('overwrite').parquet(uri)",
            "frame = spark.read.parquet(uri)",
            "rows, total = frame.count(), frame.selectExpr('sum(id)').first()[0]",
            "emit('spark', {'executors': sc._jsc.sc().getExecutorMemoryStatus().size() - 1,",
            "               'hosts': sorted(hosts), 'driver': socket.gethostname(), 'rows': rows, 'sum': total,",
            "               'registered_seconds': round(registered, 1)})",
            "spark.stop()",
        ]
    )
    pod = _pod("train", ["--help"], profile="spark-driver")
    assert pod.spec.service_account_name == "eventpipe-spark"
    container = pod.spec.containers[0]
    container.command, container.args = ["python", "-c", code], []
    container.env += [
        _env("EVENTPIPE_SPARK_MASTER", "k8s://https://kubernetes.default.svc"),
        _env("EVENTPIPE_SPARK_EXECUTORS", "2"),
        _env("EVENTPIPE_SPARK_EXECUTOR_MEMORY", "768m"),
        _env("EVENTPIPE_SPARK_EXECUTOR_REQUEST_CORES", "250m"),
    ]
    # the node has 2 CPUs: the driver reserves less than the production profile so both executors fit
    container.resources.requests["cpu"] = "250m"
    with PodWatch(cluster, NAMESPACE, "app.kubernetes.io/component=spark-executor") as watch:
        run = _run(cluster, pod, timeout=600)
    assert run.exit_code == 0, run.logs[-4000:]
    assert run.xcom is not None
    print(f"\ndriver pod start {run.start_seconds:.1f}s, executors registered {run.xcom['registered_seconds']}s "
          f"after the session was built, total {run.total_seconds:.1f}s")  # fmt: skip
    executors = [p for p in watch.seen.values() if any(o.name == run.name for o in p.metadata.owner_references or [])]
    assert len(executors) >= 2, sorted(watch.seen)
    for executor in executors:
        assert executor.spec.service_account_name == "eventpipe-spark"
        assert executor.spec.containers[0].image == container.image  # the same image as the task pod
        assert _started(executor), executor.status
    assert run.xcom["executors"] >= 2
    assert (run.xcom["rows"], run.xcom["sum"]) == (100000, sum(range(100000)))
    executor_hosts = [h for h in run.xcom["hosts"] if h != run.xcom["driver"]]
    assert len(executor_hosts) >= 2, run.xcom  # the work ran in at least two executor pods
    assert set(executor_hosts) <= {p.metadata.name for p in executors}


def _env(name: str, value: str) -> Any:
    from kubernetes.client import models as k8s

    return k8s.V1EnvVar(name=name, value=value)


def _start_latency(pod: Any) -> float | None:
    """Pod creation to its task container running, from the API's own timestamps (seconds)."""
    base = next((c for c in pod.status.container_statuses or [] if c.name == "base"), None)
    state = base.state if base else None
    started = (state.running.started_at if state and state.running else None) or (
        state.terminated.started_at if state and state.terminated else None
    )
    return (started - pod.metadata.creation_timestamp).total_seconds() if started else None


def test_airflow_runs_the_ingest_dag_as_pods_with_exact_counts(
    cluster: Any, services: Settings, es: Elasticsearch, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The devstack Airflow in kubernetes mode: every task of one ingest run is a pod, counts as in local mode.

    Settings reach the pods as env, S3 keys from the Secret by name (Airflow itself does not hold them), each
    task's XCom comes back through the busybox sidecar, and the pod's own output is in the Airflow task log.
    """
    from devstack.airflow import EXECUTION_ENV, Airflow
    from devstack.airflow_api import AirflowClient

    from .airflow_support import INGEST_DAG, unpaused

    monkeypatch.setenv(EXECUTION_ENV, "kubernetes")
    airflow = Airflow()
    began = time.monotonic()
    airflow.start()
    print(f"\nairflow ready in kubernetes mode after {time.monotonic() - began:.1f}s")
    assert airflow.running_execution() == "kubernetes"
    env = airflow.env()
    assert env["EVENTPIPE_EXECUTION"] == "kubernetes" and "AWS_SECRET_ACCESS_KEY" not in env

    seed = uuid.uuid4().int % 1_000_000
    h0 = utc("2026-01-01T00:00:00") + timedelta(hours=seed % (300 * 24))
    h1 = h0 + timedelta(hours=1)
    produced = produce(
        services, GeneratorConfig(h0, h1, 0.5, seed=seed, malformed_rate=0.02), topics=topics, truth=False
    )
    assert produced.malformed > 0
    selector = "app.kubernetes.io/name=eventpipe"
    with (
        AirflowClient(airflow.url) as client,
        unpaused(client, services, INGEST_DAG) as api,
        PodWatch(cluster, NAMESPACE, selector) as watch,
    ):
        run = api.trigger(
            INGEST_DAG,
            conf={"topics": sorted(topics.values())},
            logical_date=h0,
            data_interval=(h0, h1),
            run_id=f"k8s__{h0:%Y%m%dT%H}__{seed}",
        )
        # unpausing made the scheduler start the latest scheduled run (or an earlier run was left): it would
        # hold the DAG's one active-run slot
        for state in ("queued", "running"):
            for other in api.dag_runs(INGEST_DAG, state=state):
                if other.dag_run_id != run.dag_run_id:
                    api.set_run_state(INGEST_DAG, other.dag_run_id, "failed")
        finished = api.wait(INGEST_DAG, run.dag_run_id, timeout=1200, poll=3)
        instances = api.task_instances(INGEST_DAG, run.dag_run_id)
        states = {ti["task_id"]: ti["state"] for ti in instances}
        drain_try = next(ti["try_number"] for ti in instances if ti["task_id"] == "drain")
        drained = api.xcom(INGEST_DAG, run.dag_run_id, "drain")
        rolled = api.xcom(INGEST_DAG, run.dag_run_id, "rollup")
        ledger = api.xcom(INGEST_DAG, run.dag_run_id, "ledger")
        # the last try's log (a retry is legitimate: e.g. an archive test's quiesce write block on the shared node)
        drain_log = api.task_log(INGEST_DAG, run.dag_run_id, "drain", try_number=drain_try)
    assert finished.state == "success", states
    assert set(states.values()) == {"success"} and {"drain", "rollup", "score", "ledger"} <= set(states)

    # one pod per task, on the image, with the settings as env and the S3 keys from the Secret by name
    # by component; a retried task's later pod comes later in the watch and wins
    pods = {p.metadata.labels.get("app.kubernetes.io/component"): p for p in watch.seen.values()}
    assert {"drain", "rollup", "score", "ledger"} <= set(pods), sorted(watch.seen)
    for component in ("drain", "rollup", "score", "ledger"):
        pod = pods[component]
        base = pod.spec.containers[0]
        assert base.image == task_env()["EVENTPIPE_IMAGE"] and base.command == ["eventpipe"]
        values = {e.name: e for e in base.env}
        assert values["EVENTPIPE_KAFKA_BOOTSTRAP"].value == task_env()["EVENTPIPE_KAFKA_BOOTSTRAP"]
        assert values["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "eventpipe-s3"
        sidecar = next(c for c in pod.spec.containers if c.name == "airflow-xcom-sidecar")
        assert "xcom-sidecar" in sidecar.image
    latencies = sorted(v for v in map(_start_latency, pods.values()) if v is not None)
    print(f"pod start latency (creation -> task container running): {latencies}")

    # exact counts, as the local-mode end-to-end test asserts them
    assert drained["consumed"] == produced.produced
    assert drained["indexed"] == produced.valid
    assert drained["dead_lettered"] == produced.malformed
    assert drained["touched_hours"] == [h0.isoformat()]
    assert rolled["hours"] == 1 and rolled["rollup_documents"] > 0
    assert ledger["remaining"] == 0
    es.indices.refresh(index=EVENTS_ALIAS)
    es.indices.refresh(index=DLQ_INDEX)
    indexed = sum(es.count(index=EVENTS_ALIAS, query={"term": {"kafka.topic": t}})["count"] for t in topics.values())
    dead = sum(es.count(index=DLQ_INDEX, query={"term": {"source_topic": t}})["count"] for t in topics.values())
    assert (indexed, dead) == (produced.valid, produced.malformed)

    # the pod's own output is in the Airflow task log
    assert pods["drain"].metadata.name in drain_log
    assert f'"indexed": {produced.valid}' in drain_log or f"'indexed': {produced.valid}" in drain_log, drain_log[-3000:]
