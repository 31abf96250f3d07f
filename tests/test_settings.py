"""The settings model: documented env names, derived task environments, no silent copies."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from eventpipe.orchestration.command import plain_env
from eventpipe.settings import PLAIN_ENV, SECRET_ENV, SECTIONS, SPARK_TASK_ENV, Settings, env_fields


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


ROOT = Path(__file__).resolve().parents[1]
DEVSTACK_TABLE = "## Devstack only"


def _tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown table rows (cells, stripped) under each ``## `` heading whose first column is a variable."""
    out: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = DEVSTACK_TABLE if line.startswith(DEVSTACK_TABLE) else line
        elif line.startswith("| `") and re.match(r"\| `[A-Z][A-Z0-9_]+` \|", line):
            out.setdefault(heading, []).append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return out


def _forwarded(meta: dict[str, object]) -> str:
    where = [name for flag, name in (("plain", "every task"), ("spark", "Spark tasks")) if meta.get(flag)]
    return ", ".join(where) or "no"


def test_configuration_doc_matches_the_model_both_ways() -> None:
    """Each field has one row with its default and where it travels; each row is a field or a devstack variable."""
    tables = _tables((ROOT / "docs" / "configuration.md").read_text())
    rows = {row[0].strip("`"): row for heading, rows in tables.items() if heading != DEVSTACK_TABLE for row in rows}
    secrets = {var for keys in SECRET_ENV.values() for var in keys.values()}
    fields = {var: (section, name, meta) for section, name, var, meta in env_fields() if var not in secrets}
    assert sorted(set(fields) - set(rows)) == []  # every field documented in a settings table
    assert sorted(set(rows) - set(fields)) == []  # every documented variable is a field
    wrong = []
    for var, (section, name, meta) in fields.items():
        _, default, forwarded, _meaning = rows[var]
        model = SECTIONS[section]
        expected = model.model_fields[name].default
        if default.startswith("unset"):
            documented = None
        else:
            literal = re.match(r"`([^`]*)`", default)
            assert literal, f"{var}: default {default!r} is neither `value` nor unset"
            documented = getattr(model.model_validate({var: literal.group(1)}), name)
        if documented != expected or forwarded != _forwarded(meta):
            wrong.append((var, default, forwarded, expected, _forwarded(meta)))
    assert wrong == []


def test_devstack_variables_are_exactly_the_devstack_table() -> None:
    """The devstack's own variables: read somewhere under devstack/, never fields of the model."""
    documented = {
        row[0].strip("`") for row in _tables((ROOT / "docs" / "configuration.md").read_text())[DEVSTACK_TABLE]
    }
    fields = {var for _, _, var, _ in env_fields()}
    source = "\n".join(path.read_text() for path in (ROOT / "devstack").rglob("*.py"))
    read = {name for name in re.findall(r"[\"'](EVENTPIPE_[A-Z0-9_]+)[\"']", source) if name not in fields}
    assert documented == read


def test_dag_params_are_documented() -> None:
    """Every DAG param has a row in the params table, and every row is a param of that DAG."""
    documented = set(
        re.findall(r"^\| `(eventpipe_\w+)`[^|]*\| `(\w+)` \|", (ROOT / "docs" / "configuration.md").read_text(), re.M)
    )
    declared = set()
    for path in (ROOT / "dags").glob("*.py"):
        tree = ast.parse(path.read_text())
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DAG"):
            kwargs = {k.arg: k.value for k in call.keywords}
            dag_id = ast.literal_eval(kwargs["dag_id"])
            params = kwargs.get("params")
            if isinstance(params, ast.Dict):
                declared |= {(dag_id, ast.literal_eval(key)) for key in params.keys if key is not None}
    assert declared and documented == declared


def test_from_env_reads_only_the_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_ES_URL", "http://process:9200")
    monkeypatch.setenv("EVENTPIPE_SPARK_JARS_DIR", "/process/jars")
    pure = Settings.from_env({"EVENTPIPE_IMAGE": "x:1"})
    assert (pure.elastic.url, pure.spark.jars_dir, pure.kubernetes.image) == ("http://127.0.0.1:9200", None, "x:1")
    assert pure.task_env("spark", only_set=True) == {"EVENTPIPE_IMAGE": "x:1"}
    assert Settings().elastic.url == "http://process:9200"  # the process environment, for Settings()
