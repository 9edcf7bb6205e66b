"""A small, strict reader of index v2 blocks: checks every CRC and reads series, chunks and samples back.

Why: tests and checks compare what a block holds with what went in, without a Prometheus binary; it
also catches layout mistakes (IDs, padding, postings order) that real readers may silently accept.
Reads whole files into memory: meant for verification, not for large blocks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from m3migrate.model import Labels
from m3migrate.tsdb.chunks import SEGMENT_HEADER
from m3migrate.tsdb.encoding import crc32c, label_bytes, labels_order, read_uvarint, read_varint
from m3migrate.tsdb.errors import TsdbError
from m3migrate.tsdb.index import INDEX_MAGIC, INDEX_VERSION
from m3migrate.tsdb.meta import META_FILENAME, BlockMeta
from m3migrate.tsdb.xor import ENCODING_XOR, decode_xor_chunk


@dataclass(frozen=True)
class ChunkMeta:
    min_time: int
    max_time: int
    ref: int
    data: bytes


@dataclass(frozen=True)
class BlockContents:
    meta: BlockMeta
    series: dict[Labels, list[ChunkMeta]]  # in index order (sorted by labels)
    symbols: list[str]
    postings: dict[tuple[str, str], list[int]]  # in the postings offset table's order

    def samples(self) -> dict[Labels, list[tuple[int, int]]]:
        """(timestamp, value bits) per series, decoded from the chunks."""
        out: dict[Labels, list[tuple[int, int]]] = {}
        for labels, chunks in self.series.items():
            pairs: list[tuple[int, int]] = []
            for c in chunks:
                ts, vs = decode_xor_chunk(c.data)
                pairs.extend(zip(ts, vs, strict=True))
            out[labels] = pairs
        return out


def _section(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """The body of a u32-length section at pos (CRC checked) and the position after its CRC."""
    (n,) = struct.unpack_from(">I", buf, pos)
    body = buf[pos + 4 : pos + 4 + n]
    if crc32c(body) != buf[pos + 4 + n : pos + 8 + n]:
        raise TsdbError(f"index {what} section at {pos}: CRC mismatch")
    return body, pos + 8 + n


def read_block(block_dir: Path) -> BlockContents:
    """Parse meta.json, the index and every chunk of a block directory."""
    block_dir = Path(block_dir)
    meta = BlockMeta.load(block_dir / META_FILENAME)
    segments = sorted((block_dir / "chunks").iterdir())
    seg_data = [p.read_bytes() for p in segments]
    for path, data in zip(segments, seg_data, strict=True):
        if data[:8] != SEGMENT_HEADER:
            raise TsdbError(f"{path}: not a chunk segment (header {data[:8].hex()})")

    buf = (block_dir / "index").read_bytes()
    if buf[:4] != INDEX_MAGIC or buf[4] != INDEX_VERSION:
        raise TsdbError("index: bad magic or version")
    toc = buf[-52:-4]
    if crc32c(toc) != buf[-4:]:
        raise TsdbError("index: TOC CRC mismatch")
    sym_off, series_off, _li, _lt, _post, ptable_off = struct.unpack(">6Q", toc)

    body, _ = _section(buf, sym_off, "symbols")
    (count,) = struct.unpack_from(">I", body, 0)
    symbols: list[str] = []
    p = 4
    for _ in range(count):
        n, p = read_uvarint(body, p)
        symbols.append(body[p : p + n].decode("utf-8", "surrogateescape"))  # raw bytes, as Go reads them
        p += n
    if symbols != sorted(set(symbols), key=label_bytes):
        raise TsdbError("index: symbols are not strictly sorted")

    body, _ = _section(buf, ptable_off, "postings offset table")
    (count,) = struct.unpack_from(">I", body, 0)
    p = 4
    postings: dict[tuple[str, str], list[int]] = {}
    offsets: list[int] = []
    for _ in range(count):
        if body[p] != 2:
            raise TsdbError("index: postings offset entry without 2 keys")
        p += 1
        n, p = read_uvarint(body, p)
        name = body[p : p + n].decode("utf-8", "surrogateescape")
        p += n
        n, p = read_uvarint(body, p)
        value = body[p : p + n].decode("utf-8", "surrogateescape")
        p += n
        off, p = read_uvarint(body, p)
        pbody, _ = _section(buf, off, f"postings {name}={value}")
        (k,) = struct.unpack_from(">I", pbody, 0)
        postings[(name, value)] = list(struct.unpack_from(f">{k}I", pbody, 4))
        offsets.append(off)
    if offsets != sorted(offsets):
        raise TsdbError("index: postings lists are not in the offset table's order")
    keys = list(postings)
    if not keys or keys[0] != ("", "") or keys[1:] != sorted(keys[1:], key=lambda k: labels_order([k])):
        raise TsdbError("index: postings offset table must start with the all-postings key and be sorted")

    series: dict[Labels, list[ChunkMeta]] = {}
    previous: Labels | None = None
    for sid in postings[("", "")]:
        off = sid * 16
        if off < series_off:
            raise TsdbError(f"index: series id {sid} points before the series section")
        n, p = read_uvarint(buf, off)
        sbody = buf[p : p + n]
        if crc32c(sbody) != buf[p + n : p + n + 4]:
            raise TsdbError(f"index: series {sid}: CRC mismatch")
        q = 0
        nl, q = read_uvarint(sbody, q)
        labels = []
        for _ in range(nl):
            a, q = read_uvarint(sbody, q)
            b, q = read_uvarint(sbody, q)
            labels.append((symbols[a], symbols[b]))
        key = tuple(labels)
        if previous is not None and labels_order(key) <= labels_order(previous):
            raise TsdbError(f"index: series {dict(key)} is not after {dict(previous)}")
        previous = key
        nc, q = read_uvarint(sbody, q)
        chunks: list[ChunkMeta] = []
        mint = maxt = ref = 0
        for i in range(nc):
            if i == 0:
                mint, q = read_varint(sbody, q)
                d, q = read_uvarint(sbody, q)
                maxt = mint + d
                ref, q = read_uvarint(sbody, q)
            else:
                d, q = read_uvarint(sbody, q)
                mint = maxt + d
                d, q = read_uvarint(sbody, q)
                maxt = mint + d
                dr, q = read_varint(sbody, q)
                ref += dr
            seg = seg_data[ref >> 32]
            cp = ref & 0xFFFFFFFF
            clen, cp = read_uvarint(seg, cp)
            if seg[cp] != ENCODING_XOR:
                raise TsdbError(f"chunk {ref}: encoding {seg[cp]} is not XOR")
            data = seg[cp + 1 : cp + 1 + clen]
            if crc32c(seg[cp : cp + 1 + clen]) != seg[cp + 1 + clen : cp + 5 + clen]:
                raise TsdbError(f"chunk {ref}: CRC mismatch")
            chunks.append(ChunkMeta(mint, maxt, ref, data))
        series[key] = chunks
    return BlockContents(meta=meta, series=series, symbols=symbols, postings=postings)
