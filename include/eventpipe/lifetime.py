"""Spawned processes end with the process that spawned them, whatever kills it (issue #25).

A SIGKILLed drain used to leave its pool workers and the multiprocessing resource tracker alive
for good: each worker holds both ends of its call-queue pipe (so it never reads end-of-file) and
the write end of the tracker's pipe (so neither does the tracker). Two independent guards:

* ``PR_SET_PDEATHSIG`` (Linux ``prctl``): the kernel sends SIGKILL when the parent goes. It
  follows the parent *thread* that forked the child, so call it only for children whose spawning
  thread lives as long as they do (the drain's pool, a task's blocking ``Popen``).
* a watchdog thread that waits on a pidfd of the parent (``getppid()`` polling where pidfds are
  missing) and ends the process within ``PARENT_POLL_S``; it needs neither prctl nor a pipe.

With the workers gone the tracker reads end-of-file on its pipe and exits by itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import select
import signal
import sys
import threading
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0  # getppid() polling period where pidfds are missing
ORPHAN_EXIT_CODE = 70  # exit status of a process whose parent went (EX_SOFTWARE)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, for prctl: Linux only."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def set_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent thread exits; False where unsupported."""
    libc = _libc()
    return libc is not None and libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with_parent(parent_pid: int) -> None:
    """Make this (child) process end when ``parent_pid`` does: the death signal plus a watchdog thread.

    Meant as a pool ``initializer`` (``initargs=(os.getpid(),)`` in the parent): the pid is the
    parent's as the parent saw it, so a parent that died before this ran is noticed at once.
    """
    set_death_signal()
    if os.getppid() != parent_pid:  # gone already (reparented before prctl took effect)
        os._exit(ORPHAN_EXIT_CODE)
    threading.Thread(target=_watch, args=(parent_pid,), name="die-with-parent", daemon=True).start()


def _watch(parent_pid: int) -> None:
    try:
        pidfd = os.pidfd_open(parent_pid)
    except (AttributeError, OSError):  # no pidfd_open (old kernel, not Linux): poll instead
        pidfd = None
    if pidfd is not None and os.getppid() == parent_pid:  # the pidfd is of our parent, not a reused pid
        select.select([pidfd], [], [])  # readable once the parent has exited
    else:
        while os.getppid() == parent_pid:
            threading.Event().wait(PARENT_POLL_S)
    os._exit(ORPHAN_EXIT_CODE)


def child_preexec() -> Callable[[], None] | None:
    """A ``Popen(preexec_fn=...)`` giving the child the death signal (its own program may replace the watchdog).

    Runs between fork and exec, so it only calls prctl; None where prctl is unavailable.
    """
    libc = _libc()  # loaded here, not between fork and exec
    if libc is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(ORPHAN_EXIT_CODE)

    return preexec
