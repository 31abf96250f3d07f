"""eventpipe.lifetime with real processes: a child ends when its parent is SIGKILLed, by each guard alone."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

from eventpipe.lifetime import PARENT_POLL_S

from .faults import ProcessRef, descendants, wait_until_gone

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and pidfds are Linux's")
GUARDS = {
    # only the kernel's death signal: no watchdog thread
    "prctl": "lifetime.set_death_signal()",
    # only the watchdog, waiting on a pidfd of the parent
    "pidfd": "lifetime.set_death_signal = lambda *a: False; lifetime.die_with_parent(parent)",
    # only the watchdog, polling getppid() (no pidfd_open)
    "poll": "lifetime.set_death_signal = lambda *a: False; del os.pidfd_open; lifetime.die_with_parent(parent)",
    "none": "pass",
}


@pytest.fixture()
def spawned() -> Iterator[list[ProcessRef]]:
    """The test's grandchildren; any still running at the end are killed (a failed test leaves none)."""
    found: list[ProcessRef] = []
    yield found
    for child in found:
        if child.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)


def _orphan(guard: str, spawned: list[ProcessRef], preexec: bool = False) -> None:
    """Start a parent whose child sets up ``guard`` (then says so), SIGKILL the parent once it has."""
    child = f"import os, sys, time; from eventpipe import lifetime; parent = int(sys.argv[1]); {GUARDS[guard]}; "
    child += "print('ready', flush=True); time.sleep(600)"
    parent = textwrap.dedent(f"""
        import os, subprocess, sys, time
        from eventpipe import lifetime
        preexec = lifetime.child_preexec() if {preexec!r} else None
        subprocess.Popen([sys.executable, "-c", {child!r}, str(os.getpid())], preexec_fn=preexec)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"  # the child's, through the pipe
    spawned += descendants(proc.pid)
    assert len(spawned) == 1 and "lifetime" in spawned[0].cmdline
    proc.kill()
    proc.wait(10)


@linux_only
@pytest.mark.parametrize(("guard", "within"), [("prctl", 2.0), ("pidfd", 2.0), ("poll", 2.0 + PARENT_POLL_S)])
def test_child_ends_when_its_parent_is_sigkilled(guard: str, within: float, spawned: list[ProcessRef]) -> None:
    _orphan(guard, spawned)
    wait_until_gone(spawned, within)


@linux_only
def test_popen_preexec_gives_a_program_the_death_signal(spawned: list[ProcessRef]) -> None:
    _orphan("none", spawned, preexec=True)  # the child sets up nothing itself
    wait_until_gone(spawned, 2.0)


def test_a_child_without_guards_outlives_its_parent(spawned: list[ProcessRef]) -> None:
    """The control: without eventpipe.lifetime the child is orphaned (so the tests above can fail)."""
    _orphan("none", spawned)
    with pytest.raises(AssertionError, match="still running 2s after their parent died"):
        wait_until_gone(spawned, 2.0)


@linux_only
def test_local_operator_task_killed_takes_its_cli_process_with_it(spawned: list[ProcessRef]) -> None:
    """The embedded default's task process runs the CLI as a child: a SIGKILLed task leaves no CLI behind."""
    marker = f"eventpipe-lifetime-{uuid.uuid4().hex[:8]}"
    task = textwrap.dedent(f"""
        import sys
        from eventpipe.orchestration.local import LocalCliOperator
        argv = [sys.executable, "-c", "import time; time.sleep(600)", {marker!r}]
        task = LocalCliOperator(task_id="t", cmds=argv[:1], arguments=argv[1:], env_vars={{}}, secret_env_names=[])
        task.execute({{}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", task])
    deadline = time.monotonic() + 60
    while not any(marker in p.cmdline for p in descendants(proc.pid)):
        assert time.monotonic() < deadline and proc.poll() is None, "the operator never started its CLI"
        time.sleep(0.1)
    spawned += descendants(proc.pid)
    proc.kill()
    proc.wait(10)
    wait_until_gone(spawned, 2.0)
