"""m3migrate.wire.walk.cut_after: a read of [start, end + 1] cut to [start, end] at the wire level, so reads are
exact on an end-exclusive source (M3: [start, end)) and an end-inclusive one (Prometheus: [start, end]).

The expectation is the definition: every sample with t <= end, in order, bit for bit; a series left without
samples by the cut is not in the answer (as M3 leaves out series without samples)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire import NOW_MS, bits_of, label_field, response, sample_field, values, wrap

from m3migrate.prompb import ReadResponse
from m3migrate.wire.codec import decode_read_response
from m3migrate.wire.walk import cut_after, series_spans

EP = "http://source/api/v1/read"


def as_data(raw: bytes) -> list[tuple[tuple[tuple[str, str], ...], list[tuple[int, int]]]]:
    qr = decode_read_response(raw, endpoint=EP)
    return [
        (tuple((label.name, label.value) for label in ts.labels), [(s.timestamp, bits_of(s.value)) for s in ts.samples])
        for ts in qr.timeseries
    ]


def expected(raw: bytes, end: int) -> list:
    out = []
    for labels, samples in as_data(raw):
        kept = [s for s in samples if s[0] <= end]
        if kept or not samples:
            out.append((labels, kept))
    return out


@st.composite
def edge_responses(draw):
    """Series whose samples (sorted, unique timestamps) end before, at or after the cut."""
    end = NOW_MS + draw(st.integers(0, 10_000))
    series = []
    for i in range(draw(st.integers(0, 6))):
        n = draw(st.integers(0, 30))
        last = end + draw(st.sampled_from([-5000, -1, 0, 1]))
        step = draw(st.integers(1, 15_000))
        ts = sorted({last - k * step for k in range(n)})
        if draw(st.booleans()):  # mixed record sizes: 0.0 values are shorter
            vals = [draw(values) for _ in ts]
        else:
            vals = [draw(values.filter(lambda v: bits_of(v) != 0)) for _ in ts]
        series.append(([("__name__", f"m{i}"), ("i", str(i))], list(zip(ts, vals, strict=True))))
    return response(series), end


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edge_responses())
def test_property_cut_keeps_exactly_the_samples_up_to_end(case) -> None:
    raw, end = case
    cut = cut_after(raw, end)
    assert as_data(cut) == expected(raw, end)
    assert series_spans(cut) is not None or series_spans(raw) is None, "a canonical answer stays canonical"


def test_an_answer_without_a_sample_after_end_is_returned_as_it_is() -> None:
    raw = response([([("__name__", "a")], [(NOW_MS - 1, 1.0), (NOW_MS, 2.0)])])
    assert cut_after(raw, NOW_MS) is raw


def test_only_the_sample_at_end_plus_one_goes_and_an_emptied_series_disappears() -> None:
    raw = response(
        [
            ([("__name__", "kept")], [(NOW_MS - 60_000, 1.0), (NOW_MS, 0.0), (NOW_MS + 1, 3.0)]),
            ([("__name__", "gone")], [(NOW_MS + 1, 4.0)]),
            ([("__name__", "empty")], []),
        ]
    )
    cut = cut_after(raw, NOW_MS)
    assert [(labels, [t for t, _ in s]) for labels, s in as_data(cut)] == [
        ((("__name__", "kept"),), [NOW_MS - 60_000, NOW_MS]),
        ((("__name__", "empty"),), []),
    ]


def test_non_canonical_answers_are_cut_by_decoding() -> None:
    # a label after a sample, and an unknown field beside the result: not the canonical shape
    series = sample_field(NOW_MS, 1.0) + label_field("__name__", "late_label") + sample_field(NOW_MS + 1, 2.0)
    raw = wrap(series, extra_rr=b"\x10\x01")
    cut = cut_after(raw, NOW_MS)
    rr = ReadResponse.FromString(cut)
    assert [s.timestamp for s in rr.results[0].timeseries[0].samples] == [NOW_MS]


def test_a_body_that_does_not_parse_is_left_for_decoding_to_report() -> None:
    whole = response([([("__name__", "a")], [(NOW_MS, 1.0), (NOW_MS + 1, 2.0)])])
    broken = whole[:-3]  # truncated inside the sample at end + 1
    assert cut_after(broken, NOW_MS) == broken
