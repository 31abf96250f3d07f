"""Process plumbing shared by every devstack service: paths, pidfiles, ports, health waits."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from eventpipe.lifetime import child_preexec

REPO_ROOT = Path(__file__).resolve().parents[1]


PROGRESS_EVERY = 10.0  # seconds between progress lines of a long wait


class DevstackError(RuntimeError):
    """A service could not be installed or started; the message says what to do."""


_PROGRESS_LOCK = threading.Lock()


def progress(message: str) -> None:
    """One progress line on stderr (stdout stays machine-readable), flushed at once for CI logs.

    Whole lines under a lock: installs run in parallel lanes.
    """
    line = f"[devstack {time.strftime('%H:%M:%S')}] {message}\n"
    with _PROGRESS_LOCK:
        sys.stderr.write(line)
        sys.stderr.flush()


T = TypeVar("T")


class TimedSteps:
    """The steps of a multi-step setup, each announced with its seconds, which the command reports."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, action: Callable[[], T]) -> T:
        began = time.monotonic()
        result = action()
        self.timings[name] = round(time.monotonic() - began, 1)
        self.say(f"{name}: {self.timings[name]}s")
        return result


def run_step(
    cmd: Sequence[str],
    what: str,
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    end_with_parent: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a long install step, printing what it does and its elapsed time every few seconds.

    Output is captured (shown only when the step fails), so a cold build is neither silent nor noisy.
    The step ends with this process if it is killed (a build or download nobody waits for is an
    orphan); ``end_with_parent=False`` is for steps better finished than cut, like a package install.
    """
    began = time.monotonic()
    progress(f"{what} …")
    with subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=child_preexec() if end_with_parent else None,
    ) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                elapsed = time.monotonic() - began
                if timeout is not None and elapsed > timeout:
                    proc.kill()
                    raise DevstackError(f"{what}: no result within {timeout:.0f}s") from None
                progress(f"{what} … {elapsed:.0f}s")
    progress(f"{what}: done in {time.monotonic() - began:.1f}s" + ("" if proc.returncode == 0 else " (failed)"))
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def home() -> Path:
    """Root of downloaded artifacts, data, logs and pidfiles (ignored by git)."""
    default = REPO_ROOT / ".devstack" if (REPO_ROOT / "pyproject.toml").exists() else Path.home() / ".eventpipe"
    path = Path(os.environ.get("EVENTPIPE_DEVSTACK_HOME", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(*parts: str) -> Path:
    path = home().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(name: str) -> Path:
    return subdir("logs") / f"{name}.log"


def _pidfile(name: str) -> Path:
    return subdir("run") / f"{name}.pid"


def pid_of(name: str) -> int | None:
    """Pid of a running service started by us, or None (stale pidfiles are removed)."""
    pidfile = _pidfile(name)
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError, PermissionError):
        pidfile.unlink(missing_ok=True)
        return None
    return pid


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_port_free(port: int, name: str) -> None:
    if port_open(port):
        raise DevstackError(
            f"port {port} needed by {name} is busy and {name} is not healthy there; "
            f"stop whatever listens on it (ss -ltnp 'sport = :{port}') or set another port"
        )


def start_process(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start a detached background process whose output goes to the service log."""
    log = log_path(name)
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    _pidfile(name).write_text(str(proc.pid))
    return proc.pid


def stop_process(name: str, timeout: float = 30.0) -> bool:
    """Stop a service's process group: SIGTERM, then SIGKILL after ``timeout``."""
    pid = pid_of(name)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGCONT)  # a frozen (SIGSTOPped) service must run to act on the SIGTERM
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # our own child: reap it, or it lingers as a zombie
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    _pidfile(name).unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_until(check: Callable[[], bool], *, timeout: float, name: str, what: str) -> None:
    """Poll ``check`` until it holds; on timeout or early death raise with the log tail."""
    began = time.monotonic()
    deadline = began + timeout
    reported = began
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - a probe that fails is just "not yet"
            pass
        if _pidfile(name).exists() and pid_of(name) is None:
            raise DevstackError(f"{name} exited while waiting for {what}; log tail:\n{tail(log_path(name))}")
        if time.monotonic() - reported >= PROGRESS_EVERY:
            reported = time.monotonic()
            progress(f"{name}: waiting for {what} ({reported - began:.0f}s of at most {timeout:.0f}s)")
        time.sleep(0.5)
    raise DevstackError(f"{name}: {what} not reached within {timeout:.0f}s; log tail:\n{tail(log_path(name))}")


def java(min_major: int = 17) -> str:
    """A java binary of at least ``min_major``: JAVA_HOME, PATH, then /usr/lib/jvm."""
    candidates: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if found := shutil.which("java"):
        candidates.append(Path(found))
    candidates += sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True)
    for candidate in candidates:
        if candidate.exists() and _java_major(candidate) >= min_major:
            return str(candidate)
    raise DevstackError(
        f"Java {min_major}+ is required; install a JDK (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
    )


def _java_major(binary: Path) -> int:
    out = subprocess.run([str(binary), "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def maven_classpath(pom: Path, dest: Path) -> list[Path]:
    """Resolve a committed pom's dependencies from Maven Central into ``dest`` (cached)."""
    marker = dest / ".resolved"
    if not marker.exists() or marker.read_text() != pom.read_text():
        if shutil.which("mvn") is None:
            raise DevstackError("Maven (mvn) is required to fetch the service jars; apt-get install maven")
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={dest}",
            "-DincludeScope=runtime",
        ]
        result = run_step(cmd, f"downloading jars for {pom.parent.name} from Maven Central")
        if result.returncode != 0:
            raise DevstackError(f"downloading jars for {pom} failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        marker.write_text(pom.read_text())
    return sorted(dest.glob("*.jar"))


class Service(ABC):
    """One local service: install is cached, start is idempotent, health is a real protocol probe."""

    name: str
    port: int

    @abstractmethod
    def install(self) -> None: ...

    @abstractmethod
    def launch(self) -> None:
        """Start the process (called only when not healthy and the port is free)."""

    @abstractmethod
    def healthy(self) -> bool: ...

    def version(self) -> str:
        return "?"

    def start_timeout(self) -> float:
        return 180.0

    def recover_timeout(self) -> float:
        """How long a running but unhealthy service may take to become healthy before it is restarted."""
        return 90.0

    def recover(self) -> None:
        """Repair a running but unhealthy service in place (e.g. restart a failed component); default: nothing."""
        return None

    def start(self) -> None:
        """Healthy: left alone. Running but unhealthy: repaired, else restarted. Not running: installed and launched."""
        if self.healthy():
            return
        if pid_of(self.name) is not None:
            self.recover()
            try:
                wait_until(self.healthy, timeout=self.recover_timeout(), name=self.name, what="health check")
                return
            except DevstackError as exc:
                progress(f"{self.name}: running but unhealthy ({str(exc).splitlines()[0]}); restarting it")
                self.stop()
        ensure_port_free(self.port, self.name)
        began = time.monotonic()
        self.install()
        if (spent := time.monotonic() - began) > 1:
            progress(f"{self.name}: installed in {spent:.1f}s")
        progress(f"{self.name}: starting (log: {log_path(self.name)})")
        self.launch()
        wait_until(self.healthy, timeout=self.start_timeout(), name=self.name, what="health check")
        progress(f"{self.name}: healthy after {time.monotonic() - began:.1f}s")

    def stop(self) -> bool:
        return stop_process(self.name)

    def status(self) -> dict[str, object]:
        return {
            "service": self.name,
            "port": self.port,
            "pid": pid_of(self.name),
            "healthy": self.healthy(),
            "version": self.version(),
        }
