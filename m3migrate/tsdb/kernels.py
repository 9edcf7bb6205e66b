"""Compiled (numba) kernels of the blocks path: remote-read answers to sample arrays, and XOR chunks to
the records of a chunk segment file, with no Python per sample.

Why numba: both loops are sequential per sample (a varint walk; Gorilla's bit stream, whose value
window depends on the previous sample), which numpy can only vectorise with tens of temporaries per
sample (memory) and a Python loop over sample positions (time). Compiled, they cost a few ns per
sample. ``cache=True`` keeps the machine code in ``__pycache__``: the first call in a fresh checkout
compiles (~2-4 s for both kernels), later processes load it (~0.2 s).

Formats: prometheus v2.42 tsdb/chunkenc/xor.go + bstream.go (the chunk), tsdb/docs/format/chunks.md
(the record: uvarint(len(data)), encoding byte, data, CRC-32C of encoding byte + data, big-endian).
The bit stream is a plain MSB-first concatenation, except that Prometheus 2.x leaves one zero byte
after a chunk whose last write was a whole number of bytes starting on a byte boundary (writeByte
appends the next byte eagerly; fixed in 3.0): reproduced, so chunks are byte-identical to 2.42's.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.cpython.unsafe.numbers import leading_zeros, trailing_zeros

ENCODING_XOR = 1
_MAX_BITS_PER_SAMPLE_BYTES = 19  # 68 bits of timestamp + 77 of value, rounded up
_CHUNK_OVERHEAD = 48  # header (count, varint t0, 8-byte v0, uvarint delta) + record framing + extra byte


def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc32c_table()
_U8 = np.uint64(0xFF)


@njit(cache=True, inline="always")
def _put(buf, pos, acc, nacc, value, nbits):
    """Append the low ``nbits`` (<= 32) of value to the stream; whole bytes go to buf."""
    acc = (acc << np.uint64(nbits)) | value
    nacc += nbits
    while nacc >= 8:
        nacc -= 8
        buf[pos] = np.uint8((acc >> np.uint64(nacc)) & _U8)
        pos += 1
    return pos, acc, nacc


@njit(cache=True, inline="always")
def _put64(buf, pos, acc, nacc, value, nbits):
    """_put for up to 64 bits."""
    if nbits > 32:
        pos, acc, nacc = _put(buf, pos, acc, nacc, value >> np.uint64(32), nbits - 32)
        return _put(buf, pos, acc, nacc, value & np.uint64(0xFFFFFFFF), 32)
    return _put(buf, pos, acc, nacc, value, nbits)


@njit(cache=True, inline="always")
def _put_uvarint(buf, pos, u):
    while u >= np.uint64(0x80):
        buf[pos] = np.uint8((u & np.uint64(0x7F)) | np.uint64(0x80))
        u >>= np.uint64(7)
        pos += 1
    buf[pos] = np.uint8(u)
    return pos + 1


@njit(cache=True, inline="always")
def _put_crc(out, pos, crc):
    """Finish a CRC-32C and write it big-endian, as Prometheus' chunk records and index sections end."""
    crc ^= np.uint32(0xFFFFFFFF)
    out[pos] = np.uint8(crc >> np.uint32(24))
    out[pos + 1] = np.uint8((crc >> np.uint32(16)) & np.uint32(0xFF))
    out[pos + 2] = np.uint8((crc >> np.uint32(8)) & np.uint32(0xFF))
    out[pos + 3] = np.uint8(crc & np.uint32(0xFF))
    return pos + 4


@njit(cache=True)
def _encode_chunk(t, v, lo, hi, buf):
    """One XOR chunk of samples [lo, hi) into buf; returns its length in bytes."""
    count = hi - lo
    buf[0] = np.uint8(count >> 8)
    buf[1] = np.uint8(count & 0xFF)
    t0 = t[lo]
    pos = _put_uvarint(buf, 2, np.uint64((t0 << 1) ^ (t0 >> 63)))  # Go's PutVarint: zigzag
    v0 = v[lo]
    for k in range(8):
        buf[pos + k] = np.uint8((v0 >> np.uint64(56 - 8 * k)) & _U8)
    pos += 8
    if count == 1:
        buf[pos] = 0  # the 2.x trailing byte after the header's whole-byte writes
        return pos + 1
    delta = t[lo + 1] - t0
    pos = _put_uvarint(buf, pos, np.uint64(delta))
    acc = np.uint64(0)
    nacc = 0
    lead = np.int64(0xFF)
    trail = np.int64(0)
    whole_bytes = False
    prev = v0
    for i in range(lo + 1, hi):
        if i > lo + 1:
            d = t[i] - t[i - 1]
            dod = d - delta
            delta = d
            u = np.uint64(dod)
            if dod == 0:
                pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(0), 1)
            elif -8191 <= dod <= 8192:
                pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(0x8000) | (u & np.uint64(0x3FFF)), 16)
            elif -65535 <= dod <= 65536:
                pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(0xC0000) | (u & np.uint64(0x1FFFF)), 20)
            elif -524287 <= dod <= 524288:
                pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(0xE00000) | (u & np.uint64(0xFFFFF)), 24)
            else:
                pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(15), 4)
                pos, acc, nacc = _put64(buf, pos, acc, nacc, u, 64)
        x = v[i] ^ prev
        prev = v[i]
        if x == 0:
            pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(0), 1)
            whole_bytes = False
            continue
        lz = np.int64(leading_zeros(x))
        if lz >= 32:
            lz = 31
        tz = np.int64(trailing_zeros(x))
        if lead != 0xFF and lz >= lead and tz >= trail:
            sig = 64 - lead - trail
            pos, acc, nacc = _put(buf, pos, acc, nacc, np.uint64(2), 2)
            pos, acc, nacc = _put64(buf, pos, acc, nacc, x >> np.uint64(trail), sig)
        else:
            lead, trail = lz, tz
            sig = 64 - lz - tz
            head = (np.uint64(3) << np.uint64(11)) | (np.uint64(lz) << np.uint64(6)) | np.uint64(sig & 63)
            pos, acc, nacc = _put(buf, pos, acc, nacc, head, 13)
            pos, acc, nacc = _put64(buf, pos, acc, nacc, x >> np.uint64(tz), sig)
        whole_bytes = sig % 8 == 0
    if nacc:
        buf[pos] = np.uint8((acc << np.uint64(8 - nacc)) & _U8)
        pos += 1
    elif whole_bytes:
        buf[pos] = 0
        pos += 1
    return pos


@njit(cache=True)
def encode_records(t, v, offsets, per_chunk, crc_table):
    """Segment-file records of the XOR chunks of many series, and per chunk its series, time range and
    record offset.

    ``t`` int64 ms and ``v`` uint64 value bits of all series back to back, series s at
    ``offsets[s]:offsets[s + 1]`` (time strictly increasing: the caller checks); each series is cut
    into ceil(n / per_chunk) chunks of nearly equal size (as :func:`m3migrate.tsdb.xor.chunk_starts`).
    Returns (records, record offsets [nchunks + 1], series index, min time, max time, chunk data
    offsets inside records [nchunks], chunk data lengths [nchunks]).
    """
    nseries = len(offsets) - 1
    nchunks = 0
    widest = 1
    for s in range(nseries):
        n = offsets[s + 1] - offsets[s]
        if n > 0:
            k = (n + per_chunk - 1) // per_chunk
            nchunks += k
            w = (n + k - 1) // k
            if w > widest:
                widest = w
    out = np.empty(nchunks * _CHUNK_OVERHEAD + len(t) * _MAX_BITS_PER_SAMPLE_BYTES, np.uint8)
    scratch = np.empty(_CHUNK_OVERHEAD + widest * _MAX_BITS_PER_SAMPLE_BYTES, np.uint8)
    rec = np.empty(nchunks + 1, np.int64)
    owner = np.empty(nchunks, np.int64)
    mint = np.empty(nchunks, np.int64)
    maxt = np.empty(nchunks, np.int64)
    data_at = np.empty(nchunks, np.int64)
    data_len = np.empty(nchunks, np.int64)
    pos = 0
    c = 0
    for s in range(nseries):
        a = offsets[s]
        n = offsets[s + 1] - a
        if n <= 0:
            continue
        k = (n + per_chunk - 1) // per_chunk
        for j in range(k):
            lo = a + (j * n) // k
            hi = a + ((j + 1) * n) // k
            size = _encode_chunk(t, v, lo, hi, scratch)
            rec[c] = pos
            owner[c] = s
            mint[c] = t[lo]
            maxt[c] = t[hi - 1]
            pos = _put_uvarint(out, pos, np.uint64(size))
            out[pos] = ENCODING_XOR
            crc = np.uint32(0xFFFFFFFF)
            crc = crc_table[(crc ^ np.uint32(ENCODING_XOR)) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
            pos += 1
            data_at[c] = pos
            data_len[c] = size
            for b in range(size):
                byte = scratch[b]
                out[pos + b] = byte
                crc = crc_table[(crc ^ np.uint32(byte)) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
            pos += size
            pos = _put_crc(out, pos, crc)
            c += 1
    rec[nchunks] = pos
    return out[:pos], rec, owner, mint, maxt, data_at, data_len


def xor_records(
    t: np.ndarray, v: np.ndarray, offsets: np.ndarray, per_chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """encode_records with the arguments made contiguous and typed (see there)."""
    return encode_records(
        np.ascontiguousarray(t, np.int64),
        np.ascontiguousarray(v, np.uint64),
        np.ascontiguousarray(offsets, np.int64),
        int(per_chunk),
        _CRC_TABLE,
    )


# -- remote-read answers ------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _uvarint(buf, p, end):
    """(value, position after it); position -1 when buf[p:end] does not start with a uvarint."""
    value = np.uint64(0)
    shift = 0
    while p < end and shift < 64:
        byte = buf[p]
        p += 1
        value |= np.uint64(byte & 0x7F) << np.uint64(shift)
        if byte < 0x80:
            return value, p
        shift += 7
    return value, -1


@njit(cache=True)
def _frame_series(buf, a, b):
    """(end of the label prefix, sample records) of one TimeSeries body; records -1 when it is not labels
    (field 1) then samples (field 2) only, the canonical encoding: then the series is decoded by upb."""
    p = a
    labels_end = a
    records = 0
    while p < b:
        tag = buf[p]
        if tag != 0x0A and tag != 0x12:
            return labels_end, -1
        length, q = _uvarint(buf, p + 1, b)
        if q < 0 or q + np.int64(length) > b:
            return labels_end, -1
        if tag == 0x0A:
            if records:
                return labels_end, -1  # a label after a sample
            labels_end = q + np.int64(length)
        else:
            records += 1
        p = q + np.int64(length)
    return labels_end, records


@njit(cache=True)
def _sample_fields(buf, p, end):
    """(timestamp, value bits, ok) of one Sample body: fields in any order, repeated (last wins), absent
    (zero) or unknown (skipped), as protobuf reads them; ok False on a broken body."""
    ts = np.int64(0)
    bits = np.uint64(0)
    while p < end:
        key, p = _uvarint(buf, p, end)
        if p < 0:
            return ts, bits, False
        wire = key & np.uint64(7)
        if key == np.uint64(0x09):
            if p + 8 > end:
                return ts, bits, False
            bits = np.uint64(0)
            for k in range(8):
                bits |= np.uint64(buf[p + k]) << np.uint64(8 * k)
            p += 8
        elif key == np.uint64(0x10):
            u, p = _uvarint(buf, p, end)
            if p < 0:
                return ts, bits, False
            ts = np.int64(u)
        elif wire == 0:
            _, p = _uvarint(buf, p, end)
            if p < 0:
                return ts, bits, False
        elif wire == 1:
            p += 8
        elif wire == 5:
            p += 4
        elif wire == 2:
            length, p = _uvarint(buf, p, end)
            if p < 0:
                return ts, bits, False
            p += np.int64(length)
        else:
            return ts, bits, False
        if p > end:
            return ts, bits, False
    return ts, bits, True


@njit(cache=True)
def scan_read_response(buf):
    """Walk a decompressed ReadResponse holding one QueryResult: per series its body's [start, end), the
    end of its label prefix, where its samples start in the arrays and how many there are, and a status
    (0: read here; 1: not in the canonical encoding, decode it with upb). ``ok`` False: the response is
    not in that shape at all (decode it whole, which reports what is wrong)."""
    n = len(buf)
    empty = np.zeros(0, np.int64)
    if n == 0:
        return True, empty, empty, empty, empty, empty, np.zeros(0, np.int64), np.zeros(0, np.uint64)
    if buf[0] != 0x0A:
        return False, empty, empty, empty, empty, empty, np.zeros(0, np.int64), np.zeros(0, np.uint64)
    length, p = _uvarint(buf, 1, n)
    if p < 0 or p + np.int64(length) != n:
        return False, empty, empty, empty, empty, empty, np.zeros(0, np.int64), np.zeros(0, np.uint64)
    start = p
    nseries = 0
    while p < n:  # pass 1: count the series
        if buf[p] != 0x0A:
            return False, empty, empty, empty, empty, empty, np.zeros(0, np.int64), np.zeros(0, np.uint64)
        length, q = _uvarint(buf, p + 1, n)
        if q < 0 or q + np.int64(length) > n:
            return False, empty, empty, empty, empty, empty, np.zeros(0, np.int64), np.zeros(0, np.uint64)
        nseries += 1
        p = q + np.int64(length)
    first = np.empty(nseries, np.int64)
    last = np.empty(nseries, np.int64)
    labels_end = np.empty(nseries, np.int64)
    counts = np.zeros(nseries, np.int64)
    status = np.zeros(nseries, np.int64)
    p = start
    total = 0
    for s in range(nseries):  # pass 2: frame each series
        length, q = _uvarint(buf, p + 1, n)
        first[s] = q
        last[s] = q + np.int64(length)
        le, records = _frame_series(buf, q, last[s])
        labels_end[s] = le
        if records < 0:
            status[s] = 1
        else:
            counts[s] = records
            total += records
        p = last[s]
    t = np.empty(total, np.int64)
    bits = np.empty(total, np.uint64)
    k = 0
    for s in range(nseries):  # pass 3: the samples
        if status[s]:
            continue
        p = labels_end[s]
        end = last[s]
        k0 = k
        while p < end:
            length = np.int64(buf[p + 1])
            q = p + 2
            if length >= 0x80:
                ulen, q = _uvarint(buf, p + 1, end)
                length = np.int64(ulen)
            stop = q + length
            if length >= 11 and buf[q] == 0x09 and buf[q + 9] == 0x10 and buf[stop - 1] < 0x80:
                # the canonical body (value, then timestamp): read in place
                vb = np.uint64(0)
                for b in range(8):
                    vb |= np.uint64(buf[q + 1 + b]) << np.uint64(8 * b)
                u = np.uint64(0)
                shift = np.uint64(0)
                r = q + 10
                while r < stop - 1 and buf[r] >= 0x80:
                    u |= np.uint64(buf[r] & 0x7F) << shift
                    shift += np.uint64(7)
                    r += 1
                if r == stop - 1 and shift < np.uint64(64):
                    t[k] = np.int64(u | (np.uint64(buf[r]) << shift))
                    bits[k] = vb
                    k += 1
                    p = stop
                    continue
            ts, vb, ok = _sample_fields(buf, q, stop)
            if not ok:
                status[s] = 1
                break
            t[k] = ts
            bits[k] = vb
            k += 1
            p = q + np.int64(length)
        if status[s]:
            k = k0
            counts[s] = 0
    return True, first, last, labels_end, counts, status, t[:k], bits[:k]


# -- the index's series section -----------------------------------------------------------------------


@njit(cache=True, inline="always")
def _put_varint(buf, pos, n):
    return _put_uvarint(buf, pos, np.uint64((n << 1) ^ (n >> 63)))


@njit(cache=True)
def encode_series_entries(label_refs, label_offsets, chunk_offsets, mint, maxt, ref, start, crc_table):
    """The index's series section (prometheus tsdb/docs/format/index.md, "Series"): per series, padded
    to 16 bytes from file offset ``start``, uvarint(len), the body (label symbol refs, then the chunks'
    time ranges and refs, delta-encoded) and its CRC-32C. Series i has the symbol refs
    ``label_refs[label_offsets[i]:label_offsets[i + 1]]`` (name, value, ...) and the chunk rows
    ``chunk_offsets[i]:chunk_offsets[i + 1]``. Returns (bytes, series IDs (offset / 16), largest entry)."""
    nseries = len(label_offsets) - 1
    cap = nseries * 64 + len(label_refs) * 5 + len(mint) * 30
    out = np.empty(cap, np.uint8)
    ids = np.empty(nseries, np.int64)
    body = np.empty(64 + (label_offsets[nseries] if nseries else 0) * 5 + len(mint) * 30, np.uint8)
    pos = 0
    largest = 0
    for i in range(nseries):
        while (start + pos) % 16:
            out[pos] = 0
            pos += 1
        ids[i] = (start + pos) // 16
        b = _put_uvarint(body, 0, np.uint64((label_offsets[i + 1] - label_offsets[i]) // 2))
        for k in range(label_offsets[i], label_offsets[i + 1]):
            b = _put_uvarint(body, b, np.uint64(label_refs[k]))
        lo, hi = chunk_offsets[i], chunk_offsets[i + 1]
        b = _put_uvarint(body, b, np.uint64(hi - lo))
        prev_maxt = np.int64(0)
        prev_ref = np.int64(0)
        for k in range(lo, hi):
            if k == lo:
                b = _put_varint(body, b, mint[k])
                b = _put_uvarint(body, b, np.uint64(maxt[k] - mint[k]))
                b = _put_uvarint(body, b, np.uint64(ref[k]))
            else:
                b = _put_uvarint(body, b, np.uint64(mint[k] - prev_maxt))
                b = _put_uvarint(body, b, np.uint64(maxt[k] - mint[k]))
                b = _put_varint(body, b, ref[k] - prev_ref)
            prev_maxt = maxt[k]
            prev_ref = ref[k]
        entry = pos
        pos = _put_uvarint(out, pos, np.uint64(b))
        crc = np.uint32(0xFFFFFFFF)
        for k in range(b):
            byte = body[k]
            out[pos + k] = byte
            crc = crc_table[(crc ^ np.uint32(byte)) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
        pos += b
        pos = _put_crc(out, pos, crc)
        if pos - entry > largest:
            largest = pos - entry
    return out[:pos], ids, largest


def series_entries(
    label_refs: np.ndarray,
    label_offsets: np.ndarray,
    chunk_offsets: np.ndarray,
    mint: np.ndarray,
    maxt: np.ndarray,
    ref: np.ndarray,
    start: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """encode_series_entries with the arguments made contiguous and typed (see there)."""
    out, ids, largest = encode_series_entries(
        np.ascontiguousarray(label_refs, np.int64),
        np.ascontiguousarray(label_offsets, np.int64),
        np.ascontiguousarray(chunk_offsets, np.int64),
        np.ascontiguousarray(mint, np.int64),
        np.ascontiguousarray(maxt, np.int64),
        np.ascontiguousarray(ref, np.int64),
        int(start),
        _CRC_TABLE,
    )
    return out, ids, int(largest)


@njit(cache=True)
def encode_postings(sids, list_offsets, start, crc_table):
    """Postings sections, one per list: padded to 4 bytes from file offset ``start``, u32 length, u32
    count and the u32 series IDs (big-endian), CRC-32C of the body. List i is
    ``sids[list_offsets[i]:list_offsets[i + 1]]``. Returns (bytes, file offset of each list)."""
    nlists = len(list_offsets) - 1
    out = np.empty(nlists * 16 + len(sids) * 4, np.uint8)
    where = np.empty(nlists, np.int64)
    pos = 0
    for i in range(nlists):
        while (start + pos) % 4:
            out[pos] = 0
            pos += 1
        where[i] = start + pos
        lo, hi = list_offsets[i], list_offsets[i + 1]
        n = hi - lo
        size = 4 + 4 * n
        for k in range(4):
            out[pos + k] = np.uint8((size >> (24 - 8 * k)) & 0xFF)
        pos += 4
        body = pos
        for k in range(4):
            out[pos + k] = np.uint8((n >> (24 - 8 * k)) & 0xFF)
        pos += 4
        for j in range(lo, hi):
            sid = sids[j]
            for k in range(4):
                out[pos + k] = np.uint8((sid >> (24 - 8 * k)) & 0xFF)
            pos += 4
        crc = np.uint32(0xFFFFFFFF)
        for k in range(body, pos):
            crc = crc_table[(crc ^ np.uint32(out[k])) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
        pos = _put_crc(out, pos, crc)
    return out[:pos], where


@njit(cache=True)
def encode_postings_table(name_refs, value_refs, where, sym_bytes, sym_offsets):
    """The body of the postings offset table: per list 0x02, the name and the value (uvarint length +
    bytes, from the symbol table) and the uvarint file offset of the list."""
    n = len(where)
    cap = 4 + n * 32
    for i in range(n):
        cap += sym_offsets[name_refs[i] + 1] - sym_offsets[name_refs[i]]
        cap += sym_offsets[value_refs[i] + 1] - sym_offsets[value_refs[i]]
    out = np.empty(cap, np.uint8)
    for k in range(4):
        out[k] = np.uint8((n >> (24 - 8 * k)) & 0xFF)
    pos = 4
    for i in range(n):
        out[pos] = 2
        pos += 1
        for ref in (name_refs[i], value_refs[i]):
            a, b = sym_offsets[ref], sym_offsets[ref + 1]
            pos = _put_uvarint(out, pos, np.uint64(b - a))
            out[pos : pos + b - a] = sym_bytes[a:b]
            pos += b - a
        pos = _put_uvarint(out, pos, np.uint64(where[i]))
    return out[:pos]


def postings_sections(sids: np.ndarray, list_offsets: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """encode_postings with the arguments made contiguous and typed (see there)."""
    return encode_postings(
        np.ascontiguousarray(sids, np.int64), np.ascontiguousarray(list_offsets, np.int64), int(start), _CRC_TABLE
    )


def postings_table(
    name_refs: np.ndarray, value_refs: np.ndarray, where: np.ndarray, sym_bytes: np.ndarray, sym_offsets: np.ndarray
) -> np.ndarray:
    """encode_postings_table with the arguments made contiguous and typed (see there)."""
    return encode_postings_table(
        np.ascontiguousarray(name_refs, np.int64),
        np.ascontiguousarray(value_refs, np.int64),
        np.ascontiguousarray(where, np.int64),
        np.ascontiguousarray(sym_bytes, np.uint8),
        np.ascontiguousarray(sym_offsets, np.int64),
    )
