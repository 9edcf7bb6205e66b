"""Wire codecs: snappy block compression, read requests/responses and size-bounded write requests.

The data path never loops over samples in Python: parsed TimeSeries messages go from the read response
into write requests as serialized bytes (a QueryResult and a WriteRequest share one wire form: field 1,
repeated TimeSeries). Only a series too large for one request is sliced sample-wise.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import snappy
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from m3migrate.errors import MalformedResponse
from m3migrate.model import Labels
from m3migrate.prompb import Label, LabelMatcher, Query, QueryResult, ReadRequest, ReadResponse, TimeSeries, prompb_pb2

STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker
MAX_DECOMPRESSED = 1 << 31  # refuse bodies that claim more than 2 GiB once decompressed
MAX_SAMPLE_BYTES = 20  # largest encoded Sample: double (1+8) + int64 timestamp (1+10); +2 for its framing

MATCH_TYPES = {"=": LabelMatcher.EQ, "!=": LabelMatcher.NEQ, "=~": LabelMatcher.RE, "!~": LabelMatcher.NRE}


def compress(data: bytes) -> bytes:
    """Snappy block format (remote write forbids the framed format)."""
    return snappy.compress(data)


def decompress(data: bytes, *, endpoint: str, what: str) -> bytes:
    """Snappy block decompression with a typed error for bodies that are not snappy."""
    try:
        claimed = _snappy_length(data)  # guards against a header claiming absurd sizes
        if claimed > MAX_DECOMPRESSED:
            raise MalformedResponse(f"{what}: snappy body claims {claimed} bytes", endpoint=endpoint)
        return snappy.decompress(data)
    except MalformedResponse:
        raise
    except Exception as exc:
        raise MalformedResponse(
            f"{what}: body is not snappy-compressed ({type(exc).__name__})",
            endpoint=endpoint,
            body=data[:60].decode("utf-8", "replace"),
        ) from None


def _snappy_length(data: bytes) -> int:
    """The uncompressed length a snappy block announces in its uvarint header."""
    length = shift = 0
    for i, byte in enumerate(data[:10]):
        length |= (byte & 0x7F) << shift
        if byte < 0x80:
            return length
        shift += 7
        if i == 9:
            break
    raise ValueError("no valid snappy length header")


@dataclass(frozen=True)
class Matcher:
    """One label matcher (name, op, value), op one of = != =~ !~."""

    name: str
    op: str
    value: str

    def to_pb(self) -> LabelMatcher:
        return LabelMatcher(type=MATCH_TYPES[self.op], name=self.name, value=self.value)

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.name}{self.op}"{escaped}"'


def selector_string(matchers: Iterable[Matcher]) -> str:
    """PromQL form of a matcher list, e.g. {__name__="up",job=~"a|b"}."""
    return "{" + ",".join(str(m) for m in matchers) + "}"


def encode_read_request(matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> bytes:
    """A one-query SAMPLES ReadRequest (the only kind M3 serves), snappy-compressed."""
    query = Query(start_timestamp_ms=start_ms, end_timestamp_ms=end_ms, matchers=[m.to_pb() for m in matchers])
    request = ReadRequest(queries=[query], accepted_response_types=[ReadRequest.SAMPLES])
    return compress(request.SerializeToString())


def _bytes_label_classes() -> dict[str, Any]:
    """prompb's messages with Label name/value declared ``bytes``, as M3's own prompb declares them
    (src/query/generated/proto/prompb/types.proto): a proto3 ``string`` parse refuses bytes that are
    not UTF-8, which would fail a whole read for one such series. Same wire form, so these messages
    serialize to what was read."""
    fdp = descriptor_pb2.FileDescriptorProto()
    prompb_pb2.DESCRIPTOR.CopyToProto(fdp)
    old, new = f".{fdp.package}.", ".m3migrate.prompb_bytes."
    fdp.name, fdp.package = "m3migrate_prompb_bytes.proto", new[1:-1]
    for msg in fdp.message_type:
        for f in msg.field:
            if f.type_name.startswith(old):
                f.type_name = new + f.type_name[len(old) :]
            if msg.name == "Label":
                f.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    names = ("ReadResponse", "QueryResult", "TimeSeries")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(new[1:] + n)) for n in names}


_BYTES_LABELS = _bytes_label_classes()
BytesTimeSeries = _BYTES_LABELS["TimeSeries"]
BytesQueryResult = _BYTES_LABELS["QueryResult"]


def parse_read_response(raw: bytes) -> Message:
    """A decompressed ReadResponse; when a label is not UTF-8, with label fields as ``bytes`` (read
    its series' labels with :func:`series_labels`). Raises DecodeError for a body that is no
    ReadResponse at all."""
    try:
        return ReadResponse.FromString(raw)
    except DecodeError:
        return _BYTES_LABELS["ReadResponse"].FromString(raw)  # raises again if it is not the labels


def parse_series(raw: bytes) -> Message:
    """One TimeSeries as :func:`parse_read_response` parses them."""
    try:
        return TimeSeries.FromString(raw)
    except DecodeError:
        return BytesTimeSeries.FromString(raw)


def _label_text(text: str | bytes) -> str:
    return text if text.__class__ is str else text.decode("utf-8", "surrogateescape")  # type: ignore[union-attr]


def series_labels(ts: Message) -> tuple[tuple[str, str], ...]:
    """A parsed series' labels as text, as sent; bytes that are not UTF-8 as ``surrogateescape``
    surrogates, so they re-encode to the same bytes (see :func:`encode_raw_labels`)."""
    return tuple((_label_text(label.name), _label_text(label.value)) for label in ts.labels)


def decode_read_response(raw: bytes, *, endpoint: str) -> QueryResult:
    """Parse a decompressed ReadResponse holding one QueryResult. A response with label bytes that are
    not UTF-8 parses too (labels as ``bytes``): read labels with :func:`series_labels`."""
    try:
        response = parse_read_response(raw)
    except DecodeError as exc:
        raise MalformedResponse(f"remote read: body is not a ReadResponse ({exc})", endpoint=endpoint) from None
    if len(response.results) != 1:
        raise MalformedResponse(f"remote read: expected 1 query result, got {len(response.results)}", endpoint=endpoint)
    return response.results[0]


def uvarint(n: int) -> bytes:
    """An unsigned varint (little-endian base 128): protobuf's length prefix and Go's PutUvarint."""
    if n < 0:
        raise ValueError(f"uvarint of a negative number: {n}")
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def uvarint_at(buf: bytes | bytearray | memoryview, p: int, end: int | None = None) -> tuple[int, int]:
    """The uvarint at buf[p:] (before ``end``, default the buffer's end) and the position after it;
    (-1, end) if the bytes there are not one (cut short, or longer than 10 bytes).

    The one decoder of the project: the wire walk uses the sentinel (a frame that does not parse is
    handed to the full decoder, which says what is wrong), the block reader raises on it
    (:func:`m3migrate.tsdb.encoding.read_uvarint`). The numba kernels keep their own compiled copy."""
    if end is None:
        end = len(buf)
    value = shift = 0
    while p < end and shift < 64:
        byte = buf[p]
        p += 1
        if shift == 63 and byte > 1:
            return -1, end  # past 2**64 - 1 (Go's binary.Uvarint: overflow)
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, p
        shift += 7
    return -1, end


def _field1(payload: bytes) -> bytes:
    """Frame bytes as field 1 (length-delimited): a TimeSeries inside a WriteRequest."""
    return b"\x0a" + uvarint(len(payload)) + payload


@dataclass
class WriteBody:
    """One remote-write request: compressed body, what it carries, and its series' framed bytes.

    ``parts`` lets a refused all-or-nothing request be resent series by series.
    """

    body: bytes
    series: int
    samples: int
    raw_bytes: int
    parts: list[bytes] = field(default_factory=list, repr=False)


@dataclass
class WriteChain:
    """Requests that must be sent one after another, in order.

    A series too large for one request spans several; sending them concurrently would let the target
    see its samples out of order (Prometheus then answers 204 and silently drops some), so they chain.
    """

    requests: list[WriteBody] = field(default_factory=list)
    non_utf8: str = ""  # a lone series with label bytes that are not UTF-8 (shown escaped): refusable alone

    @property
    def samples(self) -> int:
        return sum(r.samples for r in self.requests)


def frame_series(label_bytes: bytes, samples_payload: bytes) -> bytes:
    """A TimeSeries framed as WriteRequest field 1, from its encoded labels and encoded samples."""
    payload_len = len(label_bytes) + len(samples_payload)
    return b"\x0a" + uvarint(payload_len) + label_bytes + samples_payload


def encode_labels(labels: Iterable[tuple[str, str]]) -> bytes:
    """The encoded `labels` fields of a TimeSeries (concatenates with its encoded samples), as upb
    serializes them. Framed by hand when every label is short and neither field empty (one-byte lengths:
    ~1.6 us for seven labels against ~5.5 us through message objects); otherwise, and for text that is
    not UTF-8 (the same UnicodeEncodeError), through the message."""
    labels = labels if isinstance(labels, (tuple, list)) else list(labels)
    fields = []
    for name, value in labels:
        n, v = name.encode(), value.encode()
        size = len(n) + len(v) + 4
        if size >= 128 or not n or not v:
            return TimeSeries(labels=[Label(name=n, value=v) for n, v in labels]).SerializeToString()
        fields.append(b"\x0a%c\x0a%c%s\x12%c%s" % (size, len(n), n, len(v), v))
    return b"".join(fields)


LABEL_NAMES_KEPT = 10_000  # distinct label names a decoder shares one str of


def decode_ascii_labels(fields: bytes, names: dict[str, str]) -> Labels | None:
    """The labels of a TimeSeries' label fields (``encode_labels``' output, as a source frames them), read
    without message objects (~2.3 us for six labels against ~7.5 through upb) when every byte is ASCII and
    each label is a name then a value, both set: with no byte >= 0x80 every length is one byte, so a
    character's index is its byte's. None for anything else (multi-byte text, an empty field, another
    field or order): the caller then decodes through the message. ``names``: one str per label name,
    shared by every series (at most LABEL_NAMES_KEPT are added)."""
    try:
        text = fields.decode("ascii")
    except UnicodeDecodeError:
        return None
    labels = []
    pos, end = 0, len(text)
    try:
        while pos < end:
            size, name_size = ord(text[pos + 1]), ord(text[pos + 3])
            name_end = pos + 4 + name_size
            value_size = ord(text[name_end + 1])
            if (
                text[pos] != "\n"
                or text[pos + 2] != "\n"
                or text[name_end] != "\x12"
                or size != name_size + value_size + 4
                or not name_size
                or not value_size
            ):
                return None
            name = text[pos + 4 : name_end]
            shared = names.get(name)
            if shared is None:
                shared = name
                if len(names) < LABEL_NAMES_KEPT:
                    names[name] = name
            pos = name_end + 2 + value_size
            labels.append((shared, text[name_end + 2 : pos]))
    except IndexError:
        return None
    return tuple(labels) if pos == end else None


def encode_raw_labels(labels: Iterable[tuple[str, str]]) -> bytes:
    """encode_labels for labels holding bytes that are not UTF-8 (decoded with ``surrogateescape``):
    framed by hand, each name and value re-encoded to its original bytes, empty fields omitted as upb
    does. M3 stores tags as raw bytes (its prompb declares Label name/value ``bytes``), so they pass
    byte-exact; a proto3 ``string`` setter refuses them."""
    out = []
    for name, value in labels:
        body = b"".join(
            b"" if not text else tag + uvarint(len(raw)) + raw
            for tag, text in ((b"\x0a", name), (b"\x12", value))
            for raw in (text.encode("utf-8", "surrogateescape"),)
        )
        out.append(b"\x0a" + uvarint(len(body)) + body)
    return b"".join(out)


def source_key(labels: Iterable[tuple[str, str]], *, endpoint: str) -> Labels:
    """A read series' labels sorted by name; a source that sends one name twice answered malformed."""
    key = tuple(sorted(labels))
    if len(key) != len({name for name, _ in key}):
        raise MalformedResponse(
            f"remote read: the source sent a series with duplicate label names: {dict(key)}", endpoint=endpoint
        )
    return key


def show_labels(labels: Iterable[tuple[str, str]]) -> str:
    """Labels as {name="value", ...} for logs and the summary, bytes that are not UTF-8 as \\xNN escapes."""
    text = ", ".join(f'{n}="{v}"' for n, v in labels)
    return "{" + text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + "}"


def single_request(framed: bytes, samples: int) -> WriteBody:
    return WriteBody(compress(framed), 1, samples, len(framed), [framed])


class Packer:
    """Framed series into snappy WriteRequests of at most ``max_bytes`` (uncompressed) and ``max_samples``
    each, in the order added; a series sliced over several requests (``continues``) keeps them in one
    :class:`WriteChain`, sent in order. Both write paths use it: :func:`pack_write_requests` for
    decoded series and the wire walk (m3migrate/wire/walk.py) for series cut straight from the read."""

    def __init__(self, max_bytes: int, max_samples: int) -> None:
        self.max_bytes = max_bytes
        self.max_samples = max_samples
        self.chains: list[WriteChain] = []
        self._parts: list[bytes] = []
        self._bytes = self._samples = 0
        self._continues = False  # the open request continues a series from the previous request

    def add(self, framed: bytes, samples: int, *, continues: bool = False) -> None:
        if self._parts and (self._bytes + len(framed) > self.max_bytes or self._samples + samples > self.max_samples):
            self.flush()
        if not self._parts:
            self._continues = continues
        self._parts.append(framed)
        self._bytes += len(framed)
        self._samples += samples

    def flush(self) -> None:
        if not self._parts:
            return
        raw = b"".join(self._parts)
        body = WriteBody(compress(raw), len(self._parts), self._samples, len(raw), self._parts)
        if self._continues and self.chains:
            self.chains[-1].requests.append(body)
        else:
            self.chains.append(WriteChain([body]))
        self._parts, self._bytes, self._samples = [], 0, 0
        self._continues = False

    def add_sliced(self, label_bytes: bytes, ts: TimeSeries) -> None:
        """A series over either bound, sliced in time order into requests of its own, one chain."""
        self.flush()
        # the largest a sample can encode to, not the average: 0.0 values are omitted, so sizes vary
        step = max(1, min(self.max_samples, (self.max_bytes - 64 - len(label_bytes)) // (MAX_SAMPLE_BYTES + 2)))
        for i, start in enumerate(range(0, len(ts.samples), step)):
            part = TimeSeries()
            part.samples.extend(ts.samples[start : start + step])
            self.add(frame_series(label_bytes, part.SerializeToString()), len(part.samples), continues=i > 0)
            self.flush()


def pack_write_requests(
    series: Iterable[tuple[bytes, TimeSeries]], *, max_bytes: int, max_samples: int
) -> list[WriteChain]:
    """Pack (encoded labels, label-less TimeSeries) pairs into snappy WriteRequests.

    Each request holds at most max_bytes (uncompressed) and max_samples. Samples are serialized by
    protobuf, never walked in Python; only a series over either bound is sliced, in time order, into
    consecutive requests of one chain.
    """
    packer = Packer(max_bytes, max_samples)
    for label_bytes, ts in series:
        n = len(ts.samples)
        payload = ts.SerializeToString()
        if n <= max_samples and len(payload) + len(label_bytes) + 16 <= max_bytes:
            packer.add(frame_series(label_bytes, payload), n)
            continue
        packer.add_sliced(label_bytes, ts)
    packer.flush()
    return packer.chains


def float_bits(value: float) -> int:
    """The IEEE-754 bit pattern of a float: compares NaN payloads (stale markers) exactly."""
    return struct.unpack("<Q", struct.pack("<d", value))[0]
