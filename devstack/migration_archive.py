"""The nightly archive of the day that spans the move, run on the target after the post-move intervals.

The same commands the nightly DAG's tasks run (``eventpipe archive quiesce``, ``write``, ``verify``), as fresh
processes with the target's endpoints, for the day the move happened: the drill's intervals before the move
(indexed on the source, carried in the restored volumes) and after it (indexed on the target) are in it.

What differs from the nightly run, and why:
- the day is today, not yet closed: quiesce runs with ``--no-require-closed`` (the drill's intervals cover
  minutes, not the day; the write block it sets lives and dies with the target);
- the archive goes to a drill-owned bucket, so the shared archive's committed days are left alone (the day's
  partial archive would otherwise be a revision of the devstack's real day);
- the snapshot group (pre-hook, Elasticsearch snapshot, post-hook) is left out: the target's fs repository is
  the same node directory as the source's, and two clusters writing one repository corrupt it.
Then the archived rows are split at the move: how many of the drill's events before and after it the archive
holds, against what Elasticsearch holds for the same event-time ranges.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

from devstack.runtime import DevstackError

DRILL_BUCKET = "eventpipe-archive-migration-drill"
SIDES = ("before_move", "after_move")


def archive_env(env_file: Path, bucket: str) -> dict[str, str]:
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    # no metrics push: the drill's archive is not the devstack's last successful archive
    return {**os.environ, **values, "EVENTPIPE_ARCHIVE_BUCKET": bucket, "EVENTPIPE_PUSHGATEWAY_URL": "",
            "PYTHONUNBUFFERED": "1"}  # fmt: skip


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, "-m", "eventpipe.cli", *args], capture_output=True, text=True, env=env,
                            timeout=900, check=False)  # fmt: skip
    if result.returncode != 0:
        raise DevstackError(f"eventpipe {' '.join(args)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def move_day(before: list[tuple[datetime, datetime]], after: list[tuple[datetime, datetime]]) -> date:
    """The one day holding the drill's intervals on both sides of the move (refused across midnight: the
    nightly archive is per day, and a drill must pick one that spans the move)."""
    if not before or not after:
        raise DevstackError("the archive across the move needs intervals before and after it")
    days = {before[-1][0].date(), after[0][0].date()}
    if len(days) != 1:
        raise DevstackError(f"the move's last and first intervals lie on different days: {sorted(days)}")
    return days.pop()


def split_at(times: list[datetime], before: tuple[datetime, datetime], after: tuple[datetime, datetime]) -> dict:
    """How many of ``times`` fall in the drill's event time before the move and after it."""
    aware = [t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in times]  # Parquet may store UTC naive
    return {"before_move": sum(before[0] <= t < before[1] for t in aware),
            "after_move": sum(after[0] <= t < after[1] for t in aware)}  # fmt: skip


def archived_times(settings: Any, day: date) -> list[datetime]:
    """Event time of every row the committed archive of ``day`` holds (its files as the manifest lists them)."""
    import pyarrow.parquet as pq

    from eventpipe.archive.manifest import load
    from eventpipe.storage.s3 import s3_client

    s3, bucket = s3_client(settings), settings.s3.bucket
    times: list[datetime] = []
    for entry in load(s3, bucket, day).files:
        body = s3.get_object(Bucket=bucket, Key=entry.key)["Body"].read()
        times += pq.read_table(io.BytesIO(body), columns=["event_time"]).column("event_time").to_pylist()
    return times


def indexed_count(es: Any, day: date, lo: datetime, hi: datetime) -> int:
    from eventpipe.archive.indices import day_index, late_index

    query = {"range": {"event_time": {"gte": lo.isoformat(), "lt": hi.isoformat()}}}
    indices = [day_index(day), late_index(day)]
    return int(es.count(index=indices, query=query, ignore_unavailable=True)["count"])


def archive_across_move(env_file: Path, topics: list[str], intervals: list[Any], *,
                        bucket: str = DRILL_BUCKET) -> dict[str, Any]:  # fmt: skip
    """Quiesce, write and verify the day of the move on the target; raises unless it verifies and holds the
    drill's events from both sides of the move, as many as Elasticsearch indexed."""
    from eventpipe.settings import Settings
    from eventpipe.storage.elastic import client

    before = [(i.start, i.end) for i in intervals if i.cluster == "source"]
    after = [(i.start, i.end) for i in intervals if i.cluster == "target"]
    day = move_day(before, after)
    spans = (before[0][0], before[-1][1]), (after[0][0], after[-1][1])
    env = archive_env(env_file, bucket)
    commands = [
        ["archive", "quiesce", "--day", day.isoformat(), "--topics", ",".join(topics), "--no-require-closed"],
        ["archive", "write", "--day", day.isoformat()],
        ["archive", "verify", "--day", day.isoformat()],
    ]
    steps = {args[1]: cli(env, *args) for args in commands}
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith(("EVENTPIPE_", "AWS_"))})
    archived = split_at(archived_times(settings, day), *spans)
    es = client(settings)
    try:
        indexed = {"before_move": indexed_count(es, day, *spans[0]), "after_move": indexed_count(es, day, *spans[1])}
    finally:
        es.close()
    result = {
        "day": day.isoformat(),
        "bucket": bucket,
        "commands": [" ".join(["eventpipe", *args]) for args in commands],
        "drill_event_time": {side: [t.isoformat() for t in span] for side, span in zip(SIDES, spans, strict=True)},
        "rows": steps["verify"]["rows"],
        "es_documents": steps["verify"]["es_documents"],
        "files": steps["verify"]["files"],
        "revision": steps["verify"]["revision"],
        "quiesce": {k: steps["quiesce"][k] for k in ("intervals", "documents", "blocked")},
        "archived_drill_rows": archived,
        "indexed_drill_documents": indexed,
        "verified": not steps["verify"]["problems"],
    }
    if not (archived == indexed and archived["before_move"] and archived["after_move"]):
        raise DevstackError(f"the archive of {day} does not hold the drill's events from both sides of the move as "
                            f"indexed: archived {archived}, indexed {indexed}")  # fmt: skip
    return result
