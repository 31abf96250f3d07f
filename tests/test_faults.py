"""Fault matrix (docs/faults.md): each fault against real services ends in exact counts, or in a
clear failure whose retry is exact. Shared services are never killed: a fault hits a private
broker (``SpareKafka``), a proxy in front of a shared service, one test-owned index, or a task
process started here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ConnectionClosedError
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from devstack.elasticsearch import snapshot_root
from devstack.runtime import home as devstack_home
from eventpipe.archive import snapshot
from eventpipe.events.generator import GeneratorConfig
from eventpipe.events.produce import produce
from eventpipe.ingest.dlq import DeadLetterError
from eventpipe.ingest.drain import drain_interval
from eventpipe.ingest.kafka_io import CONSUMER_GROUP
from eventpipe.ingest.manifest import ManifestStore
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage import elastic
from eventpipe.storage.elastic import DLQ_INDEX, EVENTS_ALIAS, client, ensure_indices
from eventpipe.storage.s3 import delete_keys, s3_client

from .es_support import dead_letters_of, events_of
from .faults import CuttableProxy, SpareService, descendants, spare_elasticsearch, spare_kafka, wait_until_gone
from .polling import wait_for
from .test_ingest import _hours, _produce

pytestmark = pytest.mark.services


def _committed(settings: Settings, topic: str) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, group_id=CONSUMER_GROUP)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        consumer.close()


def _ends(settings: Settings, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap)
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(3)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def _assert_exact(settings: Settings, es: Elasticsearch, topic: str, produced: int) -> None:
    """Every record of ``topic`` is indexed or dead-lettered once, and the group committed the log end."""
    assert events_of(es, topic) + dead_letters_of(es, topic) == produced
    assert _committed(settings, topic) == _ends(settings, topic)


def _assert_failed_with(
    failure: list[BaseException],
    kind: type[BaseException] | tuple[type[BaseException], ...],
    wrapped_by: type[BaseException] | None = None,
) -> None:
    """The fault ended the task with exactly the error it causes (not a bug's TypeError, not success);
    ``wrapped_by``: the project's error that may carry it as its cause."""
    assert len(failure) == 1, f"expected one {kind}, got {failure!r}"
    error = failure[0]
    if wrapped_by is not None and isinstance(error, wrapped_by):
        error = error.__cause__
    assert isinstance(error, kind), "".join(traceback.format_exception(failure[0]))


def test_elasticsearch_frozen_mid_bulk_then_thawed_completes_exactly(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    """A SIGSTOPped node as its clients see it: open connections, no answers; then it resumes."""
    _, produced = _produce(services, topics, seed=120, malformed_rate=0.01, rate=1.0)
    h0, _h1, h2, _ = _hours(120)
    iot = topics["iot"]
    proxy = CuttableProxy(int(services.elastic.url.rsplit(":", 1)[1]), freeze_after_bytes=250_000)
    frozen_for = 8.0

    def thaw_later() -> None:
        wait_for(lambda: proxy.frozen_at is not None, "the freeze", timeout=120, every=0.1)
        time.sleep(frozen_for)
        proxy.thaw()

    thawer = threading.Thread(target=thaw_later, daemon=True)
    thawer.start()
    try:
        started = time.monotonic()
        result = drain_interval(
            services.updated(elastic={"url": proxy.url, "timeout_s": 3.0}), iot, h0, h2, batch_size=300
        )
        elapsed = time.monotonic() - started
    finally:
        proxy.thaw()
        proxy.close()
    assert proxy.frozen_at is not None and elapsed > frozen_for  # the freeze really held a request
    assert result.consumed == produced.by_topic[iot]
    _assert_exact(services, es, iot, produced.by_topic[iot])


def test_flood_stage_block_during_drain_is_waited_out_exactly(
    services: Settings, es: Elasticsearch, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Elasticsearch's flood-stage watermark puts read_only_allow_delete on indices (items fail with 429)."""
    _, produced = _produce(services, topics, seed=130, malformed_rate=0.01)
    h0, h1, _h2, _ = _hours(130)
    iot = topics["iot"]
    day_index = f"eventpipe-events-{h0.strftime('%Y.%m.%d')}"
    es.options(ignore_status=400).indices.create(index=day_index)
    es.indices.put_settings(index=day_index, settings={"index.blocks.read_only_allow_delete": True})
    blocked = threading.Event()
    send = elastic._send

    def watched_send(client: Elasticsearch, body: bytes) -> dict:
        """The real bulk request; notes when Elasticsearch answered items of the blocked index with 429."""
        response = send(client, body)
        if any(i["index"]["status"] == 429 and i["index"]["_index"] == day_index for i in response["items"]):
            blocked.set()
        return response

    monkeypatch.setattr(elastic, "_send", watched_send)

    def release_once_blocked() -> None:
        # the block lifts only after Elasticsearch has really refused the drain's writes with it
        assert blocked.wait(120), "the drain's writes never met the block"
        es.indices.put_settings(index=day_index, settings={"index.blocks.read_only_allow_delete": None})

    release = threading.Thread(target=release_once_blocked, daemon=True)
    release.start()
    try:
        result = drain_interval(services, iot, h0, h1)
    finally:
        release.join(130)
        es.indices.put_settings(index=day_index, settings={"index.blocks.read_only_allow_delete": None})
    assert blocked.is_set() and result.bulk_retried_items > 0  # the block rejected writes, and they were retried
    # independently of the drain's own counts: no record of this topic was dead-lettered for an Elasticsearch error
    es.indices.refresh(index=DLQ_INDEX)
    by_es = {"bool": {"filter": [{"term": {"source_topic": iot}}, {"term": {"error_kind": "elasticsearch"}}]}}
    assert es.count(index=DLQ_INDEX, query=by_es)["count"] == 0
    consumer = KafkaConsumer(bootstrap_servers=services.kafka.bootstrap, group_id=CONSUMER_GROUP)
    in_interval = sum(int(p["end"]) - int(p["start"]) for p in result.partitions)
    assert result.consumed == in_interval and result.indexed + result.dead_lettered == in_interval
    assert all(consumer.committed(TopicPartition(iot, int(p["partition"]))) == p["end"] for p in result.partitions)
    consumer.close()
    assert events_of(es, iot) + dead_letters_of(es, iot) == in_interval
    assert produced.by_topic[iot] > in_interval  # the second hour is left for its own interval


def _drain_process(topic: str, start: str, end: str, **env: str) -> subprocess.Popen[bytes]:
    eventpipe = Path(sys.executable).with_name("eventpipe")
    argv = [str(eventpipe), "drain", "--start", start, "--end", end, "--topics", topic, "--batch-size", "200"]
    return subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


ORPHAN_GRACE_S = 10.0  # a killed task's processes are all gone within this (issue #25)


def test_task_process_killed_mid_batch_then_retry_is_exact(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    _, produced = _produce(services, topics, seed=140, malformed_rate=0.01, rate=2.0)
    h0, _h1, h2, _ = _hours(140)
    iot = topics["iot"]
    proc = _drain_process(iot, h0.isoformat(), h2.isoformat())

    def some_indexed() -> bool:
        es.indices.refresh(index=EVENTS_ALIAS, ignore_unavailable=True)
        return events_of(es, iot) > 0 or proc.poll() is not None

    wait_for(some_indexed, "the drain to index its first batch", timeout=120, every=0.1)
    spawned = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)  # as the kubelet does on OOM or node loss
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    wait_until_gone(spawned, ORPHAN_GRACE_S)
    partial = events_of(es, iot)
    assert 0 < partial < produced.by_topic[iot]
    assert all(c is None for c in _committed(services, iot).values())  # nothing committed
    manifest = ManifestStore(es).get(iot, h0, h2)
    assert manifest is not None and manifest.status == "planned"

    retry = _drain_process(iot, h0.isoformat(), h2.isoformat())
    _out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err.decode()[-2000:]
    manifest = ManifestStore(es).get(iot, h0, h2)
    assert manifest is not None and manifest.status == "complete" and manifest.attempts == 2
    assert manifest.consumed == produced.by_topic[iot]
    _assert_exact(services, es, iot, produced.by_topic[iot])


def test_task_process_killed_mid_drain_with_workers_leaves_no_process_and_retry_is_exact(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    """Issue #25: the drain's worker processes and the resource tracker end with the SIGKILLed task."""
    _, produced = _produce(services, topics, seed=145, malformed_rate=0.01, rate=4.0)
    h0, _h1, h2, _ = _hours(145)
    iot = topics["iot"]
    workers = {"EVENTPIPE_DRAIN_WORKERS": "2", "EVENTPIPE_DRAIN_PARALLEL_MIN_RECORDS": "1"}
    proc = _drain_process(iot, h0.isoformat(), h2.isoformat(), **workers)

    def workers_indexing() -> bool:
        if proc.poll() is not None:
            return True
        es.indices.refresh(index=EVENTS_ALIAS, ignore_unavailable=True)
        return events_of(es, iot) > 0 and len(descendants(proc.pid)) == 3

    wait_for(workers_indexing, "the drain's workers to index their first batches", timeout=120, every=0.1)
    spawned = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the drain ended before it could be killed mid-drain"
    kinds = sorted("resource_tracker" if "resource_tracker" in p.cmdline else "spawn_main" for p in spawned)
    assert kinds == ["resource_tracker", "spawn_main", "spawn_main"], spawned  # two workers, one tracker
    wait_until_gone(spawned, ORPHAN_GRACE_S)
    manifest = ManifestStore(es).get(iot, h0, h2)
    assert manifest is not None and manifest.status == "planned"  # killed mid-drain: nothing committed
    assert all(c is None for c in _committed(services, iot).values())

    retry = _drain_process(iot, h0.isoformat(), h2.isoformat(), **workers)
    _out, err = retry.communicate(timeout=300)
    assert retry.returncode == 0, err.decode()[-2000:]
    manifest = ManifestStore(es).get(iot, h0, h2)
    assert manifest is not None and manifest.status == "complete" and manifest.attempts == 2
    assert manifest.consumed == produced.by_topic[iot]
    _assert_exact(services, es, iot, produced.by_topic[iot])


SPARK_TASK = """
import time
from eventpipe.settings import Settings
from eventpipe.sparkjobs.session import build_session
spark = build_session(Settings(), "eventpipe-orphan-check")
assert spark.sparkContext.parallelize(range(1000), 2).map(lambda x: x * 2).sum() == 999000  # Python workers
print("ready", flush=True)
time.sleep(600)
"""


def test_spark_task_killed_leaves_no_jvm_or_python_worker(stack_env: dict[str, str]) -> None:
    """Issue #25: a SIGKILLed Spark task takes its local JVM (and the JVM's pyspark workers) with it.

    The guard is pyspark's own: the JVM gateway exits when its stdin pipe from the task reads
    end-of-file, which needs the task to be the only holder of that pipe (no fork-started children).
    """
    proc = subprocess.Popen([sys.executable, "-c", SPARK_TASK], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        spawned = descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait(30)
    assert any("org.apache.spark.deploy.SparkSubmit" in p.cmdline for p in spawned), spawned  # the JVM
    assert any("pyspark.daemon" in p.cmdline for p in spawned), spawned  # its Python workers
    wait_until_gone(spawned, ORPHAN_GRACE_S)


@pytest.fixture(scope="module")
def private_kafka(tmp_path_factory: pytest.TempPathFactory, services: Settings) -> Iterator[SpareService]:
    broker = spare_kafka(tmp_path_factory.mktemp("spare-kafka"), devstack_home())
    broker.start()
    yield broker
    broker.stop()


def test_kafka_broker_killed_mid_drain_then_retry_is_exact(
    services: Settings, es: Elasticsearch, topics: dict[str, str], private_kafka: SpareService
) -> None:
    private = services.updated(kafka={"bootstrap": f"127.0.0.1:{private_kafka.port}"})
    h0, _h1, h2, _ = _hours(150)
    config = GeneratorConfig(h0, h2, rate_per_s=2.0, seed=150, malformed_rate=0.01)
    produced = produce(private, config, topics=topics, truth=False)
    iot = topics["iot"]
    failure: list[BaseException] = []

    def drain() -> None:
        try:
            drain_interval(private, iot, h0, h2, batch_size=200, idle_timeout_s=10)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions below
            failure.append(exc)

    worker = threading.Thread(target=drain)
    worker.start()
    wait_for(lambda: events_of(es, iot) > 0 or not worker.is_alive(), "indexing", timeout=120, every=0.1)
    private_kafka.kill()
    worker.join(180)
    assert not worker.is_alive()
    # the Kafka client's connection or timeout error, by whichever call meets the dead broker first: the
    # consumer's poll (nothing, until the drain's idle TimeoutError), its offset lookups (refused), or a
    # dead letter's send (no metadata), which the DLQ wraps with the letter's coordinates
    _assert_failed_with(failure, (TimeoutError, KafkaConnectionError, KafkaTimeoutError), wrapped_by=DeadLetterError)
    partial = events_of(es, iot)
    assert 0 < partial < produced.by_topic[iot]

    private_kafka.start()  # the broker comes back with its log (acks=all records survive a process kill)
    assert all(c is None for c in _committed(private, iot).values())  # nothing was committed
    result = drain_interval(private, iot, h0, h2, batch_size=200)
    assert result.replayed and result.consumed == produced.by_topic[iot]
    _assert_exact(private, es, iot, produced.by_topic[iot])


@pytest.fixture(scope="module")
def private_es(tmp_path_factory: pytest.TempPathFactory, services: Settings) -> Iterator[SpareService]:
    node = spare_elasticsearch(tmp_path_factory.mktemp("spare-es"), devstack_home())
    node.start()
    yield node
    node.stop()


def test_elasticsearch_killed_mid_drain_and_mid_snapshot_then_retries_are_exact(
    services: Settings,
    topics: dict[str, str],
    private_es: SpareService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = services.updated(elastic={"url": f"http://127.0.0.1:{private_es.port}", "retries": 2})
    es = client(private)
    ensure_indices(
        es, replicas=private.elastic.replicas
    )  # what the DAG's setup task does; the drain itself no longer bootstraps
    h0, _h1, h2, _ = _hours(160)
    iot = topics["iot"]
    _, produced = _produce(services, topics, seed=160, malformed_rate=0.01, rate=2.0)
    failure: list[BaseException] = []

    def drain() -> None:
        try:
            drain_interval(private, iot, h0, h2, batch_size=200)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions below
            failure.append(exc)

    worker = threading.Thread(target=drain)
    worker.start()

    def indexing() -> bool:
        if not worker.is_alive():
            return True
        with contextlib.suppress(Exception):  # the index may not exist yet
            return events_of(es, iot) > 0
        return False

    wait_for(indexing, "indexing", timeout=120, every=0.1)
    private_es.kill()
    worker.join(180)
    _assert_failed_with(failure, TransportConnectionError)  # the killed node refuses the bulk retries
    assert all(c is None for c in _committed(services, iot).values())  # nothing committed

    private_es.start()  # acknowledged writes survive: the translog is fsynced per request
    result = drain_interval(private, iot, h0, h2, batch_size=200)
    assert result.replayed and result.consumed == produced.by_topic[iot]
    _assert_exact(services, es, iot, produced.by_topic[iot])

    # mid-snapshot: a throttled repository keeps the snapshot running long enough to kill the node in it
    day = h0.date()
    cfg = ArchiveSettings(
        repository="spare-snapshots",
        repository_type="fs",
        fs_location=str(private_es.home / "elasticsearch" / "snapshots" / "spare-snapshots"),
    )
    throttled = {"type": "fs", "settings": {"location": cfg.fs_location, "max_snapshot_bytes_per_sec": "20kb"}}
    monkeypatch.setattr(snapshot, "repository_body", lambda _cfg: throttled)
    snapshot_failure: list[BaseException] = []

    def take() -> None:
        try:
            snapshot.take_snapshot(private, client(private), cfg, day)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertions below
            snapshot_failure.append(exc)

    taker = threading.Thread(target=take)
    taker.start()

    def in_progress() -> bool:
        with contextlib.suppress(Exception):
            return bool(es.snapshot.status(repository=cfg.repository)["snapshots"])
        return not taker.is_alive()

    wait_for(in_progress, "the snapshot to start", timeout=60, every=0.1)
    private_es.kill()
    taker.join(180)
    _assert_failed_with(snapshot_failure, TransportConnectionError)  # the status poll loses its node
    monkeypatch.undo()
    private_es.start()
    taken = snapshot.take_snapshot(private, es, cfg, day)  # the retry
    assert taken.state == "SUCCESS" and not taken.reused
    day_index = f"eventpipe-events-{h0.strftime('%Y.%m.%d')}"
    es.snapshot.restore(
        repository=cfg.repository,
        snapshot=taken.snapshot,
        indices=day_index,
        rename_pattern="(.+)",
        rename_replacement="restored-$1",
        wait_for_completion=True,
    )
    assert es.count(index=f"restored-{day_index}")["count"] == es.count(index=day_index)["count"] > 0
    es.close()


def test_s3_cut_mid_snapshot_mirror_then_retry_mirrors_exactly(services: Settings, es: Elasticsearch) -> None:
    """The fs repository's mirror to the snapshot bucket loses S3 halfway; the rerun completes it."""
    tag = uuid.uuid4().hex[:8]
    index, location = f"hostile-mirror-{tag}", snapshot_root() / f"hostile-{tag}"
    cfg = ArchiveSettings(repository=f"hostile-{tag}", repository_type="fs", fs_location=str(location))
    docs = [
        {"index": {"_index": index, "_id": str(i)}} if j == 0 else {"n": i, "pad": "x" * 200}
        for i in range(3000)
        for j in (0, 1)
    ]
    es.bulk(operations=docs, refresh=True)
    es.snapshot.create_repository(name=cfg.repository, repository=snapshot.repository_body(cfg))
    es.snapshot.create(repository=cfg.repository, snapshot="s1", indices=index, wait_for_completion=True)
    local = {
        f"{cfg.repository}/{p.relative_to(location).as_posix()}": p.stat().st_size
        for p in location.rglob("*")
        if p.is_file()
    }
    s3 = s3_client(services)

    def mirrored() -> dict[str, int]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=cfg.snapshot_bucket, Prefix=f"{cfg.repository}/")
        return {obj["Key"]: obj["Size"] for page in pages for obj in page.get("Contents", [])}

    proxy = CuttableProxy(int(str(services.s3.endpoint).rsplit(":", 1)[1]), cut_after_bytes=sum(local.values()) // 2)
    flaky = services.updated(s3={"endpoint": proxy.url})
    try:
        with pytest.raises(ConnectionClosedError):  # the cut S3 connection, after boto's retries
            snapshot.mirror_fs_repository(flaky, cfg)
        assert 0 < len(mirrored()) < len(local)  # the cut really landed mid-mirror
        proxy.heal()
        snapshot.mirror_fs_repository(flaky, cfg)
        assert mirrored() == local  # every file, with its size; nothing stale
    finally:
        proxy.close()
        es.snapshot.delete(repository=cfg.repository, snapshot="s1")
        es.snapshot.delete_repository(name=cfg.repository)
        es.indices.delete(index=index)
        delete_keys(s3, cfg.snapshot_bucket, list(mirrored()))
