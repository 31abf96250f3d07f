"""boto3 and pyarrow S3 clients built from Settings, path-style for S3-compatible servers."""

from __future__ import annotations

import boto3
from botocore.config import Config
from pyarrow import fs

from eventpipe.settings import Settings


def s3_client(settings: Settings, *, retries: int = 5):
    return boto3.client(
        "s3",
        endpoint_url=settings.s3.endpoint,
        region_name=settings.s3.region,
        aws_access_key_id=settings.s3.access_key.get_secret_value() if settings.s3.access_key else None,
        aws_secret_access_key=settings.s3.secret_key.get_secret_value() if settings.s3.secret_key else None,
        config=Config(
            s3={"addressing_style": "path" if settings.s3.endpoint else "auto"},
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def arrow_fs(settings: Settings) -> fs.S3FileSystem:
    endpoint = settings.s3.endpoint
    return fs.S3FileSystem(
        access_key=settings.s3.access_key.get_secret_value() if settings.s3.access_key else None,
        secret_key=settings.s3.secret_key.get_secret_value() if settings.s3.secret_key else None,
        region=settings.s3.region,
        endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
        scheme=endpoint.split("://", 1)[0] if endpoint else "https",
        force_virtual_addressing=False,
    )


def ensure_bucket(settings: Settings, bucket: str) -> None:
    client = s3_client(settings)
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)


def delete_keys(s3, bucket: str, keys: list[str]) -> int:
    """Delete ``keys`` in batches of 1000 (the DeleteObjects limit); returns how many were asked for."""
    for offset in range(0, len(keys), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[offset : offset + 1000]]})
    return len(keys)
