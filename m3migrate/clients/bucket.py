"""The Thanos bucket: one code path (obstore) for a local directory and for S3, GCS and Azure.

A local directory is laid out exactly like Thanos' FILESYSTEM object store (``<dir>/<ULID>/meta.json``,
``index``, ``chunks/000001``...), so a Thanos store/compactor with ``type: FILESYSTEM`` (or a
Prometheus started on a copy) reads it as is. Blocks are uploaded in Thanos' safe order: chunks,
index, meta.json last; a block without meta.json is partial and invisible to Thanos.

To clean up after a crash without touching anybody else's in-flight upload, every upload first writes
a marker ``m3migrate/uploads/<ULID>.json`` (window + external labels) and removes it after meta.json
is written. A marker whose block has no meta.json is our own crashed upload: its objects are deleted
before the window is written again. Thanos ignores top-level prefixes that are not ULIDs.

Credentials are pydantic SecretStr settings: never in logs, errors or reprs.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import obstore
from obstore.store import LocalStore, from_url
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from ulid import ULID

from m3migrate.errors import M3MigrateError
from m3migrate.tsdb.meta import META_FILENAME, BlockMeta

log = logging.getLogger("m3migrate.clients.bucket")

MARKER_PREFIX = "m3migrate/uploads/"
CHECK_PREFIX = "m3migrate/checks/"
_REMOTE_SCHEMES = {"s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "adl"}


class BucketError(M3MigrateError):
    """The bucket refused or failed an operation (names the bucket and the object, never a secret)."""


class BlockConflict(BucketError):
    """The bucket already holds a block of the same stream that overlaps the window differently."""

    terminal = True


class BucketSettings(BaseModel):
    """Where blocks go: a local directory (path or file://) or s3://, gs://, az:// with credentials.

    Unset credentials fall back to the provider's usual environment (AWS_*, GOOGLE_*, AZURE_* variables,
    instance metadata), as obstore does.
    """

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description="Local directory (Thanos FILESYSTEM layout), file:///dir, s3://bucket[/prefix], "
        "gs://bucket[/prefix] or az://container[/prefix]."
    )
    region: str | None = Field(default=None, description="S3 region.")
    endpoint: str | None = Field(default=None, description="S3-compatible / Azure endpoint URL (MinIO, Ceph...).")
    allow_http: bool = Field(default=False, description="Allow a plain-http endpoint (test setups only).")
    access_key_id: SecretStr | None = Field(default=None, description="S3 access key id.")
    secret_access_key: SecretStr | None = Field(default=None, description="S3 secret access key.")
    session_token: SecretStr | None = Field(default=None, description="S3 session token.")
    google_service_account_key: SecretStr | None = Field(default=None, description="GCS service account JSON.")
    google_service_account_path: str | None = Field(default=None, description="GCS service account file.")
    azure_account_name: str | None = Field(default=None, description="Azure storage account name.")
    azure_account_key: SecretStr | None = Field(default=None, description="Azure storage account key.")
    azure_sas_key: SecretStr | None = Field(default=None, description="Azure SAS token.")
    options: dict[str, SecretStr] = Field(
        default_factory=dict, description="Further obstore config keys (values are kept secret)."
    )
    retention_resolution_raw: str | None = Field(
        default=None,
        description="The Thanos compactor's --retention.resolution-raw on this bucket (e.g. 90d; 0d keeps "
        "forever, as in Thanos). m3migrate cannot read the compactor's flags: unset means unknown, and "
        "validate cannot tell whether uploaded history would be deleted at the compactor's next run.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("bucket url is empty")
        parts = urlsplit(v)
        if parts.scheme in _REMOTE_SCHEMES | {"file"} and (parts.username or parts.password):
            raise ValueError("bucket url must not carry credentials: use the credential settings")
        if "://" in v and parts.scheme not in _REMOTE_SCHEMES | {"file"}:
            raise ValueError(f"bucket url scheme {parts.scheme!r} is not one of file, s3, gs, az")
        return v

    @field_validator("retention_resolution_raw")
    @classmethod
    def _retention(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if prom_duration_ms(v) is None:
            raise ValueError(
                "retention_resolution_raw is not a Prometheus duration like the compactor's flag "
                "(units y w d h m s ms in that order, e.g. 90d, 1y, 36h, 0d = forever)"
            )
        return v

    @property
    def raw_retention_ms(self) -> int | None:
        """The compactor's raw retention in ms; 0 = kept forever (Thanos' 0d); None = unknown (unset)."""
        return None if self.retention_resolution_raw is None else prom_duration_ms(self.retention_resolution_raw)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> Path | None:
        if not self.is_local:
            return None
        return Path(urlsplit(self.url).path if self.url.startswith("file://") else self.url).expanduser().resolve()

    def store_config(self) -> dict[str, Any]:
        """obstore configuration for a remote bucket (contains secrets: never log it)."""
        scheme = urlsplit(self.url).scheme
        cfg: dict[str, Any] = {}

        def put(key: str, value: SecretStr | str | None) -> None:
            if value is not None:
                cfg[key] = value.get_secret_value() if isinstance(value, SecretStr) else value

        if scheme in ("s3", "s3a"):
            put("region", self.region)
            put("endpoint", self.endpoint)
            put("access_key_id", self.access_key_id)
            put("secret_access_key", self.secret_access_key)
            put("session_token", self.session_token)
        elif scheme == "gs":
            put("service_account_key", self.google_service_account_key)
            put("service_account", self.google_service_account_path)
        else:
            put("account_name", self.azure_account_name)
            put("account_key", self.azure_account_key)
            put("sas_key", self.azure_sas_key)
            put("endpoint", self.endpoint)
        for key, value in self.options.items():
            cfg[key] = value.get_secret_value()
        return cfg


@dataclass(frozen=True)
class UploadResult:
    ulid: str
    objects: int
    bytes: int
    seconds: float


class Bucket:
    """Blocks in an object store: upload in the safe order, find by window and labels, clean up."""

    def __init__(self, settings: BucketSettings | str | Path) -> None:
        if not isinstance(settings, BucketSettings):
            settings = BucketSettings(url=str(settings))
        self.settings = settings
        local = settings.local_path
        try:
            if local is not None:
                self._store: Any = LocalStore(local, mkdir=True, automatic_cleanup=True)
                self.description = f"file://{local}"
            else:
                kwargs: dict[str, Any] = {"config": settings.store_config()}
                if settings.allow_http:
                    kwargs["client_options"] = {"allow_http": True}
                self._store = from_url(settings.url, **kwargs)
                self.description = settings.url
        except Exception as exc:
            raise BucketError(f"cannot open bucket {settings.url}: {_describe(exc)}") from None
        self._metas: dict[str, BlockMeta] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Bucket({self.description!r})"

    # -- objects ------------------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, obstore.put, self._store, key, data)

    def put_file(self, key: str, path: Path) -> None:
        self._call("upload", key, obstore.put, self._store, key, Path(path))

    def get_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when it does not exist."""
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except (FileNotFoundError, obstore.exceptions.NotFoundError):
            return None
        except Exception as exc:
            raise BucketError(f"bucket {self.description}: cannot read {key}: {_describe(exc)}") from None

    # Below this method, ``list`` in the class body names it: later annotations say ``builtins.list``.
    def list(self, prefix: str | None = None) -> list[str]:
        """Every object key under prefix."""
        out: list[str] = []

        def run() -> None:
            for batch in obstore.list(self._store, prefix):
                out.extend(item["path"] for item in batch)

        self._call("list", prefix or "/", run)
        return out

    def delete(self, keys: builtins.list[str]) -> None:
        if keys:
            self._call("delete", keys[0], obstore.delete, self._store, keys)

    def _call(self, what: str, key: str, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            raise BucketError(
                f"bucket {self.description}: {what} {key} failed: {_describe(exc)}",
                hint="check the bucket URL, credentials and permissions (list, read, write, delete)",
            ) from None

    # -- blocks -------------------------------------------------------------------------------------

    def block_ids(self) -> builtins.list[str]:
        """Top-level prefixes named like a block (a ULID), complete or not."""
        try:
            listing = obstore.list_with_delimiter(self._store, None)
        except Exception as exc:
            raise BucketError(f"bucket {self.description}: list failed: {_describe(exc)}") from None
        ids = []
        for prefix in listing["common_prefixes"]:
            name = prefix.rstrip("/").rsplit("/", 1)[-1]
            if _is_ulid(name):
                ids.append(name)
        return sorted(ids)

    def read_meta(self, ulid: str) -> BlockMeta | None:
        """A block's meta.json, or None while it has none (partial). Complete metas are cached: they never change."""
        with self._lock:
            cached = self._metas.get(ulid)
        if cached is not None:
            return cached
        raw = self.get_bytes(f"{ulid}/{META_FILENAME}")
        if raw is None:
            return None
        try:
            meta = BlockMeta.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            raise BucketError(f"bucket {self.description}: {ulid}/meta.json does not parse: {exc}") from None
        with self._lock:
            self._metas[ulid] = meta
        return meta

    def blocks(self, external_labels: Mapping[str, str] | None = None) -> builtins.list[BlockMeta]:
        """Complete blocks (with meta.json), optionally only those of one external label set."""
        ids = self.block_ids()
        with self._lock:  # once, not once per block: every window lists the whole bucket
            known = [self._metas.get(u) for u in ids]
        read = (m if m is not None else self.read_meta(u) for u, m in zip(ids, known, strict=True))
        metas = [m for m in read if m is not None]
        if external_labels is not None:
            want = dict(external_labels)
            metas = [m for m in metas if m.labels == want]
        return metas

    def find_blocks(self, min_time: int, max_time: int, external_labels: Mapping[str, str]) -> builtins.list[BlockMeta]:
        """Complete blocks of the same external labels overlapping [min_time, max_time)."""
        return [
            m
            for m in self.blocks(external_labels)
            if m.min_time < max_time and min_time < m.max_time and m.resolution == 0
        ]

    def block_exists(self, min_time: int, max_time: int, external_labels: Mapping[str, str]) -> bool:
        """True when complete blocks of these labels cover [min_time, max_time) (ours, or compacted ones)."""
        return ranges_cover(self.find_blocks(min_time, max_time, external_labels), min_time, max_time)

    def upload_block(self, block_dir: Path, *, external_labels: Mapping[str, str]) -> UploadResult:
        """Upload a finished block directory: marker, chunks, index, meta.json last, marker removed."""
        block_dir = Path(block_dir)
        ulid = block_dir.name
        meta = BlockMeta.load(block_dir / META_FILENAME)
        if meta.ulid != ulid:
            raise BucketError(f"{block_dir}: meta.json names block {meta.ulid}, not {ulid}")
        t0 = time.perf_counter()
        marker = {
            "ulid": ulid,
            "minTime": meta.min_time,
            "maxTime": meta.max_time,
            "labels": dict(external_labels),
            "started": time.time(),
        }
        self.put_bytes(f"{MARKER_PREFIX}{ulid}.json", json.dumps(marker).encode())
        chunks = sorted((block_dir / "chunks").iterdir())
        order = [(f"chunks/{p.name}", p) for p in chunks] + [
            ("index", block_dir / "index"),
            (META_FILENAME, block_dir / META_FILENAME),
        ]
        size = 0
        for rel, path in order:
            self.put_file(f"{ulid}/{rel}", path)
            size += path.stat().st_size
        self.delete([f"{MARKER_PREFIX}{ulid}.json"])
        return UploadResult(ulid=ulid, objects=len(order), bytes=size, seconds=time.perf_counter() - t0)

    def partial_uploads(self) -> builtins.list[dict[str, Any]]:
        """Markers of our uploads that have not finished (crashed, or still running elsewhere)."""
        out = []
        for key in self.list(MARKER_PREFIX):
            raw = self.get_bytes(key)
            if raw is None:
                continue
            try:
                marker = json.loads(raw)
            except ValueError:
                marker = {}
            marker["key"] = key
            out.append(marker)
        return out

    def cleanup_partial(
        self, min_time: int | None = None, max_time: int | None = None, external_labels: Mapping[str, str] | None = None
    ) -> builtins.list[str]:
        """Delete our crashed uploads (all, or those of one window and label set); returns their ULIDs.

        A marker whose block already has meta.json is a finished upload that died before removing the
        marker: only the marker goes. The caller must be the only writer of the window (the migration
        holds its lock), or it would delete another run's upload in flight.
        """
        removed = []
        for marker in self.partial_uploads():
            ulid = str(marker.get("ulid", ""))
            if min_time is not None and (marker.get("minTime"), marker.get("maxTime")) != (min_time, max_time):
                continue
            if external_labels is not None and marker.get("labels") != dict(external_labels):
                continue
            if _is_ulid(ulid) and self.read_meta(ulid) is None:
                objects = self.list(f"{ulid}/")
                log.warning("removing %d objects of the partial upload %s in %s", len(objects), ulid, self.description)
                self.delete(objects)
                removed.append(ulid)
            self.delete([marker["key"]])
        return removed

    def writable_check(self) -> None:
        """Write, read back and delete a small marker object; raises BucketError naming what failed."""
        key = f"{CHECK_PREFIX}{uuid.uuid4().hex}"
        payload = b"m3migrate writable check\n"
        self.put_bytes(key, payload)
        try:
            if self.get_bytes(key) != payload:
                raise BucketError(f"bucket {self.description}: {key} reads back different content")
        finally:
            self.delete([key])


# Prometheus' model.ParseDuration grammar (prometheus/common model/time.go), which Thanos' retention flags use.
_DURATION_RE = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_DURATION_UNITS_MS = (365 * 86_400_000, 7 * 86_400_000, 86_400_000, 3_600_000, 60_000, 1000, 1)


def prom_duration_ms(text: str) -> int | None:
    """A Prometheus duration ("90d", "1y2w", "36h", "0") in ms; None when it is not one."""
    if text == "0":
        return 0
    m = _DURATION_RE.fullmatch(text) if text else None
    if m is None:
        return None
    return sum(int(n) * unit for n, unit in zip(m.groups(), _DURATION_UNITS_MS, strict=True) if n)


def ranges_cover(metas: list[BlockMeta], min_time: int, max_time: int) -> bool:
    """Do the blocks' [minTime, maxTime) ranges together cover [min_time, max_time)?"""
    at = min_time
    for m in sorted(metas, key=lambda m: m.min_time):
        if m.min_time > at:
            return False
        at = max(at, m.max_time)
        if at >= max_time:
            return True
    return at >= max_time


def _is_ulid(name: str) -> bool:
    if len(name) != 26:
        return False
    try:
        ULID.from_str(name)
    except ValueError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """An exception as one short line (obstore messages name URLs and keys, never credentials)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"
