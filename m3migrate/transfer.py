"""Moves one batch × window: remote read, relabel, pack, remote write, exactly.

The batch's series are the only ones written; samples pass through as the bytes the source sent
(m3migrate.wire walks the read response per series, never per sample); a source limit
splits the read (by series, then by time) instead of truncating it; refusals from data the target
already holds (a resumed window) are reconciled series by series instead of failing the migration.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

from m3migrate.codec import WriteBody, WriteChain, decode_read_response, single_request
from m3migrate.config import SourceSettings, TargetSettings
from m3migrate.errors import RejectReason, SourceLimitExceeded, WriteRejected
from m3migrate.failpoints import failpoint
from m3migrate.http import RetryPolicy
from m3migrate.plan import Batch, Window, split_batch
from m3migrate.prompb import QueryResult
from m3migrate.relabel import Relabeler
from m3migrate.remote_read import RemoteReadClient
from m3migrate.remote_write import RemoteWriteClient
from m3migrate.wire import Counters, LabelCache, pack_query_result, pack_read_response, tune_malloc

log = logging.getLogger("m3migrate.transfer")

MIN_SPLIT_MS = 60_000  # below this a single series is not split further by time
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
    foreign_series: int = 0
    dropped_series: int = 0

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
        tune_malloc()  # once per process: MB-sized buffers per unit stay mapped instead of faulting back in

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
        """Decompressed ReadResponses, left undecoded: the write side walks them (m3migrate.wire)."""
        return _read_parts(self.reader, batch, start_ms, end_ms, result, bytes)

    # -- write side -----------------------------------------------------------------------------

    def _pack(self, part: ReadPart, batch: Batch, result: TransferResult) -> list[WriteChain]:
        counters = Counters()
        pack = pack_query_result if isinstance(part, QueryResult) else pack_read_response
        chains = pack(
            part,
            batch.keys,
            self._labels,
            counters,
            max_bytes=self.target.max_request_bytes,
            max_samples=self.target.max_samples_per_request,
        )
        if counters.fallback:
            log.debug("%d series of batch %s took the exact path (non-canonical encoding)", counters.fallback, batch.id)
        result.series += counters.series
        result.samples += counters.samples
        result.foreign_series += counters.foreign
        result.dropped_series += counters.dropped
        return chains

    def _send_chains(self, chains: list[WriteChain], result: TransferResult, resumed: bool) -> None:
        """Chains hold disjoint series, so they go out at once; returns after every one is acknowledged."""
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
    return _read_parts(
        reader, batch, start_ms, end_ms, tally, lambda raw: decode_read_response(raw, endpoint=reader.endpoint)
    )


_Part = TypeVar("_Part")


def _read_parts(
    reader: RemoteReadClient,
    batch: Batch,
    start_ms: int,
    end_ms: int,
    tally: ReadTally,
    decode: Callable[[bytes], _Part],
) -> Iterator[_Part]:
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
                yield from _read_parts(reader, sub, start_ms, end_ms, tally, decode)
            return
        if end_ms - start_ms < MIN_SPLIT_MS:
            raise
        mid = start_ms + (end_ms - start_ms) // 2
        log.info("batch %s hit a source limit: split [%d, %d] in time", batch.id, start_ms, end_ms)
        yield from _read_parts(reader, batch, start_ms, mid, tally, decode)
        yield from _read_parts(reader, batch, mid + 1, end_ms, tally, decode)
        return
    parsed = decode(raw)
    tally.bytes_read += len(raw)
    tally.read_seconds += time.perf_counter() - t0
    yield parsed
