"""What a task runs, independent of where: argv, plain env and secret references.

Both execution modes are built from one ``TaskCommand``, which is what makes the pod and
the local process receive the same arguments and environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eventpipe.settings import SECRET_ENV, Settings

CLI = "eventpipe"


def plain_env() -> dict[str, str]:
    """Non-secret settings (``PLAIN_ENV``) from the Airflow worker's environment, defaults filled in.

    Read fresh, not from the cached ``settings()``: DAG files are parsed in long-lived processes.
    """
    return Settings().task_env("plain")


@dataclass(frozen=True)
class TaskCommand:
    args: list[str]
    env: dict[str, str] = field(default_factory=plain_env)
    secrets: tuple[str, ...] = tuple(SECRET_ENV)

    @property
    def argv(self) -> list[str]:
        return [CLI, *self.args]

    def secret_env_names(self) -> list[str]:
        return sorted(env for name in self.secrets for env in SECRET_ENV[name].values())
