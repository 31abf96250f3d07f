"""supervisord event listener: when an Airflow component exits, kill what is left of its process group.

A scheduler that dies (SIGKILL, OOM, a crash) leaves its LocalExecutor workers and log server behind,
reparented to init. They keep PostgreSQL connections open, some idle in a transaction that holds row
locks, so the restarted scheduler blocks on its first UPDATE and never heartbeats. Killing the dead
component's group before the restart mirrors what Kubernetes does when a container exits (its whole
cgroup goes). supervisord starts each program as a process-group leader, so the group id is its pid.

Run by supervisord as ``python -m devstack.reaper`` (see ``Airflow.supervisor_config``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys

from supervisor import childutils


def reap(payload: str) -> int | None:
    """Kill the process group of the exited program named in a PROCESS_STATE_EXITED payload; its pid."""
    pid = int(childutils.get_headers(payload).get("pid", 0))
    if pid <= 1:
        return None
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    return pid


def main() -> None:
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers.get("eventname") == "PROCESS_STATE_EXITED":
            pid = reap(payload)
            print(f"reaped the process group of exited pid {pid}", file=sys.stderr, flush=True)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
