"""The migration drill as a benchmark: moves source -> target with live ingest, the runs compared in a chart.

    flock /tmp/cluster.lock python bench/drill_migrate.py --size-gb 1 --out docs/bench               # pre-copy
    flock /tmp/cluster.lock python bench/drill_migrate.py --size-gb 1 --no-precopy --out docs/bench  # without
    python bench/drill_migrate.py --from .devstack/migration/<run>/drill.json --out docs/bench   # add a run only

Each run is added to migration.json's ``runs`` (a run already there, by its work directory, is replaced): the
drill's report (steps, bytes uploaded per pass, paused window, restore time per claim, verification, offset
accounting, the archive of the day across the move) and its summary. migration.png compares the runs: the
pre-copy pass and the paused window, and the bytes each pass shipped. Needs the source cluster with its
StatefulSets; exits 1 unless the run migrated, verified, accounted for every offset and archived the day.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import RESULTS

GB = 1_000_000_000
ARCHIVE_FIGURES = ("day", "rows", "es_documents", "archived_drill_rows", "verified", "error")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader looks for first, from the drill's full result."""
    migration = result["migration"]
    accounting = result.get("accounting") or {}
    passes = migration["passes"]
    restores = result.get("restores") or []
    archive = result.get("archive") or {}
    return {
        "outcome": migration["outcome"],
        "precopy": result.get("precopy", True),
        "data_bytes": full_pass_bytes(result),
        "passes": passes,
        "bytes_uploaded_total": sum(p["uploaded_bytes"] for p in passes),
        "paused": result.get("paused"),
        "restore_per_pvc": [{k: r.get(k) for k in ("claim", "bytes", "seconds")} for r in restores],
        "restore_per_pvc_s": [min(r["seconds"] for r in restores), max(r["seconds"] for r in restores)]
        if restores
        else None,
        "verification_differences": migration["differences"],
        "accounting": {k: accounting.get(k) for k in ("exact", "offsets", "indexed", "dead_lettered")},
        "archive_across_move": {k: archive[k] for k in ARCHIVE_FIGURES if k in archive} or None,
        "intervals": {
            cluster: sum(1 for i in result.get("intervals", []) if i["cluster"] == cluster)
            for cluster in ("source", "target")
        },
        "ok": result.get("ok"),
    }


def full_pass_bytes(result: dict[str, Any]) -> int | None:
    """The data a drill moved: its first pass shipped every chunk the store did not hold yet."""
    passes = result["migration"]["passes"]
    return passes[0]["uploaded_bytes"] if passes else None


def label(result: dict[str, Any]) -> str:
    size = full_pass_bytes(result)
    shown = f"{size / GB:.1f} GB" if size else "? GB"
    return f"{shown}, {'pre-copy' if result.get('precopy', True) else 'no pre-copy'}"


def run_entry(result: dict[str, Any], *, started: float, load_before: tuple[float, ...] | None) -> dict[str, Any]:
    """A run as migration.json lists it; ``load_before`` None: an earlier drill's report added (its first step
    dates it; the load of its machine is not known)."""
    steps = result["migration"]["steps"]
    when = steps[0]["started"] if load_before is None and steps else datetime.fromtimestamp(started, timezone.utc)
    machine: dict[str, Any] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    if load_before is not None:
        machine |= {"load_average_1_5_15_before": [round(v, 2) for v in load_before],
                    "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()]}  # fmt: skip
    measured = when if isinstance(when, str) else when.isoformat(timespec="seconds")
    return {"label": label(result), "measured_at": measured, "machine": machine, "summary": summary(result), **result}


def legacy_run(document: dict[str, Any]) -> dict[str, Any]:
    """A single-run migration.json (before ``runs``) as one entry of the list."""
    result = {k: v for k, v in document.items() if k not in ("stage", "wall_seconds", "summary")}
    return {"label": label(result), **result, "summary": summary(result)}


def merged(existing: dict[str, Any] | None, entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` added to the runs of ``existing`` (replacing one from the same work directory), by size."""
    runs = list(
        (existing or {}).get("runs") or ([legacy_run(existing)] if existing and "migration" in existing else [])
    )
    runs = [r for r in runs if r.get("workdir") != entry.get("workdir")] + [entry]
    runs.sort(key=lambda r: (r["summary"]["data_bytes"] or 0, not r["summary"]["precopy"]))
    rows = [comparison(r) for r in runs]
    measured = [r["data_bytes"] for r in rows if r["precopy_s"] is None and r["data_bytes"]]
    for row in rows:  # an estimate only where no run of about that size measured it
        if any(abs(size - (row["data_bytes"] or 0)) < 0.25 * size for size in measured):
            row["paused_window_without_precopy_estimate_s"] = None
    return {"stage": "migration", "runs": runs, "comparison": rows}


def comparison(run: dict[str, Any]) -> dict[str, Any]:
    """One row of the runs' table."""
    s = run["summary"]
    passes = {p["label"]: p for p in s["passes"]}
    paused = s["paused"] or {}
    return {
        "run": run["label"],
        "measured_at": run.get("measured_at"),
        "precopy_s": passes.get("precopy", {}).get("seconds"),
        "precopy_bytes": passes.get("precopy", {}).get("uploaded_bytes"),
        "final_pass_s": passes.get("final", {}).get("seconds"),
        "final_pass_bytes": passes.get("final", {}).get("uploaded_bytes"),
        "data_bytes": s["data_bytes"],
        "paused_window_s": paused.get("with_precopy_s") or paused.get("without_precopy_s"),
        "paused_window_without_precopy_estimate_s": paused.get("without_precopy_estimate_s"),
        "restore_per_pvc_s": s["restore_per_pvc_s"],
        "verification_differences": len(s["verification_differences"]),
        "accounting": s["accounting"],
        "archive_across_move": s["archive_across_move"],
    }


def chart(document: dict[str, Any], path: Path) -> None:
    """Per run: the pre-copy pass (ingest live) and the paused window in seconds; the bytes each pass shipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["comparison"]
    names = [r["run"] for r in rows][::-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.9 * len(rows) + 2.2), dpi=100, sharey=True)
    y = range(len(rows))
    for ax, series, unit, scale in (
        (left, (("precopy_s", "pre-copy pass (ingest live)", "#9e9e9e"), ("final_pass_s", "final pass (paused)",
                                                                         "#ff7f0e"),
                ("paused_window_s", "paused window", "#1f77b4"),
                ("paused_window_without_precopy_estimate_s", "paused window without pre-copy (estimate)", "none")),
         "seconds", 1.0),
        (right, (("precopy_bytes", "pre-copy pass", "#9e9e9e"), ("final_pass_bytes", "final pass (paused)",
                                                                 "#ff7f0e")), "GB uploaded to S3", GB),
    ):  # fmt: skip
        height = 0.8 / len(series)
        for n, (key, name, color) in enumerate(series):
            values = [(r[key] or 0) / scale for r in rows][::-1]
            if not any(values):  # e.g. no estimate left once every size measured both modes
                continue
            offsets = [i - 0.4 + height * (n + 0.5) for i in y]
            if color == "none":  # an estimate: outlined and hatched, not a measurement
                ax.barh(offsets, values, height=height, color="none", edgecolor="#1f77b4", hatch="//", label=name)
            else:
                ax.barh(offsets, values, height=height, color=color, label=name)
            for at, value in zip(offsets, values, strict=True):
                if value:
                    ax.text(value, at, f" {value:,.1f}", va="center", fontsize=7)
        ax.set_xlabel(unit)
        ax.margins(x=0.2)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2, frameon=False)
    left.set_yticks(list(y), names, fontsize=8)
    fig.suptitle("Migration drill: Kafka + Elasticsearch StatefulSets, source -> target cluster "
                 "(no pre-copy: the final pass ships everything, paused)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(document: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "migration.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    chart(document, out / "migration.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="An existing drill.json: only add it as a run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-precopy", action="store_true", help="no pass while ingest runs: all is shipped paused")
    parser.add_argument("--size-gb", type=float, help="trim the claims, then fill them to about this much data")
    parser.add_argument("--no-archive", action="store_true", help="skip the archive of the day across the move")
    parser.add_argument("--keep", action="store_true", help="keep the fill topic and the drill's cloud snapshots")
    parser.add_argument("--interval-s", type=int, default=30)
    parser.add_argument("--before", type=int, default=2, help="intervals ingested on the source before the move")
    parser.add_argument("--after", type=int, default=3, help="intervals ingested on the target after the move")
    args = parser.parse_args()
    started, load_before = time.time(), os.getloadavg()
    if args.source:
        result = json.loads(args.source.read_text())
    else:
        from devstack.migration_drill import drill

        size = int(args.size_gb * GB) if args.size_gb else None
        result = drill(precopy=not args.no_precopy, interval_s=args.interval_s, before=args.before, after=args.after,
                       size=size, archive=not args.no_archive, cleanup=not args.keep)  # fmt: skip
    path = args.out / "migration.json"
    existing = json.loads(path.read_text()) if path.exists() else None
    entry = run_entry(result, started=started, load_before=None if args.source else load_before)
    write(merged(existing, entry), args.out)
    print(json.dumps(entry["summary"], indent=1))
    if not args.source and not result.get("ok"):
        sys.exit(1)


if __name__ == "__main__":
    main()
