"""Session fixtures: the real devstack services, started once and reused across runs."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from elasticsearch import Elasticsearch

from devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.settings import Settings
from eventpipe.storage.elastic import client, ensure_indices

if TYPE_CHECKING:
    from devstack.airflow import Airflow
    from devstack.airflow_api import AirflowClient


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    env = local_env()
    for key, value in env.items():
        os.environ.setdefault(key, value)  # CLI subprocesses and Airflow inherit the same settings
    return env


@pytest.fixture(scope="session")
def services(stack_env: dict[str, str]) -> Settings:
    up(DATA_SERVICES)
    settings = Settings.from_env(stack_env)
    ensure_indices(client(settings), replicas=settings.elastic.replicas)
    return settings


@pytest.fixture()
def es(services: Settings) -> Iterator[Elasticsearch]:
    es = client(services)
    yield es
    es.close()


@pytest.fixture()
def topics() -> dict[str, str]:
    """Fresh source topics per test, so offsets, manifests and counts are isolated (counts filter by topic).

    Their documents stay in Elasticsearch: deleting them afterwards emptied a day another test had archived
    (a later archive run's late sweep then failed verification: 0 in Elasticsearch, 428 in the archive).
    """
    tag = uuid.uuid4().hex[:8]
    return {"iot": f"test-{tag}.iot", "business": f"test-{tag}.business"}


@pytest.fixture(scope="module")
def airflow(services: Settings) -> Airflow:
    """The devstack Airflow, started or reused and settled once per session (see airflow_support)."""
    from .airflow_support import start_airflow

    return start_airflow()


@pytest.fixture(scope="module")
def api(airflow: Airflow) -> Iterator[AirflowClient]:
    from devstack.airflow_api import AirflowClient

    with AirflowClient(airflow.url) as client:
        yield client
