#!/usr/bin/env bash
# `eventpipe ...` runs the task CLI directly (no Airflow database checks); everything else goes to the
# official Airflow entrypoint unchanged (Helm chart and docker compose pass `bash -c "exec airflow ..."`
# or Airflow sub-commands). KubernetesPodOperator sets the container command, so pods bypass this file.
set -euo pipefail
if [[ "${1:-}" == "eventpipe" ]]; then
  exec "$@"
fi
exec /entrypoint "$@"
