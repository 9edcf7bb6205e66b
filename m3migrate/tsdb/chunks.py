"""Chunk segment files (chunks/000001, ...): chunks go to disk as soon as they are encoded.

Format (prometheus tsdb/docs/format/chunks.md): an 8-byte header (magic 0x85BD40DD, version 1, three
zero bytes), then per chunk uvarint(len(data)), the encoding byte, the data and the CRC-32C of encoding
byte + data. A chunk's reference is segment_index << 32 | offset of its length field, with the
segment index 0-based (file 000001 is 0). A new file starts when a chunk would cross the size limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import google_crc32c

from m3migrate.tsdb.encoding import uvarint
from m3migrate.tsdb.xor import ENCODING_XOR

SEGMENT_HEADER = bytes.fromhex("85BD40DD") + b"\x01\x00\x00\x00"
MAX_SEGMENT_BYTES = 512 * 1024 * 1024  # Prometheus' default segment size
_ENC = bytes((ENCODING_XOR,))


class SegmentWriter:
    """Appends encoded XOR chunks to numbered segment files and hands back their references."""

    def __init__(self, chunks_dir: Path, *, max_segment_bytes: int = MAX_SEGMENT_BYTES) -> None:
        if max_segment_bytes < len(SEGMENT_HEADER) + 64:
            raise ValueError(f"max_segment_bytes={max_segment_bytes} is too small for one chunk")
        self.dir = Path(chunks_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_segment_bytes = max_segment_bytes
        self.files: list[Path] = []
        self.sizes: list[int] = []
        self.max_chunk_bytes = 0
        self._f: BinaryIO | None = None
        self._pos = 0

    def _next_segment(self) -> None:
        self._close_current()
        path = self.dir / f"{len(self.files) + 1:06d}"
        self._f = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._f.write(SEGMENT_HEADER)
        self._pos = len(SEGMENT_HEADER)
        self.files.append(path)
        self.sizes.append(0)

    def _close_current(self) -> None:
        if self._f is not None:
            self._f.close()
            self.sizes[-1] = self._pos
            self._f = None

    def write(self, chunks: Sequence[bytes]) -> list[int]:
        """Write chunks in order; returns each chunk's reference."""
        refs: list[int] = []
        value = google_crc32c.value
        for data in chunks:
            record = uvarint(len(data)) + _ENC + data + value(_ENC + data).to_bytes(4, "big")
            if self._f is None or (
                self._pos + len(record) > self.max_segment_bytes and self._pos > len(SEGMENT_HEADER)
            ):
                self._next_segment()
            assert self._f is not None
            refs.append((len(self.files) - 1) << 32 | self._pos)
            self._f.write(record)
            self._pos += len(record)
            if len(record) > self.max_chunk_bytes:
                self.max_chunk_bytes = len(record)
        return refs

    def close(self) -> None:
        """Flush and close; the files and their sizes are final afterwards."""
        self._close_current()
