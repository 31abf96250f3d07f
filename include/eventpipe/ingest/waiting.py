"""Records of an interval that wait beyond the last drained offset: what a drain that found nothing reports.

A device that uploads a buffered day puts records with old timestamps behind records stamped later. An
interval's offsets are located by timestamp (``eventpipe.ingest.offsets``), so a backfill of that day plans
empty ranges: by design, the next live interval owns everything after the last drained offset and drains
those records into their own hours. The drain is right to find nothing, but the operator who asked for
the day must be told: how many such records there are, where, and which run will drain them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from kafka import KafkaConsumer, TopicPartition

from eventpipe.ingest.manifest import DrainManifest, ManifestStore
from eventpipe.settings import Settings

SCAN_LIMIT = 1_000_000  # most offsets one check reads (the ingest group's lag, normally an hour or two)


@dataclass(frozen=True)
class Waiting:
    records: int  # records with a timestamp in the interval, beyond the last drained offset
    ranges: list[dict[str, int]]  # per partition: first and last offset holding such records
    drained_by: str  # the run that will drain them
    scanned: int  # offsets read to find them
    complete: bool  # False: the scan stopped at SCAN_LIMIT, so there may be more

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def message(self, topic: str, start: datetime, end: datetime) -> str:
        where = "; ".join(f"partition {r['partition']}: offsets {r['first']}-{r['last']}" for r in self.ranges)
        more = "" if self.complete else f" (at least: the check stopped after {self.scanned} offsets)"
        return (
            f"no records of {topic} in the planned ranges of [{start.isoformat()}, {end.isoformat()}), but "
            f"{self.records}{more} records with timestamps in it wait beyond the last drained offset ({where}); "
            f"{self.drained_by} drains them into their own hours"
        )


def next_run(store: ManifestStore, topic: str) -> str:
    """The interval after the last one drained: it starts at the ingest group's offsets and so drains the wait."""
    drained = [m for m in store.for_topic(topic) if m.kind == "interval" and m.status == "complete"]
    if not drained:
        return "the first interval drained of this topic"
    last: DrainManifest = max(drained, key=lambda m: m.interval_end)
    following = last.interval_end + (last.interval_end - last.interval_start)
    return f"the ingest run of [{last.interval_end.isoformat()}, {following.isoformat()}) (after the last drained)"


def records_waiting(
    settings: Settings,
    store: ManifestStore,
    group: KafkaConsumer,
    topic: str,
    start: datetime,
    end: datetime,
    planned_end: dict[int, int],
) -> Waiting | None:
    """Records stamped in [start, end) after both the planned ranges and the group's committed offsets."""
    tps = [TopicPartition(topic, p) for p in sorted(planned_end)]
    ends = group.end_offsets(tps)
    begin = {tp: max(planned_end[tp.partition], group.committed(tp) or 0) for tp in tps}
    todo = {tp: (begin[tp], ends[tp]) for tp in tps if begin[tp] < ends[tp]}
    if not todo:
        return None
    lo, hi = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    found: dict[int, list[int]] = {}  # partition -> [count, first, last]
    scanned = 0
    reader = KafkaConsumer(bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        reader.assign(list(todo))
        for tp, (first, _) in todo.items():
            reader.seek(tp, first)
        while todo and scanned < SCAN_LIMIT:
            batches = reader.poll(timeout_ms=2000, max_records=5000)
            if not batches:
                break
            for tp, records in batches.items():
                for record in records:
                    if tp not in todo or record.offset >= todo[tp][1]:
                        continue
                    scanned += 1
                    if lo <= record.timestamp < hi:
                        seen = found.setdefault(tp.partition, [0, record.offset, record.offset])
                        seen[0], seen[2] = seen[0] + 1, record.offset
                if tp in todo and reader.position(tp) >= todo[tp][1]:
                    del todo[tp]
                    reader.pause(tp)
    finally:
        reader.close()
    if not found:
        return None
    ranges = [{"partition": p, "first": f, "last": last, "records": n} for p, (n, f, last) in sorted(found.items())]
    return Waiting(sum(r["records"] for r in ranges), ranges, next_run(store, topic), scanned, not todo)
