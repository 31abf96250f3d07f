"""The migration's gate: the target must hold exactly the source's state before the pipeline switches to it.

``compare`` is pure: two inventories in, every difference out, each naming where it is and both values. An
empty list is the only pass; anything else leaves the pipeline on the source (rollback by not switching).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from eventpipe.errors import ManifestMismatch
from eventpipe.migrate.inventory import Inventory


class Difference(BaseModel):
    what: str  # e.g. "kafka events.iot/2 log_end", "index eventpipe-events-iot-2026.02.01"
    source: Any
    target: Any

    def __str__(self) -> str:
        return f"{self.what}: source {self.source!r}, target {self.target!r}"


class MigrationMismatch(ManifestMismatch):
    """The target differs from the source: do not switch the pipeline to it."""


def _mapping_diff(label: str, source: Mapping[Any, Any], target: Mapping[Any, Any]) -> list[Difference]:
    return [
        Difference(what=f"{label} {key}", source=source.get(key), target=target.get(key))
        for key in sorted(set(source) | set(target), key=str)
        if source.get(key) != target.get(key)
    ]


def compare(source: Inventory, target: Inventory) -> list[Difference]:
    """Every difference between the two sides' pipeline state (offsets, group, documents, manifests, archive)."""
    found: list[Difference] = []
    for topic in sorted(set(source.topics) | set(target.topics)):
        ours, theirs = source.topics.get(topic), target.topics.get(topic)
        if ours is None or theirs is None or set(ours) != set(theirs):
            found.append(Difference(what=f"kafka {topic} partitions", source=sorted(ours or ()),
                                    target=sorted(theirs or ())))  # fmt: skip
            continue
        for partition in sorted(ours):
            for field in ("log_start", "log_end", "committed"):
                a, b = getattr(ours[partition], field), getattr(theirs[partition], field)
                if a != b:
                    found.append(Difference(what=f"kafka {topic}/{partition} {field}", source=a, target=b))
    found += _mapping_diff("index", source.events_per_index, target.events_per_index)
    found += _mapping_diff("dead letters of", source.dead_letters, target.dead_letters)
    found += _mapping_diff("drain manifest", source.manifests, target.manifests)
    found += _mapping_diff("archive day", source.archive_days, target.archive_days)
    return found


def require_identical(source: Inventory, target: Inventory) -> None:
    """Raise ``MigrationMismatch`` listing every difference (at most 20 in the message) unless there is none."""
    found = compare(source, target)
    if found:
        shown = "; ".join(str(d) for d in found[:20])
        more = f" (and {len(found) - 20} more)" if len(found) > 20 else ""
        raise MigrationMismatch(f"the target differs from the source in {len(found)} places: {shown}{more}")
