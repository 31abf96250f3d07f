"""The failure contract: permanent errors exit 3, and both task paths fail them without retries.

The CLI and the local operator are exercised for real (subprocesses); the pod path is a unit test of
error handling, with the provider's Kubernetes calls stubbed out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from eventpipe.archive.verify import VerificationFailed, failure
from eventpipe.cli import ContractApp, app
from eventpipe.errors import (
    PERMANENT_EXIT_CODE,
    ChecksumMismatch,
    InvalidArgument,
    InvalidConfiguration,
    ManifestInvalid,
    ManifestMismatch,
    ManifestMissing,
    PermanentError,
)
from eventpipe.orchestration.command import TaskCommand
from eventpipe.orchestration.local import LocalCliOperator
from eventpipe.orchestration.pod import EventpipePodOperator, container_exit_code
from eventpipe.orchestration.tasks import cli_task

EVENTPIPE = Path(sys.executable).with_name("eventpipe")


def test_every_permanent_error_carries_the_permanent_exit_code() -> None:
    kinds = (InvalidArgument, InvalidConfiguration, ManifestMismatch, ChecksumMismatch, ManifestInvalid)
    for kind in (*kinds, ManifestMissing):
        assert issubclass(kind, PermanentError) and kind("x").exit_code == PERMANENT_EXIT_CODE == 3
    assert PERMANENT_EXIT_CODE not in (0, 1, 2)  # neither success, nor a crash, nor click's usage code
    assert issubclass(InvalidArgument, ValueError)  # callers that caught ValueError still do
    assert issubclass(ChecksumMismatch, VerificationFailed)  # callers that caught VerificationFailed still do


def test_verification_failure_names_checksum_problems() -> None:
    corrupt = failure("archive of 2026-03-01 failed verification: ", ["k.parquet: sha256 differs from the manifest"])
    counts = failure("archive of 2026-03-01 failed verification: ", ["idx: Elasticsearch holds 3 documents"])
    assert type(corrupt) is ChecksumMismatch and type(counts) is VerificationFailed
    assert str(counts) == "archive of 2026-03-01 failed verification: idx: Elasticsearch holds 3 documents"


@pytest.mark.parametrize(
    "argv",
    [
        ["drain", "--start", "2026-01-01T01:00", "--end", "2026-01-01T00:00"],  # empty interval
        ["drain", "--start", "yesterday", "--end", "2026-01-01T00:00"],  # not a time
        ["archive", "restore", "--day", "2026-01-01", "--source", "tape"],  # outside the Enum
        ["ml", "score", "--start", "2026-01-01", "--end", "2026-01-02", "--source", "kafka"],
        ["ml", "train"],  # neither --days nor --since
        ["ml", "train", "--since", "1st of May"],
        ["demo", "--days", "1"],
        ["no-such-command"],
    ],
)
def test_cli_exits_with_the_permanent_code_for_invalid_arguments(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        app(argv, prog_name="eventpipe")
    assert caught.value.code == PERMANENT_EXIT_CODE


def test_cli_keeps_success_and_other_failures_apart() -> None:
    with pytest.raises(SystemExit) as caught:
        app(["--help"], prog_name="eventpipe")
    assert caught.value.code == 0

    probe = ContractApp()

    @probe.command()
    def fail(kind: str) -> None:
        if kind == "corrupt":
            raise ChecksumMismatch("part-00000: sha256 differs from the manifest")
        if kind == "exit":
            raise typer.Exit(1)
        raise ConnectionError("Elasticsearch is restarting")

    for argv, code in ((["corrupt"], PERMANENT_EXIT_CODE), (["exit"], 1)):
        with pytest.raises(SystemExit) as caught:
            probe(argv, prog_name="probe")
        assert caught.value.code == code, argv
    with pytest.raises(ConnectionError):  # unchanged: the interpreter exits 1 and the task is retried
        probe(["blip"], prog_name="probe")


def test_real_cli_process_exits_3_on_an_invalid_argument() -> None:
    assert EVENTPIPE.exists() or shutil.which("eventpipe"), "the eventpipe console script is not installed"
    exe = str(EVENTPIPE) if EVENTPIPE.exists() else "eventpipe"
    proc = subprocess.run(
        [exe, "drain", "--start", "2026-01-01T01:00", "--end", "2026-01-01T00:00"],
        # settings pass the start check (missing S3 keys fail first: tests/test_cli_settings.py); S3 is never reached
        env={**os.environ, "AWS_ACCESS_KEY_ID": "unused", "AWS_SECRET_ACCESS_KEY": "unused"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == PERMANENT_EXIT_CODE, proc.stderr
    assert "permanent failure, not retried: --end 2026-01-01T00:00 must be after --start" in proc.stderr


def _local(argv: list[str]) -> LocalCliOperator:
    return LocalCliOperator(task_id="t", cmds=argv[:1], arguments=argv[1:], env_vars={}, secret_env_names=[])


def test_local_operator_fails_permanent_exits_without_retry() -> None:
    with pytest.raises(AirflowFailException, match="permanent failure"):
        _local([sys.executable, "-c", "raise SystemExit(3)"]).execute({})
    with pytest.raises(AirflowException) as caught:
        _local([sys.executable, "-c", "raise SystemExit(1)"]).execute({})
    assert not isinstance(caught.value, AirflowFailException)  # retried as before
    assert _local([sys.executable, "-c", "print('ok')"]).execute({}) is None


def _pod(phase: str, exit_code: int | None, container: str = "base") -> k8s.V1Pod:
    state = k8s.V1ContainerState(
        terminated=k8s.V1ContainerStateTerminated(exit_code=exit_code) if exit_code is not None else None,
        running=None if exit_code is not None else k8s.V1ContainerStateRunning(),
    )
    status = k8s.V1ContainerStatus(
        name=container, state=state, image="eventpipe:0.1.0", image_id="", ready=False, restart_count=0
    )
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="eventpipe-write-abc", namespace="eventpipe", annotations={}),
        status=k8s.V1PodStatus(phase=phase, container_statuses=[status]),
    )


@pytest.fixture()
def pod_operator(monkeypatch: pytest.MonkeyPatch) -> EventpipePodOperator:
    """The operator the factory builds, with the provider's Kubernetes API calls stubbed out."""
    op = cli_task("write", TaskCommand(["archive", "write", "--day", "2026-03-01"]), mode="kubernetes")
    assert isinstance(op, EventpipePodOperator)

    def no_api_call(*args: Any, **kwargs: Any) -> None:
        return None

    for name in ("patch_already_checked", "process_pod_deletion", "_read_pod_container_states", "_read_pod_events"):
        monkeypatch.setattr(op, name, no_api_call)
    monkeypatch.setattr(op, "is_istio_enabled", lambda pod: False)
    return op


def test_pod_operator_fails_a_permanent_exit_without_retry(pod_operator: EventpipePodOperator) -> None:
    pod = _pod("Failed", PERMANENT_EXIT_CODE)
    with pytest.raises(AirflowFailException, match="exited with 3: a permanent failure"):
        pod_operator.cleanup(pod, pod)


def test_pod_operator_retries_other_failures(pod_operator: EventpipePodOperator) -> None:
    pod = _pod("Failed", 1)
    with pytest.raises(AirflowException) as caught:
        pod_operator.cleanup(pod, pod)
    assert not isinstance(caught.value, AirflowFailException)
    pod_operator.cleanup(_pod("Succeeded", 0), _pod("Succeeded", 0))  # success stays success


def test_container_exit_code_reads_only_the_base_container() -> None:
    assert container_exit_code(_pod("Failed", 3), "base") == 3
    assert container_exit_code(_pod("Failed", 3, container="airflow-xcom-sidecar"), "base") is None
    assert container_exit_code(_pod("Running", None), "base") is None
    assert container_exit_code(None, "base") is None


PROBE_DAG = """
import json
import sys
from datetime import datetime, timedelta, timezone

from airflow.sdk import DAG

from eventpipe.orchestration.command import TaskCommand
from eventpipe.orchestration.tasks import cli_task

with DAG(
    "eventpipe_error_contract",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=0)},
) as dag:
    invalid = ["drain", "--start", "2026-01-01T01:00", "--end", "2026-01-01T00:00"]
    cli_task("permanent", TaskCommand(invalid, env={}), mode="local")
    transient = cli_task("transient", TaskCommand(["drain"], env={}), mode="local")
    transient.cmds, transient.arguments = [sys.executable], ["-c", "raise SystemExit(1)"]

if __name__ == "__main__":
    run = dag.test(logical_date=datetime(2026, 1, 1, tzinfo=timezone.utc))
    print("RESULT " + json.dumps({ti.task_id: [ti.state, ti.try_number] for ti in run.get_task_instances()}))
"""


@pytest.mark.airflow
def test_dag_run_fails_a_permanent_task_on_its_first_try(tmp_path: Path) -> None:
    """``dag.test()`` on a fresh metadata DB: the invalid-argument task is tried once, the crash is retried."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "error_contract.py").write_text(PROBE_DAG)
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
    }
    subprocess.run([f"{venv_bin}/airflow", "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    proc = subprocess.run(
        [sys.executable, str(dags / "error_contract.py")], env=env, capture_output=True, text=True, timeout=600
    )
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert results, proc.stdout[-2000:] + proc.stderr[-4000:]
    states = json.loads(results[-1].removeprefix("RESULT "))
    assert states["permanent"] == ["failed", 1]  # AirflowFailException: no retry despite retries=1
    assert states["transient"] == ["failed", 2]  # exit 1: retried once, as before
