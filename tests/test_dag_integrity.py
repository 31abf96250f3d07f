"""Every DAG imports in both execution modes, has an owner, tags, retries and no cycles."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[1] / "dags"


@pytest.fixture(scope="module", params=["local", "kubernetes"])
def dagbag(request: pytest.FixtureRequest) -> DagBag:
    mp = pytest.MonkeyPatch()
    mp.setenv("EVENTPIPE_EXECUTION", request.param)
    try:
        yield DagBag(dag_folder=str(DAGS), safe_mode=False)
    finally:
        mp.undo()


def test_no_import_errors(dagbag: DagBag) -> None:
    assert dagbag.import_errors == {}
    assert {"eventpipe_ingest"} <= set(dagbag.dag_ids)


def test_dag_metadata(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and len(dag.doc_md) > 100, f"{dag_id} has no doc_md for the UI"
        for task in dag.tasks:
            assert task.owner not in ("", "airflow"), f"{dag_id}.{task.task_id} has default owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_no_cycles(dagbag: DagBag) -> None:
    for dag_id, dag in dagbag.dags.items():
        order = dag.topological_sort()
        assert len(order) == len(dag.tasks), dag_id
