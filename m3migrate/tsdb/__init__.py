"""Prometheus TSDB blocks (index v2, XOR chunks, meta.json with a Thanos section), in pure Python + numpy.

Public API: :class:`BlockWriter` (stream series in, get a block directory out), :class:`BlockInfo`,
:class:`BlockMeta` (parsed meta.json), :func:`series_arrays` (remote-read results as numpy arrays),
:func:`encode_xor_chunks` / :func:`decode_xor_chunk` and the typed errors.
"""

from m3migrate.tsdb.block import BlockInfo, BlockWriter
from m3migrate.tsdb.errors import EmptyBlock, InvalidSeries, OverlappingParts, SampleOutOfRange, TsdbError
from m3migrate.tsdb.meta import META_FILENAME, BlockMeta
from m3migrate.tsdb.samples import series_arrays
from m3migrate.tsdb.xor import decode_xor_chunk, encode_xor_chunk, encode_xor_chunks

__all__ = [
    "META_FILENAME",
    "BlockInfo",
    "BlockMeta",
    "BlockWriter",
    "EmptyBlock",
    "InvalidSeries",
    "OverlappingParts",
    "SampleOutOfRange",
    "TsdbError",
    "decode_xor_chunk",
    "encode_xor_chunk",
    "encode_xor_chunks",
    "series_arrays",
]
