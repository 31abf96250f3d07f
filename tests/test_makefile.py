"""The Makefile's promises: `make help` lists every target, and `make demo` pulls in what its mode needs.

Only side-effect-free make invocations here (``help``, variable prints); the targets themselves are
what .ci/run and the suite run.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from devstack.runtime import REPO_ROOT


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-s", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def _targets() -> set[str]:
    """Every rule name a user may type (not files such as .venv/bin/.stage1, not variables)."""
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z0-9][a-z0-9-]*):(?!=)", text, flags=re.M))


def test_help_lists_every_target_with_a_description() -> None:
    done = _make("help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert _targets() - listed == set()
    assert {"status", "lint", "clean", "test-k8s", "k8s", "k8s-host", "down", "test-fast"} <= listed


@pytest.mark.parametrize(("execution", "needs"), [("local", ""), ("kubernetes", "k8s-host")])
def test_demo_pulls_in_the_cluster_host_packages_only_for_kubernetes(execution: str, needs: str) -> None:
    done = _make("--eval=print-demo-needs: ; @echo '[$(DEMO_NEEDS)]'", "print-demo-needs", f"EXECUTION={execution}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{needs}]"


def test_an_unknown_execution_mode_fails_at_once() -> None:
    done = _make("help", "EXECUTION=docker")
    assert done.returncode != 0
    assert 'EXECUTION must be local or kubernetes, not "docker"' in done.stderr
