"""The read stage: one batch × [start, end] from the source, as both sinks (remote write and blocks) and the
checks (validate, verify) consume it.

Parts come as decompressed ReadResponse bytes, undecoded: the sinks walk them at the wire level
(m3migrate.wire.walk for remote write, m3migrate.tsdb's kernels for blocks), so samples are never turned
into Python objects. The stage owns what every reader needs to get right: each tier's part of the range
pinned to its M3 namespace, exact edges (RemoteReadClient.read_raw), and a source limit answered by
splitting the read (by series, then by time) instead of accepting a truncated answer. Parts come one at
a time, so memory holds one part.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.errors import SourceLimitExceeded
from m3migrate.plan.batches import Batch, split_batch
from m3migrate.plan.tiers import Tier, split_by_tier
from m3migrate.prompb import QueryResult
from m3migrate.wire.codec import decode_read_response

log = logging.getLogger("m3migrate.read")

MIN_SPLIT_MS = 60_000  # below this a single series is not split further by time


class ReadTally(Protocol):
    """Where the read stage counts what it did (TransferResult and BackfillResult have these fields)."""

    bytes_read: int
    read_seconds: float
    splits: int


def read_batch_window_raw(
    reader: RemoteReadClient,
    batch: Batch,
    start_ms: int,
    end_ms: int,
    tally: ReadTally,
    tiers: Sequence[Tier] = (),
) -> Iterator[bytes]:
    """Decompressed ReadResponses covering batch × [start, end], each tier's part from its namespace."""
    for tier, a, b in split_by_tier(tiers, start_ms, end_ms):
        if tier is not None:
            tier.check_not_expired(a)
        yield from _read_pinned(reader, batch, a, b, tally, tier.headers() if tier else None)


def read_batch_window(
    reader: RemoteReadClient,
    batch: Batch,
    start_ms: int,
    end_ms: int,
    tally: ReadTally,
    tiers: Sequence[Tier] = (),
) -> Iterator[QueryResult]:
    """read_batch_window_raw decoded into QueryResults, for the checks that look at samples (validate, verify)."""
    for raw in read_batch_window_raw(reader, batch, start_ms, end_ms, tally, tiers):
        yield decode_read_response(raw, endpoint=reader.endpoint)


def _read_pinned(
    reader: RemoteReadClient,
    batch: Batch,
    start_ms: int,
    end_ms: int,
    tally: ReadTally,
    pin: dict[str, str] | None,
) -> Iterator[bytes]:
    t0 = time.perf_counter()
    try:
        raw = reader.read_raw(batch.matchers, start_ms, end_ms, pin=pin)
    except SourceLimitExceeded:
        tally.read_seconds += time.perf_counter() - t0
        tally.splits += 1
        if len(batch.series) > 1:
            parts = split_batch(batch)
            log.info("batch %s hit a source limit: split into %d parts by series", batch.id, len(parts))
            for sub in parts:
                yield from _read_pinned(reader, sub, start_ms, end_ms, tally, pin)
            return
        if end_ms - start_ms < MIN_SPLIT_MS:
            raise
        mid = start_ms + (end_ms - start_ms) // 2
        log.info("batch %s hit a source limit: split [%d, %d] in time", batch.id, start_ms, end_ms)
        yield from _read_pinned(reader, batch, start_ms, mid, tally, pin)
        yield from _read_pinned(reader, batch, mid + 1, end_ms, tally, pin)
        return
    tally.bytes_read += len(raw)
    tally.read_seconds += time.perf_counter() - t0
    yield raw
