"""Benchmark results as JSON plus a small bar chart per stage, in bench/results/ (git-ignored).

Every figure is measured in the same run as its ceiling, on a machine that may be shared: the
load average before and after the run is recorded with the numbers, so a reader can tell a slow
machine from a slow pipeline. Curated copies live in docs/bench/.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


class Run:
    """One benchmark run: remembers the load when it started."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.started = time.time()
        self.load_before = os.getloadavg()

    def write(
        self,
        data: dict[str, Any],
        bars: Sequence[tuple[str, float]],
        *,
        xlabel: str,
        title: str,
        out: Path = RESULTS,
    ) -> tuple[Path, Path]:
        """``data`` to <stage>.json and ``bars`` (label, value; ceiling first) to <stage>.png."""
        out.mkdir(parents=True, exist_ok=True)
        document = {
            "stage": self.stage,
            "measured_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": round(time.time() - self.started, 1),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average_1_5_15_before": [round(v, 2) for v in self.load_before],
                "load_average_1_5_15_after": [round(v, 2) for v in os.getloadavg()],
            },
            **data,
        }
        json_path = out / f"{self.stage}.json"
        json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
        png_path = out / f"{self.stage}.png"
        _chart(bars, png_path, xlabel=xlabel, title=title, load=self.load_before[0])
        return json_path, png_path


def _chart(bars: Sequence[tuple[str, float]], path: Path, *, xlabel: str, title: str, load: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in bars][::-1]
    values = [value for _, value in bars][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(bars) + 1.3), dpi=100)
    colors = ["#9e9e9e" if i == len(bars) - 1 else "#1f77b4" for i in range(len(bars))]  # ceiling (first) in grey
    ax.barh(labels, values, color=colors)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.1f}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(f"{title}\n(1-min load average {load:.1f} on {os.cpu_count()} CPUs)", fontsize=9)
    ax.margins(x=0.18)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
