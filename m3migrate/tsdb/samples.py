"""Remote-read results as numpy arrays, without a Python object per sample.

Reading ``sample.timestamp`` / ``sample.value`` through protobuf costs ~300 ns per sample, more than
the whole block encoding. Instead the QueryResult is re-parsed with a message type that declares the
samples as raw ``bytes``: each Sample body is then ``[0x09 + 8-byte little-endian double]
[0x10 + varint timestamp]`` (proto3 leaves out zero fields), which numpy decodes for all samples at
once. Anything else (fields reordered or repeated: legal protobuf, never produced by Prometheus or
M3) falls back to the plain protobuf path, so the result is always right.

:func:`read_response_arrays` goes further for a whole (decompressed) ReadResponse: a compiled kernel
(:mod:`m3migrate.tsdb.kernels`) walks the wire bytes into one timestamp and one value array for all
series, with every protobuf encoding of a Sample understood; only the label prefixes go through upb.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple, cast

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from m3migrate.model import Labels
from m3migrate.prompb import QueryResult, TimeSeries
from m3migrate.tsdb.kernels import scan_read_response
from m3migrate.wire.codec import BytesQueryResult, decode_ascii_labels, uvarint

SeriesArrays = tuple[Labels, np.ndarray, np.ndarray]  # labels as sent, int64 ms, uint64 value bits


def _raw_query_result_class() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(name="m3migrate_tsdb_raw.proto", package="m3migrate.tsdb.raw")
    fdp.syntax = "proto3"
    label = fdp.message_type.add(name="Label")
    label.field.add(name="name", number=1, type=12, label=1)  # bytes: M3's tags need not be UTF-8
    label.field.add(name="value", number=2, type=12, label=1)
    series = fdp.message_type.add(name="TimeSeries")
    series.field.add(name="labels", number=1, type=11, label=3, type_name=".m3migrate.tsdb.raw.Label")
    series.field.add(name="samples", number=2, type=12, label=3)  # Sample messages as raw bytes
    result = fdp.message_type.add(name="QueryResult")
    result.field.add(name="timeseries", number=1, type=11, label=3, type_name=".m3migrate.tsdb.raw.TimeSeries")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("m3migrate.tsdb.raw.QueryResult"))


_RawQueryResult = _raw_query_result_class()


def series_arrays(result: QueryResult | bytes) -> Iterator[SeriesArrays]:
    """(labels, timestamps, value bits) per series of a QueryResult (or its serialized bytes)."""
    raw_bytes = result if isinstance(result, bytes) else result.SerializeToString()
    raw = _RawQueryResult()
    raw.ParseFromString(raw_bytes)
    labels: list[Labels] = []
    counts: list[int] = []
    lens: list[np.ndarray] = []
    bodies: list[bytes] = []
    for ts in raw.timeseries:
        labels.append(tuple((_text(lb.name), _text(lb.value)) for lb in ts.labels))
        recs = ts.samples
        counts.append(len(recs))
        lens.append(np.fromiter(map(len, recs), np.int64, len(recs)))
        bodies.append(b"".join(recs))
    if not labels:
        return
    decoded = _decode_samples(b"".join(bodies), np.concatenate(lens))
    if decoded is None:
        parsed = BytesQueryResult.FromString(raw_bytes)  # labels are taken from above
        for lbs, ts in zip(labels, parsed.timeseries, strict=True):
            yield lbs, *_slow_arrays(ts)
        return
    t, bits = decoded
    pos = 0
    for lbs, n in zip(labels, counts, strict=True):
        yield lbs, t[pos : pos + n], bits[pos : pos + n]
        pos += n


class ReadArrays(NamedTuple):
    """A read part's series: labels as sent, samples per series, and their samples back to back."""

    labels: list[Labels]
    counts: np.ndarray
    timestamps: np.ndarray  # int64 ms
    bits: np.ndarray  # uint64 value bits
    utf8: bool  # every label is UTF-8 text (no surrogateescape'd bytes to look for)


def read_response_arrays(raw: bytes) -> ReadArrays | None:
    """The series of a decompressed ReadResponse as arrays; None when it is not one QueryResult of
    canonically framed series (labels, then samples): the caller then decodes it whole."""
    scanned = scan_response(raw)
    if scanned is None:
        return None
    return ReadArrays(scanned.labels(), scanned.counts, scanned.timestamps, scanned.bits, scanned.utf8)


class ScannedResponse:
    """A read response walked into sample arrays, its series' labels still as the bytes they came in.

    Equal label bytes are equal labels (the framing is canonical), so a caller that has seen a series in
    an earlier response can recognise it by :meth:`label_keys` alone and decode only the labels it has
    not seen (a label set costs ~4-7 us to decode, as much as ~100 of its samples).
    """

    __slots__ = ("_ends", "_keys", "_raw", "_starts", "_utf8", "bits", "counts", "timestamps")

    def __init__(
        self, raw: bytes, starts: np.ndarray, ends: np.ndarray, counts: np.ndarray, t: np.ndarray, bits: np.ndarray
    ) -> None:
        self._raw, self._starts, self._ends = raw, starts, ends
        self._keys: list[bytes] | None = None
        self._utf8: bool | None = None
        self.counts, self.timestamps, self.bits = counts, t, bits

    def label_keys(self) -> list[bytes]:
        """Each series' label fields as sent."""
        if self._keys is None:
            raw = self._raw
            self._keys = [raw[a:e] for a, e in zip(self._starts.tolist(), self._ends.tolist(), strict=True)]
        return self._keys

    @property
    def utf8(self) -> bool:
        """Every label is UTF-8 text (no surrogateescape'd bytes to look for)."""
        if self._utf8 is None:
            self._utf8 = _utf8(b"".join(self.label_keys()))
        return self._utf8

    def labels(self, which: Sequence[int] | None = None) -> list[Labels]:
        """The label sets of the series ``which`` (indexes; all when None): ASCII ones read directly, the
        others in one upb parse."""
        keys = self.label_keys()
        chosen = keys if which is None else [keys[i] for i in which]
        decoded = [decode_ascii_labels(k, _NAME_TEXT) for k in chosen]
        rest = [i for i, labels in enumerate(decoded) if labels is None]
        if rest:
            frames = b"".join(b"".join((b"\x0a", uvarint(len(chosen[i])), chosen[i])) for i in rest)
            names = _NAMES if len(_NAMES) < _NAMES_MAX else {}
            for i, ts in zip(rest, _RawQueryResult.FromString(frames).timeseries, strict=True):
                decoded[i] = tuple((_name(lb.name, names), _text(lb.value)) for lb in ts.labels)
        return cast(list[Labels], decoded)


def scan_response(raw: bytes) -> ScannedResponse | None:
    """A decompressed ReadResponse walked by the compiled kernel; None when it is not one QueryResult of
    canonically framed series (labels, then samples)."""
    ok, first, _, labels_end, counts, status, t, bits = scan_read_response(np.frombuffer(raw, np.uint8))
    if not ok or status.any():
        return None
    return ScannedResponse(raw, first, labels_end, counts, t, bits)


def _utf8(data: bytes) -> bool:
    """Whether bytes are UTF-8 (a length byte >= 0x80 makes it False: a needless but harmless slow check)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_NAMES: dict[bytes, str] = {}  # label names repeat in every series: one str each, not one per series
_NAME_TEXT: dict[str, str] = {}  # the same for the ASCII labels read without upb
_NAMES_MAX = 10_000


def _name(raw: bytes, names: dict[bytes, str]) -> str:
    name = names.get(raw)
    if name is None:
        name = names[raw] = _text(raw)
    return name


def _text(raw: bytes) -> str:
    """Label bytes as text; bytes that are not UTF-8 as ``surrogateescape`` surrogates (re-encode exactly)."""
    return raw.decode("utf-8", "surrogateescape")


def _slow_arrays(ts: TimeSeries) -> tuple[np.ndarray, np.ndarray]:
    n = len(ts.samples)
    t = np.fromiter((s.timestamp for s in ts.samples), np.int64, n)
    v = np.fromiter((s.value for s in ts.samples), np.float64, n)
    return t, v.view(np.uint64)


# Per varint length k (1..8): the k low bytes, their continuation bits, and the continuation bits a
# valid k-byte varint has (set in all but the last byte).
_LEN_MASK = np.array([0] + [(1 << (8 * k)) - 1 for k in range(1, 9)], np.uint64)
_CONT_MASK = np.array([0] + [int("80" * k, 16) for k in range(1, 9)], np.uint64)
_CONT_WANT = np.array([0, 0] + [int("80" * (k - 1), 16) for k in range(2, 9)], np.uint64)
_GROUPS = [(np.uint64(j), np.uint64(0x7F << (7 * j))) for j in range(8)]


def _decode_samples(joined: bytes, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode concatenated Sample bodies; None when any body is not in the canonical layout.

    Every 8-byte field is read through one unaligned little-endian uint64 view at any byte offset; a
    varint of up to 8 bytes is taken from such a word by masking and squeezing out the continuation
    bits (timestamps in ms are 6 bytes).
    """
    n = len(lens)
    t = np.zeros(n, np.int64)
    bits = np.zeros(n, np.uint64)
    if n == 0 or not joined:
        return (t, bits) if not joined else None
    padded = joined + bytes(16)
    buf = np.frombuffer(padded, np.uint8)
    words = np.ndarray((len(joined) + 8,), dtype="<u8", buffer=padded, offset=0, strides=(1,))
    starts = np.zeros(n, np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    ends = starts + lens
    has_v = (lens > 0) & (buf[starts] == 0x09)
    if has_v.any():
        vi = np.flatnonzero(has_v)
        if (lens[vi] < 9).any():
            return None
        bits[vi] = words[starts[vi] + 1]
    tpos = starts + np.where(has_v, 9, 0)
    ti = np.flatnonzero(tpos < ends)
    if len(ti):
        at = tpos[ti]
        vlen = ends[ti] - at - 1
        if (buf[at] != 0x10).any() or (vlen < 1).any() or (vlen > 8).any():
            return None  # (a 9- or 10-byte varint is a timestamp beyond year 4000 or before 1970)
        w = words[at + 1] & _LEN_MASK[vlen]
        if ((w & _CONT_MASK[vlen]) != _CONT_WANT[vlen]).any():
            return None
        u = np.zeros(len(ti), np.uint64)
        for shift, mask in _GROUPS:
            u |= (w >> shift) & mask
        t[ti] = u.view(np.int64)
    return t, bits
