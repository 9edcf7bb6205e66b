"""Moves one batch × window: remote read, relabel, pack, remote write, exactly.

The batch's series are the only ones written; samples pass through as protobuf bytes; a source limit
splits the read (by series, then by time) instead of truncating it; refusals from data the target
already holds (a resumed window) are reconciled series by series instead of failing the migration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol

from m3migrate.codec import (
    WriteBody,
    WriteChain,
    decode_read_response,
    encode_labels,
    pack_write_requests,
    single_request,
)
from m3migrate.config import SourceSettings, TargetSettings
from m3migrate.errors import MalformedResponse, RejectReason, SourceLimitExceeded, WriteRejected
from m3migrate.failpoints import failpoint
from m3migrate.http import RetryPolicy
from m3migrate.plan import Batch, Labels, Window, split_batch
from m3migrate.prompb import QueryResult, TimeSeries
from m3migrate.relabel import Relabeler
from m3migrate.remote_read import RemoteReadClient
from m3migrate.remote_write import RemoteWriteClient

log = logging.getLogger("m3migrate.transfer")

MIN_SPLIT_MS = 60_000  # below this a single series is not split further by time
LABEL_CACHE_MAX = 100_000  # relabeled + encoded label sets kept between windows (~0.3 KB each)


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
    foreign_series: int = 0
    dropped_series: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Counters:
    series: int = 0
    samples: int = 0
    foreign: int = 0
    dropped: int = 0


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
        self._label_bytes: dict[Labels, bytes] = {}  # source labels -> encoded target labels (b"": dropped)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.reader.close()
        self.writer.close()

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public ---------------------------------------------------------------------------------

    def run(self, batch: Batch, window: Window, *, resumed: bool = False) -> TransferResult:
        """Copy the batch's series over the window; returns only after the target acknowledged all.

        ``resumed`` says an earlier attempt may have written part of this batch × window (a crash or a
        retry): only then is an "out of order" refusal taken as "already written" and reconciled. On a
        first attempt it means something else wrote newer data, and it fails loudly instead.
        """
        result = TransferResult(batch_id=batch.id, window=window.index)
        read_retries0, write_retries0 = self.reader.stats.retries, self.writer.stats.retries
        for part in self._reads(batch, window.start_ms, window.end_ms, result):
            self._write_result(part, batch, result, resumed)
            del part
        result.read_retries = self.reader.stats.retries - read_retries0  # approximate under concurrency
        result.write_retries = self.writer.stats.retries - write_retries0
        return result

    def fetch(self, batch: Batch, window: Window) -> tuple[list[QueryResult], TransferResult]:
        """The read half of :meth:`run`, so a scheduler can read one window ahead while the previous
        window of the same batch is still being written (memory: one batch × window)."""
        result = TransferResult(batch_id=batch.id, window=window.index)
        retries0 = self.reader.stats.retries
        parts = list(self._reads(batch, window.start_ms, window.end_ms, result))
        result.read_retries = self.reader.stats.retries - retries0  # approximate under concurrency
        return parts, result

    def store(self, parts: list[QueryResult], batch: Batch, result: TransferResult, *, resumed: bool = False) -> None:
        """The write half of :meth:`run`: write what :meth:`fetch` read (consumes ``parts``)."""
        retries0 = self.writer.stats.retries
        while parts:
            self._write_result(parts.pop(0), batch, result, resumed)
        result.write_retries = self.writer.stats.retries - retries0

    # -- read side ------------------------------------------------------------------------------

    def _reads(self, batch: Batch, start_ms: int, end_ms: int, result: TransferResult) -> Iterator[QueryResult]:
        return read_batch_window(self.reader, batch, start_ms, end_ms, result)

    # -- write side -----------------------------------------------------------------------------

    def _series_for_write(
        self, qr: QueryResult, batch: Batch, counters: _Counters
    ) -> Iterator[tuple[bytes, TimeSeries]]:
        keys = batch.keys
        for ts in qr.timeseries:
            labels = tuple((label.name, label.value) for label in ts.labels)
            key = tuple(sorted(labels))
            if len(key) != len({n for n, _ in key}):
                raise MalformedResponse(
                    f"remote read: the source sent a series with duplicate label names: {dict(labels)}",
                    endpoint=self.reader.endpoint,
                )
            if key not in keys:
                counters.foreign += 1  # matched the read but belongs to another batch (or is new)
                continue
            if not ts.samples:
                continue
            label_bytes = self._label_bytes.get(key)
            if label_bytes is None:
                out = self.relabeler(key)
                label_bytes = b"" if out is None else encode_labels(out)
                with self._lock:
                    if len(self._label_bytes) >= LABEL_CACHE_MAX:
                        self._label_bytes.clear()  # bounded memory on migrations with millions of series
                    self._label_bytes[key] = label_bytes
            if not label_bytes:
                counters.dropped += 1
                continue
            counters.series += 1
            counters.samples += len(ts.samples)
            ts.ClearField("labels")
            yield label_bytes, ts

    def _write_result(self, qr: QueryResult, batch: Batch, result: TransferResult, resumed: bool) -> None:
        counters = _Counters()
        chains = pack_write_requests(
            self._series_for_write(qr, batch, counters),
            max_bytes=self.target.max_request_bytes,
            max_samples=self.target.max_samples_per_request,
        )
        result.series += counters.series
        result.samples += counters.samples
        result.foreign_series += counters.foreign
        result.dropped_series += counters.dropped
        t0 = time.perf_counter()
        futures = [self._pool.submit(self._send_chain, chain, resumed) for chain in chains]
        errors: list[BaseException] = []
        for f in futures:
            try:
                reconciled = f.result()
                result.reconciled_series += reconciled
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
            self.writer.write(request)
            return 0
        except WriteRejected as exc:
            if not resumed or not exc.reasons <= {RejectReason.OUT_OF_ORDER}:
                raise
            if exc.partial:
                # Thanos committed the valid samples; the refused ones are older than what each series
                # holds, i.e. written by an earlier (interrupted) run of this window.
                return request.series
            if request.series == 1:
                return 1  # all-or-nothing receiver: this series already holds these samples
            # All-or-nothing receiver (Prometheus): some series of the request are already written.
            # Resend one series at a time, so the new ones land and the old ones are skipped.
            log.info(
                "target already holds part of a request (%s): resending %d series one by one",
                exc.body[:80],
                request.series,
            )
            reconciled = 0
            for framed in request.parts:
                reconciled += self._send(single_request(framed, samples=0), resumed)
            return reconciled


class ReadTally(Protocol):
    """Where read_batch_window counts what it did (TransferResult has these fields)."""

    bytes_read: int
    read_seconds: float
    splits: int


def read_batch_window(
    reader: RemoteReadClient, batch: Batch, start_ms: int, end_ms: int, tally: ReadTally
) -> Iterator[QueryResult]:
    """Decoded read results covering batch × [start, end]; a source limit splits the read (by series,
    then by time), never truncates it. Parts come one at a time, so memory holds one part."""
    t0 = time.perf_counter()
    try:
        raw = reader.read_raw(batch.matchers, start_ms, end_ms)
    except SourceLimitExceeded:
        tally.read_seconds += time.perf_counter() - t0
        tally.splits += 1
        if len(batch.series) > 1:
            parts = split_batch(batch)
            log.info("batch %s hit a source limit: split into %d parts by series", batch.id, len(parts))
            for sub in parts:
                yield from read_batch_window(reader, sub, start_ms, end_ms, tally)
            return
        if end_ms - start_ms < MIN_SPLIT_MS:
            raise
        mid = start_ms + (end_ms - start_ms) // 2
        log.info("batch %s hit a source limit: split [%d, %d] in time", batch.id, start_ms, end_ms)
        yield from read_batch_window(reader, batch, start_ms, mid, tally)
        yield from read_batch_window(reader, batch, mid + 1, end_ms, tally)
        return
    parsed = decode_read_response(raw, endpoint=reader.endpoint)
    tally.bytes_read += len(raw)
    tally.read_seconds += time.perf_counter() - t0
    yield parsed
