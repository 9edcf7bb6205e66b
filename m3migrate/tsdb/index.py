"""The block index, format v2 (prometheus tsdb/docs/format/index.md), written in one pass at the end.

Sections in file order: header, symbols, series, label indices, postings, label offset table, postings
offset table, TOC. Traps this writer handles: symbols are strictly byte-sorted (Python's code point
order is UTF-8 byte order) and referenced by ordinal; each series starts on a 16-byte boundary and its
ID is offset / 16; series are sorted by labels.Compare (Python tuple order of (name, value) pairs);
the all-postings list ("", "") comes first and lists every series (promtool analyze, Thanos and
negative matchers need it); postings lists are written in the order of the offset table; every
section's CRC-32C covers exactly the bytes its length field counts. The series section, the postings
and the postings offset table (one entry per series or per label pair) are made by compiled kernels
(:mod:`m3migrate.tsdb.kernels`); Python works per symbol and per label name.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from m3migrate.model import Labels
from m3migrate.tsdb.encoding import crc32c, has_raw_bytes, label_bytes, uvarint
from m3migrate.tsdb.kernels import postings_sections, postings_table, series_entries

INDEX_MAGIC = bytes.fromhex("BAAAD700")
INDEX_VERSION = 2
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class IndexStats:
    """What Thanos' meta.json index_stats wants: the largest series entry, in bytes."""

    size_bytes: int
    series_max_size: int


class _File:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.pos = 0

    def write(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.pos += len(data)

    def pad(self, align: int) -> None:
        rem = self.pos % align
        if rem:
            self.write(b"\x00" * (align - rem))

    def section(self, body: bytes) -> None:
        """u32 length, body, CRC-32C of body."""
        self.write(_U32.pack(len(body)) + body + crc32c(body))


def write_index(
    path: Path,
    series: Sequence[Labels],
    chunk_offsets: np.ndarray,
    mint: np.ndarray,
    maxt: np.ndarray,
    ref: np.ndarray,
) -> IndexStats:
    """Write the index of ``series`` (already sorted, unique); series i's chunks are the rows
    ``chunk_offsets[i]:chunk_offsets[i + 1]`` of mint/maxt/ref (sorted by time, not overlapping)."""
    symbols = {""}  # Prometheus' head-made blocks hold the empty string too
    for labels in series:
        for name, value in labels:
            symbols.add(name)
            symbols.add(value)
    by_bytes = label_bytes if has_raw_bytes(symbols) else None  # str order is byte order for UTF-8
    ordered = sorted(symbols, key=by_bytes)
    sym_ref = {s: i for i, s in enumerate(ordered)}

    with open(path, "wb", buffering=1 << 20) as raw:
        f = _File(raw)
        f.write(INDEX_MAGIC + bytes((INDEX_VERSION,)))

        toc_symbols = f.pos
        encoded = [label_bytes(s) for s in ordered]
        f.section(b"".join([_U32.pack(len(ordered)), *(uvarint(len(b)) + b for b in encoded)]))
        sym_bytes = np.frombuffer(b"".join(encoded), np.uint8)
        sym_offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=sym_offsets[1:])

        toc_series = f.pos
        refs_of = [sym_ref[x] for labels in series for label in labels for x in label]
        label_offsets = np.zeros(len(series) + 1, np.int64)
        np.cumsum([2 * len(labels) for labels in series], out=label_offsets[1:])
        entries, series_ids, series_max = series_entries(
            np.array(refs_of, np.int64), label_offsets, chunk_offsets, mint, maxt, ref, f.pos
        )
        f.write(entries.data)  # the array's buffer, not a copy

        # postings per (name, value) in symbol order, which is byte order (the tables list them so); a
        # stable sort keeps each list's series IDs ascending (series are written in sorted order)
        nsym = len(ordered)
        label_refs = np.array(refs_of, np.int64)
        pair = label_refs[0::2] * nsym + label_refs[1::2]
        pair_sid = np.repeat(series_ids, np.diff(label_offsets) // 2)
        by_pair = np.argsort(pair, kind="stable")
        pair, pair_sid = pair[by_pair], pair_sid[by_pair]
        starts = np.flatnonzero(np.concatenate(([True], pair[1:] != pair[:-1])))
        group_name, group_value = pair[starts] // nsym, pair[starts] % nsym
        name_refs, name_starts = np.unique(group_name, return_index=True)
        name_ends = np.append(name_starts[1:], len(group_name))

        toc_label_indices = f.pos
        label_index_offsets: list[tuple[str, int]] = []
        for ref_, lo, hi in zip(name_refs.tolist(), name_starts.tolist(), name_ends.tolist(), strict=True):
            f.pad(4)
            label_index_offsets.append((ordered[ref_], f.pos))
            f.section(_U32.pack(1) + _U32.pack(hi - lo) + group_value[lo:hi].astype(">u4").tobytes())

        toc_postings = f.pos
        empty = sym_ref[""]
        list_offsets = np.concatenate(([0], len(series_ids) + np.append(starts, len(pair_sid))))
        body, where = postings_sections(np.concatenate((series_ids, pair_sid)), list_offsets, f.pos)
        f.write(body.data)

        toc_label_table = f.pos
        parts = [_U32.pack(len(label_index_offsets))]
        for name, off in label_index_offsets:
            b = label_bytes(name)
            parts.append(b"\x01" + uvarint(len(b)) + b + uvarint(off))
        f.section(b"".join(parts))

        toc_postings_table = f.pos
        table = postings_table(
            np.append(empty, group_name), np.append(empty, group_value), where, sym_bytes, sym_offsets
        )
        f.section(table.tobytes())

        toc = struct.pack(
            ">6Q",
            toc_symbols,
            toc_series,
            toc_label_indices,
            toc_label_table,
            toc_postings,
            toc_postings_table,
        )
        f.write(toc + crc32c(toc))
        size = f.pos
    return IndexStats(size_bytes=size, series_max_size=series_max)
