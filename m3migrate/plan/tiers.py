"""Tiers: which M3 namespace each part of a migration's range is read from.

An M3 cluster keeps recent writes in an unaggregated namespace with a short retention (48 h in Aiven's
examples) and older history in aggregated ones (``1m:40d``, ``5m:1y``), each holding the last value per
resolution window. Unpinned, M3 picks a namespace per query (m3 src/query/storage/m3/cluster_resolver.go),
so one migration's windows, splits and verification could read different resolutions for the same time.
A plan therefore fixes, once, which namespace holds each part of the range: the finest one that still
holds it, with a safety margin so a tier's oldest data does not expire before the run reads it, and
every read of that part is pinned to it with ``M3-Metrics-Type`` / ``M3-Storage-Policy``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from m3migrate.clients.m3admin import M3Namespace, format_m3_duration
from m3migrate.errors import ConfigError
from m3migrate.model import HOUR_MS
from m3migrate.timefmt import iso_ms

DEFAULT_MARGIN_HOURS = 6
_MS = 1_000_000  # nanoseconds per millisecond


class TierExpired(ConfigError):
    """A tier's oldest data is older than its namespace's retention now: M3 may already have deleted it."""


@dataclass(frozen=True)
class Tier:
    """[start_ms, end_ms] (inclusive) of the range, read from one namespace."""

    namespace: str
    resolution_ms: int  # 0: unaggregated
    retention_ms: int
    start_ms: int
    end_ms: int

    @property
    def aggregated(self) -> bool:
        return self.resolution_ms > 0

    @property
    def storage_policy(self) -> str:
        """ "1m:40d" as M3 prints it, or "unaggregated"."""
        if not self.aggregated:
            return "unaggregated"
        return f"{format_m3_duration(self.resolution_ms * _MS)}:{format_m3_duration(self.retention_ms * _MS)}"

    def headers(self) -> dict[str, str]:
        """The M3 headers that pin a read to this tier's namespace."""
        if not self.aggregated:
            return {"M3-Metrics-Type": "unaggregated"}
        return {"M3-Metrics-Type": "aggregated", "M3-Storage-Policy": self.storage_policy}

    def check_not_expired(self, start_ms: int, now_ms: int | None = None) -> None:
        """Refuse to read [start_ms, ..] of this tier once the namespace's retention has passed it."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if start_ms < now - self.retention_ms:
            keeps = format_m3_duration(self.retention_ms * _MS)
            raise TierExpired(
                f"the {self.storage_policy} namespace {self.namespace!r} keeps {keeps}: its data from "
                f"{iso_ms(start_ms)} on may already be deleted, so this tier can no longer be read exactly",
                hint="rerun with a larger tier_margin_hours and --start-over (into a fresh target), "
                "or pin one namespace with --source-metrics-type/--source-storage-policy",
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tier:
        fields: dict[str, Any] = {k: int(v) if k != "namespace" else str(v) for k, v in data.items()}
        return cls(**fields)


def plan_tiers(
    namespaces: Sequence[M3Namespace],
    start_ms: int,
    end_ms: int,
    *,
    align_ms: int,
    margin_ms: int = DEFAULT_MARGIN_HOURS * HOUR_MS,
    now_ms: int | None = None,
) -> list[Tier]:
    """Cut [start, end] into tiers, newest first in the finest namespace that holds it.

    A namespace holds [now - retention, now]; its tier starts ``margin_ms`` later than that, rounded up
    to ``align_ms`` (the windows' or blocks' grid, so no window straddles two tiers). The coarsest
    namespace takes whatever is left down to ``start`` (data older than every retention is simply not
    there). Returns the tiers in time order; [] when no namespace is ready.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    usable = [ns for ns in namespaces if ns.ready and (not ns.aggregated or ns.resolution_ms)]
    by_finest = sorted(usable, key=lambda ns: (_resolution_ms(ns), -ns.retention_ms))
    seen: set[tuple[int, int]] = set()
    tiers: list[Tier] = []
    upper = end_ms
    for ns in by_finest:
        resolution = _resolution_ms(ns)
        if (resolution, ns.retention_ms) in seen:
            continue
        seen.add((resolution, ns.retention_ms))
        if tiers and ns.retention_ms <= tiers[-1].retention_ms:
            continue  # coarser and no longer: it holds nothing the finer tier does not
        oldest = now - ns.retention_ms + margin_ms
        lower = max(start_ms, math.ceil(oldest / align_ms) * align_ms)
        if lower > upper:
            continue  # the finer tier already reaches further back than this one safely holds
        tiers.append(Tier(ns.name, resolution, ns.retention_ms, lower, upper))
        upper = lower - 1
        if upper < start_ms:
            break
    if not tiers:
        return []
    if upper >= start_ms:  # older than every namespace keeps: read from the coarsest, which holds the most
        last = tiers[-1]
        tiers[-1] = Tier(last.namespace, last.resolution_ms, last.retention_ms, start_ms, last.end_ms)
    tiers.reverse()
    return tiers


def _resolution_ms(ns: M3Namespace) -> int:
    return (ns.resolution_ms or 0) if ns.aggregated else 0


def split_by_tier(tiers: Sequence[Tier], start_ms: int, end_ms: int) -> Iterator[tuple[Tier | None, int, int]]:
    """(tier, a, b) parts of [start, end], in time order; (None, start, end) when the plan has no tiers.
    Time outside the planned tiers (a replication pass after the plan's end) goes to the nearest tier."""
    if not tiers:
        yield None, start_ms, end_ms
        return
    first, last = tiers[0], tiers[-1]
    if start_ms < first.start_ms:
        yield first, start_ms, min(end_ms, first.start_ms - 1)
    for tier in tiers:
        a, b = max(start_ms, tier.start_ms), min(end_ms, tier.end_ms)
        if a <= b:
            yield tier, a, b
    if end_ms > last.end_ms:
        yield last, max(start_ms, last.end_ms + 1), end_ms


def tier_table(tiers: Sequence[Tier]) -> list[dict[str, Any]]:
    """Rows for logs, summaries and artifacts: range, namespace, resolution."""
    return [
        {
            "from": iso_ms(t.start_ms),
            "to": iso_ms(t.end_ms),
            "namespace": t.namespace,
            "storage_policy": t.storage_policy,
            "resolution": format_m3_duration(t.resolution_ms * _MS) if t.aggregated else "raw",
        }
        for t in tiers
    ]
