"""BlockWriter: streams series into one Prometheus TSDB block directory (what Thanos' bucket holds).

Series arrive in any order, a series possibly in several parts (a source read split by time or by
series). Samples are buffered only until ``flush_samples`` of them are pending (:meth:`BlockWriter.add_batch`
takes a whole read part and encodes it at once), then encoded (compiled, :mod:`m3migrate.tsdb.kernels`)
and appended to the chunk segment files; what stays in memory is each series' labels and its chunks'
(minTime, maxTime, ref), 28 bytes per chunk of <= 120 samples. The
index (series sorted by labels) and meta.json are written by :meth:`BlockWriter.finish`. The block is
built in ``<parent>/<ULID>.tmp`` and renamed to ``<parent>/<ULID>`` only when complete, so a
directory named by a ULID is always a whole block.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ulid import ULID

from m3migrate.model import Labels
from m3migrate.tsdb.chunks import MAX_SEGMENT_BYTES, SegmentWriter
from m3migrate.tsdb.encoding import has_raw_bytes, label_bytes, labels_order
from m3migrate.tsdb.errors import EmptyBlock, InvalidSeries, OverlappingParts, SampleOutOfRange, TsdbError
from m3migrate.tsdb.index import write_index
from m3migrate.tsdb.kernels import xor_records
from m3migrate.tsdb.meta import META_FILENAME, THANOS_SOURCE, meta_json, write_meta
from m3migrate.tsdb.xor import SAMPLES_PER_CHUNK, check_increasing


@dataclass(frozen=True)
class BlockInfo:
    """A finished block on local disk."""

    ulid: str
    path: Path
    min_time: int
    max_time: int  # exclusive
    num_series: int
    num_samples: int
    num_chunks: int
    files: tuple[tuple[str, int], ...]  # (path relative to the block dir, size), meta.json last

    @property
    def size_bytes(self) -> int:
        return sum(size for _, size in self.files)


@dataclass
class _Pending:
    series: list[np.ndarray] = field(default_factory=list)  # series ids of each added piece
    counts: list[np.ndarray] = field(default_factory=list)  # samples of each of those series
    timestamps: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    samples: int = 0


def check_labels(labels: Labels, utf8: bool = False) -> None:
    """A label set a block may hold: non-empty, names sorted (byte-wise, as Go compares strings) and
    unique, no empty name or value. Bytes that are not UTF-8 are fine: the index stores raw bytes."""
    if not labels:
        raise InvalidSeries("a series without labels cannot be stored in a block")
    raw = not utf8 and has_raw_bytes(n for n, _ in labels)
    names: list[Any] = [label_bytes(n) for n, _ in labels] if raw else [n for n, _ in labels]  # bytes or str
    prev = None
    for (name, value), key in zip(labels, names, strict=True):
        if not name or not value:
            raise InvalidSeries(f"series {dict(labels)} has an empty label name or value")
        if prev is not None and key <= prev:
            raise InvalidSeries(f"series labels must be sorted by name and unique: {labels}")
        prev = key


class BlockWriter:
    """Writes one block covering [min_time, max_time) (max exclusive, Prometheus' block convention).

    Usage::

        with BlockWriter(out_dir, min_time=t0, max_time=t0 + 7_200_000, external_labels={"backfill": "m3db"}) as w:
            w.add((("__name__", "up"), ("job", "x")), timestamps_ms, values)  # numpy arrays
            info = w.finish()  # the block is now out_dir/<info.ulid>/

    Leaving the ``with`` block without finish() (e.g. on an exception) deletes the unfinished directory.
    """

    def __init__(
        self,
        parent: Path,
        *,
        min_time: int,
        max_time: int,
        external_labels: Mapping[str, str],
        source: str = THANOS_SOURCE,
        ulid: str | None = None,
        samples_per_chunk: int = SAMPLES_PER_CHUNK,
        max_segment_bytes: int = MAX_SEGMENT_BYTES,
        flush_samples: int = 1_000_000,
        extensions: Mapping[str, Any] | None = None,
        durable: bool = True,
    ) -> None:
        """``durable``: fsync every file before the block gets its final name, as Prometheus does; False
        for a block staged only to be uploaded (its copy in the bucket is what must last, and a crash
        loses nothing but the staging directory, which the window's next run rewrites)."""
        if max_time <= min_time:
            raise TsdbError(f"block range [{min_time}, {max_time}) is empty")
        if not external_labels:
            raise TsdbError(
                "a block for Thanos needs external labels",
                hint="Thanos' upload paths refuse blocks without them; use a set unique to the backfill",
            )
        for name, value in external_labels.items():
            if not name or not value:
                raise TsdbError(f"external label {name!r}={value!r} needs a name and a value")
        if not 1 <= samples_per_chunk <= 65_535:
            raise TsdbError(f"samples_per_chunk={samples_per_chunk} must be in 1..65535")
        self.ulid = ulid or str(ULID())
        self.min_time = min_time
        self.max_time = max_time
        self.external_labels = dict(external_labels)
        self.source = source
        self.extensions = dict(extensions or {})
        self.samples_per_chunk = samples_per_chunk
        self.flush_samples = flush_samples
        self.durable = durable
        self.parent = Path(parent)
        self.path = self.parent / self.ulid
        self.tmp_path = self.parent / f"{self.ulid}.tmp"
        if self.path.exists() or self.tmp_path.exists():
            raise TsdbError(f"block directory {self.path} already exists")
        self.tmp_path.mkdir(parents=True)
        self._segments = SegmentWriter(self.tmp_path / "chunks", max_segment_bytes=max_segment_bytes)
        self._series_ids: dict[Labels, int] = {}
        self._labels: list[Labels] = []
        self._raw_bytes = False  # some label is not UTF-8: sort series by bytes (see has_raw_bytes)
        self._pending = _Pending()
        self._meta_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.num_samples = 0
        self._finished: BlockInfo | None = None
        self._closed = False

    # -- input ------------------------------------------------------------------------------------

    def add(self, labels: Labels, timestamps: np.ndarray, values: np.ndarray) -> None:
        """Add samples of one series (labels sorted by name). ``values``: float64, or uint64 raw bits.

        Samples must be strictly increasing in time and inside [min_time, max_time). Another part of
        the same series may come later, as long as the parts do not overlap in time.
        """
        self._check_open()
        t = np.asarray(timestamps, dtype=np.int64)
        v = np.asarray(values)
        if v.dtype == np.float64:
            v = v.view(np.uint64)
        elif v.dtype != np.uint64:
            raise InvalidSeries(f"values must be float64 or uint64 bits, got {v.dtype}")
        if t.shape != v.shape or t.ndim != 1:
            raise InvalidSeries(f"series {dict(labels)}: {t.shape} timestamps but {v.shape} values")
        if not len(t):
            return
        sid = self._series_id(labels)
        if len(t) > 1 and not (t[1:] > t[:-1]).all():
            raise InvalidSeries(
                f"series {dict(labels)}: timestamps are not strictly increasing",
                hint="sort the series by time and drop duplicate timestamps",
            )
        if t[0] < self.min_time or t[-1] >= self.max_time:
            raise SampleOutOfRange(
                f"series {dict(labels)} has samples in [{int(t[0])}, {int(t[-1])}], outside the block's "
                f"[{self.min_time}, {self.max_time}) (maxTime is exclusive)"
            )
        self._queue(np.array([sid], np.int64), np.array([len(t)], np.int64), t, v)

    def add_batch(
        self,
        labels: list[Labels],
        counts: np.ndarray,
        timestamps: np.ndarray,
        values: np.ndarray,
        *,
        utf8: bool = False,
    ) -> None:
        """add() for many series at once: series i is ``labels[i]`` with the next ``counts[i]`` samples of
        ``timestamps`` / ``values`` (uint64 bits); checked and encoded with no Python per sample.
        ``utf8``: the caller knows every label is UTF-8 text, so none is searched for raw bytes."""
        self._check_open()
        t = np.ascontiguousarray(timestamps, dtype=np.int64)
        v = np.ascontiguousarray(values, dtype=np.uint64)
        counts = np.asarray(counts, np.int64)
        if t.shape != v.shape or len(labels) != len(counts) or int(counts.sum()) != len(t):
            raise InvalidSeries(f"{len(labels)} series with {int(counts.sum())} samples, got {len(t)} and {len(v)}")
        keep = counts > 0
        if not keep.all():
            labels = [lb for lb, k in zip(labels, keep.tolist(), strict=True) if k]
            counts = counts[keep]
        if not len(t):
            return
        sids = np.fromiter((self._series_id(lb, utf8) for lb in labels), np.int64, len(labels))
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        try:
            check_increasing(t, offsets)
        except InvalidSeries:
            k = int(np.searchsorted(offsets, np.flatnonzero(t[1:] <= t[:-1])[0] + 1, side="right")) - 1
            raise InvalidSeries(
                f"series {dict(labels[k])}: timestamps are not strictly increasing",
                hint="sort the series by time and drop duplicate timestamps",
            ) from None
        first, last = t[offsets[:-1]], t[offsets[1:] - 1]
        outside = np.flatnonzero((first < self.min_time) | (last >= self.max_time))
        if len(outside):
            k = int(outside[0])
            raise SampleOutOfRange(
                f"series {dict(labels[k])} has samples in [{int(first[k])}, {int(last[k])}], outside the block's "
                f"[{self.min_time}, {self.max_time}) (maxTime is exclusive)"
            )
        self._queue(sids, counts, t, v)
        self.flush()  # a read part is big enough to encode at once; holding it would double the memory

    def _series_id(self, labels: Labels, utf8: bool = False) -> int:
        sid = self._series_ids.get(labels)
        if sid is None:
            check_labels(labels, utf8)
            clash = set(self.external_labels) & {name for name, _ in labels}
            if clash:
                raise InvalidSeries(
                    f"series {dict(labels)} has labels named like the block's external labels: {sorted(clash)}",
                    hint="choose external labels that no migrated series carries",
                )
            sid = len(self._labels)
            self._raw_bytes = self._raw_bytes or (not utf8 and has_raw_bytes(n + v for n, v in labels))
            self._series_ids[labels] = sid
            self._labels.append(labels)
        return sid

    def _queue(self, sids: np.ndarray, counts: np.ndarray, t: np.ndarray, v: np.ndarray) -> None:
        p = self._pending
        p.series.append(sids)
        p.counts.append(counts)
        p.timestamps.append(t)
        p.values.append(v)
        p.samples += len(t)
        if p.samples >= self.flush_samples:
            self.flush()

    def add_many(self, series: Iterable[tuple[Labels, np.ndarray, np.ndarray]]) -> None:
        """add() for each (labels, timestamps, values)."""
        for labels, t, v in series:
            self.add(labels, t, v)

    def flush(self) -> None:
        """Encode the pending samples and append their chunks to the segment files."""
        p = self._pending
        if not p.samples:
            return
        one = len(p.timestamps) == 1
        sids = p.series[0] if one else np.concatenate(p.series)
        counts = p.counts[0] if one else np.concatenate(p.counts)
        t = p.timestamps[0] if one else np.concatenate(p.timestamps)
        v = p.values[0] if one else np.concatenate(p.values)
        self._pending = _Pending()
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        records, rec_offsets, owner, mint, maxt, _, _ = xor_records(t, v, offsets, self.samples_per_chunk)
        refs = self._segments.write_records(records, rec_offsets)
        self._meta_parts.append((sids[owner].astype(np.int32), mint, maxt, refs))
        self.num_samples += len(t)

    # -- output -----------------------------------------------------------------------------------

    def finish(self) -> BlockInfo:
        """Write the index and meta.json and move the block to its final name. Idempotent."""
        if self._finished is not None:
            return self._finished
        self._check_open()
        try:
            self.flush()
            self._segments.close()
            if self.num_samples == 0:
                raise EmptyBlock(f"block [{self.min_time}, {self.max_time}) has no samples; not written")
            info = self._write_index_and_meta()
        except BaseException:
            self.abort()
            raise
        self._finished = info
        self._closed = True
        return info

    def _write_index_and_meta(self) -> BlockInfo:
        labels = self._labels
        order = sorted(
            range(len(labels)), key=(lambda i: labels_order(labels[i])) if self._raw_bytes else labels.__getitem__
        )
        rank = np.empty(len(order), np.int64)
        rank[np.array(order, np.int64)] = np.arange(len(order))
        owner = np.concatenate([m[0] for m in self._meta_parts])
        mint = np.concatenate([m[1] for m in self._meta_parts])
        maxt = np.concatenate([m[2] for m in self._meta_parts])
        ref = np.concatenate([m[3] for m in self._meta_parts])
        by = np.lexsort((mint, rank[owner]))
        owner, mint, maxt, ref = owner[by], mint[by], maxt[by], ref[by]
        same = owner[1:] == owner[:-1]
        overlap = np.flatnonzero(same & (mint[1:] <= maxt[:-1]))
        if len(overlap):
            k = int(overlap[0])
            raise OverlappingParts(
                f"series {dict(self._labels[int(owner[k])])} has parts that overlap in time "
                f"([{int(mint[k])}, {int(maxt[k])}] and [{int(mint[k + 1])}, {int(maxt[k + 1])}])",
                hint="each part of a series must cover its own time range (the source sent a series twice?)",
            )
        counts = np.bincount(rank[owner], minlength=len(order))
        offsets = np.zeros(len(order) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        sorted_labels = [self._labels[i] for i in order]
        stats = write_index(self.tmp_path / "index", sorted_labels, offsets, mint, maxt, ref)

        segment_names = [p.name for p in self._segments.files]
        files = [(f"chunks/{name}", size) for name, size in zip(segment_names, self._segments.sizes, strict=True)]
        files.append(("index", stats.size_bytes))
        doc = meta_json(
            ulid=self.ulid,
            min_time=self.min_time,
            max_time=self.max_time,
            num_samples=self.num_samples,
            num_series=len(order),
            num_chunks=len(ref),
            external_labels=self.external_labels,
            segment_files=segment_names,
            files=files,
            series_max_size=stats.series_max_size,
            chunk_max_size=self._segments.max_chunk_bytes,
            source=self.source,
            extensions=self.extensions,
        )
        write_meta(self.tmp_path / META_FILENAME, doc)
        if self.durable:
            _fsync_tree(self.tmp_path)
        os.replace(self.tmp_path, self.path)
        meta_size = (self.path / META_FILENAME).stat().st_size
        return BlockInfo(
            ulid=self.ulid,
            path=self.path,
            min_time=self.min_time,
            max_time=self.max_time,
            num_series=len(order),
            num_samples=self.num_samples,
            num_chunks=len(ref),
            files=(*files, (META_FILENAME, meta_size)),
        )

    def abort(self) -> None:
        """Forget everything and delete the unfinished directory."""
        self._closed = True
        self._segments.close()
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def _check_open(self) -> None:
        if self._closed:
            raise TsdbError(f"block {self.ulid} is already finished or aborted")

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self._finished is None:
            self.abort()


def _fsync_tree(path: Path) -> None:
    """Make the block durable before it gets its final name (as Prometheus does)."""
    for root, _dirs, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
