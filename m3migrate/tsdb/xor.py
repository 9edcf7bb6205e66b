"""Prometheus' XOR (Gorilla) chunk encoding, vectorized with numpy over many chunks at once.

Why numpy: encoding bit by bit in Python runs at a few hundred thousand samples/s, slower than the
source can be read. Here everything that does not depend on the previous sample's encoder state
(timestamp delta-of-deltas, value XORs, leading/trailing zeros, every bit field) is computed as
arrays; only the value "window" (the leading/trailing-zero pair that Gorilla reuses until a XOR
does not fit) is a short Python loop over the samples whose value changed. The bit fields are then
packed into 64-bit words with a few array operations and cut into chunks.

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

from m3migrate.tsdb.encoding import read_uvarint, read_varint, uvarint, varint
from m3migrate.tsdb.errors import InvalidSeries

ENCODING_XOR = 1
SAMPLES_PER_CHUNK = 120  # Prometheus' target; a chunk holds at most 65535 (uint16 count)
MAX_SAMPLES_PER_CHUNK = 65_535

_U64 = np.uint64


def chunk_starts(n: int, per_chunk: int = SAMPLES_PER_CHUNK) -> np.ndarray:
    """Start indices cutting n samples into ceil(n / per_chunk) chunks of nearly equal size."""
    if n <= 0:
        return np.zeros(0, np.int64)
    k = -(-n // per_chunk)
    return (np.arange(k, dtype=np.int64) * n) // k


def _bit_length(x: np.ndarray) -> np.ndarray:
    """Bit length of nonzero uint64s (float64 is exact on 32-bit halves)."""
    hi = (x >> _U64(32)).astype(np.float64)
    lo = (x & _U64(0xFFFFFFFF)).astype(np.float64)
    return np.where(hi > 0, 32 + np.frexp(hi)[1], np.frexp(lo)[1]).astype(np.int64)


def _trailing_zeros(x: np.ndarray) -> np.ndarray:
    """Trailing zeros of nonzero uint64s: the lowest set bit is a power of two, exact in float64."""
    lowest = x & (~x + _U64(1))
    return (np.frexp(lowest.astype(np.float64))[1] - 1).astype(np.int64)


def _windows_loop(lead: np.ndarray, trail: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The (leading, trailing) window in force at each changed value, as lead << 8 | trail.

    Gorilla keeps the window while a XOR fits inside it, and takes the XOR's own window otherwise
    (and always for the first changed value of a chunk): the one sequential step, here as a plain
    loop (used when there are too few chunks to vectorize across them).
    """
    out: list[int] = []
    append = out.append
    cur_l = cur_t = 0
    for lz, tz, f in zip(lead.tolist(), trail.tolist(), first.tolist(), strict=True):
        if f or lz < cur_l or tz < cur_t:
            cur_l, cur_t = lz, tz
        append(cur_l << 8 | cur_t)
    return np.array(out, np.int64)


def _windows_lanes(lead: np.ndarray, trail: np.ndarray, chunk: np.ndarray, pos: np.ndarray, nchunks: int) -> np.ndarray:
    """Same result as _windows_loop, stepping through sample positions with all chunks side by side.

    Chunks are independent, so position k of every chunk is one vector step: about max-chunk-length
    steps instead of one Python iteration per sample.
    """
    width = int(pos.max()) + 1
    dense_l = np.full((width, nchunks), 127, np.int16)  # 127: no changed value at this position
    dense_t = np.full((width, nchunks), 127, np.int16)
    dense_l[pos, chunk] = lead
    dense_t[pos, chunk] = trail
    cur_l = np.full(nchunks, 127, np.int16)  # larger than any real lead/trail: the first change resets
    cur_t = np.full(nchunks, 127, np.int16)
    keys = np.empty((width, nchunks), np.int16)
    for k in range(width):
        lk, tk = dense_l[k], dense_t[k]
        reset = (lk < cur_l) | (tk < cur_t)
        np.copyto(cur_l, lk, where=reset)
        np.copyto(cur_t, tk, where=reset)
        np.bitwise_or(cur_l << 7, cur_t, out=keys[k])
    key = keys[pos, chunk].astype(np.int64)
    return (key >> 7) << 8 | (key & 0x7F)


def encode_xor_chunks(timestamps: np.ndarray, value_bits: np.ndarray, starts: np.ndarray) -> list[bytes]:
    """Encode samples into XOR chunks; chunk c holds samples [starts[c], starts[c+1]).

    ``timestamps`` int64 ms, strictly increasing inside each chunk; ``value_bits`` the uint64 IEEE-754
    bits of the values (``values.view(np.uint64)``); ``starts`` ascending, starting at 0. Returns the
    chunk data (what follows the encoding byte in a segment file) per chunk.
    """
    t = np.ascontiguousarray(timestamps, dtype=np.int64)
    v = np.ascontiguousarray(value_bits, dtype=np.uint64)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    n, nchunks = len(t), len(starts)
    if len(v) != n:
        raise InvalidSeries(f"{n} timestamps but {len(v)} values")
    if n == 0:
        return []
    ends = np.empty(nchunks, np.int64)
    ends[:-1] = starts[1:]
    ends[-1] = n
    counts = ends - starts
    if starts[0] != 0 or (counts < 1).any() or (counts > MAX_SAMPLES_PER_CHUNK).any():
        raise InvalidSeries("chunk starts must begin at 0 and give 1..65535 samples per chunk")
    chunk_of = np.repeat(np.arange(nchunks, dtype=np.int64), counts)
    pos = np.arange(n, dtype=np.int64) - np.repeat(starts, counts)

    dt = np.zeros(n, np.int64)
    np.subtract(t[1:], t[:-1], out=dt[1:])
    if (dt[pos >= 1] <= 0).any():
        bad = int(np.flatnonzero((pos >= 1) & (dt <= 0))[0])
        raise InvalidSeries(
            f"timestamps must be strictly increasing inside a chunk: {int(t[bad - 1])} then {int(t[bad])}",
            hint="sort each series by time and drop duplicate timestamps first",
        )

    # Four bit fields per sample, in stream order: f0 delta-of-delta code (from the third sample of a
    # chunk on), f1 its 64-bit payload when it needs one, f2 value code, f3 meaningful value bits.
    dod = np.zeros(n, np.int64)
    np.subtract(dt[1:], dt[:-1], out=dod[1:])
    du = dod.view(np.uint64)
    r14 = (dod >= -8191) & (dod <= 8192)
    r17 = (dod >= -65535) & (dod <= 65536)
    r20 = (dod >= -524287) & (dod <= 524288)
    f0 = np.where(
        dod == 0,
        _U64(0),
        np.where(
            r14,
            _U64(2 << 14) | (du & _U64(0x3FFF)),
            np.where(
                r17,
                _U64(6 << 17) | (du & _U64(0x1FFFF)),
                np.where(r20, _U64(14 << 20) | (du & _U64(0xFFFFF)), _U64(15)),
            ),
        ),
    )
    has_dod = pos >= 2
    w0 = np.where(has_dod, np.where(dod == 0, 1, np.where(r14, 16, np.where(r17, 20, np.where(r20, 24, 4)))), 0)
    wide = has_dod & ~r20

    x = np.zeros(n, np.uint64)
    np.bitwise_xor(v[1:], v[:-1], out=x[1:])
    has_v = pos >= 1
    f2 = np.zeros(n, np.uint64)
    w2 = has_v.astype(np.int64)  # a single 0 bit for an unchanged value
    f3 = np.zeros(n, np.uint64)
    w3 = np.zeros(n, np.int64)
    idx = np.flatnonzero(has_v & (x != 0))
    if len(idx):
        xs = x[idx]
        lead = np.minimum(64 - _bit_length(xs), 31)
        trail = _trailing_zeros(xs)
        owner = chunk_of[idx]
        first = np.ones(len(idx), bool)
        first[1:] = owner[1:] != owner[:-1]
        width = int(counts.max())
        if width <= 1024 and len(idx) >= 32 * width:
            key = _windows_lanes(lead, trail, owner, pos[idx], nchunks)
        else:
            key = _windows_loop(lead, trail, first)
        win_l, win_t = key >> 8, key & 0xFF
        reset = first.copy()
        reset[1:] |= key[1:] != key[:-1]
        sig = 64 - win_l - win_t
        f2[idx] = np.where(
            reset, _U64(3 << 11) | (win_l.astype(np.uint64) << _U64(6)) | (sig & 63).astype(np.uint64), _U64(2)
        )
        w2[idx] = np.where(reset, 13, 2)
        f3[idx] = xs >> win_t.astype(np.uint64)
        w3[idx] = sig

    buf, word_start, chunk_bits = _pack(f0, w0, du, wide, f2, w2, f3, w3, chunk_of, starts, nchunks)
    last = ends - 1
    extra = (counts == 1) | ((x[last] != 0) & (w3[last] % 8 == 0) & (chunk_bits % 8 == 0))
    return _assemble(t, v, starts, counts, buf, word_start, chunk_bits, extra)


def _shl(a: np.ndarray, by: np.ndarray) -> np.ndarray:
    """a << by for shift counts 0..64 (numpy, like C, leaves a shift by 64 undefined)."""
    out = a << np.minimum(by, 63).astype(np.uint64)
    out[by >= 64] = 0
    return out


def _pack(
    f0: np.ndarray,
    w0: np.ndarray,
    f1: np.ndarray,
    wide: np.ndarray,
    f2: np.ndarray,
    w2: np.ndarray,
    f3: np.ndarray,
    w3: np.ndarray,
    chunk_of: np.ndarray,
    starts: np.ndarray,
    nchunks: int,
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Pack the fields MSB-first; each chunk's stream starts on a 64-bit word boundary.

    Fields are first merged into at most three pieces of <= 64 bits per sample (usually one), then
    each piece is OR-ed into the one or two words it touches (pieces never overlap, so OR is the
    same as concatenation). Returns the big-endian stream, each chunk's first word and bit length.
    """
    n = len(f0)
    sample_bits = w0 + np.where(wide, 64, 0) + w2 + w3
    chunk_bits = np.add.reduceat(sample_bits, starts)
    words_per_chunk = (chunk_bits + 63) >> 6
    word_start = np.zeros(nchunks, np.int64)
    np.cumsum(words_per_chunk[:-1], out=word_start[1:])
    bit_start = np.zeros(nchunks, np.int64)
    np.cumsum(chunk_bits[:-1], out=bit_start[1:])
    total_words = int(word_start[-1] + words_per_chunk[-1])
    if total_words == 0:
        return b"", word_start, chunk_bits

    pv = np.zeros((n, 3), np.uint64)
    pw = np.zeros((n, 3), np.int64)
    # common case: f0 and f2 as one piece (<= 37 bits), joined with f3 when the total fits 64 bits
    narrow = ~wide
    head = _shl(f0, w2) | f2
    head_w = w0 + w2
    joined = narrow & (head_w + w3 <= 64)
    pv[:, 2] = np.where(joined, _shl(head, w3) | f3, f3)
    pw[:, 2] = np.where(joined, head_w + w3, w3)
    split = narrow & ~joined
    pv[split, 1] = head[split]
    pw[split, 1] = head_w[split]
    if wide.any():  # 0b1111 + 64 payload bits = 68 bits: the code and the top 60 bits, then 4 bits + f2
        wi = np.flatnonzero(wide)
        pv[wi, 0] = (_U64(15) << _U64(60)) | (f1[wi] >> _U64(4))
        pw[wi, 0] = 64
        pv[wi, 1] = ((f1[wi] & _U64(15)) << w2[wi].astype(np.uint64)) | f2[wi]
        pw[wi, 1] = 4 + w2[wi]

    flat_w = pw.ravel()
    keep = np.flatnonzero(flat_w)
    fv = pv.ravel()[keep]
    fw = flat_w[keep]
    piece_chunk = chunk_of[keep // 3]
    off = np.cumsum(fw) - fw - bit_start[piece_chunk] + (word_start[piece_chunk] << 6)
    w = off >> 6
    end = (off & 63) + fw
    fits = end <= 64
    c1 = (fv << np.where(fits, 64 - end, 0).astype(np.uint64)) >> np.where(fits, 0, end - 64).astype(np.uint64)
    words = np.zeros(total_words, np.uint64)
    bounds = np.flatnonzero(w[1:] != w[:-1]) + 1
    bounds = np.concatenate(([0], bounds))
    words[w[bounds]] = np.bitwise_or.reduceat(c1, bounds)
    spill = np.flatnonzero(~fits)
    if len(spill):
        words[w[spill] + 1] |= fv[spill] << (128 - end[spill]).astype(np.uint64)
    return words.astype(">u8").tobytes(), word_start, chunk_bits


def _assemble(
    t: np.ndarray,
    v: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    buf: bytes,
    word_start: np.ndarray,
    chunk_bits: np.ndarray,
    extra: np.ndarray,
) -> list[bytes]:
    """Byte-aligned chunk headers (count, first sample, first delta) + each chunk's bit stream."""
    second = np.minimum(starts + 1, len(t) - 1)
    out: list[bytes] = []
    for count, t0, v0, t1, ws, bits, pad in zip(
        counts.tolist(),
        t[starts].tolist(),
        v[starts].tolist(),
        t[second].tolist(),
        word_start.tolist(),
        chunk_bits.tolist(),
        extra.tolist(),
        strict=True,
    ):
        head = count.to_bytes(2, "big") + varint(t0) + v0.to_bytes(8, "big")
        if count > 1:
            head += uvarint(t1 - t0)
        lo = ws * 8
        out.append(head + buf[lo : lo + ((bits + 7) >> 3)] + (b"\x00" if pad else b""))
    return out


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
