"""meta.json: Prometheus' block metadata plus the ``thanos`` section Thanos' store and compactor read.

Traps (prometheus tsdb/block.go, thanos pkg/block/metadata/meta.go): ``compaction.sources`` must hold
the block's own ULID (Thanos' dedup filter hides a block whose sources are a subset of another's, and
an empty list is a subset of everything); ``version`` is 1; ``maxTime`` is exclusive; Thanos' upload
paths refuse empty external ``labels``; ``numSamples`` must be > 0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

META_FILENAME = "meta.json"
THANOS_SOURCE = "m3migrate"
EXTENSION_KEY = "m3migrate"  # our own facts about the block, under thanos.extensions


@dataclass(frozen=True)
class BlockMeta:
    """The parsed fields of a meta.json that backfill and the bucket need."""

    ulid: str
    min_time: int
    max_time: int  # exclusive
    num_samples: int
    num_series: int
    num_chunks: int
    level: int
    sources: tuple[str, ...]
    labels: dict[str, str] = field(default_factory=dict)
    resolution: int = 0
    source: str = ""
    extensions: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BlockMeta:
        thanos = data.get("thanos") or {}
        stats = data.get("stats") or {}
        compaction = data.get("compaction") or {}
        ext = thanos.get("extensions")
        return cls(
            ulid=str(data["ulid"]),
            min_time=int(data["minTime"]),
            max_time=int(data["maxTime"]),
            num_samples=int(stats.get("numSamples", 0)),
            num_series=int(stats.get("numSeries", 0)),
            num_chunks=int(stats.get("numChunks", 0)),
            level=int(compaction.get("level", 0)),
            sources=tuple(compaction.get("sources") or ()),
            labels=dict(thanos.get("labels") or {}),
            resolution=int((thanos.get("downsample") or {}).get("resolution", 0)),
            source=str(thanos.get("source", "")),
            extensions=dict(ext) if isinstance(ext, dict) else {},
        )

    @classmethod
    def load(cls, path: Path) -> BlockMeta:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def meta_json(
    *,
    ulid: str,
    min_time: int,
    max_time: int,
    num_samples: int,
    num_series: int,
    num_chunks: int,
    external_labels: Mapping[str, str],
    segment_files: list[str],
    files: list[tuple[str, int]],
    series_max_size: int,
    chunk_max_size: int,
    source: str = THANOS_SOURCE,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The meta.json document of a level-1, raw-resolution block."""
    thanos: dict[str, Any] = {
        "version": 1,
        "labels": dict(sorted(external_labels.items())),
        "downsample": {"resolution": 0},
        "source": source,
        "segment_files": segment_files,
        "files": [{"rel_path": p, "size_bytes": n} for p, n in files] + [{"rel_path": META_FILENAME}],
        "index_stats": {"series_max_size": series_max_size, "chunk_max_size": chunk_max_size},
    }
    if extensions:
        thanos["extensions"] = dict(extensions)
    return {
        "ulid": ulid,
        "minTime": min_time,
        "maxTime": max_time,
        "stats": {"numSamples": num_samples, "numSeries": num_series, "numChunks": num_chunks},
        "compaction": {"level": 1, "sources": [ulid]},
        "version": 1,
        "thanos": thanos,
    }


def write_meta(path: Path, doc: Mapping[str, Any]) -> None:
    """Write atomically (temp file + rename): a present meta.json is always a whole one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent="\t", ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
