"""S3-compatible object store for the devstack: SeaweedFS (Apache-2.0) built from source with the local Go toolchain.

``weed mini`` runs master, volume server, filer and S3 gateway in one process, which is the lightest SeaweedFS
form that still serves the full S3 API the archive needs (signed requests, SSE-S3, multipart, copy, batch delete).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from eventpipe.devstack import podnet
from eventpipe.devstack.runtime import DevstackError, Service, port_open, run_step, start_process, subdir
from eventpipe.settings import Settings
from eventpipe.storage.s3 import ensure_bucket, s3_client

SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
# Pseudo-version of the pinned commit; SeaweedFS 4.53. Bump both together (the commit is stamped into the binary).
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
SEAWEEDFS_COMMIT = SEAWEEDFS_VERSION.rsplit("-", 1)[-1]

BUCKETS = ("eventpipe-archive", "eventpipe-snapshots")
SSE_S3_DEFAULT = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
# Soft heap cap for the Go runtime: the devstack shares 2 cores and 24 GiB with Kafka, Elasticsearch and Airflow.
MEMORY_LIMIT = "384MiB"


def _settings() -> Settings:
    from eventpipe.devstack.stack import local_env  # stack imports this module lazily; avoid a cycle at import time

    return Settings.from_env(local_env())


class S3Server(Service):
    name = "s3"
    port = 9000

    @property
    def binary(self) -> Path:
        return subdir("s3", "bin") / "weed"

    def version(self) -> str:
        return SEAWEEDFS_VERSION

    def install(self) -> None:
        """Build ``weed`` once per pinned version.

        ``go install module@version`` refuses this module because its go.mod carries a ``replace`` directive, so the
        module is downloaded through the Go module proxy and built as the main module, which honours the replace.
        """
        marker = self.binary.with_name(".version")
        if self.binary.exists() and marker.exists() and marker.read_text().strip() == SEAWEEDFS_VERSION:
            return
        go = shutil.which("go")
        if go is None:
            raise DevstackError(
                "the Go toolchain (go) is required to build the SeaweedFS S3 server; "
                "install Go 1.26+ and make sure `go` is on PATH"
            )
        env = {**os.environ, "GOFLAGS": "-mod=mod"}
        module = f"{SEAWEEDFS_MODULE}@{SEAWEEDFS_VERSION}"
        download = self._go([go, "mod", "download", "-json", module], env, f"downloading {module}")
        source = json.loads(download)["Dir"]
        partial = self.binary.with_name("weed.partial")
        ldflags = f"-s -w -X {SEAWEEDFS_MODULE}/weed/util/version.COMMIT={SEAWEEDFS_COMMIT}"
        self._go(
            [go, "build", "-C", source, "-trimpath", "-ldflags", ldflags, "-o", str(partial), "./weed"],
            env,
            f"building {module}/weed",
        )
        partial.replace(self.binary)
        marker.write_text(SEAWEEDFS_VERSION)

    @staticmethod
    def _go(cmd: list[str], env: dict[str, str], what: str) -> str:
        result = run_step(cmd, what, env=env)
        if result.returncode != 0:
            raise DevstackError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
        return result.stdout

    def _identities(self) -> Path:
        """Static S3 identities: only the devstack key may do anything, so unsigned requests are refused."""
        settings = _settings()
        if not (settings.s3.access_key and settings.s3.secret_key):
            raise DevstackError("the devstack S3 credentials are missing from local_env()")
        config = subdir("s3") / "s3.json"
        identity = {
            "name": "eventpipe",
            "credentials": [
                {
                    "accessKey": settings.s3.access_key.get_secret_value(),
                    "secretKey": settings.s3.secret_key.get_secret_value(),
                }
            ],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.touch(mode=0o600)
        config.write_text(json.dumps({"identities": [identity]}, indent=2))
        return config

    def launch(self) -> None:
        data = subdir("s3", "data")
        argv = [
            str(self.binary),
            f"-logdir={subdir('s3', 'logs')}",  # glog's info files; warnings still reach the service log
            "-log_max_size_mb=64",
            "-log_max_files=2",
            "mini",
            f"-dir={data}",
            # with the pod bridge: serve on NODE_IP plus weed's loopback companion listener (opened when -ip.bind
            # is empty, never 0.0.0.0); without it: loopback only
            *([f"-ip={podnet.NODE_IP}", "-ip.bind="] if podnet.present() else ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]),
            f"-s3.port={self.port}",
            f"-s3.config={self._identities()}",
            "-s3.iam=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-admin.port.legacy=0",
            "-master.telemetry=false",
        ]
        start_process(self.name, argv, env={"GOMEMLIMIT": MEMORY_LIMIT}, cwd=data)

    def healthy(self) -> bool:
        """A signed ListBuckets with the devstack key: proves it is our server and that auth is wired."""
        if not port_open(self.port):
            return False
        try:
            s3_client(_settings(), retries=1).list_buckets()
        except (BotoCoreError, ClientError):
            return False
        return True

    def start_timeout(self) -> float:
        return 90.0

    def serves_pods(self) -> bool:
        return port_open(self.port, podnet.NODE_IP)

    def start(self) -> None:
        """Start (idempotent), then make sure the archive and snapshot buckets exist and encrypt by default."""
        super().start()
        settings = _settings()
        client = s3_client(settings)
        for bucket in BUCKETS:
            try:
                ensure_bucket(settings, bucket)
                # pyarrow's S3FileSystem cannot ask for SSE per object, so SSE-S3 comes from the bucket default,
                # as on AWS where every bucket encrypts with SSE-S3 unless told otherwise.
                client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=SSE_S3_DEFAULT)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise DevstackError(f"preparing bucket {bucket} on the devstack S3 server failed: {err}") from err
