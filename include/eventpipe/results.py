"""Task results: a readable table in the task log, JSON on stdout, and the XCom file for pods.

KubernetesPodOperator's xcom sidecar reads /airflow/xcom/return.json; the local runner points
EVENTPIPE_XCOM_PATH at a temp file instead, so both paths return the same value to Airflow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eventpipe.settings import Settings

POD_XCOM_PATH = Path("/airflow/xcom/return.json")


def emit(title: str, result: object) -> dict[str, object]:
    data = asdict(result) if is_dataclass(result) and not isinstance(result, type) else dict(result)  # type: ignore[arg-type]
    table = Table(title=title, show_header=False)
    for key, value in data.items():
        shown = value if not isinstance(value, (list, dict)) else json.dumps(value, default=str)
        table.add_row(key, str(shown)[:200])
    Console(stderr=True, width=160).print(table)
    text = json.dumps(data, default=str, sort_keys=True)
    print(text, flush=True)
    target = Settings().kubernetes.xcom_path or (str(POD_XCOM_PATH) if POD_XCOM_PATH.parent.is_dir() else "")
    if target:
        Path(target).write_text(text)
    return data
