"""Waiting on a condition instead of a fixed sleep, shared by the service, monitoring and k8s tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 180, every: float = 1.0) -> T:
    """The first truthy value of ``check``; an AssertionError naming ``what`` if none comes within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not reached in {timeout:.0f}s")


def eventually(check: Callable[[], T], what: str) -> T:
    """``wait_for`` at the monitoring path's pace: a scrape, a rule evaluation and a notification take seconds."""
    return wait_for(check, what, timeout=60.0, every=0.5)
