"""BlockWriter: byte-identical to promtool 2.42's own blocks, accepted by promtool list/analyze/dump, streaming
(parts in any order, several segments), exact NaN bits, and clear errors for what a block cannot hold."""

from __future__ import annotations

import itertools
import json
import math
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from m3migrate.prompb import QueryResult, ReadResponse
from m3migrate.tsdb import (
    BlockWriter,
    EmptyBlock,
    InvalidSeries,
    OverlappingParts,
    SampleOutOfRange,
    TsdbError,
    series_arrays,
)
from m3migrate.tsdb.reader import read_block
from m3migrate.tsdb.samples import _slow_arrays, read_response_arrays
from m3migrate.wire.codec import STALE_NAN_BITS

H = 7_200_000
T0 = 1_700_000_000_000 // H * H
EXT = {"backfill": "test"}


def _f(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def _promtool(*args: str) -> str:
    done = subprocess.run(["promtool", "tsdb", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _om_value(v: float) -> str:
    return repr(v) if math.isfinite(v) else {math.inf: "+Inf", -math.inf: "-Inf"}.get(v, "NaN")


@pytest.mark.servers
def test_chunks_and_index_are_byte_identical_to_promtool(tmp_path):
    """promtool tsdb create-blocks-from openmetrics is the oracle (< 30 samples per series: no chunk cutting)."""
    rng = np.random.default_rng(5)
    series = []
    lines = ["# TYPE m gauge"]
    for k in range(40):
        n = int(rng.integers(1, 30))
        t = T0 + 60_000 + np.sort(rng.choice(np.arange(110 * 60), n, replace=False)).astype(np.int64) * 1000
        pool = [0.0, 1.0, 2.5, 1e10, -3.25, 0.1, 1e-300, 123456.789]
        v = rng.choice(pool, n) if k % 2 else np.round(rng.normal(size=n), k % 7)
        job = ["api", "zürich 東京", 'a "quoted" \\ value'][k % 3]
        labels = (("__name__", "m"), ("job", job), ("k", f"v{k:02d}"))
        series.append((labels, t, v))
        esc = job.replace("\\", "\\\\").replace('"', '\\"')
        lines += [
            f'm{{job="{esc}",k="v{k:02d}"}} {_om_value(x)} {ts / 1000:.3f}' for ts, x in zip(t, v.tolist(), strict=True)
        ]
    (tmp_path / "in.txt").write_text("\n".join([*lines, "# EOF"]) + "\n")
    oracle_dir, mine_dir = tmp_path / "oracle", tmp_path / "mine"
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "in.txt"), str(oracle_dir)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (oracle,) = [p for p in oracle_dir.iterdir() if p.is_dir()]
    meta = json.loads((oracle / "meta.json").read_text())
    with BlockWriter(mine_dir, min_time=meta["minTime"], max_time=meta["maxTime"], external_labels=EXT) as w:
        for labels, t, v in sorted(series, key=lambda s: s[0]):  # promtool writes chunks in series order
            w.add(labels, t, v)
        info = w.finish()
    assert (info.path / "chunks" / "000001").read_bytes() == (oracle / "chunks" / "000001").read_bytes()
    assert (info.path / "index").read_bytes() == (oracle / "index").read_bytes()
    assert info.num_samples == meta["stats"]["numSamples"] and info.num_chunks == meta["stats"]["numChunks"]


def _special_series() -> list[tuple[tuple[tuple[str, str], ...], np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(9)
    out = []
    specials = [STALE_NAN_BITS, 0x7FF8000000000000, 0x7FF0000000000000, 0xFFF0000000000000, 1 << 63, 0]
    for k in range(120):
        n = int(rng.integers(1, 700))
        step = [15_000, 60_000, 10_000][k % 3]
        t = T0 + np.arange(n, dtype=np.int64) * step + int(rng.integers(0, 1000))
        t = t[t < T0 + H]
        v = np.round(np.cumsum(rng.normal(size=len(t))), k % 4).view(np.uint64).copy()
        v[rng.random(len(t)) < 0.05] = rng.choice(np.array(specials, np.uint64))
        labels = (("__name__", f"metric_{k % 7}"), ("instance", f"host-{k:03d}"), ("zone", "zürich ö"))
        out.append((labels, t, v))
    return out


@pytest.mark.servers
def test_streamed_block_in_parts_is_accepted_and_dumped_exactly(tmp_path):
    series = _special_series()
    blocks = tmp_path / "blocks"
    with BlockWriter(
        blocks, min_time=T0, max_time=T0 + H, external_labels=EXT, flush_samples=5_000, max_segment_bytes=20_000
    ) as w:
        # reverse label order and each series in three parts, second halves first for odd series
        for labels, t, v in reversed(series):
            cuts = [0, len(t) // 3, 2 * len(t) // 3, len(t)]
            parts = [(t[a:b], v[a:b]) for a, b in itertools.pairwise(cuts)]
            for pt, pv in parts[::-1] if len(labels[1][1]) % 2 else parts:
                w.add(labels, pt, pv)
        info = w.finish()
    assert len(list((info.path / "chunks").iterdir())) > 1  # several segment files
    contents = read_block(info.path)
    assert contents.samples() == {labels: list(zip(t.tolist(), v.tolist(), strict=True)) for labels, t, v in series}
    assert contents.meta.sources == (info.ulid,) and contents.meta.labels == EXT
    assert contents.meta.num_samples == sum(len(t) for _, t, _ in series)

    assert info.ulid in _promtool("list", str(blocks))
    scratch = tmp_path / "scratch"
    shutil.copytree(blocks, scratch)
    (scratch / "wal").mkdir()
    assert f"Block ID: {info.ulid}" in _promtool("analyze", str(scratch))
    dumped: dict[str, list[tuple[int, float]]] = {}
    for line in _promtool("dump", str(scratch)).splitlines():
        head, value, ts = line.rsplit(" ", 2)
        dumped.setdefault(head, []).append((int(ts), float(value)))
    assert len(dumped) == len(series)
    for labels, t, v in series:
        head = "{" + ", ".join(f'{n}="{x}"' for n, x in labels) + "}"
        got = dumped[head]
        assert [a for a, _ in got] == t.tolist()
        for (_, value), bits in zip(got, v.tolist(), strict=True):
            assert value == _f(bits) or (math.isnan(value) and math.isnan(_f(bits)))


def test_series_arrays_matches_protobuf():
    qr = QueryResult()
    rng = np.random.default_rng(1)
    for k in range(30):
        ts = qr.timeseries.add()
        ts.labels.add(name="__name__", value=f"m{k}")
        for i in range(int(rng.integers(0, 200))):
            value = [0.0, -0.0, 1.5, _f(STALE_NAN_BITS), float("nan"), float(i)][i % 6]
            ts.samples.add(timestamp=[0, 1, 127, 128, T0 + i][i % 5] + i * 1000 * (i % 5 == 4), value=value)
    for (labels, t, bits), ts in zip(series_arrays(qr), qr.timeseries, strict=True):
        st, sb = _slow_arrays(ts)
        assert labels == (("__name__", ts.labels[0].value),)
        assert t.tolist() == st.tolist() and bits.tolist() == sb.tolist()
    weird = QueryResult()  # a negative timestamp needs a 10-byte varint: the fallback path
    weird.timeseries.add().samples.add(timestamp=-5, value=2.0)
    ((_, t, bits),) = series_arrays(weird)
    assert t.tolist() == [-5] and bits.tolist() == [struct.unpack("<Q", struct.pack("<d", 2.0))[0]]


def _writer(tmp_path: Path, **kw) -> BlockWriter:
    return BlockWriter(tmp_path, min_time=T0, max_time=T0 + H, external_labels=EXT, **kw)


def test_errors_name_the_problem(tmp_path):
    up = (("__name__", "up"),)
    with _writer(tmp_path) as w:
        with pytest.raises(SampleOutOfRange, match="exclusive"):
            w.add(up, np.array([T0 + H]), np.array([1.0]))
        with pytest.raises(InvalidSeries, match="sorted"):
            w.add((("b", "1"), ("a", "2")), np.array([T0]), np.array([1.0]))
        with pytest.raises(InvalidSeries, match="external labels"):
            w.add((("backfill", "x"),), np.array([T0]), np.array([1.0]))
        with pytest.raises(InvalidSeries, match="strictly increasing"):
            w.add(up, np.array([T0 + 2, T0 + 1]), np.array([1.0, 2.0]))
        w.add(up, np.array([T0, T0 + 10]), np.array([1.0, 2.0]))
        w.add(up, np.array([T0 + 5]), np.array([3.0]))
        with pytest.raises(OverlappingParts, match="up"):
            w.finish()
    assert not list(tmp_path.iterdir())  # nothing half-written is left
    with _writer(tmp_path) as w, pytest.raises(EmptyBlock):
        w.finish()
    with pytest.raises(TsdbError, match="external labels"):
        BlockWriter(tmp_path, min_time=T0, max_time=T0 + H, external_labels={})
    assert not list(tmp_path.iterdir())


def _sample_record(body: bytes) -> bytes:
    return b"\x12" + bytes((len(body),)) + body


def test_read_response_arrays_read_every_protobuf_form_of_a_sample():
    """The compiled walk of the wire bytes gives what protobuf parses: canonical samples, omitted zero
    fields (proto3), 10-byte negative timestamps, fields reversed, repeated (the last wins) or unknown."""
    rr = ReadResponse()
    qr = rr.results.add()
    rng = np.random.default_rng(5)
    for k in range(40):
        ts = qr.timeseries.add()
        ts.labels.add(name="__name__", value="m")
        ts.labels.add(name="instance", value=f"i{k}")
        for i in range(int(rng.integers(0, 150))):
            value = [0.0, -0.0, 1.5, _f(STALE_NAN_BITS), float("nan"), float(i)][i % 6]
            ts.samples.add(timestamp=[0, 1, -5, T0 + i * 15_000][i % 4], value=value)
    odd = qr.timeseries.add()
    odd.labels.add(name="__name__", value="odd")
    raw = bytearray(rr.SerializeToString())
    bodies = [
        b"\x10\x05\x09" + struct.pack("<d", 2.5),  # timestamp first
        b"\x09" + struct.pack("<d", 1.0) + b"\x09" + struct.pack("<d", 3.0) + b"\x10\x07\x10\x08",  # repeated
        b"\x18\x2a\x10\x09\x22\x02ab\x09" + struct.pack("<d", 4.0) + b"\x2d\x00\x00\x00\x00",  # unknown fields
        b"",  # everything omitted: t=0, v=0
    ]
    extra = b"".join(map(_sample_record, bodies))
    raw = _append_to_last_series(bytes(raw), extra)
    expected = ReadResponse.FromString(raw).results[0]
    labels, counts, t, bits, utf8 = read_response_arrays(raw)
    assert utf8
    assert len(labels) == len(expected.timeseries) and counts.sum() == len(t)
    pos = 0
    for lbs, n, ts in zip(labels, counts.tolist(), expected.timeseries, strict=True):
        assert lbs == tuple((lb.name, lb.value) for lb in ts.labels)
        st, sb = _slow_arrays(ts)
        assert t[pos : pos + n].tolist() == st.tolist() and bits[pos : pos + n].tolist() == sb.tolist()
        pos += n
    assert t[-4:].tolist() == [5, 8, 9, 0]


def test_read_response_arrays_leave_other_framings_to_protobuf():
    """A label after a sample or a field TimeSeries does not have (legal protobuf, never written by
    Prometheus or M3): None, and the caller decodes the response whole."""
    rr = ReadResponse()
    ts = rr.results.add().timeseries.add()
    ts.labels.add(name="__name__", value="m")
    ts.samples.add(timestamp=1, value=1.0)
    raw = rr.SerializeToString()
    assert read_response_arrays(raw) is not None
    assert read_response_arrays(_append_to_last_series(raw, b"\x0a\x05\x0a\x01a\x12\x00")) is None
    assert read_response_arrays(_append_to_last_series(raw, b"\x18\x01")) is None
    assert read_response_arrays(raw + b"\x0a\x00") is None  # two QueryResults


def _append_to_last_series(raw: bytes, extra: bytes) -> bytes:
    """A ReadResponse with bytes added at the end of its (one result's) last TimeSeries."""
    response = ReadResponse.FromString(raw)
    result = response.results[0]
    last = result.timeseries[-1].SerializeToString() + extra
    head = QueryResult()
    head.timeseries.extend(result.timeseries[:-1])
    body = head.SerializeToString() + b"\x0a" + _uvarint(len(last)) + last
    return b"\x0a" + _uvarint(len(body)) + body


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes((n,)))


def test_add_batch_writes_the_same_block_as_add_series_by_series(tmp_path):
    """A whole read part at once (what the backfill does) gives the same bytes as one series at a time."""
    rng = np.random.default_rng(9)
    series = []
    for k in range(300):
        n = int(rng.integers(1, 400))
        t = T0 + np.cumsum(rng.choice([15_000, 15_001, 15_002], n)).astype(np.int64)
        series.append(((("__name__", "m"), ("i", f"{k:03d}")), t, np.round(rng.normal(size=n), k % 4)))
    one = _writer(tmp_path / "one", ulid="01JD000000000000000000000A")
    with one:
        for labels, t, v in series:
            one.add(labels, t, v)
        a = one.finish()
    many = _writer(tmp_path / "many", ulid="01JD000000000000000000000A", flush_samples=20_000)
    with many:
        for part in (series[:100], series[100:]):
            many.add_batch(
                [s[0] for s in part],
                np.array([len(s[1]) for s in part]),
                np.concatenate([s[1] for s in part]),
                np.concatenate([s[2] for s in part]).view(np.uint64),
            )
        b = many.finish()
    for name in ("index", "chunks/000001"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes()
    with _writer(tmp_path / "bad") as w:
        up, down = (("__name__", "up"),), (("__name__", "down"),)
        with pytest.raises(InvalidSeries, match=r"down.*strictly increasing"):
            w.add_batch([up, down], np.array([2, 2]), np.array([T0, T0 + 1, T0 + 5, T0 + 5]), np.zeros(4, np.uint64))
        with pytest.raises(SampleOutOfRange, match="down"):
            w.add_batch([up, down], np.array([1, 1]), np.array([T0, T0 + H]), np.zeros(2, np.uint64))


def test_read_response_arrays_keep_label_bytes_that_are_not_utf8():
    """M3 tags are raw bytes: such a label comes back surrogateescape'd (it re-encodes exactly) and the
    part is flagged, so the writer sorts it byte-wise; a part of UTF-8 text is flagged so too."""
    rr = ReadResponse()
    ts = rr.results.add().timeseries.add()
    ts.labels.add(name="__name__", value="m")
    ts.samples.add(timestamp=1, value=1.0)
    plain = rr.SerializeToString()
    raw = plain.replace(b"\x01m", b"\x01\xff")
    assert read_response_arrays(plain).utf8
    got = read_response_arrays(raw)
    assert not got.utf8 and got.labels == [(("__name__", "\udcff"),)]
