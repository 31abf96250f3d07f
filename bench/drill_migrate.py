"""The migration drill as a benchmark: one full move source -> target with live ingest, its timeline as a chart.

    flock /tmp/cluster.lock python bench/drill_migrate.py --out docs/bench        # run the drill, then write
    python bench/drill_migrate.py --from .devstack/migration/<run>/drill.json --out docs/bench   # write only

Writes migration.json (the drill's report: steps, bytes uploaded per pass, paused window, verification,
offset accounting) and migration.png (seconds per step). Needs the source cluster with its StatefulSets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import RESULTS, Run


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader looks for first, from the drill's full result."""
    migration = result["migration"]
    accounting = result.get("accounting") or {}
    return {
        "outcome": migration["outcome"],
        "passes": migration["passes"],
        "bytes_uploaded_total": sum(p["uploaded_bytes"] for p in migration["passes"]),
        "paused": result.get("paused"),
        "verification_differences": migration["differences"],
        "accounting": {k: accounting.get(k) for k in ("exact", "offsets", "indexed", "dead_lettered")},
        "intervals": {
            cluster: sum(1 for i in result.get("intervals", []) if i["cluster"] == cluster)
            for cluster in ("source", "target")
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="An existing drill.json: only write the report")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-precopy", action="store_true")
    parser.add_argument("--interval-s", type=int, default=30)
    parser.add_argument("--before", type=int, default=2, help="intervals ingested on the source before the move")
    parser.add_argument("--after", type=int, default=3, help="intervals ingested on the target after the move")
    args = parser.parse_args()
    run = Run("migration")
    if args.source:
        result = json.loads(args.source.read_text())
    else:
        from devstack.migration_drill import drill

        result = drill(precopy=not args.no_precopy, interval_s=args.interval_s, before=args.before, after=args.after)
    bars = [(s["name"][:48], s["seconds"]) for s in result["migration"]["steps"]]
    run.write({"summary": summary(result), **result}, [("total", result.get("total_s", 0.0)), *bars],
              xlabel="seconds", title="Migration drill: Kafka + Elasticsearch StatefulSets, source -> target cluster",
              out=args.out)  # fmt: skip
    print(json.dumps(summary(result), indent=1))


if __name__ == "__main__":
    main()
