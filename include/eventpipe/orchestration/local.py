"""Run a task's CLI command as a local process: the embedded default's stand-in for a pod.

A permanent failure (exit code ``eventpipe.errors.PERMANENT_EXIT_CODE``) fails the task without
retries, as the pod operator does; any other non-zero exit is retried.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from eventpipe.errors import is_permanent
from eventpipe.lifetime import child_preexec


class LocalCliOperator(BaseOperator):
    """Same argv and env as the pod; secrets are read from this worker's env by the same names."""

    template_fields: Sequence[str] = ("cmds", "arguments", "env_vars")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        cmds: list[str],
        arguments: list[str],
        env_vars: dict[str, str],
        secret_env_names: list[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cmds = cmds
        self.arguments = arguments
        self.env_vars = env_vars
        self.secret_env_names = secret_env_names

    def process_env(self) -> dict[str, str]:
        # Environment plumbing, not setting reads: the child gets the worker's secrets by name (as a
        # pod gets them from Secrets) and the few OS variables a process needs; settings travel in env_vars.
        secrets = {name: os.environ[name] for name in self.secret_env_names if name in os.environ}
        base = {
            k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "JAVA_HOME", "TMPDIR", "PYTHONPATH"}
        }
        return {**base, **self.env_vars, **secrets}

    def execute(self, context: Any) -> Any:
        with tempfile.TemporaryDirectory(prefix="eventpipe-xcom-") as tmp:
            xcom = Path(tmp) / "return.json"
            argv = [*self.cmds, *self.arguments]
            self.log.info("running %s", " ".join(argv))
            env = {**self.process_env(), "EVENTPIPE_XCOM_PATH": str(xcom)}
            # The CLI ends with this task process, even a SIGKILLed one (issue #25), as a pod's container would.
            with subprocess.Popen(
                argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=child_preexec()
            ) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    self.log.info("%s", line.rstrip())
            if proc.returncode != 0:
                message = f"{argv[0]} {argv[1] if len(argv) > 1 else ''} exited with {proc.returncode}"
                if is_permanent(proc.returncode):
                    raise AirflowFailException(f"{message}: a permanent failure, not retried")
                raise AirflowException(message)
            return json.loads(xcom.read_text()) if xcom.exists() else None
