"""The engine's shared vocabulary: the series type every stage passes on, time units, and the names the
migration itself puts into or keeps out of a target. A leaf module (it imports nothing of the engine),
so any stage can use it without pulling in another stage."""

from __future__ import annotations

Labels = tuple[tuple[str, str], ...]
"""A series' labels, sorted by name, ``__name__`` included: one type from the source's reply to the sink."""

SeriesKey = frozenset[tuple[str, str]]
"""A series identity where order does not matter (the query API's JSON answers)."""

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000

DEFAULT_IGNORE_LABELS: tuple[str, ...] = ("tenant_id", "replica", "prometheus_replica", "receive", "rule_replica")
"""Labels a Thanos Receive / Prometheus target adds to what it stores (tenant, external and replica labels):
ignored when source and target series are matched, never when source series are told apart."""

PROBE_METRIC = "m3migrate_probe"
"""The probe series earlier versions wrote into the target: compare and verify still ignore it."""
