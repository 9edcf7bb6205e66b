"""Prometheus TSDB blocks (index v2, XOR chunks, meta.json with a Thanos section), in pure Python + numpy.

Public API: :class:`BlockWriter` (stream series in, get a block directory out), :class:`BlockInfo`,
:class:`BlockMeta` (parsed meta.json), :func:`series_arrays` (remote-read results as numpy arrays),
:func:`encode_xor_chunks` / :func:`decode_xor_chunk` and the typed errors.

The writer, the sample arrays and the XOR codec are loaded on first use (PEP 562): they import numba
(~0.2-0.4 s of CPU), and most users of this package only read a block's meta.json (the bucket client,
on every CLI start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from m3migrate.tsdb.errors import EmptyBlock, InvalidSeries, OverlappingParts, SampleOutOfRange, TsdbError
from m3migrate.tsdb.meta import META_FILENAME, BlockMeta

if TYPE_CHECKING:
    from m3migrate.tsdb.block import BlockInfo, BlockWriter
    from m3migrate.tsdb.samples import series_arrays
    from m3migrate.tsdb.xor import decode_xor_chunk, encode_xor_chunk, encode_xor_chunks

_LAZY = {
    "BlockInfo": "block",
    "BlockWriter": "block",
    "series_arrays": "samples",
    "decode_xor_chunk": "xor",
    "encode_xor_chunk": "xor",
    "encode_xor_chunks": "xor",
}

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
