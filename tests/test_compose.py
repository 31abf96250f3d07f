"""docker compose on the registry-free images, end to end: up, the demo, a restart that keeps the data, down -v.

Opt-in (marker ``compose``, ``make test-compose``, whose prerequisites ``make compose-plugin images`` build Compose
and the five images): root, Docker, Go. The README's laptop-with-Docker blocks run verbatim. The stack is moved to
other host ports through the variables the README names, because the process devstack keeps the defaults, and to
its own project name, so the volumes of a user's ``eventpipe`` project are never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, TopicPartition

from devstack.compose import compose_command, installed
from devstack.demo import DEMO_DAY
from devstack.images.docker import DOCKER, image_exists
from devstack.runtime import REPO_ROOT
from devstack.stack import local_env
from eventpipe.archive.indices import day_bounds, day_index, late_index
from eventpipe.events.generator import GeneratorConfig, generate
from eventpipe.events.topics import SOURCE_TOPICS
from eventpipe.settings import Settings
from eventpipe.storage.s3 import s3_client

from .test_readme import readme_blocks

pytestmark = [pytest.mark.compose, pytest.mark.slow]

PROJECT = "eventpipe-test"
PORTS = {"KAFKA_HOST_PORT": 29092, "ES_HOST_PORT": 29200, "S3_HOST_PORT": 29000, "AIRFLOW_HOST_PORT": 28080}
IMAGES = (
    "eventpipe:0.1.0",
    "eventpipe/kafka:4.4.0",
    "eventpipe/elasticsearch:9.5.3",
    "eventpipe/s3:4.48",
    "eventpipe/postgres:15",
)
DAYS = [DEMO_DAY + timedelta(days=n) for n in range(3)]  # what `eventpipe demo` produces by default
DATA_VOLUMES = {"kafka-data", "es-data", "es-snapshots", "s3-data", "postgres-data"}


def _env() -> dict[str, str]:
    """A user's shell: no devstack settings, the moved ports, and the demo pointed at them."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "EVENTPIPE_", "COMPOSE_", "DOCKER_")) or k == "EVENTPIPE_DEVSTACK_HOME"
    }
    env.update({name: str(port) for name, port in PORTS.items()})
    env.update(
        COMPOSE_PROJECT_NAME=PROJECT,
        EVENTPIPE_KAFKA_BOOTSTRAP=f"127.0.0.1:{PORTS['KAFKA_HOST_PORT']}",
        EVENTPIPE_ES_URL=f"http://127.0.0.1:{PORTS['ES_HOST_PORT']}",
        EVENTPIPE_S3_ENDPOINT=f"http://127.0.0.1:{PORTS['S3_HOST_PORT']}",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",  # `eventpipe` of this venv
    )
    return env


def run_block(name: str) -> tuple[float, str]:
    """The README's compose-env block, then block ``name``, in bash as a user pastes them; seconds and stdout."""
    script = readme_blocks()["compose-env"] + readme_blocks()[name]
    began = time.monotonic()
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert result.returncode == 0, f"README block {name!r} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
    return round(time.monotonic() - began, 1), result.stdout


def _compose(*args: str) -> str:
    env = {**_env(), "COMPOSE_FILE": "docker-compose.yaml:docker-compose.local.yaml"}
    return subprocess.run(
        [*compose_command(), *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout


def _summary_rows(printed: str) -> dict[str, str]:
    """The demo's summary table (rich, two columns) as key -> shown value."""
    rows = {}
    for line in printed.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 4 and cells[1]:
            rows[cells[1]] = cells[2]
    return rows


def _volumes() -> set[str]:
    listing = subprocess.run(
        [DOCKER, "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return {name.removeprefix(f"{PROJECT}_") for name in listing}


def _state(es: Elasticsearch) -> dict[str, object]:
    """What must survive a restart: Kafka's records, Elasticsearch's documents, the archive, Airflow's runs."""
    es.indices.refresh(index=[day_index(d) for d in DAYS], ignore_unavailable=True)
    indexed = {
        d.isoformat(): es.count(index=[day_index(d), late_index(d)], ignore_unavailable=True)["count"] for d in DAYS
    }
    consumer = KafkaConsumer(bootstrap_servers=_env()["EVENTPIPE_KAFKA_BOOTSTRAP"])
    try:
        parts = [
            TopicPartition(topic, p) for topic in SOURCE_TOPICS.values() for p in consumer.partitions_for_topic(topic)
        ]
        records = sum(consumer.end_offsets(parts).values())
    finally:
        consumer.close()
    settings = Settings.from_env({**local_env(), **{k: v for k, v in _env().items() if k.startswith("EVENTPIPE_")}})
    listing = s3_client(settings).list_objects_v2(Bucket=settings.s3.bucket).get("Contents", [])
    archive = sorted((obj["Key"], obj["Size"]) for obj in listing)
    runs = _compose(
        "exec", "-T", "postgres", "psql", "-U", "airflow", "-d", "airflow", "-tAc",
        "select count(*) from dag_run where state = 'success'",
    ).strip()  # fmt: skip
    return {"indexed": indexed, "kafka_records": records, "archive_objects": archive, "airflow_runs": int(runs)}


def test_compose_stack_runs_the_demo_keeps_its_data_across_a_restart_and_down_v_removes_it() -> None:
    assert installed(), "docker compose is not built: make compose-plugin"
    missing = [ref for ref in IMAGES if not image_exists(ref)]
    assert missing == [], f"images missing: {missing}; make images"
    run_block("compose-down")  # leftovers of an interrupted run: start from empty volumes
    config = GeneratorConfig(day_bounds(DAYS[0])[0], day_bounds(DAYS[-1])[1], rate_per_s=0.2, seed=20260115)
    records = list(generate(config))  # what `make demo` produces: the same days, rate and seed
    valid = sum(r.malformed is None for r in records)

    seconds_up_and_demo, summary = run_block("compose-up")  # up --wait, then the demo (it fails on any mismatch)
    rows = _summary_rows(summary)
    assert (rows["produced"], rows["valid"]) == (str(len(records)), str(valid))
    assert rows["indexed_in_elasticsearch"] == str(valid)
    assert rows["dead_letters"] == str(len(records) - valid)  # every malformed record, with its reason
    assert rows["archive_verified"] == "True"
    assert _volumes() >= DATA_VOLUMES
    es = Elasticsearch(_env()["EVENTPIPE_ES_URL"], request_timeout=30)
    before = _state(es)
    assert sum(before["indexed"].values()) == valid  # type: ignore[union-attr]
    assert before["kafka_records"] >= len(records)
    assert before["airflow_runs"] >= 2 * len(DAYS) + 2  # ingest and archive per day, train, restore drill

    seconds_restart, _ = run_block("compose-restart")  # down (containers gone, volumes kept), up --wait
    assert _state(es) == before

    seconds_down, _ = run_block("compose-down")
    assert _volumes() == set()
    es.close()
    print(
        f"\ncompose: up + demo {seconds_up_and_demo}s, restart (down + up) {seconds_restart}s, down -v {seconds_down}s"
    )
    print(summary)
