"""The archive manifest model writes the bytes manifests have always had, and rejects what it cannot trust."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, timezone

import pyarrow as pa
import pytest

from eventpipe.archive.manifest import ArchiveManifest, VerifiedMarker
from eventpipe.errors import ManifestInvalid, PermanentError

DAY = date(2026, 3, 1)
ARCHIVED_AT = datetime(2026, 3, 2, 0, 17, 3, 123456, tzinfo=timezone.utc)
FIRST = datetime(2026, 3, 1, 0, 0, 0, 412000, tzinfo=timezone.utc)
LAST = datetime(2026, 3, 1, 23, 59, 59, tzinfo=timezone.utc)  # no fraction: isoformat drops it


def _legacy_dict() -> dict[str, object]:
    """A manifest exactly as the writer built it before the model: a dict of plain JSON values."""
    return {
        "day": DAY.isoformat(),
        "schema_version": 1,
        "revision": 2,
        "archived_at": ARCHIVED_AT.isoformat(),
        "rows": 1203,
        "event_time_min": FIRST.isoformat(),
        "event_time_max": LAST.isoformat(),
        "id_digest": "ab" * 32,
        "sources": {
            "eventpipe-events-2026.03.01": {"rows": 1202, "id_digest": "cd" * 32},
            "eventpipe-events-late-2026.03.01": {"rows": 1, "id_digest": "ef" * 32},
        },
        "kafka_offsets": {"iot.telemetry": {"0": [10, 500], "2": [0, 703]}},
        "snapshots": {"repository": "eventpipe-snapshots", "elasticsearch": "eventpipe-2026.03.01", "volumes": []},
        "files": [
            {
                "rows": 1202,
                "bytes": 40960,
                "sha256": "01" * 32,
                "key": "events/date=2026-03-01/part-00000-r0002.parquet",
            },
            {"rows": 1, "bytes": 2048, "sha256": "02" * 32, "key": "events/date=2026-03-01/late-00000-r0002.parquet"},
        ],
        "encryption": "AES256",
        "writer": {"eventpipe": "0.1.0", "pyarrow": pa.__version__},
    }


def _legacy_bytes() -> bytes:
    return json.dumps(_legacy_dict(), indent=2, sort_keys=True).encode()


def test_model_writes_the_legacy_bytes() -> None:
    legacy = _legacy_dict()
    built = ArchiveManifest(
        day=DAY,
        schema_version=1,
        revision=2,
        archived_at=ARCHIVED_AT,
        rows=1203,
        event_time_min=FIRST,
        event_time_max=LAST,
        id_digest="ab" * 32,
        sources=legacy["sources"],
        kafka_offsets={"iot.telemetry": {"0": [10, 500], "2": [0, 703]}},
        snapshots=legacy["snapshots"],
        files=legacy["files"],
        encryption="AES256",
        writer=legacy["writer"],
    )
    assert built.to_bytes() == _legacy_bytes()
    assert built.sha256 == hashlib.sha256(_legacy_bytes()).hexdigest()


def test_round_trip_is_byte_identical_and_binds_to_stored_bytes() -> None:
    raw = _legacy_bytes()
    loaded = ArchiveManifest.from_bytes(raw)
    assert loaded.to_bytes() == raw
    assert loaded.sha256 == hashlib.sha256(raw).hexdigest()
    assert loaded.keys == [f["key"] for f in _legacy_dict()["files"]]  # type: ignore[index]
    assert loaded.bytes_total == 40960 + 2048
    assert loaded.source("eventpipe-events-late-2026.03.01").rows == 1  # type: ignore[union-attr]
    assert loaded.source("eventpipe-events-2026.03.02") is None
    # the marker binds to the bytes as stored, even where a re-encoding would differ (compact JSON here)
    compact = json.dumps(_legacy_dict(), sort_keys=True).encode()
    assert ArchiveManifest.from_bytes(compact).sha256 == hashlib.sha256(compact).hexdigest()


def test_empty_day_has_no_time_range() -> None:
    empty = {**_legacy_dict(), "rows": 0, "event_time_min": None, "event_time_max": None, "files": []}
    raw = json.dumps(empty, indent=2, sort_keys=True).encode()
    assert ArchiveManifest.from_bytes(raw).to_bytes() == raw


@pytest.mark.parametrize(
    "change",
    [
        {"files": [{"key": "k", "rows": "many", "bytes": 1, "sha256": "x"}]},  # wrong type
        {"unexpected": 1},  # a field this code does not know
        {"rows": None},
    ],
)
def test_a_manifest_that_does_not_match_the_schema_is_a_permanent_error(change: dict[str, object]) -> None:
    raw = json.dumps({**_legacy_dict(), **change}).encode()
    with pytest.raises(ManifestInvalid) as caught:
        ArchiveManifest.from_bytes(raw, where="s3://b/k")
    assert isinstance(caught.value, PermanentError) and "s3://b/k" in str(caught.value)
    with pytest.raises(ManifestInvalid):
        ArchiveManifest.from_bytes(b"{not json")


def test_verified_marker_keeps_its_bytes() -> None:
    legacy = {
        "day": DAY.isoformat(),
        "revision": 2,
        "manifest_sha256": "ff" * 32,
        "rows": 1203,
        "verified_at": ARCHIVED_AT.isoformat(),
    }
    marker = VerifiedMarker(day=DAY, revision=2, manifest_sha256="ff" * 32, rows=1203, verified_at=ARCHIVED_AT)
    assert marker.to_bytes() == json.dumps(legacy).encode()
