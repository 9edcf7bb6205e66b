"""Bucket: the local Thanos FILESYSTEM layout through obstore, upload order, finding blocks by window and
labels, cleanup of crashed uploads only, the writable check, and credentials that never show."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from m3migrate.clients.bucket import MARKER_PREFIX, Bucket, BucketError, BucketSettings
from m3migrate.tsdb import BlockWriter

H = 7_200_000
T0 = 1_700_000_000_000 // H * H
EXT = {"backfill": "m3db"}
SECRET = "s3cr3t-key-for-bucket-test"


def _block(tmp: Path, start: int = T0, labels: dict[str, str] = EXT) -> Path:
    with BlockWriter(tmp, min_time=start, max_time=start + H, external_labels=labels) as w:
        w.add((("__name__", "up"), ("job", "a")), np.arange(start, start + H, 60_000), np.ones(120))
        return w.finish().path


def test_upload_puts_meta_last_and_the_block_is_found(tmp_path, monkeypatch):
    bucket = Bucket(tmp_path / "bucket")
    block = _block(tmp_path / "staging")
    order: list[str] = []
    real = Bucket.put_file
    monkeypatch.setattr(Bucket, "put_file", lambda self, key, path: (order.append(key), real(self, key, path)))
    result = bucket.upload_block(block, external_labels=EXT)
    assert order == [f"{block.name}/chunks/000001", f"{block.name}/index", f"{block.name}/meta.json"]
    assert result.objects == 3 and result.bytes == sum(p.stat().st_size for p in block.rglob("*") if p.is_file())
    on_disk = tmp_path / "bucket" / block.name  # the FILESYSTEM layout: <dir>/<ULID>/...
    assert (on_disk / "index").read_bytes() == (block / "index").read_bytes()
    assert not bucket.list(MARKER_PREFIX)

    fresh = Bucket(f"file://{tmp_path / 'bucket'}")  # same directory as a file:// URL
    assert fresh.block_ids() == [block.name]
    assert fresh.block_exists(T0, T0 + H, EXT)
    assert not fresh.block_exists(T0, T0 + H, {"backfill": "other"})
    assert not fresh.block_exists(T0 + H, T0 + 2 * H, EXT)
    assert fresh.block_exists(T0 + 10, T0 + 20, EXT)  # a compacted (wider) block covers smaller windows
    assert [m.ulid for m in fresh.find_blocks(T0 - H, T0 + 1, EXT)] == [block.name]


def test_cleanup_removes_only_our_crashed_uploads(tmp_path):
    bucket = Bucket(tmp_path / "bucket")
    crashed = _block(tmp_path / "staging")
    # a crashed upload of ours: marker + chunks, no meta.json
    bucket.put_bytes(
        f"{MARKER_PREFIX}{crashed.name}.json",
        json.dumps({"ulid": crashed.name, "minTime": T0, "maxTime": T0 + H, "labels": EXT}).encode(),
    )
    bucket.put_file(f"{crashed.name}/chunks/000001", crashed / "chunks" / "000001")
    # someone else's upload in flight (no marker of ours): must survive
    foreign = _block(tmp_path / "staging2")
    bucket.put_file(f"{foreign.name}/chunks/000001", foreign / "chunks" / "000001")
    # another window's crashed upload: not touched by a cleanup of this window
    other = _block(tmp_path / "staging3", start=T0 + H)
    bucket.put_bytes(
        f"{MARKER_PREFIX}{other.name}.json",
        json.dumps({"ulid": other.name, "minTime": T0 + H, "maxTime": T0 + 2 * H, "labels": EXT}).encode(),
    )
    bucket.put_file(f"{other.name}/index", other / "index")

    assert bucket.cleanup_partial(T0, T0 + H, EXT) == [crashed.name]
    assert bucket.list(f"{crashed.name}/") == []
    assert not (tmp_path / "bucket" / crashed.name).exists()  # no empty directories left behind
    assert bucket.list(f"{foreign.name}/") == [f"{foreign.name}/chunks/000001"]
    assert bucket.list(MARKER_PREFIX) == [f"{MARKER_PREFIX}{other.name}.json"]
    assert not bucket.block_exists(T0, T0 + H, EXT)  # partial blocks never count as done


def test_writable_check(tmp_path):
    bucket = Bucket(tmp_path / "bucket")
    bucket.writable_check()
    assert bucket.list() == []  # the marker object is gone again
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "m3migrate").write_text("a file where the check wants a directory")  # refuses even root
    with pytest.raises(BucketError, match="write"):
        Bucket(blocked).writable_check()


def test_remote_settings_keep_secrets_out_of_reprs_and_errors():
    settings = BucketSettings(
        url="s3://thanos-blocks/prefix",
        region="eu-west-1",
        access_key_id="AKIAEXAMPLE",
        secret_access_key=SECRET,
        options={"session_token": SECRET},
    )
    bucket = Bucket(settings)  # no request is made until an operation
    assert SECRET not in repr(bucket) and SECRET not in repr(settings) and SECRET not in str(settings)
    assert settings.store_config()["secret_access_key"] == SECRET
    gcs = BucketSettings(url="gs://b/p", google_service_account_key=SECRET)
    assert SECRET not in repr(gcs) and gcs.store_config() == {"service_account_key": SECRET}
    az = BucketSettings(url="az://container/p", azure_account_name="acct", azure_account_key=SECRET)
    assert SECRET not in repr(az) and az.store_config()["account_key"] == SECRET
    with pytest.raises(ValueError, match="credentials"):
        BucketSettings(url=f"s3://user:{SECRET}@bucket/x")
    with pytest.raises(ValueError, match="scheme"):
        BucketSettings(url="ftp://bucket/x")


def test_unreachable_remote_bucket_is_a_typed_error_without_secrets():
    settings = BucketSettings(
        url="s3://thanos-blocks",
        region="us-east-1",
        endpoint="http://127.0.0.1:9",  # nothing listens on the discard port
        allow_http=True,
        access_key_id="AKIAEXAMPLE",
        secret_access_key=SECRET,
    )
    bucket = Bucket(settings)
    with pytest.raises(BucketError) as err:
        bucket.writable_check()
    assert SECRET not in str(err.value) and "s3://thanos-blocks" in str(err.value)
