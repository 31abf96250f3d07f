"""The migration gate: an inventory of each deployment, compared; any difference keeps the pipeline on the source.

``compare`` is checked on hand-made inventories; then against two real deployments: the shared devstack and a
private Kafka + Elasticsearch pair (tests/faults.py), given the same records and drains, then tampered with.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from elasticsearch import Elasticsearch

from devstack.runtime import home as devstack_home
from eventpipe.errors import PERMANENT_EXIT_CODE
from eventpipe.events.generator import GeneratorConfig
from eventpipe.events.produce import produce
from eventpipe.events.topics import ensure_topics
from eventpipe.ingest.drain import drain_interval
from eventpipe.migrate.inventory import Inventory, PartitionState, manifest_digest, take_inventory
from eventpipe.migrate.verify import Difference, MigrationMismatch, compare, require_identical
from eventpipe.settings import Settings
from eventpipe.storage.elastic import EVENTS_ALIAS, client, ensure_indices

from .faults import SpareService, spare_elasticsearch, spare_kafka
from .test_ingest import _hours

NOW = datetime(2026, 12, 6, tzinfo=timezone.utc)
P7 = PartitionState(log_start=0, log_end=7)


def _inventory(**changes: object) -> Inventory:
    base = Inventory(
        taken_at=NOW,
        kafka_bootstrap="a:9092",
        elastic_url="http://a:9200",
        archive_bucket="archive",
        topics={"t.iot": {0: PartitionState(log_start=0, log_end=10, committed=10), 1: P7}},
        events_per_index={"eventpipe-events-2026.12.05": 16},
        dead_letters={"t.iot": 1},
        manifests={"t.iot|a|b": "d1"},
        archive_days={"2026-12-05": '"etag1"'},
    )  # fmt: skip
    return base.model_copy(update=changes)


def test_identical_inventories_have_no_difference_whatever_their_endpoints_and_times() -> None:
    other = _inventory(kafka_bootstrap="b:9092", elastic_url="http://b:9200", taken_at=datetime.now(timezone.utc))
    assert compare(_inventory(), other) == []
    require_identical(_inventory(), other)


def test_every_kind_of_difference_is_named_with_both_values() -> None:
    target = _inventory(
        topics={"t.iot": {0: PartitionState(log_start=0, log_end=11, committed=9), 1: P7}},
        events_per_index={"eventpipe-events-2026.12.05": 15, "eventpipe-events-2026.12.06": 2},
        dead_letters={},
        manifests={"t.iot|a|b": "d2"},
        archive_days={},
    )  # fmt: skip
    assert compare(_inventory(), target) == [
        Difference(what="kafka t.iot/0 log_end", source=10, target=11),
        Difference(what="kafka t.iot/0 committed", source=10, target=9),
        Difference(what="index eventpipe-events-2026.12.05", source=16, target=15),
        Difference(what="index eventpipe-events-2026.12.06", source=None, target=2),
        Difference(what="dead letters of t.iot", source=1, target=None),
        Difference(what="drain manifest t.iot|a|b", source="d1", target="d2"),
        Difference(what="archive day 2026-12-05", source='"etag1"', target=None),
    ]
    with pytest.raises(MigrationMismatch, match=r"differs from the source in 7 places: kafka t.iot/0 log_end: "):
        require_identical(_inventory(), target)


def test_a_topic_with_other_partitions_is_one_difference() -> None:
    target = _inventory(topics={"t.iot": {0: PartitionState(log_start=0, log_end=10, committed=10)}})
    assert compare(_inventory(), target) == [Difference(what="kafka t.iot partitions", source=[0, 1], target=[0])]


def test_manifest_digest_ignores_when_and_how_often_a_drain_ran() -> None:
    manifest = {"topic": "t", "interval_start": "a", "interval_end": "b", "status": "complete", "consumed": 3}
    assert manifest_digest({**manifest, "finished_at": "x", "attempts": 1}) == manifest_digest(
        {**manifest, "finished_at": "y", "attempts": 4}
    )
    assert manifest_digest(manifest) != manifest_digest({**manifest, "consumed": 4})


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory, services: Settings) -> Iterator[Settings]:
    """A second deployment: a private broker and node of its own (own ports and data), the same S3."""
    broker = spare_kafka(tmp_path_factory.mktemp("migrate-kafka"), devstack_home())
    node = spare_elasticsearch(tmp_path_factory.mktemp("migrate-es"), devstack_home())
    started: list[SpareService] = []
    try:
        for spare in (broker, node):
            spare.start()
            started.append(spare)
        settings = services.updated(
            kafka={"bootstrap": f"127.0.0.1:{broker.port}"}, elastic={"url": f"http://127.0.0.1:{node.port}"}
        )
        ensure_indices(client(settings), replicas=0)
        yield settings
    finally:
        for spare in reversed(started):
            spare.stop()


def _same_state_on(settings: Settings, topics: dict[str, str], seed: int) -> None:
    h0, _h1, h2, _ = _hours(seed)
    ensure_topics(settings, topics.values())
    produce(
        settings, GeneratorConfig(h0, h2, rate_per_s=0.5, seed=seed, malformed_rate=0.02), topics=topics, truth=False
    )
    for topic in topics.values():
        drain_interval(settings, topic, h0, h2)


@pytest.mark.services
def test_verify_passes_on_a_faithful_target_and_names_each_tampering(
    services: Settings, es: Elasticsearch, target: Settings, topics: dict[str, str], tmp_path: Path
) -> None:
    _same_state_on(services, topics, seed=233)
    _same_state_on(target, topics, seed=233)
    names = list(topics.values())
    source_inventory = take_inventory(services, names, archive=False)
    assert compare(source_inventory, take_inventory(target, names, archive=False)) == []
    assert sum(p.log_end for t in source_inventory.topics.values() for p in t.values()) > 100
    assert all(p.committed == p.log_end for t in source_inventory.topics.values() for p in t.values())
    assert len(source_inventory.manifests) == 2 and sum(source_inventory.dead_letters.values()) > 0

    env_file = tmp_path / "target.env"
    env_file.write_text(f"EVENTPIPE_KAFKA_BOOTSTRAP={target.kafka.bootstrap}\nEVENTPIPE_ES_URL={target.elastic.url}\n")
    verify = [sys.executable, "-m", "eventpipe.cli", "migrate", "verify", "--target-env", str(env_file),
              "--topics", ",".join(names), "--no-archive"]  # fmt: skip
    ok = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert '"identical": true' in ok.stdout

    # the target loses one event and gains one record it never drained
    target_es = client(target)
    target_es.indices.refresh(index=EVENTS_ALIAS)
    [victim] = target_es.search(index=EVENTS_ALIAS, query={"term": {"kafka.topic": topics["iot"]}}, size=1)["hits"][
        "hits"
    ]
    target_es.delete(index=victim["_index"], id=victim["_id"], refresh=True)
    h0, *_ = _hours(233)
    produce(target, GeneratorConfig(h0, h0.replace(second=3), rate_per_s=0.4, seed=1, malformed_rate=0.0),
            topics={"iot": topics["iot"]}, truth=False)  # fmt: skip
    found = compare(source_inventory, take_inventory(target, names, archive=False))
    whats = [d.what for d in found]
    assert f"index {victim['_index']}" in whats
    assert any(w.startswith(f"kafka {topics['iot']}/") and w.endswith(" log_end") for w in whats), whats
    assert len(found) == 2, found

    failed = subprocess.run(verify, capture_output=True, text=True, timeout=120)
    assert failed.returncode == PERMANENT_EXIT_CODE, failed.stderr[-2000:]
    assert "the target differs from the source in 2 places" in failed.stderr
    assert '"identical": false' in failed.stdout
