"""The wire path (m3migrate.wire.walk): samples passed through as bytes must give exactly the requests the
decoding path gave, and anything non-canonical must take that exact path (no servers needed).

The reference below is the transfer's data path before m3migrate.wire.walk existed, kept verbatim: decode
the ReadResponse, build sorted label keys, relabel, clear the labels, pack with pack_write_requests.
"""

from __future__ import annotations

import os
import platform
import random
import struct
from collections.abc import Sequence

import pytest
import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3migrate.errors import MalformedResponse
from m3migrate.prompb import ReadResponse, Sample, TimeSeries, WriteRequest
from m3migrate.wire.codec import (
    STALE_NAN_BITS,
    WriteChain,
    decode_read_response,
    encode_labels,
    pack_write_requests,
    series_labels,
)
from m3migrate.wire.walk import (
    BATCH_TABLES_MAX,
    Counters,
    LabelCache,
    count_samples,
    pack_query_result,
    pack_read_response,
    series_spans,
)

EP = "http://source/api/v1/read"
Labels = tuple[tuple[str, str], ...]
SPECIAL_BITS = [
    STALE_NAN_BITS,
    0x7FF8000000000000,  # NaN
    0xFFF8000000000000,  # negative quiet NaN
    0x7FF0000000000001,  # signalling NaN
    0x8000000000000000,  # -0.0
    0x0000000000000000,  # 0.0 (omitted by proto3: that sample's record is shorter)
    0x0000000000000001,  # smallest subnormal
    0x7FF0000000000000,  # +Inf
    0xFFF0000000000000,  # -Inf
]
NOW_MS = 1_764_000_000_000  # timestamps of today: 6-byte varints


def from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def bits_of(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def relabel(key: Labels) -> Labels | None:
    """What the default relabeler does (add _source), plus a drop rule to exercise dropped series."""
    if ("drop", "1") in key:
        return None
    return tuple(sorted((*key, ("_source", "m3db"))))


# -- the pre-wire data path, verbatim -------------------------------------------------------------


def reference(raw: bytes, keys: frozenset[Labels], *, max_bytes: int, max_samples: int):
    qr = decode_read_response(raw, endpoint=EP)
    counters = Counters()

    def series():
        for ts in qr.timeseries:
            labels = series_labels(ts)  # bytes that are not UTF-8 as surrogates, as the wire path reads them
            key = tuple(sorted(labels))
            if len(key) != len({n for n, _ in key}):
                raise MalformedResponse(
                    f"remote read: the source sent a series with duplicate label names: {dict(labels)}", endpoint=EP
                )
            if key not in keys:
                counters.foreign += 1
                continue
            if not ts.samples:
                continue
            out = relabel(key)
            label_bytes = b"" if out is None else encode_labels(out)
            if not label_bytes:
                counters.dropped += 1
                continue
            counters.series += 1
            counters.samples += len(ts.samples)
            ts.ClearField("labels")
            yield label_bytes, ts

    chains = pack_write_requests(series(), max_bytes=max_bytes, max_samples=max_samples)
    return chains, counters


def shape(chains: list[WriteChain]) -> list[list[tuple]]:
    """Everything a chain carries, bodies byte for byte."""
    return [[(r.body, r.series, r.samples, r.raw_bytes, list(r.parts)) for r in c.requests] for c in chains]


def decoded_series(chains: list[WriteChain]) -> list[list[tuple]]:
    """Per request: (labels, [(timestamp, value bits)]) of each series, as the target decodes them."""
    out = []
    for chain in chains:
        for request in chain.requests:
            wr = WriteRequest.FromString(snappy.decompress(request.body))
            out.append(
                [
                    (
                        tuple((lb.name, lb.value) for lb in ts.labels),
                        [(s.timestamp, bits_of(s.value)) for s in ts.samples],
                    )
                    for ts in wr.timeseries
                ]
            )
    return out


def wire(raw: bytes, keys: frozenset[Labels], *, max_bytes: int, max_samples: int, cache: LabelCache | None = None):
    counters = Counters()
    cache = cache or LabelCache(relabel, endpoint=EP)
    chains = pack_read_response(raw, keys, cache, counters, max_bytes=max_bytes, max_samples=max_samples)
    return chains, counters


def same_counts(a: Counters, b: Counters) -> bool:
    return (a.series, a.samples, a.foreign, a.dropped) == (b.series, b.samples, b.foreign, b.dropped)


# -- building read responses ----------------------------------------------------------------------


def response(series: Sequence[tuple[Sequence[tuple[str, str]], Sequence[tuple[int, float]]]]) -> bytes:
    """A canonical (upb-encoded) ReadResponse; labels in the order given (the source may not sort)."""
    rr = ReadResponse()
    qr = rr.results.add()
    for labels, samples in series:
        ts = qr.timeseries.add()
        for name, value in labels:
            ts.labels.add(name=name, value=value)
        for t, v in samples:
            ts.samples.add(timestamp=t, value=v)
    return rr.SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field, hand-encoded."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def label_field(name: str, value: str) -> bytes:
    return ld(1, ld(1, name.encode()) + ld(2, value.encode()))


def sample_field(t: int, v: float) -> bytes:
    return ld(2, Sample(timestamp=t, value=v).SerializeToString())


def wrap(*series_payloads: bytes, extra_qr: bytes = b"", extra_rr: bytes = b"") -> bytes:
    """A ReadResponse from hand-encoded TimeSeries payloads (plus optional foreign fields)."""
    qr = b"".join(ld(1, p) for p in series_payloads) + extra_qr
    return ld(1, qr) + extra_rr


# -- strategies -----------------------------------------------------------------------------------

names = st.sampled_from(["__name__", "a", "b", "job", "instance", "le", "drop", "zone"])
label_sets = st.dictionaries(names, st.text(max_size=6), min_size=1, max_size=5)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(SPECIAL_BITS).map(from_bits),
    st.just(0.0),
)
timestamps = st.one_of(
    st.integers(min_value=NOW_MS - 10**9, max_value=NOW_MS + 10**9),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # any varint length, negatives (10 bytes)
    st.just(0),
)


@st.composite
def series_sets(draw):
    """Series with random labels (shuffled encoding order, some dropped or foreign) and samples that
    are uniform (one record size: the strided fast path) or mixed (0.0 values, odd timestamps)."""
    out, keys, seen = [], set(), set()
    for _ in range(draw(st.integers(0, 7))):
        labels = draw(label_sets)
        if draw(st.integers(0, 5)) == 0:
            labels["drop"] = "1"
        key = tuple(sorted(labels.items()))
        if key in seen:
            continue
        seen.add(key)
        if draw(st.integers(0, 4)):  # most belong to the batch
            keys.add(key)
        order = list(key)
        draw(st.randoms(use_true_random=False)).shuffle(order)
        n = draw(st.integers(0, 60))
        if draw(st.booleans()):
            step = draw(st.integers(1, 60_000))
            samples = [(NOW_MS + i * step, draw(values.filter(lambda v: bits_of(v) != 0))) for i in range(n)]
        else:
            samples = [(draw(timestamps), draw(values)) for _ in range(n)]
        out.append((order, samples))
    return out, frozenset(keys)


bounds = st.tuples(st.integers(60, 4000), st.integers(1, 80))  # max_bytes, max_samples


# -- equivalence ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(series_sets(), bounds)
def test_property_wire_requests_are_byte_identical_to_the_decoding_path(data, bound) -> None:
    series, keys = data
    max_bytes, max_samples = bound
    raw = response(series)
    want, want_counts = reference(raw, keys, max_bytes=max_bytes, max_samples=max_samples)
    cache = LabelCache(relabel, endpoint=EP)
    for _ in range(2):  # cold, then every label prefix known
        got, counts = wire(raw, keys, max_bytes=max_bytes, max_samples=max_samples, cache=cache)
        assert shape(got) == shape(want)
        assert same_counts(counts, want_counts) and counts.fallback == 0


@settings(max_examples=100, deadline=None)
@given(series_sets(), bounds)
def test_property_exact_path_for_decoded_results_matches_the_reference(data, bound) -> None:
    series, keys = data
    max_bytes, max_samples = bound
    raw = response(series)
    want, want_counts = reference(raw, keys, max_bytes=max_bytes, max_samples=max_samples)
    counts = Counters()
    got = pack_query_result(
        decode_read_response(raw, endpoint=EP),
        keys,
        LabelCache(relabel, endpoint=EP),
        counts,
        max_bytes=max_bytes,
        max_samples=max_samples,
    )
    assert shape(got) == shape(want) and same_counts(counts, want_counts)


def test_stale_markers_nan_payloads_and_zero_values_pass_bit_for_bit() -> None:
    labels = [("__name__", "up"), ("job", "node")]
    samples = [(NOW_MS + i * 15_000, from_bits(b)) for i, b in enumerate(SPECIAL_BITS * 3)]
    raw = response([(labels, samples)])
    keys = frozenset({tuple(labels)})
    got, counts = wire(raw, keys, max_bytes=1 << 20, max_samples=1000)
    assert counts.samples == len(samples) and counts.fallback == 0
    (((out_labels, out_samples),),) = decoded_series(got)
    assert out_labels == (("__name__", "up"), ("_source", "m3db"), ("job", "node"))
    assert out_samples == [(t, bits_of(v)) for t, v in samples]


def test_a_huge_series_splits_into_one_ordered_chain_like_pack_write_requests() -> None:
    rng = random.Random(7)
    labels = [("__name__", "big"), ("i", "1")]
    samples = [(NOW_MS + i * 15_000, rng.choice([0.0, rng.random(), from_bits(STALE_NAN_BITS)])) for i in range(5000)]
    small = [([("__name__", "small"), ("i", str(i))], samples[:10]) for i in range(5)]
    raw = response([*small[:2], (labels, samples), *small[2:]])
    keys = frozenset(tuple(sorted(lbl)) for lbl, _ in [*small, (labels, samples)])
    for max_bytes, max_samples, split in [(1 << 20, 700, True), (9000, 100_000, True), (1 << 20, 1 << 20, False)]:
        want, want_counts = reference(raw, keys, max_bytes=max_bytes, max_samples=max_samples)
        got, counts = wire(raw, keys, max_bytes=max_bytes, max_samples=max_samples)
        assert shape(got) == shape(want) and same_counts(counts, want_counts)
        assert (max(len(c.requests) for c in got) > 1) == split


def test_uniform_records_are_counted_by_stride_and_mixed_ones_by_upb() -> None:
    uniform = TimeSeries(samples=[Sample(timestamp=NOW_MS + i, value=1.5) for i in range(50)]).SerializeToString()
    assert len(uniform) == 50 * 18 and count_samples(uniform, 0, len(uniform)) == 50
    mixed = TimeSeries(samples=[Sample(timestamp=NOW_MS + i, value=i % 3) for i in range(50)]).SerializeToString()
    assert count_samples(mixed, 0, len(mixed)) == 50
    assert count_samples(b"xx" + mixed + b"yy", 2, 2 + len(mixed)) == 50
    assert count_samples(b"", 0, 0) == 0
    assert count_samples(uniform[:-1], 0, len(uniform) - 1) == -1  # truncated record
    with_label = uniform + label_field("a", "b")
    assert count_samples(with_label, 0, len(with_label)) == -1
    with_unknown = uniform + _varint(9 << 3) + _varint(5)  # field 9, varint
    assert count_samples(with_unknown, 0, len(with_unknown)) == -1
    # a record whose length byte matches the stride but whose tag is not samples' (0x12)
    odd = uniform[:18] + b"\x1a" + uniform[19:]
    assert count_samples(odd, 0, len(odd)) == -1


# -- non-canonical encodings: that series takes the exact path -------------------------------------


def _check_fallback(raw: bytes, keys: frozenset[Labels], fallbacks: int, *, byte_identical: bool = True) -> None:
    want, want_counts = reference(raw, keys, max_bytes=1 << 20, max_samples=1000)
    got, counts = wire(raw, keys, max_bytes=1 << 20, max_samples=1000)
    assert same_counts(counts, want_counts)
    assert counts.fallback == fallbacks
    if byte_identical:
        assert shape(got) == shape(want)
    assert decoded_series(got) == decoded_series(want)


KEY_A: Labels = (("__name__", "a"), ("job", "x"))
KEY_B: Labels = (("__name__", "b"), ("job", "x"))
CANONICAL_B = label_field("__name__", "b") + label_field("job", "x") + sample_field(NOW_MS, 2.0)


def test_a_label_after_a_sample_takes_the_exact_path() -> None:
    odd = (
        label_field("__name__", "a") + sample_field(NOW_MS, 1.0) + label_field("job", "x") + sample_field(NOW_MS + 1, 3)
    )
    _check_fallback(wrap(odd, CANONICAL_B), frozenset({KEY_A, KEY_B}), fallbacks=1)


@pytest.mark.parametrize(
    "extra",
    [
        ld(3, label_field("trace_id", "abc") + b"\x11" + struct.pack("<d", 1.0) + b"\x18\x05"),  # an exemplar
        ld(4, b"\x08\x01"),  # a native histogram (field 4, not decoded here)
        _varint(9 << 3) + _varint(77),  # an unknown varint field
        ld(15, b"opaque"),  # an unknown length-delimited field
    ],
    ids=["exemplar", "histogram", "unknown-varint", "unknown-bytes"],
)
def test_exemplars_histograms_and_unknown_fields_take_the_exact_path(extra: bytes) -> None:
    samples = sample_field(NOW_MS, 1.0) + sample_field(NOW_MS + 15_000, 0.0)
    odd = label_field("__name__", "a") + label_field("job", "x") + samples + extra
    _check_fallback(wrap(odd, CANONICAL_B), frozenset({KEY_A, KEY_B}), fallbacks=1)


def test_unknown_fields_beside_the_series_decode_the_whole_response() -> None:
    keys = frozenset({KEY_B})
    for raw in (wrap(CANONICAL_B, extra_qr=ld(7, b"x")), wrap(CANONICAL_B, extra_rr=_varint(3 << 3) + b"\x01")):
        assert series_spans(raw) is None
        _check_fallback(raw, keys, fallbacks=0)


def test_non_canonical_sample_bodies_pass_through_and_decode_the_same() -> None:
    """Timestamp before value inside a Sample: framing is fine, so the bytes go as they are; the target
    decodes exactly what the exact path would have re-encoded."""
    body = b"\x10" + _varint(NOW_MS) + b"\x09" + struct.pack("<d", 4.25)
    odd = label_field("__name__", "a") + label_field("job", "x") + ld(2, body) * 3
    _check_fallback(wrap(odd, CANONICAL_B), frozenset({KEY_A, KEY_B}), fallbacks=0, byte_identical=False)


def test_unsorted_labels_are_sorted_and_duplicates_are_malformed() -> None:
    unsorted = label_field("job", "x") + label_field("__name__", "a") + sample_field(NOW_MS, 1.0)
    _check_fallback(wrap(unsorted), frozenset({KEY_A}), fallbacks=0)
    dup = label_field("__name__", "a") + label_field("__name__", "b") + sample_field(NOW_MS, 1.0)
    cache = LabelCache(relabel, endpoint=EP)
    for _ in range(2):  # a refused prefix is not cached as accepted
        with pytest.raises(MalformedResponse, match="duplicate label names"):
            pack_read_response(wrap(dup), frozenset({KEY_A}), cache, Counters(), max_bytes=1 << 20, max_samples=10)
    with pytest.raises(MalformedResponse, match="duplicate label names"):
        reference(wrap(dup), frozenset({KEY_A}), max_bytes=1 << 20, max_samples=10)


def test_membership_is_per_batch_even_with_a_warm_prefix_cache() -> None:
    raw = wrap(label_field("__name__", "a") + label_field("job", "x") + sample_field(NOW_MS, 1.0), CANONICAL_B)
    cache = LabelCache(relabel, endpoint=EP)
    for keys in (frozenset({KEY_A}), frozenset({KEY_B}), frozenset(), frozenset({KEY_A, KEY_B})):
        got, counts = wire(raw, keys, max_bytes=1 << 20, max_samples=10, cache=cache)
        want, want_counts = reference(raw, keys, max_bytes=1 << 20, max_samples=10)
        assert shape(got) == shape(want) and same_counts(counts, want_counts)


def test_the_label_cache_stays_bounded() -> None:
    cache = LabelCache(relabel, endpoint=EP, max_entries=3)
    series = [([("__name__", f"m{i}")], [(NOW_MS, 1.0)]) for i in range(10)]
    keys = frozenset((("__name__", f"m{i}"),) for i in range(10))
    _, counts = wire(response(series), keys, max_bytes=1 << 20, max_samples=10, cache=cache)
    assert counts.series == 10 and len(cache.by_prefix) <= 3 and len(cache.by_key) <= 3
    assert sum(len(table) for _, table in cache.by_batch.values()) <= 3
    for _ in range(100):  # a new key set per read (batches rebuilt by each task): the tables stay bounded
        wire(response(series[:1]), frozenset(keys), max_bytes=1 << 20, max_samples=10, cache=cache)
    assert len(cache.by_batch) <= BATCH_TABLES_MAX


# -- broken responses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",  # no result
        wrap(CANONICAL_B) + wrap(CANONICAL_B),  # two results
        wrap(CANONICAL_B)[:-3],  # truncated
        b"\x0a\x05\x0a\xff\xff\xff\x7f",  # a series claiming more bytes than there are
        b"\xff" * 20,
    ],
)
def test_broken_responses_are_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        wire(raw, frozenset({KEY_B}), max_bytes=1 << 20, max_samples=10)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzz_mutated_responses_raise_only_malformed_and_never_differ(data) -> None:
    """Flip bytes of a valid response: the wire path raises MalformedResponse or, whenever the decoding
    path accepts the bytes too, writes what it writes. (It may accept what the decoding path refuses
    only inside sample bodies or series it does not write: those are never decoded.)"""
    series = [
        ([("__name__", "a"), ("job", "x")], [(NOW_MS + i * 15_000, float(i % 4)) for i in range(6)]),
        ([("__name__", "b"), ("job", "x")], [(NOW_MS + i * 15_000, 2.5) for i in range(6)]),
    ]
    raw = bytearray(response(series))
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(raw)
    keys = frozenset({KEY_A, KEY_B})
    try:
        want = reference(raw, keys, max_bytes=1 << 20, max_samples=100)
    except MalformedResponse:
        want = None
    try:
        got = wire(raw, keys, max_bytes=1 << 20, max_samples=100)
    except MalformedResponse:
        got = None
    if want is not None:
        assert got is not None
        assert decoded_series(got[0]) == decoded_series(want[0])


def test_malloc_tuning_is_once_per_process_and_yields_to_the_users_settings(monkeypatch) -> None:
    from m3migrate.wire import walk as wire

    monkeypatch.setattr(wire, "_malloc_tuned", None)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert wire.tune_malloc() is False  # the user tunes glibc: hands off
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert wire.tune_malloc() is False  # decided once per process
    monkeypatch.setattr(wire, "_malloc_tuned", None)
    for key in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key)
    tuned = wire.tune_malloc()
    assert tuned is (platform.libc_ver()[0] == "glibc")
    assert wire.tune_malloc() is tuned
