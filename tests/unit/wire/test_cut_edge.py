"""m3migrate.wire.walk.cut_after_edge: besides the cut, whether a sample stamped end + 1 was cut (from a read
that asked for end + 1, the proof that the source reads [start, end]); and the guard's word search, which
must say exactly what bytes.find says.

The expectations are definitions: the flag is "some series held a sample at end + 1", the search "the
needle occurs"."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wire import NOW_MS, label_field, response, sample_field, wrap
from test_wire_edges import as_data, edge_responses

from m3migrate.wire.codec import uvarint
from m3migrate.wire.walk import _holds, cut_after, cut_after_edge


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edge_responses())
def test_property_the_flag_says_whether_a_sample_at_end_plus_one_was_cut(case) -> None:
    raw, end = case
    cut, edge_cut = cut_after_edge(raw, end)
    assert cut == cut_after(raw, end)
    assert edge_cut == any(t == end + 1 for _, samples in as_data(raw) for t, _ in samples)


def test_a_cut_sample_later_than_end_plus_one_proves_nothing() -> None:
    """A value whose bytes hold the record of end + 1 lets the guard through; the cut then removes only a
    sample at end + 2, which no read asking for end + 1 can have been answered by an end-inclusive source."""
    end = NOW_MS
    decoy = struct.unpack("<d", b"\x00" + b"\x10" + uvarint(end + 1))[0]
    raw = response([([("__name__", "m")], [(end - 1, decoy), (end + 2, 2.0)])])
    cut, edge_cut = cut_after_edge(raw, end)
    assert edge_cut is False and as_data(cut) == [(as_data(raw)[0][0], as_data(raw)[0][1][:1])]
    proof = response([([("__name__", "m")], [(end, 1.0), (end + 2, 2.0)]), ([("__name__", "n")], [(end + 1, 3.0)])])
    assert cut_after_edge(proof, end)[1] is True


def test_the_decoded_path_reports_the_edge_too() -> None:
    """Labels after samples are not the canonical shape: the cut decodes, and still says what it cut."""
    end = NOW_MS
    payload = sample_field(end, 1.0) + sample_field(end + 1, 2.0) + label_field("__name__", "m")
    cut, edge_cut = cut_after_edge(wrap(payload), end)
    assert edge_cut is True and [s for _, s in as_data(cut)] == [[(end, as_data(wrap(payload))[0][1][0][1])]]


@settings(max_examples=400, deadline=None)
@given(
    st.binary(min_size=0, max_size=9000),
    st.integers(2, 9),
    st.lists(st.integers(0, 9000), max_size=3),
    st.integers(0, 2**32),
)
def test_property_the_word_search_says_what_find_says(noise: bytes, size: int, at: list[int], seed: int) -> None:
    needle = (seed.to_bytes(5, "little") * 2)[:size]
    raw = bytearray(noise)
    for p in at:  # planted anywhere, also overlapping the end or each other
        raw[p : p + size] = needle
    data = bytes(raw)
    assert _holds(data, needle) == (data.find(needle) >= 0)
    assert _holds(data, needle[:-1] + bytes([needle[-1] ^ 1])) == (
        data.find(needle[:-1] + bytes([needle[-1] ^ 1])) >= 0
    )


def test_word_search_at_every_alignment_and_the_last_byte() -> None:
    needle = b"\x10" + uvarint(NOW_MS + 1)
    for size in (4096, 4097, 4098, 4099, 10_000):
        for p in (0, 1, 2, 3, size // 2, size - len(needle) - 1, size - len(needle)):
            raw = bytearray(b"\x10" * size)
            raw[p : p + len(needle)] = needle
            assert _holds(bytes(raw), needle), (size, p)
        assert not _holds(b"\x10" * size, needle)
        assert not _holds(bytes(raw[: size - 1]), needle), "the needle cut short by the end is not there"
