"""Chunk segment files (chunks/000001, ...): chunks go to disk as soon as they are encoded.

Format (prometheus tsdb/docs/format/chunks.md): an 8-byte header (magic 0x85BD40DD, version 1, three
zero bytes), then per chunk uvarint(len(data)), the encoding byte, the data and the CRC-32C of encoding
byte + data. A chunk's reference is segment_index << 32 | offset of its length field, with the
segment index 0-based (file 000001 is 0). A new file starts when a chunk would cross the size limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

SEGMENT_HEADER = bytes.fromhex("85BD40DD") + b"\x01\x00\x00\x00"
MAX_SEGMENT_BYTES = 512 * 1024 * 1024  # Prometheus' default segment size


class SegmentWriter:
    """Appends chunk records to numbered segment files and hands back their references."""

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

    def write_records(self, records: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Append whole records (record i is records[offsets[i]:offsets[i + 1]], as
        :func:`m3migrate.tsdb.kernels.xor_records` makes them); returns each record's reference. A new
        segment starts where the next record would cross the size limit (one write per segment)."""
        n = len(offsets) - 1
        refs = np.empty(n, np.int64)
        header = len(SEGMENT_HEADER)
        i = 0
        while i < n:
            if self._f is None:
                self._next_segment()
            assert self._f is not None
            room = self.max_segment_bytes - self._pos
            j = int(np.searchsorted(offsets, offsets[i] + room, side="right")) - 1
            if j <= i:  # the next record does not fit in this segment
                if self._pos > header:
                    self._next_segment()
                    continue
                j = i + 1  # larger than a whole segment: alone in one
            j = min(j, n)
            base = int(offsets[i])
            refs[i:j] = ((len(self.files) - 1) << 32) + self._pos + (offsets[i:j] - base)
            self._f.write(records[base : int(offsets[j])].data)  # the array's buffer, not a copy
            self._pos += int(offsets[j]) - base
            i = j
        if n:
            self.max_chunk_bytes = max(self.max_chunk_bytes, int(np.diff(offsets).max()))
        return refs

    def close(self) -> None:
        """Flush and close; the files and their sizes are final afterwards."""
        self._close_current()
