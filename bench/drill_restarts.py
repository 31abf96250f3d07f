"""The restart drill (issue #21 items 5 and 6): the pipeline under steady load while stateful pods go away.

Against the devstack cluster's StatefulSets (``make k8s`` + ``eventpipe devstack k8s-stateful``), from the host
through their EXTERNAL endpoints (Kafka 10.244.0.1:31090, Elasticsearch 10.244.0.1:30920):

- **load**: a producer process sends the project's generated events in real time (acks=all, ~500/s, its own
  topic and generator seed, so the run owns its data) and records every ack's latency; drains of 1-minute
  intervals (the package's ``drain_interval``: Kafka -> Elasticsearch, dead letters, offsets committed after
  Elasticsearch acknowledged) run back to back, retried like a task would be;
- **phases**: (a) baseline; (e) `eventpipe storage expand` of the Kafka claims as a task pod (offline: each
  broker restarts once); a fill of >= 1 GiB on an RF-3 topic; (b) a broker pod deleted (keeps its PVC);
  (c) an Elasticsearch pod deleted; (d) a broker pod deleted with its PVC (re-replicates from its peers);
- **per phase**: produce-ack latency, interval freshness (interval end -> all of its events searchable),
  time until under-replicated partitions are 0 and Elasticsearch is green, bytes re-replicated (``du -sb``
  of the broker's log dir: before the delete and once back in sync), cores busy (/proc/stat);
- **at the end**: produced = indexed + dead-lettered, no event id twice, every offset of the topic found.

Results: docs/bench/restarts.json + .png (the expansion's timeline inside). Not a test; run it under
``flock /tmp/cluster.lock``: ``make drill-restarts``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.drill_metrics import Phase, account, by_phase, goals, recovered_at, rejoin_span, seconds_since, summary
from bench.report import Run

MINUTE = 60.0
NODE_IP = "10.244.0.1"
console = Console(width=200)


def say(message: str) -> None:
    console.log(message)


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


# --------------------------------------------------------------------------- producer (its own process)


def produce_steadily(bootstrap: str, topic: str, seed: int, rate: float, out: str, stop: Any) -> None:
    """Send generated events in real time until ``stop`` is set; one line per completed send.

    Lines: ``A,send,ack,partition,offset,ts_ms,valid,event_id`` (acked), ``F,send,ts_ms,valid,event_id,error``
    (failed for good) and every second ``W,watermark_ms``: every record with a timestamp below it has completed.
    """
    from kafka import KafkaProducer

    from eventpipe.events.generator import GeneratorConfig, generate

    start = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
    config = GeneratorConfig(
        start, start + timedelta(hours=6), rate_per_s=rate, seed=seed, business_share=0.0, bursts_per_account_day=0.0
    )
    producer = KafkaProducer(  # as eventpipe.events.produce does, with retries bounded by the delivery timeout
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        compression_type="gzip",
        retries=2**31 - 1,
        delivery_timeout_ms=300_000,
        request_timeout_ms=30_000,
    )
    lock = threading.Lock()
    inflight: dict[int, int] = {}
    sink = open(out, "w", buffering=1 << 16)  # noqa: SIM115 (closed below, after the last callback)

    def done(seq: int, line: str) -> None:
        with lock:
            inflight.pop(seq, None)
            sink.write(line)

    last_mark = 0.0
    for seq, record in enumerate(generate(config)):
        delay = record.timestamp_ms / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        if stop.is_set():
            break
        valid = int(record.malformed is None)
        event_id = record.event.event_id if record.event is not None else ""
        sent = time.time()
        with lock:
            inflight[seq] = record.timestamp_ms
        future = producer.send(topic, key=record.key.encode(), value=record.value, timestamp_ms=record.timestamp_ms)
        future.add_callback(
            lambda meta, seq=seq, sent=sent, ts=record.timestamp_ms, v=valid, e=event_id: done(
                seq, f"A,{sent:.4f},{time.time():.4f},{meta.partition},{meta.offset},{ts},{v},{e}\n"
            )
        )
        future.add_errback(
            lambda exc, seq=seq, sent=sent, ts=record.timestamp_ms, v=valid, e=event_id: done(
                seq, f"F,{sent:.4f},{ts},{v},{e},{type(exc).__name__}\n"
            )
        )
        if sent - last_mark >= 1.0:
            last_mark = sent
            with lock:
                sink.write(f"W,{min(inflight.values(), default=record.timestamp_ms)}\n")
                sink.flush()
    producer.flush()
    producer.close()
    with lock:
        sink.write(f"W,{2**62}\nEND\n")  # flushed and closed: every record has completed
        sink.close()


@dataclass
class ProducerLog:
    """The producer's lines read as they come: acks, failures, the watermark, valid acks per interval."""

    path: Path
    acks: list[tuple[float, float]] = field(default_factory=list)  # (send time, latency s)
    failures: list[str] = field(default_factory=list)
    valid_per_interval: dict[int, int] = field(default_factory=dict)  # interval start (s) -> acked valid events
    valid_ids: list[str] = field(default_factory=list)
    produced: int = 0
    watermark_ms: int = 0
    finished: bool = False
    _offset: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> None:
        with self._lock:
            self._read()

    def _read(self) -> None:
        if not self.path.exists():
            return
        with self.path.open() as f:
            f.seek(self._offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self._offset += len(complete.encode())
        for line in complete.splitlines():
            kind, _, rest = line.partition(",")
            if kind == "A":
                sent, acked, _, _, ts, valid, event_id = rest.split(",")
                self.produced += 1
                self.acks.append((float(sent), float(acked) - float(sent)))
                if valid == "1":
                    start = int(int(ts) // 1000 // MINUTE * MINUTE)
                    self.valid_per_interval[start] = self.valid_per_interval.get(start, 0) + 1
                    self.valid_ids.append(event_id)
            elif kind == "F":
                self.failures.append(rest)
            elif kind == "W":
                self.watermark_ms = max(self.watermark_ms, int(rest))
            elif kind == "END":
                self.finished = True


# --------------------------------------------------------------------------- cluster reads and actions


def kubectl(*args: str, check: bool = True, timeout: float = 120) -> str:
    from devstack.cluster.node import kubectl as run

    return run(*args, check=check, timeout=timeout)


def pod_json(namespace: str, pod: str) -> dict[str, Any] | None:
    out = kubectl("-n", namespace, "get", "pod", pod, "-o", "json", "--ignore-not-found", check=False)
    return json.loads(out) if out.strip() else None


def pod_ready(pod: dict[str, Any] | None) -> bool:
    conditions = (pod or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def log_dir_bytes(pod: str, pattern: str = "") -> int | None:
    """``du -sb`` of the broker's log dir (or of its entries matching ``pattern``), in the pod."""
    target = f"/var/lib/kafka/data/logs/{pattern}" if pattern else "/var/lib/kafka/data/logs"
    out = kubectl(
        "-n",
        "kafka",
        "exec",
        pod,
        "-c",
        "kafka",
        "--",
        "sh",
        "-c",
        f"du -scb {target} | tail -1",
        check=False,
        timeout=60,
    )
    try:
        return int(out.split()[0])
    except (IndexError, ValueError):
        return None


def claim_capacities(namespace: str, template: str, statefulset: str) -> dict[str, str]:
    out = {}
    for n in range(3):
        name = f"{template}-{statefulset}-{n}"
        pvc = json.loads(kubectl("-n", namespace, "get", "pvc", name, "-o", "json"))
        out[name] = pvc.get("status", {}).get("capacity", {}).get("storage", "?")
    return out


def free_bytes(pod: str) -> int:
    out = kubectl("-n", "kafka", "exec", pod, "-c", "kafka", "--", "df", "-B1", "--output=avail", "/var/lib/kafka/data")
    return int(out.split()[-1])


@dataclass
class Monitor:
    """Polls every ``every`` s: under-replicated partitions, Elasticsearch health, CPU busy."""

    bootstrap: str
    es_url: str
    every: float = 2.0
    urp: list[tuple[float, int | None]] = field(default_factory=list)
    health: list[tuple[float, str | None]] = field(default_factory=list)
    cores_busy: list[tuple[float, float]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        from elasticsearch import Elasticsearch
        from kafka import KafkaAdminClient

        from eventpipe.stateful.kafka_state import partition_states

        es = Elasticsearch(self.es_url, request_timeout=5)
        admin = None
        cpu = _cpu()
        while not self.stop.is_set():
            t = time.time()
            try:
                # a short request timeout: a poll that hangs on a broker going away would blur the timeline
                admin = admin or KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
                states = partition_states(admin)
                self.urp.append((t, sum(1 for p in states if len(p.isr) < len(p.replicas))))
            except Exception:  # noqa: BLE001 (a broker away: the state is unknown for this poll, not an error)
                self.urp.append((t, None))
                if admin is not None:
                    admin.close()
                admin = None
            try:
                self.health.append((t, str(es.cluster.health(timeout="3s")["status"])))
            except Exception:  # noqa: BLE001 (no master for a moment: unknown, counted as not green)
                self.health.append((t, None))
            now_cpu = _cpu()
            busy, total = now_cpu[0] - cpu[0], now_cpu[1] - cpu[1]
            cpu = now_cpu
            if total > 0:
                self.cores_busy.append((t, busy / total * (os.cpu_count() or 1)))
            self.stop.wait(max(0.0, self.every - (time.time() - t)))
        if admin is not None:
            admin.close()
        es.close()


def _cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


# --------------------------------------------------------------------------- drains and freshness


@dataclass
class Drains:
    """Drains each 1-minute interval once its end (plus ``grace``) passed, back to back, retried on failure;
    a second thread finds when each interval's events are all searchable."""

    settings: Any
    topic: str
    first: float  # start of the first interval
    log: ProducerLog
    grace: float = 2.0
    results: list[dict[str, Any]] = field(default_factory=list)
    freshness: dict[int, float] = field(default_factory=dict)  # interval start -> seconds after its end
    last_end: float | None = None  # set when the producer stopped: drain up to here, then stop
    failures: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def drain_loop(self) -> None:
        from eventpipe.ingest.drain import drain_interval

        start = self.first
        while self.last_end is None or start < self.last_end:
            end = start + MINUTE
            while time.time() < end + self.grace:
                time.sleep(0.2)
            began, attempts = time.time(), 0
            while True:
                attempts += 1
                try:
                    got = drain_interval(self.settings, self.topic, utc(start), utc(end), idle_timeout_s=30.0)
                    break
                except Exception as exc:  # noqa: BLE001 (the task would be retried by Airflow: so is it here)
                    self.failures.append(f"{utc(start):%H:%M} attempt {attempts}: {type(exc).__name__}: {exc}"[:300])
                    time.sleep(min(10.0, 2.0 * attempts))
            self.results.append(
                {
                    "start": start,
                    "began": began,
                    "finished": time.time(),
                    "attempts": attempts,
                    "consumed": got.consumed,
                    "indexed": got.indexed,
                    "dead_lettered": got.dead_lettered,
                    "replayed": got.replayed,
                }
            )
            start = end
        self.done.set()

    def fresh_loop(self, es_url: str) -> None:
        """Every second: for each interval whose records all completed (the producer's watermark passed its end),
        count its searchable events; the first time the count reaches the acked valid events is its freshness."""
        from elasticsearch import Elasticsearch

        from eventpipe.storage.elastic import EVENTS_ALIAS

        es = Elasticsearch(es_url, request_timeout=10)
        start = self.first
        while not (self.done.is_set() and (self.last_end is None or start >= self.last_end)):
            self.log.read()
            end = start + MINUTE
            if time.time() < end or self.log.watermark_ms < end * 1000:
                time.sleep(0.5)
                continue
            if self.last_end is not None and start >= self.last_end:
                break
            expected = self.log.valid_per_interval.get(int(start), 0)
            query = {
                "bool": {
                    "filter": [
                        {"term": {"kafka.topic": self.topic}},
                        {"range": {"event_time": {"gte": utc(start).isoformat(), "lt": utc(end).isoformat()}}},
                    ]
                }
            }
            try:
                found = es.count(index=EVENTS_ALIAS, query=query, allow_no_indices=True)["count"]
            except Exception:  # noqa: BLE001 (Elasticsearch busy or failing over: ask again)
                found = -1
            if found >= expected:
                if expected:  # an interval with no events (after the producer stopped) has no freshness
                    self.freshness[int(start)] = round(time.time() - end, 2)
                start = end
            else:
                time.sleep(1.0)
        es.close()


# --------------------------------------------------------------------------- phases


@dataclass
class Drill:
    args: argparse.Namespace
    settings: Any
    monitor: Monitor
    phases: list[Phase] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    run_load: dict[str, Any] = field(default_factory=dict)

    def wait(self, what: str, condition: Any, timeout: float) -> float:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if condition():
                return time.time()
            time.sleep(1.0)
        raise TimeoutError(f"{what}: not within {timeout:.0f}s")

    def healthy_since(self, since: float) -> bool:
        """Under-replicated partitions 0 and Elasticsearch green, each in a poll taken after ``since``."""
        urp = [v for t, v in self.monitor.urp if t > since]
        health = [v for t, v in self.monitor.health if t > since]
        return bool(urp) and urp[-1] == 0 and bool(health) and health[-1] == "green"

    def settle(self, since: float, minimum: float, timeout: float = 900) -> float | None:
        """Wait for a healthy cluster, and at least ``minimum`` s after ``since``; when it was healthy, or None
        (noted, and the drill goes on: the accounting at the end still says whether anything was lost)."""
        try:
            healthy: float | None = self.wait(
                "cluster healthy (URP 0, green)", lambda: self.healthy_since(time.time() - 6), timeout
            )
        except TimeoutError as exc:
            self.problems.append(f"{utc(since):%H:%M:%S}: {exc}")
            say(f"[red]{exc}")
            healthy = None
        while time.time() < since + minimum:
            time.sleep(1.0)
        return healthy

    def finish(self, name: str, start: float, details: dict[str, Any]) -> Phase:
        phase = Phase(name, start, time.time(), details)
        self.phases.append(phase)
        say(f"phase {name}: {round(phase.end - phase.start)} s; {json.dumps(details, default=str)[:400]}")
        return phase

    def baseline(self) -> None:
        start = time.time()
        self.settle(start, self.args.baseline)
        self.finish("a: baseline", start, {})

    def recovery(self, since: float) -> dict[str, Any]:
        """From the monitor's samples: when URP reached 0 for good, and when Elasticsearch was green for good."""
        now = time.time()
        urp_ok = recovered_at(self.monitor.urp, since, now, lambda v: v == 0)
        green = recovered_at(self.monitor.health, since, now, lambda v: v == "green")
        return {
            "urp_zero_after_s": seconds_since(urp_ok, since),
            "green_after_s": seconds_since(green, since),
            "max_urp": max((v for t, v in self.monitor.urp if t >= since and v is not None), default=0),
        }

    def restart_pod(self, namespace: str, pod: str, *, with_claim: str | None = None) -> tuple[float, dict[str, Any]]:
        old = pod_json(namespace, pod)
        old_uid = old["metadata"]["uid"] if old else None
        details: dict[str, Any] = {"pod": pod}
        if with_claim:
            pvc = json.loads(kubectl("-n", namespace, "get", "pvc", with_claim, "-o", "json"))
            details["old_claim_uid"] = pvc["metadata"]["uid"]
            details["old_volume"] = pvc["spec"].get("volumeName")
            kubectl("-n", namespace, "delete", "pvc", with_claim, "--wait=false")
        t0 = time.time()
        kubectl("-n", namespace, "delete", "pod", pod, "--wait=false")

        def back() -> bool:
            now = pod_json(namespace, pod)
            if now is None or now["metadata"]["uid"] == old_uid:
                return False
            if with_claim:
                claim = kubectl(
                    "-n", namespace, "get", "pvc", with_claim, "-o", "json", "--ignore-not-found", check=False
                )
                fresh = json.loads(claim) if claim.strip() else None
                if fresh is not None and fresh["metadata"]["uid"] == details["old_claim_uid"]:
                    return False
                created = datetime.fromisoformat(now["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
                pending = now.get("status", {}).get("phase") == "Pending"
                if fresh is None and pending and time.time() - created.timestamp() > 30:
                    # created while the old claim was still terminating: once more, the controller re-creates both
                    kubectl("-n", namespace, "delete", "pod", pod, "--wait=false", check=False)
                    return False
            return pod_ready(now)

        try:
            details["pod_ready_after_s"] = round(self.wait(f"{pod} back and Ready", back, 900) - t0, 1)
        except TimeoutError as exc:
            self.problems.append(f"{utc(t0):%H:%M:%S}: {exc}")
            say(f"[red]{exc}")
            details["pod_ready_after_s"] = None
        if with_claim:
            pvc = json.loads(kubectl("-n", namespace, "get", "pvc", with_claim, "-o", "json"))
            details["new_volume"] = pvc["spec"].get("volumeName")
        started = ((pod_json(namespace, pod) or {}).get("status", {}).get("containerStatuses") or [{}])[0]
        started_at = started.get("state", {}).get("running", {}).get("startedAt")
        if started_at:  # the new container's start (whole seconds): where the process's own recovery begins
            at = datetime.fromisoformat(started_at.replace("Z", "+00:00")).timestamp()
            details["container_started_after_s"] = round(at - t0, 1)
        return t0, details

    def broker_phase(self, name: str, broker: int, *, lose_claim: bool) -> Phase:
        pod = f"kafka-{broker}"
        before = log_dir_bytes(pod)
        t0, details = self.restart_pod("kafka", pod, with_claim=f"data-kafka-{broker}" if lose_claim else None)
        self.settle(t0, self.args.phase_min)
        details |= self.recovery(t0)
        after = log_dir_bytes(pod)
        details |= {"log_dir_bytes_before": before, "log_dir_bytes_after": after}
        # catch-up: from the new broker process's start (JVM, log recovery, fetching) until every ISR is full.
        # Not from Ready: the readiness probe runs every 10 s, and the ISR was seen full before the pod was Ready.
        started, in_sync = details.get("container_started_after_s"), details.get("urp_zero_after_s")
        details["catch_up_s"] = round(in_sync - started, 1) if started is not None and in_sync is not None else None
        details["rejoin_span_s"] = rejoin_span(self.monitor.urp, t0, time.time())
        # kept: what it fetched = its log dir's growth (an upper bound: it includes what was produced meanwhile);
        # lost: everything on its new volume came from its peers
        details["bytes_re_replicated"] = after if lose_claim else (after - before if after and before else None)
        return self.finish(name, t0, details)

    def es_phase(self, name: str, node: int) -> Phase:
        pod = f"elasticsearch-{node}"
        t0, details = self.restart_pod("elastic", pod)
        self.settle(t0, self.args.phase_min)
        details |= self.recovery(t0)
        return self.finish(name, t0, details)

    def fill(self, topic: str, size: int) -> Phase:
        """``size`` bytes of incompressible 100 KiB records on an RF-3 topic, acks=all (kafka-python)."""
        from kafka import KafkaProducer
        from kafka.admin import KafkaAdminClient, NewTopic

        admin = KafkaAdminClient(bootstrap_servers=self.args.bootstrap)
        admin.create_topics([NewTopic(topic, 3, 3, topic_configs={"min.insync.replicas": "2"})])
        admin.close()
        t0 = time.time()
        # 512 KiB batches (5 records): under the broker's default 1 MiB message.max.bytes
        producer = KafkaProducer(
            bootstrap_servers=self.args.bootstrap, acks="all", linger_ms=50, batch_size=512 * 1024, retries=2**31 - 1
        )
        chunk, round_records = 100 * 1024, 640  # 64 MiB a round: no batch waits out its delivery timeout
        acked = failed = sent = 0
        while acked * chunk < size:
            want = min(round_records, -(-(size - acked * chunk) // chunk))
            futures = [producer.send(topic, value=os.urandom(chunk), key=str(sent + n).encode()) for n in range(want)]
            sent += want
            producer.flush()
            done = sum(f.succeeded() for f in futures)
            if not done:
                raise RuntimeError(f"fill of {topic}: a round of {want} records got no ack ({futures[0].exception})")
            acked, failed = acked + done, failed + want - done  # a failed record is sent again in the next round
        producer.close()
        self.settle(t0, 0)
        per_broker = {f"kafka-{b}": log_dir_bytes(f"kafka-{b}", f"{topic}-*") for b in range(3)}
        return self.finish(
            f"fill: {size / (1 << 30):g} GiB on an RF-3 topic",
            t0,
            {"topic": topic, "bytes_per_broker": per_broker, "records_acked": acked, "sends_failed": failed},
        )

    def expand(self, size_increase: int) -> Phase:
        """`eventpipe storage expand` of the Kafka claims, run as a task pod (as tests/test_stateful_k8s.py does)."""
        from kubernetes import client, config
        from kubernetes.client import models as k8s
        from kubernetes.utils import parse_quantity

        from devstack.cluster.deploy import kubernetes_connection, xcom_sidecar_image
        from devstack.cluster.kubernetes import kubeconfig
        from tests.test_kubernetes import _pod, _run

        before = claim_capacities("kafka", "data", "kafka")
        target = max(int(parse_quantity(v)) for v in before.values()) + size_increase
        os.environ["AIRFLOW_CONN_KUBERNETES_DEFAULT"] = kubernetes_connection(xcom_sidecar_image())
        api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig())))
        args = [
            "storage",
            "expand",
            "--statefulset",
            "kafka",
            "--size",
            str(target),
            "--gate",
            "kafka",
            "--timeout",
            "900",
        ]
        pod = _pod("storage_expand", args)
        pod.spec.service_account_name = "eventpipe-storage-expand"
        container = pod.spec.containers[0]
        in_cluster = {
            "EVENTPIPE_KAFKA_BOOTSTRAP": "kafka.kafka.svc:9092",
            "EVENTPIPE_ES_URL": "http://elasticsearch.elastic.svc:9200",
        }
        container.env = [e for e in container.env or [] if e.name not in in_cluster]
        container.env += [k8s.V1EnvVar(name=k, value=v) for k, v in in_cluster.items()]
        t0 = time.time()
        run = _run(api, pod, timeout=3600)
        api.api_client.close()
        if run.exit_code != 0:
            raise SystemExit(f"storage expand failed ({run.exit_code}):\n{run.logs[-3000:]}")
        report = run.xcom or {}
        started = t0 + run.start_seconds  # the command's clock starts about when its container does
        timeline = [{**e, "t_drill_s": round(started + float(e["t_s"]) - t0, 1)} for e in report.get("timeline", [])]
        self.settle(t0, 0)
        details = {
            "size_bytes": target,
            "capacity_before": before,
            "capacity_after": claim_capacities("kafka", "data", "kafka"),
            "restarted": report.get("restarted"),
            "pod_start_s": round(run.start_seconds, 1),
            "command_s": round(run.total_seconds, 1),
            "timeline": timeline,
        }
        details |= self.recovery(t0)
        return self.finish("e: storage expand (Kafka)", t0, details)


# --------------------------------------------------------------------------- the run


def controller(bootstrap: str) -> int | None:
    from eventpipe.stateful.kafka_state import active_controller, admin_client

    admin = admin_client(bootstrap)
    try:
        return active_controller(admin)
    finally:
        admin.close()


def scan_topic(es: Any, topic: str) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
    from elasticsearch import helpers

    from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS

    es.indices.refresh(index=[EVENTS_ALIAS, DLQ_INDEX], allow_no_indices=True)
    indexed = [
        (h["_source"]["kafka"]["partition"], h["_source"]["kafka"]["offset"], h["_source"]["event_id"])
        for h in helpers.scan(
            es,
            index=EVENTS_ALIAS,
            query={"query": {"term": {"kafka.topic": topic}}},
            _source=["kafka", "event_id"],
            size=5000,
        )
    ]
    letters = [
        (h["_source"]["partition"], h["_source"]["offset"])
        for h in helpers.scan(
            es,
            index=DLQ_INDEX,
            query={"query": {"term": {"source_topic": topic}}},
            _source=["partition", "offset"],
            size=5000,
        )
    ]
    return indexed, letters


def delete_docs(es: Any, query: dict[str, Any]) -> int:
    """Delete the run's event documents by id (the devstack's Elasticsearch has no delete-by-query module)."""
    from elasticsearch import helpers

    from eventpipe.storage.elastic import EVENTS_ALIAS

    hits = helpers.scan(es, index=EVENTS_ALIAS, query={"query": query}, _source=False, size=5000)
    actions = ({"_op_type": "delete", "_index": h["_index"], "_id": h["_id"]} for h in hits)
    deleted, _ = helpers.bulk(es, actions, raise_on_error=False, chunk_size=5000)
    return deleted


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default=f"{NODE_IP}:31090", help="Kafka's EXTERNAL listener")
    parser.add_argument("--es-url", default=f"http://{NODE_IP}:30920", help="Elasticsearch's NodePort")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s of the steady producer")
    parser.add_argument("--baseline", type=float, default=180.0, help="seconds of the baseline phase")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the baseline begins")
    parser.add_argument("--phase-min", type=float, default=150.0, help="each disruption phase lasts at least this")
    parser.add_argument("--fill-gib", type=float, default=1.0, help="partition data before the broker phases")
    parser.add_argument("--expand-by", default="2Gi", help="grow the Kafka claims by this ('' skips the expansion)")
    parser.add_argument("--es-node", type=int, default=1, help="the Elasticsearch pod of phase c")
    parser.add_argument("--out", type=Path, default=None, help="directory for restarts.json/.png (bench/results)")
    parser.add_argument("--keep", action="store_true", help="keep the run's topics and documents")
    parser.add_argument("--report-from", type=Path, help="only redraw the report from a run's raw JSON")
    args = parser.parse_args()
    if args.report_from:
        report_from(args.report_from, args)
        return

    from kubernetes.utils import parse_quantity

    from devstack.cluster.stateful import DURABILITY_ENV
    from devstack.stack import local_env
    from eventpipe.events.topics import ensure_topics
    from eventpipe.settings import Settings
    from eventpipe.storage.elastic import client, ensure_indices

    run = Run("restarts")
    env = {
        **local_env(),
        "EVENTPIPE_KAFKA_BOOTSTRAP": args.bootstrap,
        "EVENTPIPE_ES_URL": args.es_url,
        **DURABILITY_ENV,
    }
    os.environ.update(env)
    settings = Settings.from_env(env)
    es = client(settings)
    ensure_indices(es, replicas=1)
    tag = uuid.uuid4().hex[:6]
    topic, fill_topic = f"drill-{tag}.iot", f"drill-{tag}.fill"
    ensure_topics(settings, [topic])
    seed = int(tag, 16)
    say(f"topic {topic} (seed {seed}), {args.rate:.0f} events/s; Kafka {args.bootstrap}, ES {args.es_url}")

    log_path = Path(f"/tmp/drill-{tag}.producer")
    spawn = multiprocessing.get_context("spawn")  # no fork of a process holding client threads
    stop = spawn.Event()
    first = time.time() // MINUTE * MINUTE  # the minute of the first record: every record is in a drained interval
    producer = spawn.Process(
        target=produce_steadily, args=(args.bootstrap, topic, seed, args.rate, str(log_path), stop), daemon=True
    )
    producer.start()
    monitor = Monitor(args.bootstrap, args.es_url)
    threading.Thread(target=monitor.run, daemon=True).start()
    log = ProducerLog(log_path)
    drains = Drains(settings, topic, first, log)
    drain_thread = threading.Thread(target=drains.drain_loop, daemon=True)
    fresh_thread = threading.Thread(target=drains.fresh_loop, args=(args.es_url,), daemon=True)
    drain_thread.start()
    fresh_thread.start()
    drill = Drill(args, settings, monitor)
    # the baseline begins after the first (partial) interval and one warm-up interval (new day index, cold JIT)
    while time.time() < first + MINUTE + args.warmup + 0.5:
        time.sleep(0.5)

    drill.baseline()
    if args.expand_by:
        drill.expand(int(parse_quantity(args.expand_by)))
    fill_bytes = int(args.fill_gib * (1 << 30))
    room = min(free_bytes(f"kafka-{b}") for b in range(3))
    if room < 1.3 * fill_bytes:
        raise SystemExit(f"the Kafka volumes have {room} bytes free, too little for {fill_bytes}: use --expand-by")
    drill.fill(fill_topic, fill_bytes)
    active = controller(args.bootstrap)
    broker = next(b for b in (1, 2, 0) if b != active)  # not the active controller (Strimzi rolls it last)
    say(f"active controller {active}; broker {broker} goes in phases b and d")
    drill.broker_phase("b: broker pod deleted, PVC kept", broker, lose_claim=False)
    drill.es_phase("c: Elasticsearch pod deleted", args.es_node)
    drill.broker_phase("d: broker pod and PVC deleted", broker, lose_claim=True)

    stop.set()
    producer.join(timeout=400)
    log.read()
    while not log.finished:
        time.sleep(0.5)
        log.read()
    drains.last_end = (max(ts for ts in log.valid_per_interval) // MINUTE + 1) * MINUTE + MINUTE
    say(f"producer stopped: {log.produced:,} acked; draining up to {utc(drains.last_end):%H:%M}")
    drain_thread.join()
    fresh_thread.join(timeout=300)
    monitor.stop.set()

    indexed, letters = scan_topic(es, topic)
    offsets = end_offsets(args.bootstrap, topic)
    books = account(log.produced, len(log.failures), offsets, indexed, letters, log.valid_ids)
    raw = Path(f"/tmp/drill-{tag}.raw.json")
    drill.run_load = {"started": run.started, "before": run.load_before, "after": os.getloadavg()}
    dump(raw, drill, drains, log, monitor, books, topic, fill_topic, seed)
    say(f"raw measurements in {raw} (--report-from {raw} redraws the report)")
    report(run, args, drill, drains, log, monitor, books, topic, fill_topic, seed)
    if not args.keep:
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
        admin.delete_topics([topic, fill_topic])
        admin.close()
        delete_docs(es, {"term": {"kafka.topic": topic}})
    log_path.unlink(missing_ok=True)
    es.close()
    if not books.balanced:
        raise SystemExit("the books do not balance: see the accounting above")


def dump(path: Path, drill: Drill, drains: Drains, log: ProducerLog, monitor: Monitor, books: Any, *rest: Any) -> None:
    """What ``report`` reads, as JSON: a failed report or chart can be redrawn without rerunning the drill."""
    path.write_text(
        json.dumps(
            {
                "phases": [p.__dict__ for p in drill.phases],
                "problems": drill.problems,
                "run": drill.run_load,
                "drains": {
                    "freshness": drains.freshness,
                    "grace": drains.grace,
                    "results": drains.results,
                    "failures": drains.failures,
                },
                "log": {"acks": log.acks, "failures": log.failures},
                "monitor": {
                    "urp": monitor.urp,
                    "health": monitor.health,
                    "cores_busy": monitor.cores_busy,
                    "every": monitor.every,
                },
                "books": {k: v for k, v in books.as_dict().items() if k != "balanced"},
                "rest": rest,
            },
            default=str,
        )
    )


def report_from(path: Path, args: argparse.Namespace) -> None:
    from types import SimpleNamespace as NS

    from bench.drill_metrics import Accounting

    raw = json.loads(path.read_text())
    drill = NS(phases=[Phase(**p) for p in raw["phases"]], problems=raw.get("problems", []))
    drains = NS(**raw["drains"])
    drains.freshness = {int(k): v for k, v in drains.freshness.items()}
    log = NS(acks=[tuple(a) for a in raw["log"]["acks"]], failures=raw["log"]["failures"])
    monitor = NS(**raw["monitor"])
    run = Run("restarts")
    measured = raw.get("run", {})  # the run's own start and load, not the redraw's
    run.started = measured.get("started", drill.phases[0].start)
    run.load_before = tuple(measured.get("before", run.load_before))
    drill.run_load = measured
    drill.notes = raw.get("patched")
    report(run, args, drill, drains, log, monitor, Accounting(**raw["books"]), *raw["rest"])  # type: ignore[arg-type]


def report(
    run: Run,
    args: argparse.Namespace,
    drill: Drill,
    drains: Drains,
    log: ProducerLog,
    monitor: Monitor,
    books: Any,
    topic: str,
    fill_topic: str,
    seed: int,
) -> None:
    phases = drill.phases
    acks = by_phase(log.acks, phases)
    fresh = by_phase([(start + MINUTE, s) for start, s in drains.freshness.items()], phases)
    cores = by_phase(monitor.cores_busy, phases)
    rows = []
    for p in phases:
        d = p.details
        rows.append(
            {
                "phase": p.name,
                "seconds": round(p.end - p.start, 1),
                "ack_latency_s": summary(acks[p.name]),
                "freshness_s": summary(fresh[p.name]),
                "urp_zero_after_s": d.get("urp_zero_after_s"),
                "green_after_s": d.get("green_after_s"),
                "catch_up_s": d.get("catch_up_s"),
                "rejoin_span_s": d.get("rejoin_span_s"),
                "bytes_re_replicated": d.get("bytes_re_replicated"),
                "cores_busy_mean": round(sum(cores[p.name]) / len(cores[p.name]), 2) if cores[p.name] else None,
                "details": d,
            }
        )
    by = {r["phase"][0]: r for r in rows}
    base_p99 = by["a"]["freshness_s"]["p99"]
    met = goals(
        base_p99,
        {k: by[k]["freshness_s"]["p99"] for k in ("b", "c") if k in by},
        by.get("b", {}).get("urp_zero_after_s"),
        by.get("d", {}).get("urp_zero_after_s"),
        resolution_s=monitor.every,
    )
    # two parts of the same comparison, to say where the time goes (not goals of their own)
    catch_up = replace(
        goals(None, {}, by.get("b", {}).get("catch_up_s"), by.get("d", {}).get("catch_up_s"), monitor.every)[-1],
        name="part: broker process start -> in sync, lost PVC / kept PVC",
    )
    span = replace(
        goals(None, {}, by.get("b", {}).get("rejoin_span_s"), by.get("d", {}).get("rejoin_span_s"), monitor.every)[-1],
        name="part: first -> last partition back in sync, lost PVC / kept PVC",
    )

    table = Table(title=f"restart drill: {args.rate:.0f} events/s acks=all, 1-min drains, topic {topic}")
    for column in (
        "phase",
        "s",
        "ack p50/p99/max ms",
        "freshness p50/p99/max s",
        "URP 0 after",
        "green after",
        "catch-up",
        "rejoin span",
        "re-replicated",
        "cores busy",
    ):
        table.add_column(column, justify="right")

    def ms(s: dict[str, Any]) -> str:
        return "-" if not s["n"] else f"{s['p50'] * 1000:.0f}/{s['p99'] * 1000:.0f}/{s['max'] * 1000:.0f}"

    def sec(s: dict[str, Any]) -> str:
        return "-" if not s["n"] else f"{s['p50']:.1f}/{s['p99']:.1f}/{s['max']:.1f} (n={s['n']})"

    def opt(v: Any, unit: str = " s") -> str:
        return "-" if v is None else f"{v}{unit}"

    for r in rows:
        mib = r["bytes_re_replicated"]
        table.add_row(
            r["phase"],
            f"{r['seconds']:.0f}",
            ms(r["ack_latency_s"]),
            sec(r["freshness_s"]),
            opt(r["urp_zero_after_s"]),
            opt(r["green_after_s"]),
            opt(r["catch_up_s"]),
            opt(r["rejoin_span_s"]),
            "-" if mib is None else f"{mib / (1 << 20):,.0f} MiB",
            opt(r["cores_busy_mean"], ""),
        )
    console.print(table)
    for g in met:
        console.print(
            f"goal {g.name}: {g.ratio} (limit {'<=' if g.at_most else '>='} {g.limit}): "
            f"{'met' if g.met else 'NOT met' if g.met is not None else 'not measured'}"
        )
    for g in (catch_up, span):
        console.print(f"  where the time goes, {g.name.removeprefix('part: ')}: {g.ratio}")
    console.print(f"accounting: {books.as_dict()}")
    expansion = next((p for p in phases if p.name.startswith("e:")), None)
    if expansion:
        for e in expansion.details["timeline"]:
            console.print(f"  expand +{e['t_drill_s']:>6}s  {e['pod']:<8} {e['event']}")

    data = {
        "load": {
            "rate_per_s": args.rate,
            "acks": "all",
            "interval_s": MINUTE,
            "topic": topic,
            "seed": seed,
            "kafka": args.bootstrap,
            "elasticsearch": args.es_url,
            "grace_s": drains.grace,
            "cores_busy_mean": round(sum(v for _, v in monitor.cores_busy) / max(1, len(monitor.cores_busy)), 2),
            "poll_s": monitor.every,
        },
        "fill_topic": fill_topic,
        "phases": rows,
        "goals": [g.as_dict() for g in met],
        "sync_parts": [catch_up.as_dict(), span.as_dict()],
        "accounting": books.as_dict(),
        "drains": drains.results,
        "drain_failures": drains.failures,
        "problems": getattr(drill, "problems", []),
        "freshness_by_interval": {utc(k).strftime("%H:%M"): v for k, v in sorted(drains.freshness.items())},
        "send_failures": log.failures[:20],
        "how_measured": {
            "ack_latency": "send() to the ack callback in the producer process, by the phase its send falls in",
            "freshness": "interval end until a count of its events (kafka.topic + event_time range) reaches the acked "
            "valid events, polled each second once the producer's watermark passed the interval end; by the phase "
            "the interval ends in",
            "urp_zero_after_s": "from the delete until under-replicated partitions (all topics) stayed 0, polled "
            f"every {monitor.every:.0f} s",
            "catch_up_s": "from the new broker container's start (pod status startedAt, whole seconds) until URP 0",
            "rejoin_span_s": "from the first partition back in sync (URP below its peak) until URP 0",
            "bytes_re_replicated": "du -sb of the broker's log dir once back in sync: kept PVC, minus before the "
            "delete (an upper bound: includes what was produced meanwhile); lost PVC, all of it",
        },
        "timeline": {
            "urp": [(round(t - phases[0].start, 1), v) for t, v in monitor.urp],
            "health": [(round(t - phases[0].start, 1), v) for t, v in monitor.health],
        },
    }
    kwargs = {"out": args.out} if args.out else {}
    bars = [(f"{r['phase']}: freshness p99 (s)", r["freshness_s"]["p99"] or 0.0) for r in rows]
    if getattr(drill, "notes", None):
        data["notes"] = drill.notes
    json_path, png_path = run.write(data, bars, xlabel="seconds", title="Restart drill", **kwargs)
    if drill.run_load.get("after"):  # a redraw: the machine figures of the run, not of now
        document = json.loads(json_path.read_text())
        document["machine"]["load_average_1_5_15_after"] = [round(v, 2) for v in drill.run_load["after"]]
        document["wall_seconds"] = round(drill.phases[-1].end - run.started, 1)
        json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    chart(png_path, phases, log, drains, monitor)
    console.print(f"wrote {json_path} and {png_path}")


def chart(path: Path, phases: list[Phase], log: ProducerLog, drains: Drains, monitor: Monitor) -> None:
    """Three panels over the run: ack latency (p99 per 10 s), freshness per interval, URP and ES health."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.drill_metrics import percentile

    t0 = phases[0].start
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 8), sharex=True, dpi=100)
    buckets: dict[int, list[float]] = {}
    for t, latency in log.acks:
        buckets.setdefault(int((t - t0) // 10), []).append(latency * 1000)
    xs = sorted(buckets)
    ax1.plot([x * 10 for x in xs], [percentile(buckets[x], 99) for x in xs], lw=1, label="p99 per 10 s")
    ax1.plot([x * 10 for x in xs], [percentile(buckets[x], 50) for x in xs], lw=1, label="p50 per 10 s")
    ax1.set_yscale("log")
    ax1.set_ylabel("produce ack (ms)")
    ax1.legend(fontsize=7, loc="upper left")
    ends = sorted(drains.freshness)
    ax2.bar([s + MINUTE - t0 for s in ends], [drains.freshness[s] for s in ends], width=40, color="#1f77b4")
    ax2.set_ylabel("freshness (s)")
    ax3.step(
        [t - t0 for t, _ in monitor.urp],
        [-1 if v is None else v for _, v in monitor.urp],
        where="post",
        label="under-replicated partitions (-1: unknown)",
    )
    for t, status in monitor.health:
        if status != "green":
            ax3.axvspan(
                t - t0,
                t - t0 + monitor.every,
                color={"yellow": "#ffd54f"}.get(status or "", "#e57373"),
                alpha=0.5,
                lw=0,
            )
    ax3.set_ylabel("URP; ES not green")
    ax3.set_xlabel("seconds since the baseline began")
    ax3.legend(fontsize=7, loc="upper left")
    for ax in (ax1, ax2, ax3):
        for n, p in enumerate(phases):
            ax.axvspan(p.start - t0, p.end - t0, color="#eeeeee" if n % 2 else "#f7f7f7", zorder=0)
    for p in phases:
        ax1.text(p.start - t0, ax1.get_ylim()[1], p.name.split(":")[0], fontsize=8, va="top")
    load = os.getloadavg()[0]
    fig.suptitle(f"Restart drill on the devstack cluster (1-min load {load:.1f} on {os.cpu_count()} CPUs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
