"""The settings model: documented env names, derived task environments, no silent copies."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eventpipe.orchestration.command import plain_env
from eventpipe.settings import PLAIN_ENV, SECRET_ENV, SPARK_TASK_ENV, Settings, env_fields


def test_documented_names_fill_the_sections() -> None:
    s = Settings.from_env(
        {
            "EVENTPIPE_KAFKA_BOOTSTRAP": "k:1",
            "EVENTPIPE_ES_URL": "http://es:9200",
            "EVENTPIPE_ES_TIMEOUT": "3",
            "AWS_ACCESS_KEY_ID": "AKID",
            "EVENTPIPE_S3_ENDPOINT": "",
            "EVENTPIPE_SNAPSHOT_REPOSITORY": "repo",
            "EVENTPIPE_ARCHIVE_READ_SLICES": "2",
            "EVENTPIPE_VOLUME_SNAPSHOTS": "true",
            "EVENTPIPE_NAMESPACE": "",
        }
    )
    assert (s.kafka.bootstrap, s.elastic.url, s.elastic.timeout_s) == ("k:1", "http://es:9200", 3.0)
    assert s.s3.access_key is not None and s.s3.access_key.get_secret_value() == "AKID"
    assert s.s3.endpoint is None  # "" means AWS S3 itself
    assert (s.archive.repository, s.archive.read_slices, s.archive.volume_snapshots) == ("repo", 2, True)
    assert s.kubernetes.namespace == "eventpipe"  # "" means the default


def test_section_names_work_and_bad_values_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_ELASTIC__RETRIES", "2")
    monkeypatch.setenv("EVENTPIPE_EXECUTION", "local")
    assert (Settings().elastic.retries, Settings().kubernetes.execution) == (2, "local")
    monkeypatch.setenv("EVENTPIPE_EXECUTION", "docker")
    with pytest.raises(ValidationError):
        Settings()


def test_task_environments_are_derived_from_field_metadata() -> None:
    names = [var for _, _, var, _ in env_fields()]
    assert len(names) == len(set(names))  # one field per variable
    assert {"EVENTPIPE_ES_URL", "EVENTPIPE_ARCHIVE_BUCKET", "EVENTPIPE_SNAPSHOT_REPOSITORY"} <= set(PLAIN_ENV)
    assert {"EVENTPIPE_SPARK_MASTER", "EVENTPIPE_IMAGE", "EVENTPIPE_GIT_SHA"} <= set(SPARK_TASK_ENV)
    secrets = {env for keys in SECRET_ENV.values() for env in keys.values()}
    assert secrets == {"EVENTPIPE_ES_USERNAME", "EVENTPIPE_ES_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert not secrets & (set(PLAIN_ENV) | set(SPARK_TASK_ENV))
    assert set(plain_env()) == set(PLAIN_ENV)


def test_plain_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_S3_ENDPOINT", "")
    monkeypatch.setenv("EVENTPIPE_VOLUME_SNAPSHOTS", "true")
    rendered = plain_env()
    assert rendered["EVENTPIPE_S3_ENDPOINT"] == "" and rendered["EVENTPIPE_VOLUME_SNAPSHOTS"] == "true"
    again = Settings.from_env(rendered)  # what the pod reads back
    assert again.s3.endpoint is None and again.archive.volume_snapshots is True
    assert again.task_env("plain") == rendered


def test_copies_name_their_section() -> None:
    s = Settings.from_env({})
    assert s.updated(elastic={"url": "http://proxy:1"}).elastic.url == "http://proxy:1"
    assert s.elastic.url == "http://127.0.0.1:9200"
    with pytest.raises(TypeError):
        s.model_copy(update={"es_url": "http://proxy:1"})  # pre-sections name: would be set and read by nobody
    with pytest.raises(TypeError):
        s.updated(elasticsearch={"url": "x"})


def test_every_setting_is_documented() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert [var for _, _, var, _ in env_fields() if f"`{var}`" not in text] == []


def test_from_env_reads_only_the_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_ES_URL", "http://process:9200")
    monkeypatch.setenv("EVENTPIPE_SPARK_JARS_DIR", "/process/jars")
    pure = Settings.from_env({"EVENTPIPE_IMAGE": "x:1"})
    assert (pure.elastic.url, pure.spark.jars_dir, pure.kubernetes.image) == ("http://127.0.0.1:9200", None, "x:1")
    assert pure.task_env("spark", only_set=True) == {"EVENTPIPE_IMAGE": "x:1"}
    assert Settings().elastic.url == "http://process:9200"  # the process environment, for Settings()
