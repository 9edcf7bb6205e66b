"""Byte-level helpers shared by the chunk, index and meta writers: Go's varints and CRC-32C.

Prometheus checksums every chunk and index section with CRC-32C (Castagnoli), not zlib's IEEE CRC;
google-crc32c computes it in C (hardware accelerated where available).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import google_crc32c

from m3migrate.wire.codec import uvarint, uvarint_at

__all__ = ["crc32c", "has_raw_bytes", "label_bytes", "labels_order", "read_uvarint", "read_varint", "uvarint", "varint"]

_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def label_bytes(text: str) -> bytes:
    """A label string's bytes: UTF-8, and a byte that is not UTF-8 (a ``surrogateescape`` surrogate, as
    read from M3, whose tags are raw bytes) as itself. The TSDB index stores strings as raw bytes (Go
    strings are bytes; prometheus tsdb/index/index.go writes and reads them unchecked)."""
    return text.encode("utf-8", "surrogateescape")


def has_raw_bytes(texts: Iterable[str]) -> bool:
    """Whether any string holds bytes that are not UTF-8: then code point order is not byte order
    (Go's string order, which the index's symbols, postings and series follow), so sort by bytes."""
    return _ESCAPED.search("".join(texts)) is not None


def labels_order(labels: Iterable[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
    """Sort key of a label set in labels.Compare order (name, then value, byte-wise)."""
    return tuple((label_bytes(n), label_bytes(v)) for n, v in labels)


def crc32c(data: bytes | bytearray | memoryview) -> bytes:
    """CRC-32C of data as the 4 big-endian bytes Prometheus stores."""
    return google_crc32c.value(bytes(data)).to_bytes(4, "big")


def varint(n: int) -> bytes:
    """Go's binary.PutVarint: zigzag, then uvarint."""
    if not -(1 << 63) <= n < (1 << 63):
        raise ValueError(f"varint out of int64 range: {n}")
    return uvarint((n << 1) ^ (n >> 63))


def read_uvarint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a uvarint at pos; returns (value, position after it). A block is our own output or
    promtool's: bytes that are not a uvarint there mean a corrupt block, so this raises."""
    value, after = uvarint_at(buf, pos)
    if value < 0:
        raise ValueError(f"not a uvarint at byte {pos} (cut short or longer than 10 bytes)")
    return value, after


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode a zigzag varint at pos; returns (value, position after it)."""
    u, pos = read_uvarint(buf, pos)
    return (u >> 1) ^ -(u & 1), pos
