"""Fault injection: a loopback TCP proxy that can cut a real service off, or freeze it, mid-conversation;
private service instances to kill; and the processes a killed process leaves behind (issue #25)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack.elasticsearch import ElasticsearchNode
from devstack.kafka import Kafka
from devstack.runtime import Service, pid_of


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a real server until ``cut_after_bytes`` of requests have passed.

    ``freeze()`` holds every byte in both directions with the connections left open, as a
    SIGSTOPped server does to its clients (requests time out, nothing is refused); ``thaw()``
    lets the held bytes through.
    """

    def __init__(
        self, target_port: int, cut_after_bytes: int | None = None, freeze_after_bytes: int | None = None
    ) -> None:
        self.target_port = target_port
        self.cut_after_bytes = cut_after_bytes
        self.freeze_after_bytes = freeze_after_bytes
        self.frozen_at: float | None = None  # monotonic time of the (first) freeze
        self.forwarded = 0
        self.cut = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self._flowing.clear()
        self.frozen_at = self.frozen_at or time.monotonic()

    def thaw(self) -> None:
        self._flowing.set()

    def heal(self) -> None:
        with self._lock:
            self.cut, self.cut_after_bytes = False, None

    def close(self) -> None:
        self._flowing.set()
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._conns.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._conns += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counts: bool) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                if counts:
                    with self._lock:
                        self.forwarded += len(data)
                        if self.cut_after_bytes is not None and self.forwarded > self.cut_after_bytes:
                            self.cut = True
                        if self.freeze_after_bytes is not None and self.forwarded > self.freeze_after_bytes:
                            self.freeze_after_bytes = None
                            self.frozen_at = time.monotonic()
                            self.freeze()
                    if self.cut:
                        self._drop_all()
                        return
                dst.sendall(data)
        except OSError:
            return


class SpareService:
    """A private instance of a devstack service (own ports, data under ``home``) that a test may kill.

    The shared devstack services serve other work; fault tests kill these instead. They reuse
    the shared devstack's resolved jars (symlinks), so starting one downloads nothing.
    """

    def __init__(self, home: Path, service: Service, shared_home: Path, links: tuple[str, ...]) -> None:
        self.home = home
        self.service = service
        for link in links:
            target = home / link
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(shared_home / link)

    @property
    def port(self) -> int:
        return self.service.port

    @contextlib.contextmanager
    def own_home(self) -> Iterator[None]:
        """Devstack paths (data, pidfiles, logs, path.repo) resolve under this instance's home meanwhile."""
        saved = os.environ.get("EVENTPIPE_DEVSTACK_HOME")
        os.environ["EVENTPIPE_DEVSTACK_HOME"] = str(self.home)
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop("EVENTPIPE_DEVSTACK_HOME", None)
            else:
                os.environ["EVENTPIPE_DEVSTACK_HOME"] = saved

    def start(self) -> None:
        with self.own_home():
            self.service.start()

    def kill(self) -> None:
        """SIGKILL the service's process group, as an OOM kill or a node loss would; none of its processes survive."""
        with self.own_home():
            pid = pid_of(self.service.name)
            assert pid is not None, f"the spare {self.service.name} is not running"
            spawned = descendants(pid)  # e.g. Elasticsearch's native controller
            os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            pid_of(self.service.name)  # drops the stale pidfile
            wait_until_gone(spawned, 10.0)

    def stop(self) -> None:
        with self.own_home():
            self.service.stop()


def spare_kafka(home: Path, shared_home: Path) -> SpareService:
    class SpareBroker(Kafka):
        port = 19092
        controller_port = 19093
        pod_port = None  # the shared broker owns the pod listener

    return SpareService(home, SpareBroker(), shared_home, ("kafka/jars",))


def spare_elasticsearch(home: Path, shared_home: Path) -> SpareService:
    class SpareNode(ElasticsearchNode):
        port = 19200
        transport_port = 19300

    return SpareService(home, SpareNode(), shared_home, ("elasticsearch/jars",))


@dataclass(frozen=True)
class ProcessRef:
    """One process, named by pid and start time (a reused pid is another process) and its command line."""

    pid: int
    started: int  # clock ticks after boot, /proc/<pid>/stat field 22
    cmdline: str

    def running(self) -> bool:
        """Still this process and not a zombie (an orphan's zombie waits for a reaper, it holds no memory)."""
        stat = _stat(self.pid)
        return stat is not None and stat[2] != "Z" and int(stat[21]) == self.started


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat as fields numbered as in proc(5) minus one; None once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, tail = raw.rpartition(")")  # the command name may hold spaces and parentheses
    return [head.split(" (", 1)[0], head.split(" (", 1)[1], *tail.split()]


def descendants(pid: int) -> list[ProcessRef]:
    """Every process below ``pid`` now (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(int(stat[3]), []).append(int(entry.name))
    found: list[ProcessRef] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        stat = _stat(child)
        if stat is None:
            continue
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        found.append(ProcessRef(child, int(stat[21]), cmdline))
        todo += children.get(child, [])
    return found


def wait_until_gone(processes: list[ProcessRef], timeout: float) -> float:
    """Seconds until none of ``processes`` runs; AssertionError naming the survivors after ``timeout``."""
    began = time.monotonic()
    while survivors := [p for p in processes if p.running()]:
        if time.monotonic() - began > timeout:
            raise AssertionError(f"still running {timeout:.0f}s after their parent died: {survivors}")
        time.sleep(0.05)
    return time.monotonic() - began
