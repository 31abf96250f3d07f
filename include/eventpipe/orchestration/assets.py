"""Airflow Assets shared between DAGs: the archive produces them, training consumes them."""

from __future__ import annotations

from airflow.sdk import Asset

# Updated by the nightly archive once a day is committed *and* verified.
ARCHIVE_ASSET = Asset("s3://eventpipe-archive/events", extra={"format": "parquet", "committed_by": "_MANIFEST.json"})
