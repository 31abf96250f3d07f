"""The nightly archive against real Kafka, Elasticsearch and the S3 server: consistent, verified, replayable."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import uuid
from datetime import date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ConnectionClosedError
from elasticsearch import Elasticsearch, NotFoundError
from kafka import KafkaProducer

from eventpipe.archive.indices import day_bounds, day_index, late_index, snapshot_name
from eventpipe.archive.late import sweep_late
from eventpipe.archive.layout import committed_days, manifest_key, partition_prefix
from eventpipe.archive.manifest import ArchiveManifest
from eventpipe.archive.quiesce import DayNotClosed, quiesce_day
from eventpipe.archive.restore import restore_archive, restore_snapshot
from eventpipe.archive.retention import apply_retention
from eventpipe.archive.snapshot import LIVE_INDICES, ensure_repository, post_hook, pre_hook, take_snapshot
from eventpipe.archive.verify import VerificationFailed, is_verified, verify_day
from eventpipe.archive.volumes import snapshot_objects
from eventpipe.archive.writer import archive_day
from eventpipe.errors import ChecksumMismatch, ManifestMissing
from eventpipe.events.generator import GeneratorConfig
from eventpipe.events.produce import produce
from eventpipe.events.schema import Event
from eventpipe.ingest.drain import drain_interval
from eventpipe.k8s.schemas import CrdValidationError
from eventpipe.settings import ArchiveSettings, Settings
from eventpipe.storage.elastic import EVENTS_ALIAS, MANIFEST_INDEX, client
from eventpipe.storage.s3 import s3_client

from .es_support import delete_matching
from .faults import CuttableProxy

pytestmark = pytest.mark.services


def _day(seed: int) -> date:
    """Each test owns a day of 2025 (the ingest tests use 2026), so archives never mix."""
    return date(2025, 1, 1) + timedelta(days=seed % 360)


@pytest.fixture()
def cfg() -> ArchiveSettings:
    return Settings.from_env().archive


def _forget_day(settings: Settings, day: date) -> None:
    """Remove what an earlier run of the same test left for ``day`` (indices, manifests, archive, snapshot)."""
    es = client(settings)
    es.indices.delete(index=[day_index(day), late_index(day)], ignore_unavailable=True)
    start, end = day_bounds(day)
    delete_matching(es, MANIFEST_INDEX, {"range": {"interval_start": {"gte": start, "lt": end}}})
    cfg = Settings.from_env().archive
    ensure_repository(es, cfg)
    with contextlib.suppress(NotFoundError):
        es.snapshot.delete(repository=cfg.repository, snapshot=snapshot_name(day))
    s3 = s3_client(settings)
    listed = s3.list_objects_v2(Bucket=settings.s3.bucket, Prefix=partition_prefix(day)).get("Contents", [])
    for obj in listed:
        s3.delete_object(Bucket=settings.s3.bucket, Key=obj["Key"])


def _closed_day(settings: Settings, topics: dict[str, str], seed: int, rate: float = 0.02):
    """Produce a whole day of events and drain it (one interval per topic): a day ready to archive."""
    day = _day(seed)
    _forget_day(settings, day)
    start, end = day_bounds(day)
    config = GeneratorConfig(start, end, rate_per_s=rate, seed=seed, malformed_rate=0.01)
    produced = produce(settings, config, topics=topics, truth=False)
    for topic in topics.values():
        drain_interval(settings, topic, start, end)
    return day, produced


def _archive(settings: Settings, es: Elasticsearch, cfg: ArchiveSettings, day: date, topics: dict[str, str]):
    quiesce_day(es, day, list(topics.values()))
    pre_hook(es, day)
    try:
        snap = take_snapshot(settings, es, cfg, day)
    finally:
        post_hook(es)
    return snap, archive_day(settings, es, cfg, day)


def _manifest(settings: Settings, day: date) -> dict:
    s3 = s3_client(settings)
    return json.loads(s3.get_object(Bucket=settings.s3.bucket, Key=manifest_key(day))["Body"].read())


def test_nightly_archive_is_consistent_verified_and_restorable(
    services: Settings, es: Elasticsearch, cfg: ArchiveSettings, topics: dict[str, str]
) -> None:
    day, produced = _closed_day(services, topics, seed=11)
    snap, written = _archive(services, es, cfg, day, topics)

    assert snap.state == "SUCCESS" and snap.snapshot == snapshot_name(day) and day_index(day) in snap.indices
    assert written.status == "written" and written.rows == produced.valid > 1000
    for index in LIVE_INDICES:  # the post-hook lifted the write hold
        assert es.indices.get_settings(index=index)[index]["settings"]["index"].get("blocks", {}).get("write") in (
            None,
            "false",
        )
    blocks = es.indices.get_settings(index=day_index(day))[day_index(day)]["settings"]["index"]["blocks"]
    assert blocks["write"] == "true"  # the quiesced day stays closed

    manifest = _manifest(services, day)
    assert manifest["rows"] == produced.valid == es.count(index=day_index(day))["count"]
    assert manifest["snapshots"]["elasticsearch"] == snapshot_name(day)
    assert set(manifest["kafka_offsets"]) == set(topics.values())
    drained = sum(end - start for parts in manifest["kafka_offsets"].values() for start, end in parts.values())
    assert drained == produced.produced  # offsets cover valid and dead-lettered records alike
    assert all(entry["key"].startswith(partition_prefix(day)) for entry in manifest["files"])
    assert day in committed_days(s3_client(services), services.s3.bucket)

    verified = verify_day(services, es, cfg, day)
    assert verified.rows == verified.es_documents == produced.valid
    assert verified.encrypted_files == verified.files  # SSE requested and reported by the server
    assert is_verified(s3_client(services), services.s3.bucket, day)

    again = archive_day(services, es, cfg, day)  # a rerun of the night is a no-op
    assert again.status == "unchanged" and again.revision == written.revision == 1

    from_snapshot = restore_snapshot(services, es, cfg, day)
    from_archive = restore_archive(services, es, day)
    assert from_snapshot.matches and from_snapshot.documents == produced.valid
    assert from_archive.matches and from_archive.documents == produced.valid

    # the model reads the writer's manifest and writes back exactly its bytes
    s3 = s3_client(services)
    raw = s3.get_object(Bucket=services.s3.bucket, Key=manifest_key(day))["Body"].read()
    assert ArchiveManifest.from_bytes(raw).to_bytes() == raw

    # a corrupted object is a permanent failure of verify and restore (no retry can fix it)
    first = manifest["files"][0]["key"]
    s3.put_object(Bucket=services.s3.bucket, Key=first, Body=b"not the archived parquet")
    with pytest.raises(ChecksumMismatch, match="sha256 differs from the manifest"):
        verify_day(services, es, cfg, day)
    with pytest.raises(ChecksumMismatch):
        restore_archive(services, es, day)


def test_quiesce_waits_for_every_interval_of_the_day(
    services: Settings, es: Elasticsearch, topics: dict[str, str]
) -> None:
    day = _day(12)
    _forget_day(services, day)
    start, end = day_bounds(day)
    produce(services, GeneratorConfig(start, end, rate_per_s=0.005, seed=12), topics=topics, truth=False)
    for topic in topics.values():
        drain_interval(services, topic, start, start + timedelta(hours=12))
    with pytest.raises(DayNotClosed, match="12:00:00"):
        quiesce_day(es, day, list(topics.values()))
    assert (
        not es.indices.exists(index=day_index(day))
        or "blocks" not in (es.indices.get_settings(index=day_index(day))[day_index(day)]["settings"]["index"])
    )


def test_late_event_after_archive_gets_a_new_revision(
    services: Settings, es: Elasticsearch, cfg: ArchiveSettings, topics: dict[str, str]
) -> None:
    day, produced = _closed_day(services, topics, seed=13, rate=0.005)
    _archive(services, es, cfg, day, topics)
    verify_day(services, es, cfg, day)

    # An event of that day reaches Kafka only the next morning (a device was offline).
    late = Event(
        event_id="late-0001-" + day.isoformat(),
        source="iot",
        device_id="dev-late",
        event_type="telemetry",
        event_time=datetime.combine(day, datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=15),
        metrics={"temperature": 21.5},
    )
    arrival = day_bounds(day)[1] + timedelta(minutes=30)
    producer = KafkaProducer(bootstrap_servers=services.kafka.bootstrap)
    producer.send(
        topics["iot"], json.dumps(late.document()).encode(), timestamp_ms=int(arrival.timestamp() * 1000)
    ).get(timeout=30)
    producer.close()
    result = drain_interval(
        services, topics["iot"], arrival.replace(minute=0), arrival.replace(minute=0) + timedelta(hours=1)
    )
    assert result.late == 1 and result.dead_lettered == 0
    es.indices.refresh(index=late_index(day))
    assert es.count(index=EVENTS_ALIAS, query={"term": {"event_id": late.event_id}})["count"] == 1

    with pytest.raises(VerificationFailed, match="late"):  # ES now holds an event the archive lacks
        verify_day(services, es, cfg, day)
    swept = sweep_late(services, es, cfg)
    assert swept.rearchived[day.isoformat()] == 2
    manifest = _manifest(services, day)
    assert manifest["revision"] == 2 and manifest["rows"] == produced.valid + 1
    assert manifest["sources"][late_index(day)]["rows"] == 1
    assert is_verified(s3_client(services), services.s3.bucket, day)
    assert sweep_late(services, es, cfg).rearchived == {}  # nothing new: no further revision


def test_s3_outage_mid_archive_leaves_no_visible_partition_and_retry_completes(
    services: Settings, es: Elasticsearch, cfg: ArchiveSettings, topics: dict[str, str]
) -> None:
    day, produced = _closed_day(services, topics, seed=14, rate=0.05)
    quiesce_day(es, day, list(topics.values()))
    small_files = cfg.model_copy(update={"rows_per_file": 500})  # many files: the cut lands mid-partition
    proxy = CuttableProxy(int(str(services.s3.endpoint).rsplit(":", 1)[1]), cut_after_bytes=60_000)
    flaky = services.updated(s3={"endpoint": proxy.url})
    s3 = s3_client(services)
    try:
        with pytest.raises(ConnectionClosedError):  # the cut S3 connection, after boto's retries: the task fails
            archive_day(flaky, es, small_files, day)
        assert proxy.forwarded > 0
        assert day not in committed_days(s3, services.s3.bucket)  # nothing a reader may trust
        proxy.heal()
        written = archive_day(flaky, es, small_files, day)
    finally:
        proxy.close()
    assert written.status == "written" and written.rows == produced.valid and written.files > 3
    assert verify_day(services, es, small_files, day).rows == produced.valid
    leftovers = s3.list_objects_v2(Bucket=services.s3.bucket, Prefix=f"_staging/events/date={day.isoformat()}/")
    assert leftovers.get("KeyCount", 0) == 0
    listed = {entry["key"] for entry in _manifest(services, day)["files"]}
    in_partition = {
        obj["Key"]
        for obj in s3.list_objects_v2(Bucket=services.s3.bucket, Prefix=partition_prefix(day))["Contents"]
        if obj["Key"].endswith(".parquet")
    }
    assert in_partition == listed  # partial files of the failed attempt are gone


def test_retention_deletes_only_verified_days(
    services: Settings, es: Elasticsearch, cfg: ArchiveSettings, topics: dict[str, str]
) -> None:
    verified_day, _ = _closed_day(services, topics, seed=15, rate=0.002)
    unverified_day, _ = _closed_day(services, topics, seed=16, rate=0.002)
    for day in (verified_day, unverified_day):
        _archive(services, es, cfg, day, topics)
    verify_day(services, es, cfg, verified_day)
    s3 = s3_client(services)
    s3.delete_object(Bucket=services.s3.bucket, Key=partition_prefix(unverified_day) + "_VERIFIED.json")

    result = apply_retention(services, es, cfg, date(2099, 1, 1), only={verified_day, unverified_day})
    assert result.deleted_indices == [day_index(verified_day)]
    assert result.deleted_snapshots == [snapshot_name(verified_day)]
    assert result.kept[day_index(unverified_day)] == "archive of the day not verified"
    assert not es.indices.exists(index=day_index(verified_day))
    assert es.indices.exists(index=day_index(unverified_day))
    with pytest.raises(VerificationFailed):  # the archive stays the source of truth: ES no longer matches
        verify_day(services, es, cfg, verified_day)


def test_volume_snapshots_are_valid_custom_resources(cfg: ArchiveSettings) -> None:
    objects = snapshot_objects(cfg, date(2026, 3, 1), ["data-kafka-0", "data-elasticsearch-0"], "eventpipe")
    assert [o["metadata"]["name"] for o in objects] == ["data-kafka-0-20260301", "data-elasticsearch-0-20260301"]
    assert all(o["spec"]["volumeSnapshotClassName"] == cfg.volume_snapshot_class for o in objects)
    with pytest.raises(CrdValidationError):
        snapshot_objects(cfg, date(2026, 3, 1), ["pvc"], "Not_A_Namespace")


def _replace_file(settings: Settings, day: date, entry: int, table: pa.Table | bytes) -> str:
    """Overwrite one archived file and record its new sha256 in the manifest (rows left as they were), so
    verify meets the content problem itself and not a checksum mismatch."""
    s3, bucket = s3_client(settings), settings.s3.bucket
    manifest = _manifest(settings, day)
    if isinstance(table, bytes):
        body = table
    else:
        sink = io.BytesIO()
        pq.write_table(table, sink)
        body = sink.getvalue()
    key = manifest["files"][entry]["key"]
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    manifest["files"][entry]["sha256"] = hashlib.sha256(body).hexdigest()
    s3.put_object(Bucket=bucket, Key=manifest_key(day), Body=json.dumps(manifest).encode())
    return key


def test_verify_names_each_kind_of_damage(
    services: Settings, es: Elasticsearch, cfg: ArchiveSettings, topics: dict[str, str]
) -> None:
    """Row counts, duplicate ids and unreadable Parquet behind a matching sha256 fail as VerificationFailed
    (permanent), each with its own problem; a day never archived is ManifestMissing."""
    day, produced = _closed_day(services, topics, seed=17, rate=0.002)
    _archive(services, es, cfg, day, topics)
    verify_day(services, es, cfg, day)
    s3 = s3_client(services)
    first = _manifest(services, day)["files"][0]
    original = s3.get_object(Bucket=services.s3.bucket, Key=first["key"])["Body"].read()
    table = pq.read_table(io.BytesIO(original))
    assert table.num_rows == first["rows"] > 2

    key = _replace_file(services, day, 0, table.slice(0, table.num_rows - 1))  # a row lost
    with pytest.raises(VerificationFailed, match=rf"{key}: {table.num_rows - 1} rows, manifest says {table.num_rows}"):
        verify_day(services, es, cfg, day)

    duplicated = pa.concat_tables([table.slice(0, table.num_rows - 1), table.slice(0, 1)])  # same count, one id twice
    _replace_file(services, day, 0, duplicated)
    rows = produced.valid
    with pytest.raises(VerificationFailed, match=rf"archive holds {rows} rows \({rows - 1} distinct\)") as failed:
        verify_day(services, es, cfg, day)
    assert "archived event ids differ from the manifest's digest" in str(failed.value)

    key = _replace_file(services, day, 0, b"PAR1 not really parquet PAR1")
    with pytest.raises(VerificationFailed, match=rf"{key}: not readable as Parquet") as failed:
        verify_day(services, es, cfg, day)
    assert not isinstance(failed.value, ChecksumMismatch)  # the sha256 matches: the content is the problem

    _replace_file(services, day, 0, original)  # repaired: verifies again
    assert verify_day(services, es, cfg, day).rows == produced.valid

    never = _day(18)
    _forget_day(services, never)
    with pytest.raises(ManifestMissing, match=f"no committed archive for {never}"):
        verify_day(services, es, cfg, never)


def test_retention_dry_run_boundary_pending_rearchive_and_unverified_snapshot(
    services: Settings, es: Elasticsearch, cfg: ArchiveSettings, topics: dict[str, str]
) -> None:
    verified_day, _ = _closed_day(services, topics, seed=19, rate=0.002)
    unverified_day, _ = _closed_day(services, topics, seed=20, rate=0.002)
    for day in (verified_day, unverified_day):
        _archive(services, es, cfg, day, topics)
    verify_day(services, es, cfg, verified_day)
    s3 = s3_client(services)
    s3.delete_object(Bucket=services.s3.bucket, Key=partition_prefix(unverified_day) + "_VERIFIED.json")
    both = {verified_day, unverified_day}
    later = max(cfg.retention_days, cfg.snapshot_retention_days) + 1
    today = unverified_day + timedelta(days=later)

    # dry run: what a real run would do, and nothing done
    dry = apply_retention(services, es, cfg, today, dry_run=True, only=both)
    assert (dry.deleted_indices, dry.deleted_snapshots) == ([day_index(verified_day)], [snapshot_name(verified_day)])
    assert dry.kept == {
        day_index(unverified_day): "archive of the day not verified",
        snapshot_name(unverified_day): "archive of the day not verified",  # its snapshot is kept too
    }
    assert es.indices.exists(index=day_index(verified_day))
    assert es.snapshot.get(repository=cfg.repository, snapshot=snapshot_name(verified_day))["snapshots"]

    # the cutoff: a day exactly retention_days old stays, one day older goes
    boundary = verified_day + timedelta(days=cfg.retention_days)
    kept = apply_retention(services, es, cfg, boundary, dry_run=True, only={verified_day})
    assert kept.deleted_indices == [] and day_index(verified_day) not in kept.kept
    gone = apply_retention(services, es, cfg, boundary + timedelta(days=1), dry_run=True, only={verified_day})
    assert gone.deleted_indices == [day_index(verified_day)]

    # a document the verified archive does not hold (a late write not yet re-archived) keeps the index
    index = day_index(verified_day)
    es.indices.put_settings(index=index, settings={"index.blocks.write": None})
    stray = es.search(index=index, size=1)["hits"]["hits"][0]
    es.index(index=index, id=f"stray-{uuid.uuid4().hex}", document=stray["_source"], refresh=True)
    es.indices.add_block(index=index, block="write")
    pending = apply_retention(services, es, cfg, today, only={verified_day})
    assert pending.kept == {index: "holds documents the verified archive does not (re-archive pending)"}
    assert pending.deleted_indices == [] and es.indices.exists(index=index)
    assert pending.deleted_snapshots == [snapshot_name(verified_day)]  # the snapshot has no such check
