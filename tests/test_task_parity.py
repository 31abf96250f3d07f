"""The pod and the local process get the same argv and env; rendered pods are valid Kubernetes."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import kubernetes_validate
import pytest
from airflow.sdk import DAG
from kubernetes.client import ApiClient

from eventpipe.orchestration.command import TaskCommand
from eventpipe.orchestration.tasks import cli_task
from eventpipe.settings import SECRET_ENV

START = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)
END = datetime(2026, 11, 20, 11, tzinfo=timezone.utc)
ARGS = [
    "drain",
    "--start",
    "{{ data_interval_start.isoformat() }}",
    "--end",
    "{{ data_interval_end.isoformat() }}",
    "--topics",
    "{{ params.topics | join(',') }}",
]


def _context(dag: DAG) -> dict[str, object]:
    ti = SimpleNamespace(dag_id=dag.dag_id, task_id="drain", map_index=-1, try_number=1)
    return {
        "data_interval_start": START,
        "data_interval_end": END,
        "params": {"topics": ["a", "b"]},
        "dag": dag,
        "ds": "2026-11-20",
        "run_id": "manual__test",
        "ti": ti,
    }


@pytest.fixture()
def rendered(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EVENTPIPE_ES_URL", "http://es.eventpipe.svc:9200")
    monkeypatch.setenv("EVENTPIPE_ES_PASSWORD", "s3cr3t-value")
    with DAG("parity", schedule=None, start_date=START) as dag:
        command = TaskCommand(ARGS)
        pod = cli_task("drain", command, profile="drain", mode="kubernetes")
        local = cli_task("drain_local", command, mode="local")
    context = _context(dag)
    pod.render_template_fields(context)
    local.render_template_fields(context)
    return pod, local, context


def test_same_argv(rendered) -> None:
    pod, local, _ = rendered
    expected = ["eventpipe", "drain", "--start", START.isoformat(), "--end", END.isoformat(), "--topics", "a,b"]
    assert [*pod.cmds, *pod.arguments] == expected
    assert [*local.cmds, *local.arguments] == expected


def test_same_env_and_secrets_by_name(rendered) -> None:
    pod, local, _ = rendered
    pod_env = {e.name: e.value for e in pod.env_vars}
    pod_env.pop("HOME")  # pods run with a read-only root filesystem; HOME points at the tmp volume
    assert pod_env == local.env_vars
    assert pod_env["EVENTPIPE_ES_URL"] == "http://es.eventpipe.svc:9200"
    expected_secret_envs = sorted(env for keys in SECRET_ENV.values() for env in keys.values())
    assert sorted(s.deploy_target for s in pod.secrets) == expected_secret_envs
    assert local.secret_env_names == expected_secret_envs
    # the local process reads secret values from the worker env by the same names
    assert local.process_env()["EVENTPIPE_ES_PASSWORD"] == "s3cr3t-value"


def test_secrets_never_in_argv_or_plain_env(rendered) -> None:
    pod, local, _ = rendered
    flat = " ".join([*pod.arguments, *local.arguments, *local.env_vars.values()])
    assert "s3cr3t-value" not in flat
    pod_obj = ApiClient().sanitize_for_serialization(pod.build_pod_request_obj(_context_for(pod), dry_run=True))
    assert "s3cr3t-value" not in str(pod_obj)


def _context_for(op) -> dict[str, object]:
    return _context(op.dag)


def test_rendered_pod_is_valid_kubernetes(rendered) -> None:
    pod, _, context = rendered
    obj = ApiClient().sanitize_for_serialization(pod.build_pod_request_obj(context, dry_run=True))
    obj.setdefault("apiVersion", "v1")
    obj.setdefault("kind", "Pod")
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    container = obj["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert obj["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"] == "1536Mi"
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"] if "valueFrom" in e}
    assert refs["EVENTPIPE_ES_PASSWORD"] == "eventpipe-elasticsearch"
    assert refs["AWS_SECRET_ACCESS_KEY"] == "eventpipe-s3"


def test_invalid_pod_is_rejected_by_the_schema(rendered) -> None:
    pod, _, context = rendered
    obj = ApiClient().sanitize_for_serialization(pod.build_pod_request_obj(context, dry_run=True))
    obj.update(apiVersion="v1", kind="Pod")
    obj["spec"]["containers"][0]["resources"]["limits"]["memory"] = {"not": "a quantity"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(obj, "1.33.0", strict=True)


def test_an_fs_snapshot_repository_claim_is_mounted_read_only_at_its_location(monkeypatch: pytest.MonkeyPatch) -> None:
    """The devstack's fs repository reaches snapshot pods as a claim (Pod Security forbids hostPath in pods)."""
    monkeypatch.setenv("EVENTPIPE_SNAPSHOT_FS_LOCATION", "/srv/es-snapshots/eventpipe-snapshots")
    monkeypatch.setenv("EVENTPIPE_SNAPSHOT_FS_CLAIM", "snapshot-repo")
    with DAG("claim", schedule=None, start_date=START) as dag:
        pod = cli_task("take", TaskCommand(["archive", "snapshot", "--day", "2026-11-20"]), mode="kubernetes")
    obj = ApiClient().sanitize_for_serialization(pod.build_pod_request_obj(_context(dag), dry_run=True))
    obj.setdefault("apiVersion", "v1")
    obj.setdefault("kind", "Pod")
    kubernetes_validate.validate(obj, "1.33.0", strict=True)
    volumes = {v["name"]: v for v in obj["spec"]["volumes"]}
    assert volumes["snapshot-repository"]["persistentVolumeClaim"] == {"claimName": "snapshot-repo", "readOnly": True}
    mounts = {m["name"]: m for m in obj["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["snapshot-repository"]["mountPath"] == "/srv/es-snapshots/eventpipe-snapshots"
    assert mounts["snapshot-repository"]["readOnly"] is True
    monkeypatch.delenv("EVENTPIPE_SNAPSHOT_FS_CLAIM")
    plain = cli_task("take2", TaskCommand(["archive", "snapshot", "--day", "2026-11-20"]), mode="kubernetes")
    assert "snapshot-repository" not in {v.name for v in plain.volumes}
