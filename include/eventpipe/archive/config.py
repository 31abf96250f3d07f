"""Archive settings from the environment (plain, non-secret; passed to pods like every EVENTPIPE_* name)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field


class ArchiveConfig(BaseModel):
    # Elasticsearch snapshot repository: "s3" in production (repository-s3 into the snapshot bucket);
    # "fs" on the devstack, whose node is built from Maven Central jars where repository-s3 is not
    # published. An fs repository is mirrored to the snapshot bucket after every snapshot.
    repository: str = "eventpipe-snapshots"
    repository_type: Literal["s3", "fs"] = "s3"
    snapshot_bucket: str = "eventpipe-snapshots"
    fs_location: str | None = None
    sse: str = Field(default="AES256", description="S3 ServerSideEncryption requested on every archive object")
    retention_days: int = 30
    snapshot_retention_days: int = 14
    rows_per_file: int = 250_000
    volume_snapshots: bool = False
    volume_snapshot_class: str = "eventpipe-archive"
    volume_snapshot_selector: str = "eventpipe.io/snapshot=true"
    namespace: str = "eventpipe"
    snapshot_ready_timeout_s: int = 900

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ArchiveConfig:
        env = dict(os.environ if env is None else env)
        names = {
            "repository": "EVENTPIPE_SNAPSHOT_REPOSITORY",
            "repository_type": "EVENTPIPE_SNAPSHOT_REPOSITORY_TYPE",
            "snapshot_bucket": "EVENTPIPE_SNAPSHOT_BUCKET",
            "fs_location": "EVENTPIPE_SNAPSHOT_FS_LOCATION",
            "sse": "EVENTPIPE_S3_SSE",
            "retention_days": "EVENTPIPE_RETENTION_DAYS",
            "snapshot_retention_days": "EVENTPIPE_SNAPSHOT_RETENTION_DAYS",
            "rows_per_file": "EVENTPIPE_ARCHIVE_ROWS_PER_FILE",
            "volume_snapshots": "EVENTPIPE_VOLUME_SNAPSHOTS",
            "volume_snapshot_class": "EVENTPIPE_VOLUME_SNAPSHOT_CLASS",
            "volume_snapshot_selector": "EVENTPIPE_VOLUME_SNAPSHOT_SELECTOR",
            "namespace": "EVENTPIPE_NAMESPACE",
        }
        return cls(**{field: env[var] for field, var in names.items() if env.get(var) not in (None, "")})
