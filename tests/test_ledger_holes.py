"""The offset ledger's hole arithmetic (no services): which offsets no complete manifest covers."""

from __future__ import annotations

from datetime import datetime, timezone

from eventpipe.ingest.ledger import holes
from eventpipe.ingest.manifest import DrainManifest
from eventpipe.ingest.offsets import PartitionRange

T = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _manifest(*ranges: tuple[int, int, int], status: str = "complete") -> DrainManifest:
    parts = [{"topic": "t", "partition": p, "start": s, "end": e} for p, s, e in ranges]
    return DrainManifest(topic="t", interval_start=T, interval_end=T, status=status, partitions=parts)  # type: ignore[arg-type]


def test_contiguous_manifests_have_no_holes() -> None:
    manifests = [_manifest((0, 0, 10), (1, 0, 5)), _manifest((0, 10, 20), (1, 5, 5))]
    assert holes("t", manifests, log_start={0: 0, 1: 0}, committed={0: 20, 1: 5}) == []


def test_gap_between_runs_and_before_the_first_run() -> None:
    manifests = [_manifest((0, 3, 10)), _manifest((0, 15, 20))]
    found = holes("t", manifests, log_start={0: 0}, committed={0: 20})
    assert found == [PartitionRange("t", 0, 0, 3), PartitionRange("t", 0, 10, 15)]
    # without Kafka (the archive's quiesce) only the hole between drained ranges is visible
    assert holes("t", manifests) == [PartitionRange("t", 0, 10, 15)]


def test_planned_manifests_do_not_cover_and_retention_hides_deleted_offsets() -> None:
    manifests = [_manifest((0, 0, 10)), _manifest((0, 10, 20), status="planned"), _manifest((0, 20, 30))]
    assert holes("t", manifests, log_start={0: 0}, committed={0: 30}) == [PartitionRange("t", 0, 10, 20)]
    assert holes("t", manifests, log_start={0: 25}, committed={0: 30}) == []


def test_committed_beyond_manifests_and_partitions_without_manifests() -> None:
    found = holes("t", [_manifest((0, 0, 10))], log_start={0: 0, 1: 4, 2: 0}, committed={0: 12, 1: 9, 2: None})
    assert found == [PartitionRange("t", 0, 10, 12), PartitionRange("t", 1, 4, 9)]
