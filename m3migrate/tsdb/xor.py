"""Prometheus' XOR (Gorilla) chunk encoding: the format, the chunk cutting and a reference decoder.

The encoder itself is compiled (:mod:`m3migrate.tsdb.kernels`, numba): Gorilla's value window depends
on the previous sample, so a vectorised numpy encoder needed tens of temporaries per sample and a Python
loop over sample positions (5 M samples/s, ~0.5 KB of peak memory per sample in flight); compiled it
is a plain loop over the samples.

Format (prometheus v2.42 tsdb/chunkenc/xor.go, bstream.go): uint16 sample count; sample 0 as
varint t and 64 raw value bits; sample 1 as uvarint(t1 - t0) and a value XOR; then per sample a
delta-of-delta code (0 | 10+14 | 110+17 | 1110+20 | 1111+64 bits) and a value XOR (0 | 10+meaningful
bits in the current window | 11+5 bits leading+6 bits length+meaningful bits, new window). Values
are raw IEEE-754 bits, so NaN payloads (Prometheus' stale marker) survive exactly.

Prometheus 2.x leaves one extra zero byte at the end of a chunk whose last write was a whole number
of bytes starting on a byte boundary (fixed in 3.0); both forms are valid, and we reproduce 2.x so
that our chunks are byte-identical to Prometheus 2.42's.
"""

from __future__ import annotations

import numpy as np

from m3migrate.tsdb.encoding import read_uvarint, read_varint
from m3migrate.tsdb.errors import InvalidSeries
from m3migrate.tsdb.kernels import ENCODING_XOR, xor_records

__all__ = [
    "ENCODING_XOR",
    "MAX_SAMPLES_PER_CHUNK",
    "SAMPLES_PER_CHUNK",
    "check_increasing",
    "chunk_starts",
    "decode_xor_chunk",
    "encode_xor_chunk",
    "encode_xor_chunks",
]
SAMPLES_PER_CHUNK = 120  # Prometheus' target; a chunk holds at most 65535 (uint16 count)
MAX_SAMPLES_PER_CHUNK = 65_535


def chunk_starts(n: int, per_chunk: int = SAMPLES_PER_CHUNK) -> np.ndarray:
    """Start indices cutting n samples into ceil(n / per_chunk) chunks of nearly equal size."""
    if n <= 0:
        return np.zeros(0, np.int64)
    k = -(-n // per_chunk)
    return (np.arange(k, dtype=np.int64) * n) // k


def encode_xor_chunks(timestamps: np.ndarray, value_bits: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """Encode samples into XOR chunks; chunk c holds samples [starts[c], starts[c+1]).

    ``timestamps`` int64 ms, strictly increasing inside each chunk; ``value_bits`` the uint64 IEEE-754
    bits of the values (``values.view(np.uint64)``); ``starts`` ascending, starting at 0. Returns the
    chunk data (what follows the encoding byte in a segment file) per chunk. The block writer takes
    the records whole from :func:`m3migrate.tsdb.kernels.xor_records` instead (no bytes per chunk).
    """
    t = np.ascontiguousarray(timestamps, dtype=np.int64)
    v = np.ascontiguousarray(value_bits, dtype=np.uint64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    n = len(t)
    if len(v) != n:
        raise InvalidSeries(f"{n} timestamps but {len(v)} values")
    if n == 0:
        return []
    bounds = np.append(starts, n)
    counts = np.diff(bounds)
    if starts[0] != 0 or (counts < 1).any() or (counts > MAX_SAMPLES_PER_CHUNK).any():
        raise InvalidSeries("chunk starts must begin at 0 and give 1..65535 samples per chunk")
    check_increasing(t, bounds)
    records, _, _, _, _, at, size = xor_records(t, v, bounds, MAX_SAMPLES_PER_CHUNK)
    raw = records.tobytes()
    return [raw[a : a + k] for a, k in zip(at.tolist(), size.tolist(), strict=True)]


def check_increasing(t: np.ndarray, offsets: np.ndarray) -> None:
    """Timestamps strictly increase inside each run offsets[i]:offsets[i + 1] (Prometheus' appender would
    take any order, but a chunk out of order cannot be read back)."""
    if len(t) < 2:
        return
    step_ok = t[1:] > t[:-1]
    if step_ok.all():
        return
    first = np.zeros(len(t), bool)
    first[offsets[:-1][offsets[:-1] < len(t)]] = True
    bad = np.flatnonzero(~step_ok & ~first[1:])
    if len(bad):
        k = int(bad[0]) + 1
        raise InvalidSeries(
            f"timestamps must be strictly increasing inside a chunk: {int(t[k - 1])} then {int(t[k])}",
            hint="sort each series by time and drop duplicate timestamps first",
        )


def encode_xor_chunk(timestamps: np.ndarray, value_bits: np.ndarray) -> bytes:
    """One chunk of all the given samples (at most 65535)."""
    return encode_xor_chunks(timestamps, value_bits, np.zeros(1, np.int64))[0]


def decode_xor_chunk(data: bytes) -> tuple[list[int], list[int]]:
    """Decode a chunk into (timestamps, value bits): a plain reference decoder for tests and checks."""
    count = int.from_bytes(data[:2], "big")
    if count == 0:
        return [], []
    t, pos = read_varint(data, 2)
    v = int.from_bytes(data[pos : pos + 8], "big")
    pos += 8
    ts, vs = [t], [v]
    if count == 1:
        return ts, vs
    delta, pos = read_uvarint(data, pos)
    reader = _BitReader(data, pos * 8)
    lead, trail = 0xFF, 0
    for i in range(1, count):
        if i > 1:
            n = 0
            while n < 4 and reader.bit():
                n += 1
            width = {0: 0, 1: 14, 2: 17, 3: 20, 4: 64}[n]
            if width:
                dod = reader.bits(width)
                if (width < 64 and dod > 1 << (width - 1)) or (width == 64 and dod >= 1 << 63):
                    dod -= 1 << width
                delta += dod
        t += delta
        if reader.bit():
            if reader.bit():
                lead = reader.bits(5)
                sig = reader.bits(6) or 64
                trail = 64 - lead - sig
            elif lead == 0xFF:
                raise ValueError("XOR chunk reuses a window before defining one")
            v ^= reader.bits(64 - lead - trail) << trail
        ts.append(t)
        vs.append(v)
    return ts, vs


class _BitReader:
    def __init__(self, data: bytes, bitpos: int) -> None:
        self.value = int.from_bytes(data, "big")
        self.total = len(data) * 8
        self.pos = bitpos

    def bits(self, n: int) -> int:
        if self.pos + n > self.total:
            raise ValueError("XOR chunk ends early")
        self.pos += n
        return (self.value >> (self.total - self.pos)) & ((1 << n) - 1)

    def bit(self) -> int:
        return self.bits(1)
