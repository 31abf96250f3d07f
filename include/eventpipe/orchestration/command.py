"""What a task runs, independent of where: argv, plain env and secret references.

Both execution modes are built from one ``TaskCommand``, which is what makes the pod and
the local process receive the same arguments and environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from eventpipe.settings import PLAIN_ENV, SECRET_ENV, Settings

CLI = "eventpipe"


def plain_env() -> dict[str, str]:
    """Non-secret settings from the Airflow worker's environment, defaults filled in."""
    defaults = Settings()
    fallback = {
        "EVENTPIPE_KAFKA_BOOTSTRAP": defaults.kafka_bootstrap,
        "EVENTPIPE_ES_URL": defaults.es_url,
        "EVENTPIPE_S3_ENDPOINT": defaults.s3_endpoint or "",
        "EVENTPIPE_S3_REGION": defaults.s3_region,
        "EVENTPIPE_ARCHIVE_BUCKET": defaults.archive_bucket,
        "EVENTPIPE_PUSHGATEWAY_URL": "",
    }
    return {name: os.environ.get(name, fallback.get(name, "")) for name in PLAIN_ENV}


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
