"""Every DAG imports in both execution modes, has an owner, tags, retries and no cycles, and keeps its shape.

The shape (DAG ids, each task's downstream tasks, trigger rules and resource profiles) is pinned
here, so a change to the wiring is a deliberate edit of this table, not a side effect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

from eventpipe.archive.cli import RestoreSource
from eventpipe.orchestration.local import LocalCliOperator
from eventpipe.orchestration.pod import EventpipePodOperator
from eventpipe.orchestration.profiles import PROFILES

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module", params=["local", "kubernetes"])
def dagbag(request: pytest.FixtureRequest) -> DagBag:
    mp = pytest.MonkeyPatch()
    mp.setenv("EVENTPIPE_EXECUTION", request.param)
    try:
        yield DagBag(dag_folder=str(DAGS), safe_mode=False)
    finally:
        mp.undo()


# dag id -> task id -> (downstream task ids, trigger rule, resource profile; None = not a pod)
SHAPE: dict[str, dict[str, tuple[set[str], str, str | None]]] = {
    "eventpipe_ingest": {
        "setup": ({"drain"}, "all_success", "small"),
        "drain": ({"rollup", "score", "ledger"}, "all_success", "drain"),
        "rollup": (set(), "all_success", "small"),
        "ledger": (set(), "all_success", "drain"),
        "score": (set(), "all_success", "spark-driver"),
    },
    "eventpipe_archive_nightly": {
        "setup": ({"wait_for_ingest"}, "all_success", "small"),
        "wait_for_ingest": ({"quiesce"}, "all_success", None),
        "quiesce": ({"snapshot.pre_hook"}, "all_success", "small"),
        "snapshot.pre_hook": ({"snapshot.take"}, "all_success", "small"),
        "snapshot.take": ({"snapshot.post_hook", "write"}, "all_success", "small"),
        # the post-hook lifts the write hold whatever happened to the snapshot
        "snapshot.post_hook": ({"write"}, "all_done", "small"),
        "write": ({"verify"}, "all_success", "archive"),
        "verify": ({"late_sweep", "retention"}, "all_success", "archive"),
        "late_sweep": (set(), "all_success", "archive"),
        "retention": (set(), "all_success", "small"),
    },
    "eventpipe_restore_drill": {
        "setup": ({"restore"}, "all_success", "small"),
        "restore": (set(), "all_success", "archive"),
    },
    "eventpipe_train_anomaly_model": {
        "setup": ({"train"}, "all_success", "small"),
        "train": (set(), "all_success", "spark-driver"),
    },
}


# The DAGs docs/img pictures (tests/test_airflow_ui.py) and the shapes they had when it did.
PICTURED = ("eventpipe_ingest", "eventpipe_archive_nightly", "eventpipe_restore_drill")
PICTURED_SHAPES = Path(__file__).resolve().parents[1] / "docs" / "img" / "dag-shapes.json"


def pictured_shapes() -> dict[str, dict[str, list[str]]]:
    """Each pictured DAG's tasks and their downstream tasks, as docs/img/dag-shapes.json records them."""
    return {dag_id: {task: sorted(down) for task, (down, _, _) in SHAPE[dag_id].items()} for dag_id in PICTURED}


def test_screenshots_show_the_current_dag_shapes() -> None:
    assert json.loads(PICTURED_SHAPES.read_text()) == pictured_shapes(), (
        "a pictured DAG changed shape since docs/img was taken: run a clean `make demo`, then "
        "EVENTPIPE_SCREENSHOTS=docs pytest tests/test_airflow_ui.py -k screenshots (it rewrites dag-shapes.json)"
    )


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == set(SHAPE)


def test_dag_shape(dagbag: DagBag) -> None:
    for dag_id, tasks in SHAPE.items():
        dag = dagbag.dags[dag_id]
        actual = {t.task_id: (set(t.downstream_task_ids), str(t.trigger_rule.value)) for t in dag.tasks}
        assert actual == {task_id: (down, rule) for task_id, (down, rule, _) in tasks.items()}, dag_id


def _profile(task: object) -> str | None:
    """The named profile whose requests, limits and service account the pod carries."""
    resources = getattr(task, "container_resources", None)
    if resources is None:
        return None
    matches = [
        name
        for name, p in PROFILES.items()
        if resources.requests
        == {"cpu": p.cpu_request, "memory": p.memory_request, "ephemeral-storage": p.ephemeral_storage}
        and resources.limits == {"cpu": p.cpu_limit, "memory": p.memory_limit}
        and task.service_account_name == (p.service_account or "eventpipe-task")  # type: ignore[attr-defined]
    ]
    assert len(matches) == 1, f"{task}: resources {resources} match profiles {matches}"
    return matches[0]


def test_task_operators_and_profiles(dagbag: DagBag, request: pytest.FixtureRequest) -> None:
    mode = request.node.callspec.params["dagbag"]
    for dag_id, tasks in SHAPE.items():
        for task_id, (_, _, profile) in tasks.items():
            task = dagbag.dags[dag_id].get_task(task_id)
            if profile is None:
                assert not isinstance(task, (EventpipePodOperator, LocalCliOperator)), task_id
            elif mode == "kubernetes":
                assert isinstance(task, EventpipePodOperator), task_id  # permanent failures are not retried
                assert _profile(task) == profile, f"{dag_id}.{task_id}"
            else:
                assert isinstance(task, LocalCliOperator), task_id


def test_dag_metadata(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} has no doc_md for the UI"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has default owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
    assert dagbag.dags["eventpipe_archive_nightly"].get_task("snapshot.post_hook").retries == 5


def test_no_cycles(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        order = dag.topological_sort()
        assert len(order) == len(dag.tasks), dag_id


def test_trigger_form_choices_are_cli_choices(dagbag: DagBag) -> None:
    """The restore drill's `source` param offers exactly what `eventpipe archive restore --source` accepts."""
    param = dagbag.dags["eventpipe_restore_drill"].params.get_param("source")
    assert set(param.schema["enum"]) == {s.value for s in RestoreSource}
