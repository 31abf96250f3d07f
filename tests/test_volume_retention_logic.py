"""What VolumeSnapshot retention prunes (no cluster): the newest N nights kept, only the archive's, never in use.

The cluster run is in tests/test_stateful_snapshots_k8s.py (``make test-k8s``).
"""

from __future__ import annotations

from datetime import date, timedelta

from eventpipe.archive.volume_retention import (
    NightlySnapshot,
    archive_snapshot,
    choose_prunable,
    emptied_nights,
    restores_in_use,
)

NIGHTS = [date(2026, 1, 10) + timedelta(days=n) for n in range(5)]


def _night(day: date) -> list[NightlySnapshot]:
    return [
        NightlySnapshot(ns, f"{pvc}-{day:%Y%m%d}", day, f"content-{pvc}-{day:%Y%m%d}", f"handle-{pvc}-{day:%Y%m%d}")
        for ns, pvc in (("kafka", "data-kafka-0"), ("elastic", "elasticsearch-data-elasticsearch-0"))
    ]


def test_keeps_the_newest_nights_and_prunes_oldest_first() -> None:
    snapshots = [s for day in reversed(NIGHTS) for s in _night(day)]
    prune, stay = choose_prunable(snapshots, 2, set())
    assert [s.day for s in prune] == [NIGHTS[0], NIGHTS[0], NIGHTS[1], NIGHTS[1], NIGHTS[2], NIGHTS[2]]
    assert stay == {}
    assert choose_prunable(snapshots, 5, set()) == ([], {})
    # nights are counted, not aged: with a gap, the newest two nights are still kept
    gappy = _night(NIGHTS[0]) + _night(NIGHTS[4] + timedelta(days=30))
    assert [s.day for s in choose_prunable(gappy, 2, set())[0]] == []
    assert {s.day for s in choose_prunable(snapshots, 0, set())[0]} == set(NIGHTS[:4])  # the newest never goes
    prune, _ = choose_prunable(snapshots, 2, set())
    assert emptied_nights(snapshots, prune) == NIGHTS[:3]  # their pre-hook records go with them
    assert emptied_nights(snapshots, prune[1:]) == NIGHTS[1:3]  # one of the oldest night's snapshots stays


def test_a_snapshot_a_restore_is_using_stays() -> None:
    snapshots = _night(NIGHTS[0]) + _night(NIGHTS[1])
    claims = [
        {  # a restore in progress: not Bound yet
            "metadata": {"namespace": "elastic"},
            "spec": {"dataSource": {"kind": "VolumeSnapshot", "name": "elasticsearch-data-elasticsearch-0-20260110"}},
            "status": {"phase": "Pending"},
        },
        {  # a finished restore holds its own copy of the data: no longer a reason to keep the snapshot
            "metadata": {"namespace": "kafka"},
            "spec": {"dataSource": {"kind": "VolumeSnapshot", "name": "data-kafka-0-20260110"}},
            "status": {"phase": "Bound"},
        },
    ]
    contents = [
        {"metadata": {"name": "content-data-kafka-0-20260110"}, "spec": {"source": {"volumeHandle": "v"}}},
        {  # the Kafka drill's copy in its scratch namespace, on the same handle
            "metadata": {"name": "restore-drill-kafka-data-kafka-0-20260110"},
            "spec": {"source": {"snapshotHandle": "handle-data-kafka-0-20260110"}},
        },
    ]
    busy = restores_in_use(snapshots, claims, contents)
    assert busy == {("elastic", "elasticsearch-data-elasticsearch-0-20260110"), ("kafka", "data-kafka-0-20260110")}
    prune, stay = choose_prunable(snapshots, 1, busy)
    assert prune == []
    assert set(stay.values()) == {"a restore is using it"} and len(stay) == 2


def test_only_the_archives_own_snapshots_are_candidates() -> None:
    def obj(name: str, labels: dict[str, str]) -> dict:
        return {
            "metadata": {"name": name, "namespace": "kafka", "labels": labels},
            "status": {"boundVolumeSnapshotContentName": "c"},
        }

    ours = obj("data-kafka-0-20260110", {"eventpipe.io/day": "2026-01-10", "eventpipe.io/pvc": "data-kafka-0"})
    assert archive_snapshot(ours) == NightlySnapshot("kafka", "data-kafka-0-20260110", date(2026, 1, 10), "c")
    # a migration's snapshot, an operator's own, a renamed one, a bad day label: never pruned
    assert archive_snapshot(obj("mig-1", {"eventpipe.io/migration": "x", "eventpipe.io/pvc": "data-kafka-0"})) is None
    assert archive_snapshot(obj("before-upgrade", {})) is None
    assert archive_snapshot(obj("copy", {"eventpipe.io/day": "2026-01-10", "eventpipe.io/pvc": "data-kafka-0"})) is None
    bad = {"eventpipe.io/day": "yesterday", "eventpipe.io/pvc": "data-kafka-0"}
    assert archive_snapshot(obj("data-kafka-0-20260110", bad)) is None
    ours["metadata"]["deletionTimestamp"] = "2026-01-20T00:00:00Z"  # being deleted: no longer a restore point
    assert archive_snapshot(ours) is None
