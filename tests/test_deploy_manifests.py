"""Deployment artefacts checked offline: Helm values against the chart's schema, Kubernetes manifests against
the Kubernetes and CRD schemas, alert rules against the runbook, compose and image files against the code.

No cluster, Helm or Docker engine is needed; what those would reject (unknown fields, wrong types, names
that do not match between manifests and code) is rejected here.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator

from eventpipe import k8s
from eventpipe.k8s.schemas import CRD_SCHEMAS, CrdValidationError, load_schema, validate_crd, volume_snapshot
from eventpipe.metrics import METRICS
from eventpipe.orchestration.profiles import PROFILES
from eventpipe.settings import PLAIN_ENV, SECRET_ENV

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCS = ROOT / "docs"
K8S_VERSION = "1.33.0"
CHART_VERSION = "1.22.0"  # tests/schemas/README.md

# Series the alerts and the dashboard may use: the names the tasks will push (agreed with the lead) and the
# two the Airflow plugin pushes today (plugins/eventpipe_plugin.py).
KNOWN_METRICS = {f"eventpipe_{name}" for name in METRICS}  # what the code declares it pushes
ALERTS = {
    "EventpipeDrainLagHigh",
    "EventpipeDlqRateHigh",
    "EventpipeBulkLatencyHigh",
    "EventpipeNightlyArchiveMissing",
    "EventpipeSnapshotFailed",
    "EventpipeDagRunFailed",
    "EventpipeLedgerFoundUncoveredOffsets",
    "EventpipeLedgerOffsetsRemain",
    "EventpipeShardBudgetHigh",
    "EventpipeVolumeFilling",
    "EventpipeVolumeFull",
}
# what the storage alerts read from the kubelet (its volume stats), not pushed by eventpipe
KUBELET_METRICS = {f"kubelet_volume_stats_{name}_bytes" for name in ("available", "capacity", "used")}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def _objects(kind: str | None = None) -> list[dict[str, Any]]:
    objs = [o for p in _manifest_files() for o in _docs(p)]
    return [o for o in objs if kind is None or o["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in _objects(kind) if o["metadata"]["name"] == name]
    return obj


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "helm-values.yaml").read_text())


@pytest.fixture(scope="module")
def chart_schema() -> dict[str, Any]:
    return json.loads((ROOT / "tests/schemas/airflow-chart-values.schema.json").read_text())


def _env(values: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in values["env"]}


def _pinned(dist: str) -> str:
    (line,) = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln.startswith(f"{dist}==")]
    return line.split("==", 1)[1]


# --- Helm values ------------------------------------------------------------------------------------------------


def test_helm_values_valid_for_chart(values: dict[str, Any], chart_schema: dict[str, Any]) -> None:
    assert chart_schema["$schema"].startswith("http://json-schema.org/draft-07/schema")
    assert chart_schema["properties"]["defaultAirflowTag"]["default"] == "3.2.2"  # chart 1.22.0's default
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(chart_schema).iter_errors(values)]
    assert errors == []
    assert set(values) <= set(chart_schema["properties"]), "top-level keys the chart does not know"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v.__setitem__("executor", "KubernetesExecuter"),
        lambda v: v["apiServer"].__setitem__("replica", 2),
        lambda v: v["securityContexts"]["containers"].__setitem__("readOnlyRootFS", True),
        lambda v: v["env"].append({"name": "EVENTPIPE_X"}),
    ],
    ids=["executor-typo", "unknown-key", "k8s-field-typo", "env-without-value"],
)
def test_chart_schema_rejects_mistakes(values: dict[str, Any], chart_schema: dict[str, Any], mutate) -> None:
    broken = copy.deepcopy(values)
    mutate(broken)
    assert list(Draft7Validator(chart_schema).iter_errors(broken))


def test_helm_values_key_choices(values: dict[str, Any]) -> None:
    assert values["executor"] == "KubernetesExecutor"
    assert values["airflowVersion"] == _pinned("apache-airflow")
    logging = values["config"]["logging"]
    assert logging["remote_logging"] == "True"
    assert logging["remote_base_log_folder"].startswith("s3://")
    conn_env = f"AIRFLOW_CONN_{logging['remote_log_conn_id'].upper()}"
    connections = next(iter(values["extraSecrets"].values()))["stringData"]
    assert conn_env in connections and "aws" in connections
    assert values["statsd"]["enabled"] is True
    assert values["config"]["metrics"]["statsd_on"] == "True"
    assert values["postgresql"]["enabled"] is False and values["data"]["metadataSecretName"]
    assert values["createUserJob"]["enabled"] is False  # no admin/admin
    assert values["dags"]["gitSync"]["enabled"] is True
    assert (ROOT / values["dags"]["gitSync"]["subPath"]).is_dir()
    container = values["securityContexts"]["containers"]
    assert container["readOnlyRootFilesystem"] is True and container["allowPrivilegeEscalation"] is False
    assert values["securityContexts"]["pod"]["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in values["volumeMounts"]


def test_helm_values_agree_with_code_and_manifests(values: dict[str, Any]) -> None:
    env = _env(values)
    assert set(PLAIN_ENV) <= set(env)
    assert env["EVENTPIPE_EXECUTION"] == "kubernetes"
    image = values["images"]["airflow"]
    assert env["EVENTPIPE_IMAGE"] == f"{image['repository']}:{image['tag']}"
    assert env["EVENTPIPE_NAMESPACE"] == k8s.NAMESPACE == _objects("Namespace")[0]["metadata"]["name"]
    assert env["EVENTPIPE_SERVICE_ACCOUNT"] == k8s.TASK_SERVICE_ACCOUNT
    assert _one("ServiceAccount", k8s.TASK_SERVICE_ACCOUNT)["metadata"]["namespace"] == k8s.NAMESPACE
    mapped = {(s["secretName"], s["secretKey"]): s["envName"] for s in values["secret"]}
    assert mapped == {(name, key): env for name, keys in SECRET_ENV.items() for key, env in keys.items()}
    worker_sa = values["workers"]["kubernetes"]["serviceAccount"]["name"]
    subjects = _one("RoleBinding", "eventpipe-pod-launcher")["subjects"]
    assert subjects == [{"kind": "ServiceAccount", "name": worker_sa, "namespace": "airflow"}]


# --- Kubernetes manifests ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    _objects(),
    ids=lambda o: f"{o['kind']}/{o['metadata']['name']}",
)
def test_manifest_valid(obj: dict[str, Any]) -> None:
    if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
        validate_crd(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kubernetes_validation_is_strict() -> None:
    role = copy.deepcopy(_one("Role", "eventpipe-task"))
    role["rules"][0]["verb"] = ["get"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, K8S_VERSION, strict=True)


def test_kustomization_lists_every_top_level_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True)
        assert len(_yaml_docs(out.stdout)) == sum(len(_docs(DEPLOY / name)) for name in listed)


def _yaml_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_rbac_least_privilege() -> None:
    for kind in ("Role", "ClusterRole"):
        for role in _objects(kind):
            for rule in role["rules"]:
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], role["metadata"]["name"]
                assert "secrets" not in rule["resources"]
    task = {r: set(rule["verbs"]) for rule in _one("Role", "eventpipe-task")["rules"] for r in rule["resources"]}
    assert task == {"volumesnapshots": {"create", "get", "list", "delete"}, "persistentvolumeclaims": {"get", "list"}}
    # the cluster-scoped grants (deploy/stateful/rbac.yaml): `eventpipe storage expand` reads StorageClasses; the
    # Kafka restore drill copies snapshot contents (Retain) into its scratch namespace, and retention reads contents
    # and switches a pruned one to Delete
    cluster_roles = {role["metadata"]["name"]: role["rules"] for role in _objects("ClusterRole")}
    assert cluster_roles == {
        "eventpipe-storage-expand": [
            {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get"]}
        ],
        "eventpipe-restore-drill": [
            {
                "apiGroups": ["snapshot.storage.k8s.io"],
                "resources": ["volumesnapshotcontents"],
                "verbs": ["get", "list", "create", "delete", "patch"],
            }
        ],
    }
    bindings = {b["roleRef"]["name"]: b["subjects"] for b in _objects("ClusterRoleBinding")}
    assert set(bindings) == set(cluster_roles)
    assert bindings["eventpipe-restore-drill"] == [
        {"kind": "ServiceAccount", "name": k8s.TASK_SERVICE_ACCOUNT, "namespace": k8s.NAMESPACE}
    ]


def test_storage_and_snapshot_classes() -> None:
    data = _one("StorageClass", k8s.STORAGE_CLASS_DATA)
    scratch = _one("StorageClass", k8s.STORAGE_CLASS_SCRATCH)
    for sc in (data, scratch):
        assert sc["provisioner"] == "pxd.portworx.com" and sc["allowVolumeExpansion"] is True
        assert sc["parameters"]["secure"] == "true"
        assert all(isinstance(v, str) for v in sc["parameters"].values())
    assert data["parameters"] == {"repl": "3", "io_profile": "db_remote", "priority_io": "high", "secure": "true"}
    assert data["reclaimPolicy"] == "Retain"
    assert scratch["parameters"]["repl"] == "2"
    from eventpipe.settings import ArchiveSettings

    assert ArchiveSettings().volume_snapshot_class == k8s.SNAPSHOT_CLASS
    vsc = _one("VolumeSnapshotClass", k8s.SNAPSHOT_CLASS)
    assert vsc["driver"] == "pxd.portworx.com" and vsc["deletionPolicy"] == "Retain"
    assert vsc["metadata"]["labels"][k8s.SNAPSHOT_CLASS_LABEL] == k8s.SNAPSHOT_CLASS_LABEL_VALUE


def test_spark_manifests_match_session() -> None:
    from eventpipe.sparkjobs import session

    assert _one("ServiceAccount", session.SPARK_SERVICE_ACCOUNT)["metadata"]["namespace"] == k8s.NAMESPACE
    spark = _one("NetworkPolicy", "eventpipe-spark")["spec"]
    for rules in (spark["ingress"], spark["egress"]):
        assert {p["port"] for r in rules for p in r["ports"]} == {
            int(session.DRIVER_PORT),
            int(session.BLOCK_MANAGER_PORT),
        }
    executor = {"app.kubernetes.io/name": "eventpipe", "app.kubernetes.io/component": "spark-executor"}
    assert _selects(spark["podSelector"], executor)


def test_network_policies() -> None:
    deny = _one("NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    egress = _one("NetworkPolicy", "eventpipe-task-egress")["spec"]
    assert egress["policyTypes"] == ["Egress"]
    ports = {p["port"] for rule in egress["egress"] for p in rule["ports"]}
    assert ports == {53, 9092, 9093, 9200, 443, 9091}  # DNS, Kafka, Elasticsearch, S3, Pushgateway


# --- The pods the task factory builds, against the manifests ----------------------------------------------------


@pytest.fixture(scope="module")
def task_pod() -> tuple[dict[str, Any], Any]:
    """The pod of the archive's snapshot task (the one that calls the Kubernetes API), from the real DAG file."""
    import importlib.util

    from kubernetes.client import ApiClient

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVENTPIPE_EXECUTION", "kubernetes")
        for name in ("EVENTPIPE_NAMESPACE", "EVENTPIPE_SERVICE_ACCOUNT", "EVENTPIPE_IMAGE"):
            mp.delenv(name, raising=False)
        spec = importlib.util.spec_from_file_location("deploy_check_archive_dag", ROOT / "dags/archive_nightly.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    op = module.dag.get_task("snapshot.take")
    ti = SimpleNamespace(dag_id=module.dag.dag_id, task_id=op.task_id, map_index=-1, try_number=1)
    context = {"dag": module.dag, "ti": ti, "run_id": "manual__deploy", "ds": "2026-11-20"}
    pod = ApiClient().sanitize_for_serialization(op.build_pod_request_obj(context, dry_run=True))
    return pod, op


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    exprs = selector.get("matchExpressions", [])
    assert all(e["operator"] == "In" for e in exprs)
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()) and all(
        labels.get(e["key"]) in e["values"] for e in exprs
    )


def test_task_pods_fit_the_manifests(task_pod: tuple[dict[str, Any], Any]) -> None:
    pod, op = task_pod
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["namespace"] == k8s.NAMESPACE and spec["serviceAccountName"] == k8s.TASK_SERVICE_ACCOUNT
    for name in ("eventpipe-task-egress", "eventpipe-kube-api-egress", "eventpipe-spark"):
        assert _selects(_one("NetworkPolicy", name)["spec"]["podSelector"], meta["labels"]), name
    secrets = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for c in spec["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    examples = {
        (s["metadata"]["name"], key) for s in _docs(DEPLOY / "examples/secrets.example.yaml") for key in s["stringData"]
    }
    assert secrets == examples
    # KubernetesPodOperator reads the xcom sidecar through pods/exec: the launcher Role must allow it.
    assert op.do_xcom_push is True
    launcher = {
        r: set(rule["verbs"]) for rule in _one("Role", "eventpipe-pod-launcher")["rules"] for r in rule["resources"]
    }
    assert {"create", "get"} <= launcher["pods/exec"] and {"create", "delete", "watch"} <= launcher["pods"]


def test_pod_security_level_matches_task_pods(task_pod: tuple[dict[str, Any], Any]) -> None:
    pod, _ = task_pod
    labels = _objects("Namespace")[0]["metadata"]["labels"]
    main, *sidecars = pod["spec"]["containers"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    restricted_ok = all(c.get("securityContext", {}).get("allowPrivilegeEscalation") is False for c in sidecars)
    # "restricted" may only be enforced once every container (the xcom sidecar too) drops privileges.
    assert labels["pod-security.kubernetes.io/enforce"] == ("restricted" if restricted_ok else "baseline")


# --- Custom resources -------------------------------------------------------------------------------------------


def test_crd_schemas_are_package_data() -> None:
    for api_version, kind in CRD_SCHEMAS:
        schema = load_schema(api_version, kind)
        assert "extracted unchanged" in schema["$comment"] and schema["type"] == "object"


def test_volume_snapshot_helper() -> None:
    snap = volume_snapshot("es-data-2026-11-20", k8s.NAMESPACE, "data-eventpipe-es-0")
    assert snap["spec"] == {
        "volumeSnapshotClassName": k8s.SNAPSHOT_CLASS,
        "source": {"persistentVolumeClaimName": "data-eventpipe-es-0"},
    }
    with pytest.raises(CrdValidationError, match="exactly one"):
        bad = copy.deepcopy(snap)
        bad["spec"]["source"]["volumeSnapshotContentName"] = "content-1"
        validate_crd(bad)
    with pytest.raises(CrdValidationError, match="unexpected"):
        validate_crd({**snap, "spec": {**snap["spec"], "volumeSnapshotClass": "x"}})
    with pytest.raises(CrdValidationError, match="does not match"):
        volume_snapshot("Bad_Name", k8s.NAMESPACE, "pvc")


def test_cluster_scoped_crd_rejects_namespace() -> None:
    vsc = copy.deepcopy(_one("VolumeSnapshotClass", k8s.SNAPSHOT_CLASS))
    vsc["metadata"]["namespace"] = k8s.NAMESPACE
    with pytest.raises(CrdValidationError, match="cluster-scoped"):
        validate_crd(vsc)


# --- Alerts, runbook, dashboard ---------------------------------------------------------------------------------

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "time",
    "rate",
    "increase",
    "absent",
    "absent_over_time",
    "clamp_min",
    "predict_linear",
}


def _metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    words = re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_strings)
    return {w for w in words if w.startswith(("eventpipe_", "kubelet_volume_stats_"))}


def _balanced(expr: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def _rules() -> list[dict[str, Any]]:
    return [r for g in _one("PrometheusRule", "eventpipe")["spec"]["groups"] for r in g["rules"]]


def _anchors(markdown: str) -> set[str]:
    """GitHub heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_alerts_are_plausible_and_documented() -> None:
    rules = _rules()
    assert {r["alert"] for r in rules} == ALERTS
    anchors = _anchors((DOCS / "runbook.md").read_text())
    for rule in rules:
        expr = rule["expr"]
        assert _balanced(expr), rule["alert"]
        names = _metric_names(expr)
        assert names and names <= KNOWN_METRICS | KUBELET_METRICS, (rule["alert"], names - KNOWN_METRICS)
        words = set(re.findall(r"\b([a-z_]+)\s*\(", re.sub(r'"[^"]*"', "", expr)))
        assert words <= PROMQL_WORDS, (rule["alert"], words - PROMQL_WORDS)
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbook.md" and anchor == rule["alert"].lower() and anchor in anchors


def test_alert_expressions_parse() -> None:
    promql_parser = pytest.importorskip("promql_parser", reason="promql-parser not installed (optional, full parse)")
    for rule in _rules():
        promql_parser.parse(rule["expr"])


def test_unbalanced_promql_is_caught() -> None:
    assert not _balanced("sum(rate(eventpipe_dlq_records_total[5m])")
    assert not _balanced('max(eventpipe_kafka_lag_records{job="eventpipe")')


def test_grafana_dashboard_covers_every_metric() -> None:
    cm = _one("ConfigMap", "eventpipe-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["eventpipe.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    used = set().union(*map(_metric_names, exprs))
    assert used <= KNOWN_METRICS
    assert KNOWN_METRICS - {"eventpipe_dag_last_success_timestamp"} <= used
    assert all(_balanced(e) for e in exprs)


# --- Docs --------------------------------------------------------------------------------------------------------


def test_configuration_doc_covers_settings_secrets_and_profiles() -> None:
    text = (DOCS / "configuration.md").read_text()
    tasks = (ROOT / "include/eventpipe/orchestration/tasks.py").read_text()
    names = {*PLAIN_ENV, *re.findall(r"\bEVENTPIPE_[A-Z_]+\b", tasks)}
    names |= {env for keys in SECRET_ENV.values() for env in keys.values()}
    assert {n for n in names if f"`{n}`" not in text} == set()
    assert all(f"`{secret}`" in text for secret in SECRET_ENV)
    assert all(f"`{profile}`" in text for profile in PROFILES)


def test_architecture_doc_has_mermaid_diagram() -> None:
    text = (DOCS / "architecture.md").read_text()
    assert "```mermaid" in text and "eventpipe-anomalies" in text


# --- Image and compose ---------------------------------------------------------------------------------------


def test_dockerfile_matches_pins() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert f"apache/airflow:{_pinned('apache-airflow')}-python3.11" in text
    assert "openjdk-17-jre-headless" in text
    dev_pins = (ROOT / "requirements-dev.txt").read_text().split()
    for driver in ("PSYCOPG2", "ASYNCPG"):
        assert re.search(rf"^ARG {driver}=(\S+)$", text, flags=re.M)[1] in dev_pins  # type: ignore[index]
    assert re.findall(r"^USER\s+(\S+)", text, flags=re.M)[-1] == "50000:0"
    entrypoint = ROOT / "docker/entrypoint.sh"
    assert "/opt/eventpipe/entrypoint.sh" in text and entrypoint.stat().st_mode & 0o111
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements.txt", "pyproject.toml", "include", "dags", "plugins", "docker", "devstack"):
        assert needed not in ignored
    for copied in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, flags=re.M):
        # "/..." = from a build stage; spark-jars/ is added to the context by devstack.cluster.image (BASE=debian)
        assert copied.startswith("/") or copied == "spark-jars/" or (ROOT / copied).exists(), copied


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {
        "kafka",
        "elasticsearch",
        "s3",
        "postgres",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
    } <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        one_shot = svc.get("restart") == "no"
        assert one_shot or "healthcheck" in svc, f"{name} has no healthcheck"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for dep, cond in svc.get("depends_on", {}).items():
            expected = "service_completed_successfully" if services[dep].get("restart") == "no" else "service_healthy"
            assert cond == {"condition": expected}, (name, dep)
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["elasticsearch"]["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:9.")
    assert services["elasticsearch"]["environment"]["discovery.type"] == "single-node"
    assert services["postgres"]["image"] == "postgres:15"  # Debian 12's major: the local image reads the volume
    scheduler = services["airflow-scheduler"]
    assert scheduler["environment"]["EVENTPIPE_EXECUTION"] == "local"
    connections = {
        "EVENTPIPE_KAFKA_BOOTSTRAP",
        "EVENTPIPE_ES_URL",
        "EVENTPIPE_S3_ENDPOINT",
        "EVENTPIPE_S3_REGION",
        "EVENTPIPE_ARCHIVE_BUCKET",
    }
    assert connections <= set(scheduler["environment"])


def test_docker_compose_config() -> None:
    """Both files (and the local override on top) parse with the pinned Compose the devstack builds."""
    from devstack.compose import compose_command, installed

    if not installed():
        pytest.skip("docker compose is not built here: make compose-plugin")
    for files in (["docker-compose.yaml"], ["docker-compose.yaml", "docker-compose.local.yaml"]):
        flags = [arg for name in files for arg in ("-f", str(ROOT / name))]
        result = subprocess.run(
            [*compose_command(), *flags, "config", "-q"], capture_output=True, text=True, cwd=ROOT, check=False
        )
        assert result.returncode == 0, (files, result.stderr)


# --- Kafka and Elasticsearch as StatefulSets (deploy/stateful) ----------------------------------------------------

STATEFUL = DEPLOY / "stateful"
# The devstack machine: 2 cores, ~23 GB. The stateful pods may take at most half the memory and a third of the
# CPU requests, leaving room for the host services, Airflow and a spark-driver task pod (1 CPU request).
MACHINE_MEMORY = 23 * 2**30
MACHINE_CPU_MILLI = 2000


def _stateful(kind: str, name: str) -> dict[str, Any]:
    (obj,) = [
        o
        for p in sorted(STATEFUL.glob("*.yaml"))
        for o in _docs(p)
        if o["kind"] == kind and o["metadata"]["name"] == name
    ]
    return obj


def _properties(text: str) -> dict[str, str]:
    lines = [ln.split("=", 1) for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    return {k.strip(): v.strip() for k, v in lines}


def _container(sts: dict[str, Any]) -> dict[str, Any]:
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    return container


def _bytes(quantity: str) -> int:
    from kubernetes.utils import parse_quantity

    return int(parse_quantity(quantity))


def test_stateful_kustomization_lists_its_manifests() -> None:
    listed = yaml.safe_load((STATEFUL / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in STATEFUL.glob("*.yaml") if p.name != "kustomization.yaml")
    overlay_dir = ROOT / "devstack/kubernetes/deploy/stateful"
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    own = sorted(p.name for p in overlay_dir.glob("*.yaml") if p.name != "kustomization.yaml")
    assert overlay["resources"] == ["../../../../deploy/stateful", *own]  # the base, then the overlay's own files


def test_kafka_durability_defaults() -> None:
    sts = _stateful("StatefulSet", "kafka")
    props = _properties(_stateful("ConfigMap", "kafka-config")["data"]["server.properties"])
    assert sts["spec"]["replicas"] == 3
    assert props["process.roles"] == "broker,controller"  # combined KRaft nodes
    voters = props["controller.quorum.voters"].split(",")
    assert [v.split("@")[0] for v in voters] == ["0", "1", "2"]  # node ids = pod ordinals (expand relies on it)
    assert all(v.split("@")[1].startswith(f"kafka-{n}.kafka-headless.kafka.svc:") for n, v in enumerate(voters))
    assert props["default.replication.factor"] == "3" and props["min.insync.replicas"] == "2"
    assert props["offsets.topic.replication.factor"] == "3" and props["transaction.state.log.min.isr"] == "2"
    assert props["unclean.leader.election.enable"] == "false"
    assert props["controlled.shutdown.enable"] == "true"
    assert int(props["min.insync.replicas"]) < int(props["default.replication.factor"])  # one broker may go
    assert props["log.dirs"].startswith(_container(sts)["volumeMounts"][0]["mountPath"])


def test_elasticsearch_nodes_and_restart_hooks() -> None:
    sts = _stateful("StatefulSet", "elasticsearch")
    hooks = _stateful("ConfigMap", "elasticsearch-config")["data"]
    container = _container(sts)
    settings = {e["name"]: e.get("value") for e in container["env"]}  # dotted names: the image's settings
    assert sts["spec"]["replicas"] == 3
    assert {"master", "data"} <= set(settings["node.roles"].split(","))
    assert settings["cluster.initial_master_nodes"].split(",") == [f"elasticsearch-{n}" for n in range(3)]
    assert settings["node.name"] == "$(POD_NAME)"  # the pre-stop hook finds its node by the pod name
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "elasticsearch-data"  # ECK's name
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    hook_mount = next(m for m in container["volumeMounts"] if m["name"] == "hooks")
    assert pre_stop[-1] == f"{hook_mount['mountPath']}/pre-stop.sh"
    assert '{"type":"restart",' in hooks["pre-stop.sh"]
    assert '"index.unassigned.node_left.delayed_timeout":"5m"' in hooks["pre-stop.sh"]
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}  # restarts only through the green check
    readiness = container["readinessProbe"]["httpGet"]["path"]
    assert readiness.startswith("/_cluster/health") and "local=true" in readiness
    (init,) = sts["spec"]["template"]["spec"]["initContainers"]  # the entrypoint writes its config: an emptyDir
    config = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "config")
    assert config == "/usr/share/elasticsearch/config" and "/usr/share/elasticsearch/config/." in init["command"][-1]


@pytest.mark.parametrize("name", ["kafka", "elasticsearch"])
def test_stateful_set_operator_rules(name: str) -> None:
    """PDB one down; own PVC per pod, retained; probes; graceful stop; services; the claim template's class."""
    sts = _stateful("StatefulSet", name)
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    pdb = _stateful("PodDisruptionBudget", name)["spec"]
    assert pdb["maxUnavailable"] == 1 and _selects(pdb["selector"], labels)
    headless = _stateful("Service", spec["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert _selects({"matchLabels": _stateful("Service", name)["spec"]["selector"]}, labels)
    assert spec["podManagementPolicy"] == "Parallel"  # a quorum must form before any pod is ready
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["storageClassName"] == k8s.STORAGE_CLASS_DATA
    assert _one("StorageClass", k8s.STORAGE_CLASS_DATA)["allowVolumeExpansion"] is True
    container = _container(sts)
    assert claim["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert probe in container, probe
    assert pod["terminationGracePeriodSeconds"] >= 120
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Elasticsearch: the image's launcher writes a marker into its home (deploy/stateful/elasticsearch.yaml)
    assert container["securityContext"]["readOnlyRootFilesystem"] is (name == "kafka")
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_stateful_resources_fit_the_devstack_machine() -> None:
    memory = cpu = 0
    for name, heap_env in (("kafka", "KAFKA_HEAP_OPTS"), ("elasticsearch", "ES_JAVA_OPTS")):
        sts = _stateful("StatefulSet", name)
        container = _container(sts)
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests["memory"] == limits["memory"]  # no overcommit: a JVM's heap is its promise
        heap = {e["name"]: e["value"] for e in container["env"] if "value" in e}[heap_env]
        xms, xmx = (re.search(rf"-{f}(\d+)m", heap) for f in ("Xms", "Xmx"))
        assert xms and xmx and xms.group(1) == xmx.group(1)
        assert int(xmx.group(1)) * 2**20 <= _bytes(limits["memory"]) // 2  # heap at most half: page cache, off-heap
        memory += sts["spec"]["replicas"] * _bytes(limits["memory"])
        cpu += sts["spec"]["replicas"] * int(_bytes(requests["cpu"]) * 1000)
    assert memory <= MACHINE_MEMORY // 2, memory
    assert cpu + int(_bytes(PROFILES["spark-driver"].cpu_request) * 1000) <= MACHINE_CPU_MILLI * 0.85, cpu


def test_stateful_network_policies_admit_peers_and_tasks() -> None:
    for name, namespace, client_port in (("kafka", "kafka", 9092), ("elasticsearch", "elastic", 9200)):
        policy = _stateful("NetworkPolicy", f"{name}-ingress")
        assert policy["metadata"]["namespace"] == namespace
        from_tasks = [r for r in policy["spec"]["ingress"] if "namespaceSelector" in r["from"][0]]
        assert from_tasks[0]["from"][0]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": k8s.NAMESPACE
        }
        assert [p["port"] for p in from_tasks[0]["ports"]] == [client_port]
    egress = _one("NetworkPolicy", "eventpipe-task-egress")["spec"]["egress"]
    names = {
        s["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for r in egress
        for s in r["to"]
        if "namespaceSelector" in s
    }
    assert {"kafka", "elastic"} <= names


def test_devstack_overlay_uses_the_csi_encrypted_class() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl not installed: the overlay is rendered by kubectl kustomize")
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "devstack/kubernetes/deploy/stateful")],
        capture_output=True,
        text=True,
        check=True,
    )
    sets = [d for d in _yaml_docs(out.stdout) if d["kind"] == "StatefulSet"]
    assert sorted(s["metadata"]["name"] for s in sets) == ["elasticsearch", "kafka"]
    classes = _docs(ROOT / "devstack/csi/storageclasses.yaml")
    encrypted = next(c for c in classes if c["metadata"]["name"] == "eventpipe-hostpath-encrypted")
    assert encrypted["parameters"]["encrypted"] == "true" and encrypted["allowVolumeExpansion"] is True
    assert "repl" not in encrypted["parameters"]  # no pretend storage replication on one node
    for s in sets:
        assert s["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "eventpipe-hostpath-encrypted"
