"""What one drain did: its plan, its counts and where its time went (the task's XCom result).

Kept apart from the modules that fill it in (the bulk pipeline, the worker processes, the
orchestration in ``drain``), so each of them can import it without importing the others.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DrainResult:
    topic: str
    interval_start: str
    interval_end: str
    partitions: list[dict[str, int | str]]
    replayed: bool
    dry_run: bool
    consumed: int = 0
    indexed: int = 0
    created: int = 0
    dead_lettered: int = 0
    late: int = 0  # events for already archived days, indexed into their late index
    out_of_window: int = 0  # dead-lettered: event_time outside the window of the record's Kafka timestamp
    over_budget: int = 0  # dead-lettered: their day's index would pass this drain's new-index budget
    index_creation_failed: int = 0  # dead-lettered: Elasticsearch refused to create their day's index
    new_indices: list[str] = field(default_factory=list)  # daily indices this drain created
    touched_hours: list[str] = field(default_factory=list)
    bulk_seconds: float = 0.0
    bulk_requests: int = 0
    bulk_retried_items: int = 0  # documents sent again after a 429/5xx item status (e.g. a flood-stage block)
    read_seconds: float = 0.0  # polling Kafka (main thread)
    prepare_seconds: float = 0.0  # validating and serializing batches (main thread)
    wait_seconds: float = 0.0  # waiting for bulk outcomes and writing dead letters (main thread)
    lag: int = 0  # records beyond the group's committed offsets after this drain (all partitions)
    workers: int = 1  # processes that drained the plan (the *_seconds above are summed over them)
    seconds: float = 0.0
    waiting: dict[str, object] | None = None  # empty plan: records of the interval beyond the last drained offset

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
