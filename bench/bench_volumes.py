"""Cloud snapshots of a volume: time and bytes moved against a node-local copy measured in the same run.

For each data size the CSI driver's Go benchmark (``devstack/csi/cloud_bench_test.go``, root: loop devices)
fills a volume with incompressible data, takes a node-local snapshot (the ceiling: the same frozen sparse
copy, no network), a full cloud snapshot into the devstack's S3 server, an incremental one after 1% of the
data changed, and restores the full one on a second driver that never held the volume (what a migration
does). Not a test.

    python bench/bench_volumes.py --sizes-mib 1024,5120
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import Run
from devstack.cluster import csi
from devstack.stack import DATA_SERVICES, local_env, up
from eventpipe.settings import Settings

MIB = 1 << 20


def measure(settings: Settings, sizes_mib: str) -> list[dict[str, float]]:
    """Run the Go benchmark against the devstack's S3 server; its rows, one per size."""
    assert settings.s3.endpoint and settings.s3.access_key and settings.s3.secret_key
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        env = {
            **os.environ,
            "EVENTPIPE_CSI_BENCH_JSON": str(out),
            "EVENTPIPE_CSI_BENCH_SIZES_MIB": sizes_mib,
            "EVENTPIPE_CSI_TEST_S3_ENDPOINT": settings.s3.endpoint,
            "EVENTPIPE_CSI_TEST_S3_ACCESS_KEY": settings.s3.access_key.get_secret_value(),
            "EVENTPIPE_CSI_TEST_S3_SECRET_KEY": settings.s3.secret_key.get_secret_value(),
            "GOWORK": "off",
        }
        cmd = ["go", "test", "-count=1", "-timeout", "90m", "-run", "^TestCloudSnapshotBench$", "-v", "."]
        result = subprocess.run(cmd, cwd=csi.SOURCE, env=env, text=True, capture_output=True, check=False)
        if result.returncode != 0 or not out.exists():
            raise SystemExit(f"the Go benchmark failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", default="1024,5120", help="data sizes in MiB, comma-separated")
    parser.add_argument("--out", type=Path, default=None, help="directory for volumes.json/.png (bench/results)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the driver makes loop devices and mounts")
    env = local_env()
    os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    up(DATA_SERVICES)
    run = Run("volumes")
    rows = measure(Settings.from_env(env), args.sizes_mib)

    table = Table(title="cloud snapshots (devstack S3 server, same disk)")
    for column in ("data", "local copy", "full to S3", "uploaded", "MiB/s", "raw PUT MiB/s", "vs raw",
                   "1% changed", "incremental", "uploaded", "restore", "vs local copy", "intact"):  # fmt: skip
        table.add_column(column, justify="right")
    bars: list[tuple[str, float]] = []
    for row in rows:
        local = row["local_copy_seconds"]
        size = f"{row['data_mib'] / 1024:g} GiB" if row["data_mib"] >= 1024 else f"{row['data_mib']} MiB"
        table.add_row(
            size,
            f"{local:.1f} s",
            f"{row['full_seconds']:.1f} s",
            f"{row['full_uploaded_bytes'] / MIB:,.0f} MiB",
            f"{row['full_upload_mib_per_s']:.0f}",
            f"{row['raw_put_mib_per_s']:.0f}",
            f"{row['full_upload_mib_per_s'] / row['raw_put_mib_per_s']:.2f}",
            f"{row['changed_bytes'] / MIB:,.0f} MiB",
            f"{row['incremental_seconds']:.1f} s",
            f"{row['incremental_uploaded_bytes'] / MIB:,.0f} MiB",
            f"{row['restore_seconds']:.1f} s",
            f"{row['restore_seconds'] / local:.1f}x",
            str(row["restored_digests_match"]),
        )
        bars += [
            (f"{size}: node-local copy (ceiling)", local),
            (f"{size}: full snapshot to S3", row["full_seconds"]),
            (f"{size}: incremental (1% changed)", row["incremental_seconds"]),
            (f"{size}: restore from S3, other node", row["restore_seconds"]),
        ]
    Console(width=170).print(table)
    kwargs = {"out": args.out} if args.out else {}
    json_path, png_path = run.write(
        {"rows": rows, "chunk_bytes": 4 * MIB, "s3": "devstack SeaweedFS on the same disk"},
        bars,
        xlabel="seconds",
        title="Cloud snapshots of a volume: full, incremental, restore vs a node-local copy",
        **kwargs,
    )
    print(f"wrote {json_path} and {png_path}")


if __name__ == "__main__":
    main()
