"""Wire codecs: snappy, read responses and size-bounded write requests (no servers needed)."""

from __future__ import annotations

import contextlib
import math
import struct
from collections.abc import Sequence

import pytest
import snappy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m3migrate.errors import MalformedResponse
from m3migrate.prompb import (
    Label,
    LabelMatcher,
    QueryResult,
    ReadRequest,
    ReadResponse,
    Sample,
    TimeSeries,
    WriteRequest,
)
from m3migrate.wire import codec
from m3migrate.wire.codec import (
    STALE_NAN_BITS,
    Matcher,
    WriteChain,
    compress,
    decode_ascii_labels,
    decode_read_response,
    decompress,
    encode_labels,
    encode_read_request,
    frame_series,
    pack_write_requests,
    single_request,
)

Labels = tuple[tuple[str, str], ...]
Samples = list[tuple[int, int]]  # (timestamp, IEEE-754 bits)

NAN_BITS = 0x7FF8000000000000
SPECIAL_BITS = [
    STALE_NAN_BITS,
    NAN_BITS,
    0xFFF8000000000000,  # negative quiet NaN
    0x7FF0000000000001,  # signalling NaN, smallest payload
    0x7FFFFFFFFFFFFFFF,  # NaN, all payload bits
    0x8000000000000000,  # -0.0
    0x0000000000000000,  # 0.0 (proto3 omits the field: must still come back as 0.0)
    0x0000000000000001,  # smallest subnormal
    0x7FF0000000000000,  # +Inf
    0xFFF0000000000000,  # -Inf
    0x7FEFFFFFFFFFFFFF,  # largest double
]


def from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def make_series(labels: Labels, samples: Sequence[tuple[int, float]]) -> tuple[bytes, TimeSeries]:
    """What the transfer hands to pack_write_requests: encoded labels plus a label-less TimeSeries."""
    return encode_labels(labels), TimeSeries(samples=[Sample(timestamp=t, value=v) for t, v in samples])


def decoded(body: bytes) -> WriteRequest:
    return WriteRequest.FromString(snappy.decompress(body))


def key_of(ts: TimeSeries) -> Labels:
    return tuple((label.name, label.value) for label in ts.labels)


def samples_of(ts: TimeSeries) -> Samples:
    return [(s.timestamp, bits(s.value)) for s in ts.samples]


def check_packing(
    chains: list[WriteChain],
    inputs: list[tuple[Labels, Samples]],
    *,
    max_bytes: int,
    max_samples: int,
) -> None:
    """Every invariant pack_write_requests promises, checked by parsing the bodies back."""
    # 1. every request is a valid snappy WriteRequest within both bounds, and its metadata is right
    flat: list[tuple[int, int, Labels, Samples]] = []  # (chain, request, labels, samples) in send order
    for c, chain in enumerate(chains):
        assert chain.requests, "empty chain"
        for r, request in enumerate(chain.requests):
            raw = snappy.decompress(request.body)
            assert len(raw) == request.raw_bytes
            assert request.raw_bytes <= max_bytes, f"request of {request.raw_bytes} bytes over max_bytes={max_bytes}"
            assert request.samples <= max_samples
            assert b"".join(request.parts) == raw
            parsed = WriteRequest.FromString(raw)
            assert len(parsed.timeseries) == request.series == len(request.parts)
            assert sum(len(ts.samples) for ts in parsed.timeseries) == request.samples
            for ts in parsed.timeseries:
                flat.append((c, r, key_of(ts), samples_of(ts)))

    # 2. the concatenation of all requests, with the slices of a split series joined, is the input
    merged: list[tuple[Labels, Samples, set[tuple[int, int]]]] = []
    for c, r, labels, samples in flat:
        if merged and merged[-1][0] == labels:
            merged[-1][1].extend(samples)
            merged[-1][2].add((c, r))
        else:
            merged.append((labels, list(samples), {(c, r)}))
    assert [(labels, samples) for labels, samples, _ in merged] == inputs

    # 3. every series in exactly one chain; a split series spans consecutive requests of ONE chain,
    #    alone in them, in time order; a series within both bounds is never split
    for (labels, samples, places), (_, original) in zip(merged, inputs, strict=True):
        chains_used = {c for c, _ in places}
        assert len(chains_used) == 1, f"series {labels} spread over chains {chains_used}"
        requests_used = sorted(r for _, r in places)
        assert requests_used == list(range(requests_used[0], requests_used[0] + len(requests_used)))
        if len(places) > 1:
            chain = chains[chains_used.pop()]
            for r in requests_used:
                assert {key_of(ts) for ts in decoded(chain.requests[r].body).timeseries} == {labels}
            timestamps = [t for t, _ in samples]
            assert timestamps == sorted(timestamps)
        framed_len = len(frame_series(encode_labels(labels), make_series(labels, [])[1].SerializeToString()))
        if len(original) <= max_samples and framed_len + 22 * len(original) + 16 <= max_bytes:
            assert len(places) == 1, f"series {labels} with {len(original)} samples was split needlessly"

    # 4. a chain of several requests carries a single (split) series
    for chain in chains:
        if len(chain.requests) > 1:
            keys = {key_of(ts) for request in chain.requests for ts in decoded(request.body).timeseries}
            assert len(keys) == 1


# -- snappy ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload", [b"", b"x", b"hello snappy " * 1000, bytes(range(256)) * 64, struct.pack("<Q", STALE_NAN_BITS)]
)
def test_snappy_round_trip(payload: bytes) -> None:
    body = compress(payload)
    assert decompress(body, endpoint="http://e", what="test") == payload
    assert snappy.decompress(body) == payload  # block format, readable by any snappy implementation
    assert not body.startswith(b"\xff\x06\x00\x00sNaPpY")  # never the framed format


@pytest.mark.parametrize(
    "body",
    [
        b"<!DOCTYPE html><html>502 Bad Gateway</html>",
        b"\xff\x06\x00\x00sNaPpY" + b"\x00" * 8,  # framed format, not block format
        b"\xff" * 12,  # the length header never ends
        b"",  # no length header at all
        b'{"status":"error"}',
    ],
)
def test_decompress_rejects_non_snappy_with_typed_error(body: bytes) -> None:
    with pytest.raises(MalformedResponse) as info:
        decompress(body, endpoint="http://m3:7201/api/v1/prom/remote/read", what="remote read")
    assert info.value.endpoint == "http://m3:7201/api/v1/prom/remote/read"
    assert "remote read" in str(info.value)


def test_decompress_rejects_a_header_claiming_more_bytes_than_present() -> None:
    good = compress(b"0123456789" * 10)  # header says 100
    assert good[0] == 100
    lying = bytes([200]) + good[1:]  # says 200 bytes, carries 100
    with pytest.raises(MalformedResponse):
        decompress(lying, endpoint="http://e", what="remote read")
    truncated = good[: len(good) // 2]
    with pytest.raises(MalformedResponse):
        decompress(truncated, endpoint="http://e", what="remote read")


def test_decompress_refuses_absurd_claimed_sizes_before_allocating() -> None:
    claims_4gib = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F]) + b"\x00" * 16
    with pytest.raises(MalformedResponse, match="claims 4294967295 bytes"):
        decompress(claims_4gib, endpoint="http://e", what="remote read")


# -- read requests and responses -------------------------------------------------------------------


def test_encode_read_request_is_one_samples_query() -> None:
    matchers = [
        Matcher("__name__", "=", "up"),
        Matcher("job", "!=", "x"),
        Matcher("a", "=~", "b.*"),
        Matcher("c", "!~", ""),
    ]
    request = ReadRequest.FromString(snappy.decompress(encode_read_request(matchers, 1000, 1999)))
    assert list(request.accepted_response_types) == [ReadRequest.SAMPLES]
    (query,) = request.queries
    assert (query.start_timestamp_ms, query.end_timestamp_ms) == (1000, 1999)
    assert [(m.type, m.name, m.value) for m in query.matchers] == [
        (LabelMatcher.EQ, "__name__", "up"),
        (LabelMatcher.NEQ, "job", "x"),
        (LabelMatcher.RE, "a", "b.*"),
        (LabelMatcher.NRE, "c", ""),
    ]


def test_decode_read_response_round_trip_keeps_nan_bits() -> None:
    ts = TimeSeries(
        labels=[Label(name="__name__", value="up")], samples=[Sample(timestamp=5, value=from_bits(STALE_NAN_BITS))]
    )
    raw = ReadResponse(results=[QueryResult(timeseries=[ts])]).SerializeToString()
    result = decode_read_response(raw, endpoint="http://e")
    assert [bits(s.value) for s in result.timeseries[0].samples] == [STALE_NAN_BITS]


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage that is not protobuf!!",
        b"\x0a\xff\xff\xff\xff\x0f",  # field 1 claims a 4 GiB sub-message
        b"\xff\xff\xff",
        b"",  # parses, but holds no query result
        ReadResponse(results=[QueryResult(), QueryResult()]).SerializeToString(),  # two results for one query
    ],
)
def test_decode_read_response_garbage_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedResponse):
        decode_read_response(raw, endpoint="http://e")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decompress_raises_only_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedResponse):
        decompress(data, endpoint="http://e", what="fuzz")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=200).map(lambda b: b"\x0a" + bytes([len(b)]) + b)))
def test_fuzz_decode_read_response_raises_only_malformed(data: bytes) -> None:
    try:
        result = decode_read_response(data, endpoint="http://e")
    except MalformedResponse:
        return
    assert isinstance(result, QueryResult)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_snappy_wrapped_garbage_raises_only_malformed(data: bytes) -> None:
    """The whole read path: valid snappy around arbitrary bytes."""
    with contextlib.suppress(MalformedResponse):
        decode_read_response(decompress(compress(data), endpoint="http://e", what="fuzz"), endpoint="http://e")


# -- write requests --------------------------------------------------------------------------------


def test_frame_series_parses_back_to_identical_timeseries() -> None:
    labels = (("__name__", "edge_probe_rtt_seconds"), ("city", "東京"), ("target", 'a "quoted" \\ value'))
    points = [(-5, 1.5), (0, 0.0), (1_700_000_000_123, from_bits(STALE_NAN_BITS)), (2**62, -0.0)]
    label_bytes, ts = make_series(labels, points)
    framed = frame_series(label_bytes, ts.SerializeToString())
    parsed = WriteRequest.FromString(framed)
    assert len(parsed.timeseries) == 1
    expected = TimeSeries(
        labels=[Label(name=n, value=v) for n, v in labels], samples=[Sample(timestamp=t, value=v) for t, v in points]
    )
    assert parsed.timeseries[0].SerializeToString() == expected.SerializeToString()
    assert key_of(parsed.timeseries[0]) == labels
    assert samples_of(parsed.timeseries[0]) == [(t, bits(v)) for t, v in points]

    body = single_request(framed, len(points))
    assert (body.series, body.samples, body.raw_bytes, body.parts) == (1, 4, len(framed), [framed])
    assert snappy.decompress(body.body) == framed


def test_frame_series_long_payload_varint_length() -> None:
    labels = (("__name__", "x" * 300),)
    label_bytes, ts = make_series(labels, [(t, float(t)) for t in range(2000)])  # > 16 KiB: 3-byte length
    parsed = WriteRequest.FromString(frame_series(label_bytes, ts.SerializeToString()))
    assert key_of(parsed.timeseries[0]) == labels
    assert len(parsed.timeseries[0].samples) == 2000


def test_pack_small_series_share_requests_within_bounds() -> None:
    inputs = [
        ((("__name__", "m"), ("i", str(i))), [(1000 * k, float(i * 100 + k)) for k in range(10)]) for i in range(50)
    ]
    chains = pack_write_requests([make_series(labels, s) for labels, s in inputs], max_bytes=2000, max_samples=60)
    assert len(chains) > 1
    assert all(len(chain.requests) == 1 for chain in chains)  # nothing needed splitting
    assert all(chain.requests[0].series > 1 for chain in chains[:-1])  # small series share requests
    check_packing(
        chains,
        [(labels, [(t, bits(v)) for t, v in s]) for labels, s in inputs],
        max_bytes=2000,
        max_samples=60,
    )


def test_pack_splits_a_big_series_into_one_chain_in_time_order() -> None:
    big = (("__name__", "big"),)
    inputs = [
        ((("__name__", "a"),), [(k, 1.0) for k in range(5)]),
        (big, [(1_700_000_000_000 + 15_000 * k, k * 0.5) for k in range(1000)]),
        ((("__name__", "z"),), [(k, 2.0) for k in range(5)]),
    ]
    chains = pack_write_requests([make_series(labels, s) for labels, s in inputs], max_bytes=1 << 20, max_samples=300)
    big_chains = [
        chain for chain in chains if any(key_of(ts) == big for r in chain.requests for ts in decoded(r.body).timeseries)
    ]
    assert len(big_chains) == 1
    (chain,) = big_chains
    assert [r.samples for r in chain.requests] == [300, 300, 300, 100]
    timestamps = [s.timestamp for r in chain.requests for ts in decoded(r.body).timeseries for s in ts.samples]
    assert timestamps == [1_700_000_000_000 + 15_000 * k for k in range(1000)]
    check_packing(
        chains,
        [(labels, [(t, bits(v)) for t, v in s]) for labels, s in inputs],
        max_bytes=1 << 20,
        max_samples=300,
    )


def test_pack_splits_a_series_over_the_byte_bound() -> None:
    labels = (("__name__", "bytes_heavy"), ("pad", "p" * 100))
    points = [(1_700_000_000_000 + k, float(k) + 0.1) for k in range(2000)]  # ~40 KB
    chains = pack_write_requests([make_series(labels, points)], max_bytes=4096, max_samples=100_000)
    assert len(chains) == 1 and len(chains[0].requests) > 5
    check_packing(chains, [(labels, [(t, bits(v)) for t, v in points])], max_bytes=4096, max_samples=100_000)


def test_pack_keeps_empty_series_and_empty_input() -> None:
    assert pack_write_requests([], max_bytes=4096, max_samples=10) == []
    labels = (("__name__", "empty"),)
    chains = pack_write_requests([make_series(labels, [])], max_bytes=4096, max_samples=10)
    check_packing(chains, [(labels, [])], max_bytes=4096, max_samples=10)


def test_pack_mixed_zero_and_nonzero_values_respects_max_bytes() -> None:
    """proto3 omits 0.0 values, so samples differ in size: slicing by the average size must not overshoot."""
    labels = (("__name__", "mostly_zero_then_busy"),)
    points = [(1_700_000_000_000 + 60_000 * k, 0.0 if k < 3000 else 1.0 + k) for k in range(4000)]
    chains = pack_write_requests([make_series(labels, points)], max_bytes=8192, max_samples=100_000)
    check_packing(chains, [(labels, [(t, bits(v)) for t, v in points])], max_bytes=8192, max_samples=100_000)


# -- hypothesis: every sample, bit for bit --------------------------------------------------------

label_names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,8}", fullmatch=True)
label_values = st.text(min_size=1, max_size=12)
values = st.one_of(
    st.sampled_from(SPECIAL_BITS),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.floats(allow_nan=False).map(bits),
)


@st.composite
def series_sets(draw: st.DrawFn) -> list[tuple[Labels, Samples]]:
    count = draw(st.integers(min_value=1, max_value=6))
    out: list[tuple[Labels, Samples]] = []
    for i in range(count):
        extra = draw(st.dictionaries(label_names.filter(lambda n: n != "__name__"), label_values, max_size=3))
        labels = tuple(sorted({"__name__": f"s{i}", **extra}.items()))
        n = draw(st.integers(min_value=0, max_value=400))
        start = draw(st.integers(min_value=-(2**40), max_value=2**42))
        gaps = draw(st.lists(st.integers(min_value=1, max_value=10**7), min_size=n, max_size=n))
        vals = draw(st.lists(values, min_size=n, max_size=n))
        zeros = draw(st.integers(min_value=0, max_value=n))  # a counter at 0.0 (omitted by proto3), then busy
        vals[:zeros] = [0] * zeros
        timestamps, t = [], start
        for gap in gaps:
            t += gap
            timestamps.append(t)
        out.append((labels, list(zip(timestamps, vals, strict=True))))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    inputs=series_sets(),
    max_samples=st.integers(min_value=1, max_value=500),
    extra_bytes=st.integers(min_value=0, max_value=20_000),
)
def test_property_pack_preserves_every_sample_bit_for_bit(
    inputs: list[tuple[Labels, Samples]], max_samples: int, extra_bytes: int
) -> None:
    largest_labels = max(len(encode_labels(labels)) for labels, _ in inputs)
    max_bytes = largest_labels + 100 + extra_bytes  # room for the labels and at least one sample
    pairs = [make_series(labels, [(t, from_bits(b)) for t, b in samples]) for labels, samples in inputs]
    chains = pack_write_requests(pairs, max_bytes=max_bytes, max_samples=max_samples)
    check_packing(chains, inputs, max_bytes=max_bytes, max_samples=max_samples)


def test_stale_marker_bits_survive_packing() -> None:
    stale = from_bits(STALE_NAN_BITS)
    assert math.isnan(stale) and bits(stale) == STALE_NAN_BITS
    labels = (("__name__", "up"),)
    chains = pack_write_requests([make_series(labels, [(1, 1.0), (2, stale)])], max_bytes=4096, max_samples=10)
    (ts,) = decoded(chains[0].requests[0].body).timeseries
    assert [bits(s.value) for s in ts.samples] == [bits(1.0), STALE_NAN_BITS]
    assert codec.float_bits(ts.samples[1].value) == STALE_NAN_BITS


# Go's encoding/binary varint_test.go: every value round-trips through PutUvarint/Uvarint, and the
# decoder refuses a cut-short buffer and one past 2**64 - 1 (TestOverflow: ten bytes whose last is 2).
GO_UVARINT_VALUES = [0, 1, 2, 10, 20, 63, 64, 65, 127, 128, 129, 255, 256, 257, (1 << 63) - 1, (1 << 64) - 1]


@pytest.mark.parametrize("value", GO_UVARINT_VALUES)
def test_uvarint_at_reads_back_what_uvarint_wrote(value: int) -> None:
    encoded = b"\xff" + codec.uvarint(value) + b"\x05"
    assert codec.uvarint_at(encoded, 1) == (value, len(encoded) - 1)
    assert codec.uvarint_at(encoded, 1, len(encoded) - 1) == (value, len(encoded) - 1)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x80",  # cut short
        b"\xff\xff",
        b"\x80" * 9 + b"\x02",  # Go: overflow (more than 64 bits)
        b"\xff" * 9 + b"\x80\x01",  # eleven bytes
    ],
)
def test_uvarint_at_refuses_what_go_refuses(raw: bytes) -> None:
    assert codec.uvarint_at(raw, 0) == (-1, len(raw))


def test_uvarint_at_stops_at_the_given_end() -> None:
    encoded = codec.uvarint(300)  # two bytes
    assert codec.uvarint_at(encoded + b"\x00", 0, 1) == (-1, 1)


def test_block_reader_raises_on_a_corrupt_uvarint() -> None:
    from m3migrate.tsdb.encoding import read_uvarint

    assert read_uvarint(memoryview(b"\xac\x02"), 0) == (300, 2)
    with pytest.raises(ValueError, match="not a uvarint at byte 1"):
        read_uvarint(b"\x00\x80", 1)


_LABEL_TEXT = st.one_of(st.text(max_size=8), st.text(min_size=100, max_size=140), st.just(""))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_LABEL_TEXT, _LABEL_TEXT), max_size=6))
def test_encode_labels_is_what_upb_serializes(labels: list[tuple[str, str]]) -> None:
    """Hand-framed or not (long fields, empty ones, multi-byte text), the bytes are the message's."""
    expected = TimeSeries(labels=[Label(name=n, value=v) for n, v in labels]).SerializeToString()
    assert encode_labels(labels) == expected
    assert encode_labels(iter(labels)) == expected


def test_encode_labels_refuses_text_that_is_not_utf8() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_labels([("__name__", "up"), ("job", "\udcff")])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_LABEL_TEXT, _LABEL_TEXT), max_size=6))
def test_ascii_label_fields_decode_to_what_was_encoded(labels: list[tuple[str, str]]) -> None:
    """Short ASCII labels with both fields set come back as given (one shared str per name); anything
    else is left to upb (None)."""
    names: dict[str, str] = {}
    decoded = decode_ascii_labels(encode_labels(labels), names)
    direct = all(n.isascii() and v.isascii() and n and v and len(n) + len(v) + 4 < 128 for n, v in labels)
    assert decoded == (tuple(labels) if direct else None)
    if decoded:
        again = decode_ascii_labels(encode_labels(labels), names)
        assert again is not None and all(a[0] is b[0] for a, b in zip(decoded, again, strict=True))


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(st.tuples(st.text("ab_", min_size=1, max_size=3), st.text("xy", min_size=1, max_size=3)), max_size=3),
    st.integers(0, 40),
    st.integers(0, 255),
    st.booleans(),
)
def test_ascii_label_decoding_never_disagrees_with_upb(
    labels: list[tuple[str, str]], at: int, byte: int, cut: bool
) -> None:
    """On label fields with one byte changed, or cut short, a decoded answer is upb's; what it does not
    read is refused, never misread."""
    fields = bytearray(encode_labels(labels))
    if fields and cut:
        del fields[at % len(fields) :]
    elif fields:
        fields[at % len(fields)] = byte
    decoded = decode_ascii_labels(bytes(fields), {})
    if decoded is None:
        return
    parsed = TimeSeries.FromString(bytes(fields))
    assert decoded == tuple((lb.name, lb.value) for lb in parsed.labels)
    assert parsed.SerializeToString() == fields
