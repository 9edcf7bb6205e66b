"""Block backfill: migrated history as one Prometheus TSDB block per aligned window, uploaded to Thanos' bucket.

Why blocks: Thanos Receive refuses samples older than its accept window (~1 h behind its newest sample)
unless an out-of-order window is configured, and a tenant that already receives live data cannot take
history by remote write at all. Uploading blocks is Thanos' own way in (see docs/blocks.md).

One window = one block holding ALL series of the migration for [min_time, max_time) (2 h, 8 h or 2 d,
epoch-aligned like Thanos' compaction ranges; maxTime exclusive). Idempotent: a window whose blocks of
the same external labels are in the bucket is skipped without reading the source; a crashed attempt's
partial upload is deleted and the window written again; a rerun never uploads a second overlapping
block. Engine code: no Prefect here.
"""

from __future__ import annotations

import enum
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from m3migrate.clients.bucket import BlockConflict, Bucket, ranges_cover
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.errors import ConfigError, MalformedResponse
from m3migrate.model import HOUR_MS, Labels
from m3migrate.plan.batches import Batch
from m3migrate.plan.tiers import Tier
from m3migrate.prompb import QueryResult
from m3migrate.read import read_batch_window_raw
from m3migrate.relabel import Relabeler
from m3migrate.tsdb.block import BlockWriter
from m3migrate.tsdb.encoding import has_raw_bytes, label_bytes
from m3migrate.tsdb.errors import EmptyBlock
from m3migrate.tsdb.meta import EXTENSION_KEY, BlockMeta
from m3migrate.tsdb.samples import ScannedResponse, scan_response, series_arrays
from m3migrate.wire.codec import decode_read_response, show_labels, source_key

log = logging.getLogger("m3migrate.backfill.windows")

BLOCK_DURATIONS_MS = (2 * HOUR_MS, 8 * HOUR_MS, 48 * HOUR_MS)  # Thanos compactor ranges a block may have
DEFAULT_BLOCK_MS = 2 * HOUR_MS

SourcePart = tuple[Batch | None, QueryResult | bytes]  # bytes: a decompressed ReadResponse


@dataclass(frozen=True)
class BlockWindow:
    """One block's time range [min_time, max_time) (aligned, maxTime exclusive) and what is read into it.

    ``read_start``/``read_end`` (both inclusive, remote read's convention) are the window clipped to the
    migration's range: the first and last window of a migration may hold only part of their range.
    """

    min_time: int
    max_time: int
    read_start: int
    read_end: int

    def __post_init__(self) -> None:
        if not self.min_time <= self.read_start <= self.read_end < self.max_time:
            raise ConfigError(f"window read range [{self.read_start}, {self.read_end}] is outside {self.label}")

    @property
    def label(self) -> str:
        return f"[{self.min_time}, {self.max_time})"


def block_windows(start_ms: int, end_ms: int, block_ms: int = DEFAULT_BLOCK_MS) -> list[BlockWindow]:
    """Epoch-aligned windows of block_ms covering [start_ms, end_ms] (end inclusive, like the spec)."""
    if block_ms not in BLOCK_DURATIONS_MS:
        raise ConfigError(
            f"block duration {block_ms} ms is not 2h, 8h or 2d",
            hint="Thanos' compactor only plans blocks on its 2h/8h/2d ranges; other sizes are never compacted",
        )
    if end_ms < start_ms:
        raise ConfigError("the time range ends before it starts")
    out = []
    a = (start_ms // block_ms) * block_ms
    while a <= end_ms:
        b = a + block_ms
        out.append(BlockWindow(a, b, max(a, start_ms), min(b - 1, end_ms)))
        a = b
    return out


@dataclass
class BackfillResult:
    """What one window did; small, so it can be a cached Prefect result."""

    min_time: int
    max_time: int
    ulid: str | None = None  # None when skipped or when the window has no samples
    skipped: bool = False  # complete blocks of these labels already cover the window
    empty: bool = False  # the source has no samples in the window: nothing uploaded
    series: int = 0
    samples: int = 0
    chunks: int = 0
    bytes: int = 0  # uploaded block size
    bytes_read: int = 0
    read_seconds: float = 0.0
    encode_seconds: float = 0.0
    upload_seconds: float = 0.0
    splits: int = 0
    foreign_series: int = 0
    dropped_series: int = 0
    removed_partial: list[str] = field(default_factory=list)
    non_utf8_series: list[str] = field(default_factory=list)  # written with label bytes not UTF-8 (escaped)
    skipped_series: list[str] = field(default_factory=list)  # "labels: reason" of series not written

    def as_dict(self) -> dict:
        return asdict(self)


def read_window(
    reader: RemoteReadClient,
    batches: Sequence[Batch],
    window: BlockWindow,
    tally: BackfillResult,
    tiers: Sequence[Tier] = (),
) -> Iterator[SourcePart]:
    """Every batch's read results over the window, one part at a time (lazily: nothing is read until
    iterated, so a skipped window costs no read), as decompressed ReadResponse bytes: they are walked
    into arrays by a compiled kernel, never decoded into messages. Source limits split reads, never
    truncate them; ``tiers`` (the plan's) pin each part of the window to its M3 namespace."""
    for batch in batches:
        for part in read_batch_window_raw(reader, batch, window.read_start, window.read_end, tally, tiers):
            yield batch, part


def backfill_window(
    parts: Iterable[SourcePart],
    *,
    window: BlockWindow,
    bucket: Bucket,
    relabeler: Relabeler,
    external_labels: Mapping[str, str],
    work_dir: Path | None = None,
    result: BackfillResult | None = None,
    extensions: Mapping[str, object] | None = None,
) -> BackfillResult:
    """Write one window's block from source parts and upload it; skip the window when already done.

    ``parts``: (batch, QueryResult or ReadResponse bytes) pairs; a series that is not in its part's batch
    is left out (it belongs to another batch, as in transfer), with batch None every series is kept. Series are
    relabeled by ``relabeler`` (adds ``_source="m3db"``); ``external_labels`` become the block's Thanos
    labels and must be unique to the backfill. The caller runs one writer per window at a time.
    """
    result = result or BackfillResult(window.min_time, window.max_time)
    relabeler = shared_relabeler(relabeler)
    labels = dict(external_labels)
    # first our crashed uploads of this window: partial blocks go, a finished block keeps (only its marker goes)
    result.removed_partial = bucket.cleanup_partial(window.min_time, window.max_time, labels)
    existing = bucket.find_blocks(window.min_time, window.max_time, labels)
    if existing:
        _check_existing(existing, window, bucket)
        result.skipped = True
        log.info("window %s: already in %s (%s), skipped", window.label, bucket, existing[0].ulid)
        _close(parts)
        return result

    ext = {
        EXTENSION_KEY: {
            "read_start": window.read_start,
            "read_end": window.read_end,
            **dict(extensions or {}),
        }
    }
    with tempfile.TemporaryDirectory(prefix="m3migrate-block-", dir=work_dir) as tmp:
        writer = BlockWriter(
            Path(tmp),
            min_time=window.min_time,
            max_time=window.max_time,
            external_labels=labels,
            extensions=ext,
            durable=False,  # staged for the upload, then deleted: the bucket's copy is the one that lasts
        )
        with writer:
            t_encode = 0.0
            owners: dict[Labels, str] = {}
            relabeling = _relabeling(relabeler)
            prefetched = _prefetched(parts)
            try:
                for batch, part in prefetched:
                    t0 = time.perf_counter()
                    _add_part(writer, batch, part, window, relabeler, result, owners, relabeling)
                    t_encode += time.perf_counter() - t0
                    del part
            finally:
                prefetched.close()  # stops the reader now, also when encoding failed
            try:
                t0 = time.perf_counter()
                info = writer.finish()
                t_encode += time.perf_counter() - t0
            except EmptyBlock:
                result.empty = True
                log.info("window %s: no samples in the source, no block", window.label)
                return result
        result.encode_seconds += t_encode
        upload = bucket.upload_block(info.path, external_labels=labels)
    result.ulid = info.ulid
    result.series = info.num_series
    result.samples = info.num_samples
    result.chunks = info.num_chunks
    result.bytes = upload.bytes
    result.upload_seconds += upload.seconds
    log.info(
        "window %s: block %s with %d series, %d samples, %d bytes uploaded to %s",
        window.label,
        info.ulid,
        info.num_series,
        info.num_samples,
        upload.bytes,
        bucket,
    )
    return result


def backfill_from_source(
    reader: RemoteReadClient,
    batches: Sequence[Batch],
    *,
    window: BlockWindow,
    bucket: Bucket,
    relabeler: Relabeler,
    external_labels: Mapping[str, str],
    work_dir: Path | None = None,
    tiers: Sequence[Tier] = (),
) -> BackfillResult:
    """backfill_window over read_window(reader, batches, window): the one call a flow task needs."""
    result = BackfillResult(window.min_time, window.max_time)
    return backfill_window(
        read_window(reader, batches, window, result, tiers),
        window=window,
        bucket=bucket,
        relabeler=relabeler,
        external_labels=external_labels,
        work_dir=work_dir,
        result=result,
    )


_RELABELERS: dict[str, Relabeler] = {}
_RELABELERS_MAX = 8


def shared_relabeler(relabeler: Relabeler) -> Relabeler:
    """One Relabeler per process for each relabeling: its cache then spans every window (a flow task makes
    a new Relabeler per window, and relabeling a series first costs ~4-6 us, as much as encoding ~100 samples)."""
    signature = _relabeling(relabeler)
    shared = _RELABELERS.get(signature)
    if shared is None:
        if len(_RELABELERS) >= _RELABELERS_MAX:
            _RELABELERS.clear()
        shared = _RELABELERS[signature] = relabeler
    return shared


def _relabeling(relabeler: Relabeler) -> str:
    return repr((relabeler.rules, sorted(relabeler.add_labels.items())))


class _Skip(enum.Enum):
    """Why a read series is not written into the block."""

    FOREIGN = "foreign"  # another batch's series (or one the plan does not list): counted as foreign
    EMPTY = "empty"  # no samples in this part
    DROPPED = "dropped"  # a relabel rule drops it: counted as dropped
    SET_ASIDE = "set aside"  # label bytes that are not UTF-8 meet a rule that needs text: listed


Decision = Labels | _Skip


class SeriesMemo:
    """What each series of a batch became in the windows already written: its block labels, or that it
    is foreign or dropped, keyed on its label bytes as the source sent them.

    Every window of a migration reads the same series again; deciding one anew (decode its labels, look it
    up in the plan, relabel it) costs ~20 us, as much as encoding 400 of its samples, so at 240 samples
    per series and window it was most of the blocks path's CPU. Only parts whose labels are all UTF-8
    are remembered (the rest keep the exact path), and only decisions that hold for every window; at
    ``max_series`` entries (~150 B each) everything is forgotten and learnt again.
    """

    def __init__(self, max_series: int = 1_000_000) -> None:
        self.max_series = max_series
        self._tables: dict[tuple[str, bytes], dict[bytes, Decision]] = {}
        self._lock = threading.Lock()

    def table(self, relabeling: str, batch: Batch) -> dict[bytes, Decision]:
        key = (relabeling, batch.fingerprint)
        with self._lock:
            found = self._tables.get(key)
            if found is None:
                if sum(map(len, self._tables.values())) >= self.max_series:
                    self._tables.clear()
                found = self._tables[key] = {}
            return found


_MEMO = SeriesMemo()


def _add_part(
    writer: BlockWriter,
    batch: Batch | None,
    part: QueryResult | bytes,
    window: BlockWindow,
    relabeler: Relabeler,
    result: BackfillResult,
    owners: dict[Labels, str] | None,
    relabeling: str,
) -> None:
    """One read part into the block: per series a decision on its labels (Python, per series, or
    remembered from an earlier window), the samples checked and encoded for the whole part at once
    (numpy and the compiled kernels).

    ``owners``: the batch that writes each series with label bytes that are not UTF-8. The plan never
    holds their exact form (a series API shows such bytes as U+FFFD), so no batch lists them: the first
    batch whose read returns one writes it, as remote write adopts it (transfer.PlanScope).
    ``relabeling``: the relabeler's signature, under which decisions are remembered across windows."""
    arrays = _part_arrays(part)
    counts, t, bits = arrays.counts, arrays.timestamps, arrays.bits
    chosen, targets = _decide(arrays, batch, relabeler, result, owners, relabeling)
    if not chosen:
        return
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    if len(chosen) < len(counts):
        idx = np.array(chosen, np.int64)
        counts = counts[idx]
        take = np.repeat(offsets[idx] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
        take += np.arange(len(take), dtype=np.int64)
        t, bits = t[take], bits[take]
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
    first, last = t[offsets[:-1]], t[offsets[1:] - 1]
    bad = (first < window.read_start) | (last > window.read_end)  # a source that answers beyond the range
    if len(t) > 1:
        step_bad = np.flatnonzero(t[1:] <= t[:-1]) + 1
        if len(step_bad):
            series_of = np.searchsorted(offsets, step_bad, side="right") - 1
            bad[series_of[step_bad != offsets[series_of]]] = True
    if bad.any():
        targets, counts, t, bits = _repaired(targets, offsets, t, bits, bad, window)
    writer.add_batch(targets, counts, t, bits, utf8=arrays.utf8)


def _decide(
    arrays: _PartArrays,
    batch: Batch | None,
    relabeler: Relabeler,
    result: BackfillResult,
    owners: dict[Labels, str] | None,
    relabeling: str,
) -> tuple[list[int], list[Labels]]:
    """The part's series to write (their indexes) and their block labels; the others counted."""
    utf8, ns = arrays.utf8, arrays.counts.tolist()
    memo: dict[bytes, Decision] | None = None
    label_keys: list[bytes] = []
    if batch is not None and utf8 and isinstance(arrays, ScannedResponse):
        memo, label_keys = _MEMO.table(relabeling, batch), arrays.label_keys()
    decisions: list[Decision | None] = [memo.get(k) for k in label_keys] if memo is not None else [None] * len(ns)
    unknown = [i for i, known in enumerate(decisions) if known is None]
    if unknown:
        keys = batch.keys if batch is not None else None
        # the plan's own label tuples: what the relabeler's cache keeps then costs no memory of its own
        canonical = {key: key for key in batch.series} if batch is not None else {}
        for i, labels in zip(unknown, arrays.labels(unknown), strict=True):
            new = decisions[i] = _target_labels(labels, ns[i], keys, batch, relabeler, result, owners, utf8, canonical)
            if memo is not None and new is not _Skip.EMPTY and new is not _Skip.SET_ASIDE:
                memo[label_keys[i]] = new  # holds in every window
    chosen: list[int] = []
    targets: list[Labels] = []
    for i, (d, n) in enumerate(zip(decisions, ns, strict=True)):
        if d is _Skip.FOREIGN:
            result.foreign_series += 1  # matched the read but belongs to another batch (or is new)
        elif not n:
            continue
        elif d is _Skip.DROPPED:
            result.dropped_series += 1
        elif isinstance(d, tuple):
            chosen.append(i)
            targets.append(d)
    return chosen, targets


class _PartArrays(Protocol):
    counts: np.ndarray
    timestamps: np.ndarray
    bits: np.ndarray

    @property
    def utf8(self) -> bool: ...

    def labels(self, which: Sequence[int] | None = None) -> list[Labels]: ...


@dataclass
class _DecodedPart:
    """A part decoded by protobuf (not canonically framed, or already decoded): no label bytes to key on."""

    decoded: list[Labels]
    counts: np.ndarray
    timestamps: np.ndarray
    bits: np.ndarray
    utf8: bool = False

    def labels(self, which: Sequence[int] | None = None) -> list[Labels]:
        return self.decoded if which is None else [self.decoded[i] for i in which]


def _part_arrays(part: QueryResult | bytes) -> _PartArrays:
    """A read part as arrays (labels per series, samples per series, timestamps, value bits): the compiled
    walk of the wire bytes, or (a response not in the canonical encoding, or a decoded part) protobuf."""
    if isinstance(part, bytes):
        scanned = scan_response(part)
        if scanned is not None:
            return scanned
        part = decode_read_response(part, endpoint="remote read")
    series = list(series_arrays(part))
    counts = np.array([len(s[1]) for s in series], np.int64)
    if not series:
        return _DecodedPart([], counts, np.zeros(0, np.int64), np.zeros(0, np.uint64), True)
    return _DecodedPart(
        [s[0] for s in series],
        counts,
        np.concatenate([s[1] for s in series]),
        np.concatenate([s[2] for s in series]),
    )


def _target_labels(
    labels: Labels,
    n: int,
    keys: frozenset[Labels] | None,
    batch: Batch | None,
    relabeler: Relabeler,
    result: BackfillResult,
    owners: dict[Labels, str] | None,
    utf8: bool = False,
    canonical: Mapping[Labels, Labels] | None = None,
) -> Decision:
    """The labels a read series is written with, or why it is not written (the caller counts it).
    ``utf8``: the part's labels are known to be UTF-8 text (none holds raw bytes to look for);
    ``canonical``: the plan's label tuples, used in place of equal ones decoded from the read."""
    key = source_key(labels, endpoint="remote read")
    if canonical:
        key = canonical.get(key, key)
    if (
        keys is not None
        and key not in keys
        and not (
            owners is not None
            and batch is not None
            and not utf8
            and has_raw_bytes(n + v for n, v in key)
            and owners.setdefault(key, batch.id) == batch.id
        )
    ):
        return _Skip.FOREIGN
    if not n:
        return _Skip.EMPTY
    raw_bytes = not utf8 and has_raw_bytes(n + v for n, v in key)
    try:
        out = relabeler(key)
    except (UnicodeEncodeError, ConfigError) as exc:
        if not raw_bytes:
            raise
        # as remote write does (wire.LabelCache): RE2 matches UTF-8 text, a name must be a legacy name
        why = "a relabel rule's regex" if isinstance(exc, UnicodeEncodeError) else str(exc)
        _set_aside(result, f"{show_labels(key)}: label bytes are not UTF-8 and {why} cannot be applied to them")
        return _Skip.SET_ASIDE
    if out is None:
        return _Skip.DROPPED
    if raw_bytes and has_raw_bytes(n + v for n, v in out):
        # the block stores them byte-exact (Go strings are bytes), its labels sorted by bytes
        out = tuple(sorted(out, key=lambda label: label_bytes(label[0])))
        if show_labels(key) not in result.non_utf8_series:
            result.non_utf8_series.append(show_labels(key))
    return out


def _repaired(
    targets: list[Labels], offsets: np.ndarray, t: np.ndarray, bits: np.ndarray, bad: np.ndarray, window: BlockWindow
) -> tuple[list[Labels], np.ndarray, np.ndarray, np.ndarray]:
    """The part with its few unusual series fixed one by one: sorted by time (exact duplicates dropped)
    and cut to the window's read range; a series left without samples is left out."""
    out_labels: list[Labels] = []
    ts: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    for i, (labels, fix) in enumerate(zip(targets, bad.tolist(), strict=True)):
        st, sv = t[offsets[i] : offsets[i + 1]], bits[offsets[i] : offsets[i + 1]]
        if fix:
            if len(st) > 1 and not (st[1:] > st[:-1]).all():
                st, sv = _sorted_unique(st, sv, labels)
            inside = (st >= window.read_start) & (st <= window.read_end)
            st, sv = st[inside], sv[inside]
            if not len(st):
                continue
        out_labels.append(labels)
        ts.append(st)
        vs.append(sv)
    counts = np.array([len(x) for x in ts], np.int64)
    if not ts:
        return [], counts, np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return out_labels, counts, np.concatenate(ts), np.concatenate(vs)


def _set_aside(result: BackfillResult, skipped: str) -> None:
    if skipped not in result.skipped_series:
        log.warning("series not migrated: %s", skipped)
        result.skipped_series.append(skipped)


def _sorted_unique(t: np.ndarray, bits: np.ndarray, labels: Labels) -> tuple[np.ndarray, np.ndarray]:
    """Sort a series by time; an exact duplicate sample is dropped, a conflicting one is an error."""
    order = np.argsort(t, kind="stable")
    t, bits = t[order], bits[order]
    dup = np.flatnonzero(t[1:] == t[:-1])
    if len(dup) and (bits[dup] != bits[dup + 1]).any():
        k = int(dup[np.flatnonzero(bits[dup] != bits[dup + 1])[0]])
        raise MalformedResponse(
            f"remote read: series {dict(labels)} has two different values at {int(t[k])}", endpoint="remote read"
        )
    keep = np.ones(len(t), bool)
    keep[dup + 1] = False
    return t[keep], bits[keep]


def _check_existing(existing: list[BlockMeta], window: BlockWindow, bucket: Bucket) -> None:
    """Blocks of our labels overlap the window: fine if they cover it (done), a conflict otherwise."""
    if not ranges_cover(existing, window.min_time, window.max_time):
        ranges = ", ".join(f"{m.ulid} [{m.min_time}, {m.max_time})" for m in existing)
        raise BlockConflict(
            f"bucket {bucket.description} holds blocks of the same external labels that overlap window "
            f"{window.label} without covering it: {ranges}",
            hint="writing the window would make overlapping blocks (Thanos' compactor halts on them): "
            "use another block duration aligned with the existing blocks, or other external labels",
        )
    for m in existing:
        ours = m.extensions.get(EXTENSION_KEY)
        if m.min_time == window.min_time and m.max_time == window.max_time and isinstance(ours, dict):
            start, end = ours.get("read_start"), ours.get("read_end")
            if isinstance(start, int) and isinstance(end, int) and (start > window.read_start or end < window.read_end):
                raise BlockConflict(
                    f"block {m.ulid} for window {window.label} was read over [{start}, {end}], which does not "
                    f"cover the requested [{window.read_start}, {window.read_end}]",
                    hint="the migration range changed: delete that block from the bucket (Thanos: "
                    "`thanos tools bucket mark --marker=deletion-mark.json`) and rerun, or keep the old range",
                )


def _prefetched(parts: Iterable[SourcePart], ahead: int = 1) -> Generator[SourcePart, None, None]:
    """The parts, the next ``ahead`` read (in a thread) while this one is encoded: reading waits on the
    source and the network, encoding on the CPU, so the two overlap. Memory: at most 1 + ``ahead`` parts
    (a slot is taken before a read, given back when its part is done); leaving early stops the reader
    after its current read."""
    ready: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
    slots = threading.Semaphore(1 + ahead)
    stop = threading.Event()

    def read() -> None:
        try:
            source = iter(parts)
            while True:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                part = next(source, None)
                if part is None:
                    ready.put((False, None))
                    return
                ready.put((True, part))
        except BaseException as exc:  # handed to the consumer, raised there
            ready.put((False, exc))

    reader = threading.Thread(target=read, name="m3migrate-block-read", daemon=True)
    reader.start()
    try:
        while True:
            more, item = ready.get()
            if not more:
                if item is not None:
                    raise item  # type: ignore[misc]
                return
            try:
                yield item  # type: ignore[misc]
            finally:
                del item
                slots.release()
    finally:
        stop.set()
        reader.join()
        _close(parts)


def _close(parts: Iterable[SourcePart]) -> None:
    close = getattr(parts, "close", None)
    if callable(close):
        close()
