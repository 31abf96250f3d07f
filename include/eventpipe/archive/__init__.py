"""Nightly archive: quiesce, application-consistent snapshot, Parquet to S3, verify, retention, restore."""
