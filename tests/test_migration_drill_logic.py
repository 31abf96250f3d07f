"""The migration drill's pure parts, no services: sizing the data (trim, fill, data chunks), the day of the move
for the archive and the split of its rows at the move, the drill's verdict, and the runs in migration.json."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bench.drill_migrate import comparison, legacy_run, merged
from devstack.migration_archive import move_day, split_at
from devstack.migration_data import CHUNK, data_chunks, fill_for, loop_device, mount_point, trimmed_bytes
from devstack.migration_drill import succeeded
from devstack.runtime import DevstackError

T0 = datetime(2026, 12, 7, 6, 0, tzinfo=timezone.utc)


def test_the_loop_device_and_its_mount_are_found_from_losetup_and_proc_mounts() -> None:
    assert loop_device("/dev/loop4: [65024]:829374 (/var/lib/eventpipe-k8s/csi/volumes/pvc-4a.img)\n") == "/dev/loop4"
    assert loop_device("") is None
    mounts = (
        "/dev/vda / ext4 rw 0 0\n"
        "/dev/loop4 /var/lib/k/globalmount ext4 rw 0 0\n"
        "/dev/loop4 /var/lib/k/pods/x/mount ext4 rw 0 0\n"
    )
    assert mount_point(mounts, "/dev/loop4") == "/var/lib/k/globalmount"
    assert mount_point(mounts, "/dev/loop9") is None
    assert trimmed_bytes("/var/lib/k/globalmount: 1.2 GiB (1288490188 bytes) trimmed\n") == 1288490188
    assert trimmed_bytes("") == 0


def test_data_chunks_count_each_4mib_piece_holding_any_block_once(tmp_path: Path) -> None:
    image = tmp_path / "pvc.img"
    with image.open("wb") as f:
        f.truncate(10 * CHUNK + 1024)  # sparse; the last piece is short
        f.seek(CHUNK + 10)
        f.write(b"x")  # piece 1
        f.seek(3 * CHUNK - 2)
        f.write(b"yyyy")  # pieces 2 and 3
        f.seek(10 * CHUNK)
        f.write(b"z")  # the short last piece
        f.flush()
        os.fsync(f.fileno())
    assert data_chunks(image) == 3 * CHUNK + 1024
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert data_chunks(empty) == 0


def test_the_fill_adds_a_third_of_what_is_missing_per_replica_and_never_removes() -> None:
    assert fill_for(1_000_000_000, 400_000_000) == 200_000_000
    assert fill_for(1_000_000_000, 1_200_000_000) == 0


def test_the_archive_day_is_the_one_day_both_sides_of_the_move_share() -> None:
    minute = timedelta(minutes=1)
    before, after = [(T0, T0 + minute)], [(T0 + 9 * minute, T0 + 10 * minute)]
    assert move_day(before, after) == T0.date()
    with pytest.raises(DevstackError, match="different days"):
        move_day([(T0 - 7 * 60 * minute, T0 - 7 * 60 * minute + minute)], after)
    with pytest.raises(DevstackError, match="before and after"):
        move_day(before, [])


def test_archived_rows_split_at_the_move_and_naive_utc_times_count() -> None:
    minute = timedelta(minutes=1)
    spans = (T0, T0 + 2 * minute), (T0 + 5 * minute, T0 + 6 * minute)
    times = [T0, (T0 + minute).replace(tzinfo=None), T0 + 3 * minute, T0 + 5 * minute, T0 + 6 * minute]
    assert split_at(times, *spans) == {"before_move": 2, "after_move": 1}


def _result(*, outcome: str = "migrated", exact: bool = True, archive: dict[str, Any] | None = None,
            precopy: bool = True, workdir: str = "w1") -> dict[str, Any]:  # fmt: skip
    passes = [{"label": "final", "seconds": 90.0, "snapshots": 6, "uploaded_chunks": 250, "uploaded_bytes": 10**9}]
    if precopy:
        passes.insert(0, {"label": "precopy", "seconds": 60.0, "snapshots": 6, "uploaded_chunks": 240,
                          "uploaded_bytes": 10**9})  # fmt: skip
        passes[1] |= {"seconds": 20.0, "uploaded_bytes": 5 * 10**7}
    return {
        "precopy": precopy,
        "workdir": workdir,
        "migration": {"outcome": outcome, "passes": passes, "differences": [], "steps": []},
        "accounting": {"exact": exact, "offsets": 10, "indexed": 9, "dead_lettered": 1},
        "archive": archive if archive is not None else {"verified": True, "rows": 5, "day": "2026-12-07"},
        "paused": {"with_precopy_s": 200.0} if precopy else {"without_precopy_s": 260.0},
        "restores": [
            {"claim": "kafka/data-kafka-0", "bytes": 3, "seconds": 1.5},
            {"claim": "elastic/data-elasticsearch-0", "bytes": 2, "seconds": 0.5},
        ],
        "intervals": [{"cluster": "source"}, {"cluster": "target"}],
    }


def test_the_drill_succeeds_only_migrated_exact_and_with_its_archive_verified() -> None:
    assert succeeded(_result(), archive=True)
    assert not succeeded(_result(outcome="rolled back"), archive=True)
    assert not succeeded(_result(exact=False), archive=True)
    assert not succeeded(_result(archive={"verified": False, "error": "ManifestMismatch: ..."}), archive=True)
    assert succeeded(_result(archive={}), archive=False)


def test_runs_are_merged_by_workdir_and_sorted_by_size_then_precopy_first() -> None:
    legacy = {"stage": "migration", "summary": {}, **_result(workdir="old")}
    legacy["migration"]["passes"][0]["uploaded_bytes"] = 5 * 10**9
    document = merged(legacy, legacy_run(_result(precopy=False, workdir="new")))
    assert [r["workdir"] for r in document["runs"]] == ["new", "old"]  # 1 GB before 5 GB
    again = merged(document, legacy_run(_result(workdir="new2")))
    assert [r["workdir"] for r in again["runs"]] == ["new2", "new", "old"]  # same size: pre-copy first
    replaced = merged(again, {**legacy_run(_result(workdir="new2")), "label": "z"})
    assert [r["label"] for r in replaced["runs"]].count("z") == 1 and len(replaced["runs"]) == 3
    assert [row["run"] for row in replaced["comparison"]] == ["z", "1.0 GB, no pre-copy", "5.0 GB, pre-copy"]


def test_a_runs_row_names_passes_pause_restores_and_the_archive() -> None:
    row = comparison(legacy_run(_result()))
    assert row["run"] == "1.0 GB, pre-copy"
    assert (row["precopy_s"], row["final_pass_s"], row["paused_window_s"]) == (60.0, 20.0, 200.0)
    assert row["restore_per_pvc_s"] == [0.5, 1.5]
    assert row["archive_across_move"] == {"verified": True, "rows": 5, "day": "2026-12-07"}
    without = comparison(legacy_run(_result(precopy=False)))
    assert (without["run"], without["precopy_s"], without["paused_window_s"]) == ("1.0 GB, no pre-copy", None, 260.0)


def test_devstack_migrate_fails_when_the_archive_across_the_move_does_not_verify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from devstack import migration_drill
    from devstack.cli import app

    failed = _result(archive={"verified": False, "error": "DevstackError: eventpipe archive verify failed (1)"})
    seen: dict[str, Any] = {}
    monkeypatch.setattr(migration_drill, "drill", lambda **kw: seen.update(kw) or failed)
    result = CliRunner().invoke(app, ["migrate", "--size-gb", "1"])
    assert result.exit_code == 1 and "did not verify" in result.output and "archive verify failed" in result.output
    assert seen["size"] == 1_000_000_000 and seen["archive"] is True


def test_the_no_precopy_estimate_is_kept_only_where_no_run_of_that_size_measured_it() -> None:
    big = {"stage": "migration", "summary": {}, **_result(workdir="big")}
    big["migration"]["passes"][0]["uploaded_bytes"] = 5 * 10**9
    big["paused"] = {"with_precopy_s": 275.0, "without_precopy_estimate_s": 433.0}
    small = legacy_run(_result(workdir="small"))
    small["paused"] = {"with_precopy_s": 200.0, "without_precopy_estimate_s": 230.0}
    small["summary"] = legacy_run(small)["summary"]
    document = merged(merged(big, small), legacy_run(_result(precopy=False, workdir="small-without")))
    estimates = {r["run"]: r["paused_window_without_precopy_estimate_s"] for r in document["comparison"]}
    assert estimates == {"1.0 GB, pre-copy": None, "1.0 GB, no pre-copy": None, "5.0 GB, pre-copy": 433.0}
