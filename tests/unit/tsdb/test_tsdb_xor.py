"""XOR chunk encoder: Prometheus' own vectors, round trips (hypothesis), many series at once."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from m3migrate.tsdb.xor import chunk_starts, decode_xor_chunk, encode_xor_chunk, encode_xor_chunks
from m3migrate.wire.codec import STALE_NAN_BITS


def _bits(values: list[float]) -> np.ndarray:
    return np.array(values, np.float64).view(np.uint64)


def test_one_sample_chunk_matches_prometheus_2_42_bytes():
    """prometheus v2.42 storage/remote/read_handler_test.go: t=7200000, v=12000 (v2's trailing zero byte)."""
    chunk = encode_xor_chunk(np.array([7_200_000]), _bits([12000.0]))
    assert chunk == bytes.fromhex("000180F4EE0640C770000000000000")


def test_nan_payloads_keep_their_bits():
    bits = np.array([STALE_NAN_BITS, 0x7FF8000000000000, 0x7FF8000000000001, 0, 1 << 63], np.uint64)
    t = np.arange(5, dtype=np.int64) * 15_000
    assert decode_xor_chunk(encode_xor_chunk(t, bits)) == (t.tolist(), bits.tolist())


timestamps = st.lists(st.integers(min_value=1, max_value=10**13), min_size=1, max_size=300).map(
    lambda steps: (np.cumsum(np.array(steps, dtype=np.int64)) - 10**12).astype(np.int64)
)
value_bits = st.integers(min_value=0, max_value=2**64 - 1)
pretty = st.sampled_from([0.0, -0.0, 1.0, 0.1, 1e300, float("inf"), -float("inf")]).map(
    lambda f: struct.unpack("<Q", struct.pack("<d", f))[0]
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), per_chunk=st.integers(min_value=1, max_value=200))
def test_round_trip(data, per_chunk):
    t = data.draw(timestamps)
    bits = np.array(data.draw(st.lists(value_bits | pretty, min_size=len(t), max_size=len(t))), np.uint64)
    chunks = encode_xor_chunks(t, bits, chunk_starts(len(t), per_chunk))
    got_t: list[int] = []
    got_v: list[int] = []
    for c in chunks:
        a, b = decode_xor_chunk(c)
        got_t += a
        got_v += b
    assert got_t == t.tolist() and got_v == bits.tolist()


def test_many_series_batch_equals_one_by_one():
    rng = np.random.default_rng(3)
    ts, vs, starts, singles = [], [], [], []
    offset = 0
    for k in range(200):
        n = int(rng.integers(1, 500))
        t = 1_700_000_000_000 + np.cumsum(rng.choice([15_000, 60_000, 60_001], n)).astype(np.int64)
        v = np.round(np.cumsum(rng.normal(size=n)), k % 5).view(np.uint64)
        s = chunk_starts(n)
        singles += encode_xor_chunks(t, v, s)
        ts.append(t)
        vs.append(v)
        starts.append(s + offset)
        offset += n
    assert encode_xor_chunks(np.concatenate(ts), np.concatenate(vs), np.concatenate(starts)) == singles
