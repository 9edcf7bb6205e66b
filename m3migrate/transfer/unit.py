"""Moves one batch × window: remote read, relabel, pack, remote write, exactly.

The batch's series are the only ones written; samples pass through as the bytes the source sent
(m3migrate.wire.walk walks the read response per series, never per sample); a source limit
splits the read (by series, then by time) instead of truncating it; refusals from data the target
already holds (a resumed window) are reconciled series by series instead of failing the migration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from m3migrate.clients.http import RetryPolicy
from m3migrate.clients.promql import PromQLClient
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import ConfigError, RejectReason, WriteRejected
from m3migrate.failpoints import failpoint
from m3migrate.model import DEFAULT_IGNORE_LABELS
from m3migrate.plan.batches import Batch, Labels, Plan, Window
from m3migrate.plan.tiers import Tier
from m3migrate.prompb import QueryResult, TimeSeries, WriteRequest
from m3migrate.read import read_batch_window_raw
from m3migrate.relabel import Relabeler
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.wire.codec import (
    STALE_NAN_BITS,
    Matcher,
    WriteBody,
    WriteChain,
    _field1,
    selector_string,
    single_request,
)
from m3migrate.wire.walk import Counters, LabelCache, pack_query_result, pack_read_response, tune_malloc

log = logging.getLogger("m3migrate.transfer.unit")

ReadPart = bytes | QueryResult  # a decompressed ReadResponse (the transfer's own reads) or a decoded result


@dataclass
class TransferResult:
    """What one batch × window moved; small, so it can be a cached Prefect result."""

    batch_id: str
    window: int
    series: int = 0
    samples: int = 0
    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    read_retries: int = 0
    write_retries: int = 0
    splits: int = 0
    reconciled_series: int = 0
    foreign_series: int = 0  # other batches' series that this batch's selectors also matched
    dropped_series: int = 0
    new_series: list[str] = field(default_factory=list)  # ids of series new since discovery, written here
    non_utf8_series: list[str] = field(default_factory=list)  # written with label bytes that are not UTF-8
    skipped_series: list[str] = field(default_factory=list)  # "labels: reason" of series not migrated

    def as_dict(self) -> dict:
        return asdict(self)


class Transfer:
    """Shared per process: holds the HTTP connection pools and the write thread pool."""

    def __init__(
        self,
        source: SourceSettings,
        target: TargetSettings,
        relabeler: Relabeler,
        *,
        write_concurrency: int = 4,
        read_retry: RetryPolicy | None = None,
        write_retry: RetryPolicy | None = None,
    ) -> None:
        self.source = source
        self.target = target
        self.relabeler = relabeler
        self.reader = RemoteReadClient(source, retry=read_retry, max_connections=max(4, write_concurrency))
        self.writer = RemoteWriteClient(target, retry=write_retry, max_connections=max(4, write_concurrency * 2))
        self._pool = ThreadPoolExecutor(max_workers=write_concurrency, thread_name_prefix="m3migrate-write")
        self._labels = LabelCache(relabeler, endpoint=self.reader.endpoint)  # source -> encoded target labels
        self._scope: PlanScope | None = None  # the whole plan: tells another batch's series from a new one
        self._tiers: tuple[Tier, ...] = ()  # the plan's M3 namespaces by time range (none: unpinned)
        self._query: PromQLClient | None = None  # the target's query API, opened only to reconcile a refusal
        self._query_lock = threading.Lock()
        tune_malloc()  # once per process: MB-sized buffers per unit stay mapped instead of faulting back in

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.reader.close()
        self.writer.close()
        if self._query is not None:
            self._query.close()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------

    def use_plan(self, plan: Plan) -> None:
        """Know the whole plan, so series that reached the source after discovery are migrated (once)."""
        with self._query_lock:
            if self._scope is None or self._scope.plan_id != plan.id:
                self._scope = PlanScope(plan, self.relabeler)
            self._tiers = tuple(plan.tiers)

    def run(self, batch: Batch, window: Window, *, resumed: bool = False) -> TransferResult:
        """Copy the batch's series over the window; returns only after the target acknowledged all.

        ``resumed`` says an earlier attempt may have written part of this batch × window (a crash or a
        retry): only then is an "out of order" refusal taken as "already written" and reconciled. On a
        first attempt it means something else wrote newer data, and it fails loudly instead.
        """
        result = TransferResult(batch_id=batch.id, window=window.index)
        read_retries0, write_retries0 = self.reader.stats.retries, self.writer.stats.retries
        for part in self._reads(batch, window.start_ms, window.end_ms, result):
            chains = self._pack(part, batch, result)
            del part
            self._send_chains(chains, result, resumed)
        result.read_retries = self.reader.stats.retries - read_retries0  # approximate under concurrency
        result.write_retries = self.writer.stats.retries - write_retries0
        return result

    def fetch(self, batch: Batch, window: Window) -> tuple[list[list[WriteChain]], TransferResult]:
        """The read half of :meth:`run`, packed into requests: a scheduler reads and compresses one
        window ahead while the previous window of the same batch is still being written, so the
        target only waits for the network between two windows (memory: one batch × window, compressed).
        Returns per read part (a limit may split the read) the chains to send, in order."""
        result = TransferResult(batch_id=batch.id, window=window.index)
        retries0 = self.reader.stats.retries
        parts = self._reads(batch, window.start_ms, window.end_ms, result)
        packed = [self._pack(part, batch, result) for part in parts]
        result.read_retries = self.reader.stats.retries - retries0  # approximate under concurrency
        return packed, result

    def store(self, packed: list[list[WriteChain]], result: TransferResult, *, resumed: bool = False) -> None:
        """The write half of :meth:`run`: send what :meth:`fetch` packed, part after part (consumes it)."""
        retries0 = self.writer.stats.retries
        while packed:
            self._send_chains(packed.pop(0), result, resumed)
        result.write_retries = self.writer.stats.retries - retries0

    # -- read side ------------------------------------------------------------------------------

    def _reads(self, batch: Batch, start_ms: int, end_ms: int, result: TransferResult) -> Iterator[bytes]:
        """Decompressed ReadResponses, left undecoded: the write side walks them (m3migrate.wire.walk)."""
        return read_batch_window_raw(self.reader, batch, start_ms, end_ms, result, self._tiers)

    # -- write side -----------------------------------------------------------------------------

    def _pack(self, part: ReadPart, batch: Batch, result: TransferResult) -> list[WriteChain]:
        counters = Counters()
        adopt = None if self._scope is None else self._scope.adopter(batch)
        max_bytes, max_samples = self.target.max_request_bytes, self.target.max_samples_per_request
        if isinstance(part, QueryResult):
            chains = pack_query_result(
                part, batch.keys, self._labels, counters, max_bytes=max_bytes, max_samples=max_samples, adopt=adopt
            )
        else:
            chains = pack_read_response(
                part, batch.keys, self._labels, counters, max_bytes=max_bytes, max_samples=max_samples, adopt=adopt
            )
        if counters.fallback:
            log.debug("%d series of batch %s took the exact path (non-canonical encoding)", counters.fallback, batch.id)
        result.series += counters.series
        result.samples += counters.samples
        result.foreign_series += counters.foreign
        result.dropped_series += counters.dropped
        if counters.new:
            result.new_series = sorted({*result.new_series, *counters.new})
        if counters.non_utf8:
            result.non_utf8_series = sorted({*result.non_utf8_series, *counters.non_utf8})
        for skipped in counters.skipped:
            self._skip(result, skipped)
        return chains

    @staticmethod
    def _skip(result: TransferResult, skipped: str) -> None:
        """Set a series aside, named with its reason: the rest of the unit goes on."""
        log.warning("series not migrated: %s", skipped)
        result.skipped_series = sorted({*result.skipped_series, skipped})

    def _set_aside(self, result: TransferResult, chain: WriteChain, reason: str) -> None:
        """Take a lone non-UTF-8 series that could not be written out of the unit's counts, naming why."""
        result.series -= 1
        result.samples -= chain.samples
        result.non_utf8_series = [s for s in result.non_utf8_series if s != chain.non_utf8]
        self._skip(result, f"{chain.non_utf8}: {reason}")

    def _send_chains(self, chains: list[WriteChain], result: TransferResult, resumed: bool) -> None:
        """Chains hold disjoint series, so they go out at once; returns after every one is acknowledged."""
        t0 = time.perf_counter()
        futures = [self._pool.submit(self._send_chain, chain, resumed) for chain in chains]
        errors: list[BaseException] = []
        for chain, f in zip(chains, futures, strict=True):
            try:
                reconciled = f.result()
                result.reconciled_series += reconciled
            except WriteRejected as exc:
                if not chain.non_utf8 or exc.reasons & _SAMPLE_REASONS:
                    errors.append(exc)
                    continue
                # A lone series with label bytes that are not UTF-8, refused for them (e.g. Prometheus 3's
                # "invalid metric name or labels"): nothing else was in its requests.
                self._set_aside(
                    result,
                    chain,
                    f"label bytes are not UTF-8 and the target refused them (HTTP {exc.status}: {exc.body[:200]})",
                )
            except DecodeError:
                if not chain.non_utf8:
                    raise
                # Refused as out of order on a resumed unit: reconciling reads the series back through the
                # target's query API, which cannot name bytes that are not UTF-8 (it shows U+FFFD).
                self._set_aside(
                    result,
                    chain,
                    "label bytes are not UTF-8 and the target already holds samples of it in this resumed "
                    "window; it cannot be read back to reconcile (compare it by hand)",
                )
            except BaseException as exc:
                errors.append(exc)
        result.write_seconds += time.perf_counter() - t0
        if errors:
            raise errors[0]
        result.requests += sum(len(c.requests) for c in chains)
        result.bytes_written += sum(len(r.body) for c in chains for r in c.requests)

    def _send_chain(self, chain: WriteChain, resumed: bool) -> int:
        """Send a chain's requests in order; returns how many series needed reconciling."""
        reconciled = 0
        for request in chain.requests:
            reconciled += self._send(request, resumed)
            failpoint("unit.write")
        return reconciled

    def _send(self, request: WriteBody, resumed: bool) -> int:
        try:
            self.writer.write(request, trust_lost_answer=False)
            return 0
        except WriteRejected as exc:
            # A resend after a lost answer may be refused because the lost attempt landed, or because an
            # earlier run wrote part of the data: either way, what the target holds decides, not a guess.
            resumed = resumed or bool(getattr(exc, "after_lost_answer", False))
            if not resumed or not exc.reasons <= {RejectReason.OUT_OF_ORDER}:
                raise
            if exc.partial:
                # Thanos committed the valid samples; the refused ones are older than what each series
                # holds, i.e. written by an earlier (interrupted) run of this window.
                return request.series
            if request.series == 1:
                return self._reconcile_series(request.parts[0], exc)
            # All-or-nothing receiver (Prometheus): some series of the request are already written.
            # Resend one series at a time, so the new ones land and the old ones are reconciled.
            log.info(
                "target already holds part of a request (%s): resending %d series one by one",
                exc.body[:80],
                request.series,
            )
            reconciled = 0
            for framed in request.parts:
                reconciled += self._send(single_request(framed, samples=0), resumed)
            return reconciled

    def _reconcile_series(self, framed: bytes, refused: WriteRejected) -> int:
        """One series an all-or-nothing receiver refused as out of order on a resumed unit: read back what
        the target holds of it, check that is exactly a time prefix of these samples (an earlier attempt,
        maybe cut at other sample boundaries), and send the rest. Decodes the samples: a rare path."""
        ts = WriteRequest.FromString(framed).timeseries[0]
        labels = tuple((label.name, label.value) for label in ts.labels)
        n = len(ts.samples)
        t = np.fromiter((s.timestamp for s in ts.samples), dtype=np.int64, count=n)
        v = np.fromiter((s.value for s in ts.samples), dtype=np.float64, count=n)
        stale = v.view(np.uint64) == np.uint64(STALE_NAN_BITS)
        stored = self._stored_timestamps(labels, int(t[0]), int(t[-1]))
        newest = int(stored[-1]) if stored.size else None
        start = 0 if newest is None else int(np.searchsorted(t, newest, side="right"))
        ours = t[:start][~stale[:start]]  # stale markers are invisible through a query API
        if not np.array_equal(ours, stored):
            raise self._conflict(refused, labels, "holds samples in this window that differ from the source's")
        while start < n:
            rest = TimeSeries(labels=ts.labels)
            rest.samples.extend(ts.samples[start:])
            try:
                self.writer.write(single_request(_field1(rest.SerializeToString()), n - start))
                break
            except WriteRejected as again:
                if again.partial or not again.reasons <= {RejectReason.OUT_OF_ORDER}:
                    raise
                if not stale[start]:
                    raise self._conflict(refused, labels, "holds newer samples than this window") from None
                start += 1  # a stale marker after the newest visible sample: the earlier attempt wrote it
        log.info(
            "reconciled %s: the target held %d of this request's %d samples, sent the other %d",
            selector_string(Matcher(k, "=", val) for k, val in labels),
            min(start, n),
            n,
            n - min(start, n),
        )
        return 1

    def _stored_timestamps(self, labels: Labels, first_ms: int, last_ms: int) -> np.ndarray:
        """Sorted timestamps the target's query API shows for exactly this series in [first, last]."""
        base = self.target.promql_base
        if base is None:
            raise ConfigError(
                "the target refused a resent request as out of order, and without its query API m3migrate "
                "cannot tell which of the samples it already holds",
                hint="set the target's query_url (--target-query-url) so a resumed window is reconciled "
                "by what the target holds",
            )
        with self._query_lock:
            if self._query is None:
                self._query = PromQLClient(base, self.target, extra_params={"partial_response": "false"})
        selector = selector_string(Matcher(k, "=", val) for k, val in labels)
        raw = self._query.raw_samples(selector, last_ms, last_ms - first_ms + 1)
        want = frozenset(labels)
        found: list[int] = []
        for key, samples in raw.items():
            if frozenset(p for p in key if p[0] not in DEFAULT_IGNORE_LABELS) == want:
                found.extend(ts for ts, _ in samples if first_ms <= ts <= last_ms)
        return np.unique(np.asarray(found, dtype=np.int64))

    @staticmethod
    def _conflict(refused: WriteRejected, labels: Labels, what: str) -> WriteRejected:
        return WriteRejected(
            f"remote write: the target {what} for series {dict(labels)} (not written by this migration)",
            reasons=refused.reasons,
            endpoint=refused.endpoint,
            status=refused.status,
            body=refused.body,
            hint="another writer sends this series to the target: stop it, or migrate into a fresh tenant",
        )


def _selects(matchers: Sequence[Matcher], labels: dict[str, str]) -> bool:
    """Whether a selector selects a label set, with PromQL's semantics (absent = "", regexes anchored)."""
    for m in matchers:
        value = labels.get(m.name, "")
        exact = m.op in ("=", "!=")
        ok = value == m.value if exact else re.fullmatch(f"(?:{m.value})", value, re.DOTALL) is not None
        if ok != (m.op in ("=", "=~")):
            return False
    return True


def series_id(key: Labels) -> str:
    """A short stable id of a series' source labels (counted once across units and processes)."""
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8", "surrogateescape")).hexdigest()[:16]


_UNSET = object()
_SAMPLE_REASONS = {  # refusals of a lone non-UTF-8 series that are not about its labels: they stop the run
    RejectReason.OUT_OF_ORDER,
    RejectReason.OUT_OF_BOUNDS,
    RejectReason.TOO_OLD,
    RejectReason.DUPLICATE,
    RejectReason.TOO_LARGE,
}


class PlanScope:
    """The whole plan, for a series a batch's read returns that the batch does not list.

    Either another planned batch lists it (that batch writes it), or it reached the source after
    discovery: then the first batch in plan order whose selectors match it writes it, in every window,
    so it is written exactly once, and a relabel collision with any planned or new series stops the run
    as it stops planning. Built per process and plan; the plan-wide sets are made on first need.
    """

    def __init__(self, plan: Plan, relabeler: Relabeler) -> None:
        self.plan_id = plan.id
        self._batches = plan.batches
        self._relabeler = relabeler
        self._keys: frozenset[Labels] | None = None
        self._targets: dict[Labels, Labels] | None = None  # target labels -> source labels
        self._owner: dict[Labels, object] = {}
        self._lock = threading.Lock()

    def adopter(self, batch: Batch) -> Callable[[Labels], str | None]:
        return lambda key: self._adopt(batch, key)

    def _adopt(self, batch: Batch, key: Labels) -> str | None:
        with self._lock:
            if self._keys is None:
                self._keys = frozenset(k for b in self._batches for k in b.series)
            if key in self._keys:
                return None  # another batch's series
            owner = self._owner.get(key, _UNSET)
            if owner is _UNSET:
                labels = dict(key)
                owner = next((b.id for b in self._batches if _selects(b.matchers, labels)), batch.id)
                self._check_collision(key)
                self._owner[key] = owner
                log.warning("series %s reached the source after discovery: batch %s migrates it", labels, owner)
        return series_id(key) if owner == batch.id else None

    def _check_collision(self, key: Labels) -> None:
        out = self._relabeler(key)
        if out is None:
            return
        if self._targets is None:
            self._targets = {}
            for k in self._keys or ():
                t = self._relabeler(k)
                if t is not None:
                    self._targets[t] = k
        other = self._targets.setdefault(out, key)
        if other != key:
            raise ConfigError(
                f"series {dict(key)}, new since discovery, and {dict(other)} both become {dict(out)} after relabeling",
                hint="their samples would overwrite each other: narrow the rename rule or the selectors",
            )
