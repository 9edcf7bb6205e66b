"""Planning: discover the series, pack them into disjoint batches, and cut the range into windows.

A plan is deterministic for a given discovery result (stable ids), is saved with the migration's state,
and is reused on rerun so resume picks up exactly where it stopped. Each batch carries its series: the
transfer writes only those, so overlapping selectors or extra matches can never send one series from
two places at once.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

from m3migrate.errors import ConfigError, SourceLimitExceeded
from m3migrate.model import DAY_MS, Labels
from m3migrate.plan.selectors import re2_escape
from m3migrate.plan.tiers import Tier
from m3migrate.wire.codec import Matcher, selector_string

MAX_SPLIT_DEPTH = 4
PLAN_VERSION = 2  # 2: the plan records what changes what is written (`writing`)


@dataclass(frozen=True)
class Window:
    """A time window [start_ms, end_ms], both inclusive (remote read's convention)."""

    index: int
    start_ms: int
    end_ms: int


@dataclass
class Batch:
    """A set of series read together: the matchers select them, the series list bounds them."""

    id: str
    matchers: tuple[Matcher, ...]
    series: tuple[Labels, ...]

    @cached_property
    def keys(self) -> frozenset[Labels]:
        return frozenset(self.series)

    @property
    def selector(self) -> str:
        return selector_string(self.matchers)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "matchers": [[m.name, m.op, m.value] for m in self.matchers],
            "series": [list(map(list, s)) for s in self.series],
        }

    @classmethod
    def from_json(cls, data: dict) -> Batch:
        return cls(
            id=data["id"],
            matchers=tuple(Matcher(*m) for m in data["matchers"]),
            series=tuple(tuple((n, v) for n, v in s) for s in data["series"]),
        )

    @classmethod
    def create(cls, matchers: Sequence[Matcher], series: Iterable[Labels]) -> Batch:
        series = tuple(sorted(series))
        digest = hashlib.sha256(
            json.dumps([[[m.name, m.op, m.value] for m in matchers], series], ensure_ascii=False).encode()
        ).hexdigest()
        return cls(id=digest[:16], matchers=tuple(matchers), series=series)


def make_windows(start_ms: int, end_ms: int, window_ms: int) -> list[Window]:
    """Windows aligned to multiples of window_ms (stable across reruns), covering [start, end] exactly."""
    if end_ms < start_ms:
        raise ConfigError("the time range ends before it starts")
    windows: list[Window] = []
    a = start_ms
    while a <= end_ms:
        b = min((a // window_ms + 1) * window_ms - 1, end_ms)
        windows.append(Window(len(windows), a, b))
        a = b + 1
    return windows


@dataclass
class Plan:
    """Batches × windows for one migration; `id` changes when anything that decides the work changes."""

    migration_id: str
    start_ms: int
    end_ms: int
    window_ms: int
    batches: list[Batch]
    selectors: list[str] = field(default_factory=list)
    # What changes what is written (relabeling, source label, write mode); None: a version-1 plan,
    # saved before plans recorded it.
    writing: dict | None = None
    # The M3 namespace each part of the range is read from (m3migrate.plan.tiers); empty: reads are not pinned
    # by the plan (a Prometheus source, or one namespace pinned by the source settings).
    tiers: list[Tier] = field(default_factory=list)

    @cached_property
    def windows(self) -> list[Window]:
        return make_windows(self.start_ms, self.end_ms, self.window_ms)

    @cached_property
    def id(self) -> str:
        h = hashlib.sha256()
        h.update(f"{self.migration_id}|{self.start_ms}|{self.end_ms}|{self.window_ms}".encode())
        for b in self.batches:
            h.update(b.id.encode())
        if self.writing is not None:
            h.update(json.dumps(self.writing, sort_keys=True, ensure_ascii=False).encode())
        if self.tiers:
            h.update(json.dumps([t.to_json() for t in self.tiers], sort_keys=True).encode())
        return h.hexdigest()[:16]

    @property
    def series_count(self) -> int:
        return sum(len(b.series) for b in self.batches)

    def to_json(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "migration_id": self.migration_id,
            "plan_id": self.id,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "window_ms": self.window_ms,
            "selectors": self.selectors,
            "batches": [b.to_json() for b in self.batches],
            "writing": self.writing,
            "tiers": [t.to_json() for t in self.tiers],
        }

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        version = data.get("version")
        if version not in (1, PLAN_VERSION):
            raise ConfigError(
                f"the saved plan has version {version!r}, which this m3migrate does not know "
                f"(it reads versions 1 to {PLAN_VERSION})",
                hint="resume with the m3migrate version that saved it, or pass --start-over to replan",
            )
        plan = cls(
            migration_id=data["migration_id"],
            start_ms=data["start_ms"],
            end_ms=data["end_ms"],
            window_ms=data["window_ms"],
            batches=[Batch.from_json(b) for b in data["batches"]],
            selectors=data.get("selectors", []),
            writing=data.get("writing") if version >= 2 else None,
            tiers=[Tier.from_json(t) for t in data.get("tiers") or []],
        )
        if data.get("plan_id") not in (None, plan.id):
            raise ConfigError("the saved plan is corrupt (its id does not match its content)")
        return plan

    def save(self, path: Path) -> None:
        """Write atomically, so a kill never leaves half a plan."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), ensure_ascii=False))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls.from_json(json.loads(path.read_text()))


# ---------------------------------------------------------------------------------------------------
# discovery


class DiscoveryAPI(Protocol):
    """What discovery needs from a PromQL HTTP API (M3 Coordinator, Prometheus, Thanos Query)."""

    def series(self, selector: str, start_ms: int, end_ms: int) -> list[dict[str, str]]: ...

    def label_names(self, selector: str, start_ms: int, end_ms: int) -> list[str]: ...

    def label_values(self, name: str, selector: str, start_ms: int, end_ms: int) -> list[str]: ...


def _to_labels(series: dict[str, str]) -> Labels:
    return tuple(sorted(series.items()))


def discover(
    selectors: Sequence[Sequence[Matcher]],
    start_ms: int,
    end_ms: int,
    *,
    api: DiscoveryAPI,
    slice_ms: int = DAY_MS,
    on_metric: Callable[[str, int], None] | None = None,
) -> list[list[Labels]]:
    """Series of each selector in [start, end], metric by metric and slice by slice (first selector wins).

    Querying one metric name at a time over bounded time slices keeps each series query under the
    source's series limit (M3: 100,000 by default). A metric still over the limit is split by the values
    of its label with most values, recursively.
    """
    seen: set[Labels] = set()
    per_selector: list[list[Labels]] = []
    for matchers in selectors:
        found: list[Labels] = []
        exact = [m.value for m in matchers if m.name == "__name__" and m.op == "="]
        names = exact[:1] or sorted(api.label_values("__name__", selector_string(matchers), start_ms, end_ms))
        for name in names:
            base = [m for m in matchers if not (m.name == "__name__" and m.op == "=")]
            metric_matchers = [Matcher("__name__", "=", name), *base]
            count = 0
            for a in range(start_ms, end_ms + 1, slice_ms):
                b = min(a + slice_ms - 1, end_ms)
                for labels in _series_split_on_limit(api, metric_matchers, a, b):
                    if labels not in seen:
                        seen.add(labels)
                        found.append(labels)
                        count += 1
            if on_metric:
                on_metric(name, count)
        per_selector.append(found)
    return per_selector


def _series_split_on_limit(api: DiscoveryAPI, matchers: list[Matcher], a: int, b: int, depth: int = 0) -> list[Labels]:
    """All series of the matchers; over the source's limit, one query per value of the busiest label."""
    selector = selector_string(matchers)
    try:
        return [_to_labels(s) for s in api.series(selector, a, b)]
    except SourceLimitExceeded:
        if depth >= MAX_SPLIT_DEPTH:
            raise
    fixed = {m.name for m in matchers if m.op == "="}
    candidates = [n for n in api.label_names(selector, a, b) if n not in fixed]
    if not candidates:
        raise SourceLimitExceeded(
            f"discovery of {selector} exceeds the source's series limit and cannot be split further",
            endpoint="series API",
            hint="raise the source's limit (M3-Limit-Max-Series / limits.maxFetchedSeries) or narrow --match",
        )
    values = {n: api.label_values(n, selector, a, b) for n in candidates}
    label = max(candidates, key=lambda n: (len(values[n]), n))
    out: list[Labels] = []
    for value in ["", *sorted(values[label])]:  # "" selects the series without the label
        out.extend(_series_split_on_limit(api, [*matchers, Matcher(label, "=", value)], a, b, depth + 1))
    return out


# ---------------------------------------------------------------------------------------------------
# batching


def make_batches(
    selectors: Sequence[Sequence[Matcher]], per_selector: Sequence[Sequence[Labels]], max_series: int
) -> list[Batch]:
    """Disjoint batches of at most max_series series; small metrics share a batch, big ones are split."""
    batches: list[Batch] = []
    for matchers, series in zip(selectors, per_selector, strict=True):
        # Name matchers are implied by the discovered names, which the batch lists explicitly.
        base = [m for m in matchers if m.name != "__name__"]
        by_name: dict[str, list[Labels]] = defaultdict(list)
        for labels in series:
            by_name[dict(labels).get("__name__", "")].append(labels)
        for extra, part in _pack_groups("__name__", by_name, max_series, used=set()):
            batches.append(Batch.create([*extra[:1], *base, *extra[1:]], part))
    return batches


def _value_matcher(label: str, values: list[str]) -> Matcher:
    if len(values) == 1:
        return Matcher(label, "=", values[0])
    return Matcher(label, "=~", "|".join(re2_escape(v) for v in values))


def _pack_groups(
    label: str, groups: dict[str, list[Labels]], max_series: int, used: set[str]
) -> list[tuple[list[Matcher], list[Labels]]]:
    """Pack the value groups of one label into bins of at most max_series series, in value order.

    A bin becomes one matcher on the label (= or an alternation regex); a group too big for one bin is
    split further by another label.
    """
    out: list[tuple[list[Matcher], list[Labels]]] = []
    bin_values: list[str] = []
    bin_series: list[Labels] = []
    for value in sorted(groups):
        group = groups[value]
        if len(group) > max_series:
            for extra, part in _partition(group, max_series, used | {label}):
                out.append(([Matcher(label, "=", value), *extra], part))
            continue
        if bin_series and len(bin_series) + len(group) > max_series:
            out.append(([_value_matcher(label, bin_values)], bin_series))
            bin_values, bin_series = [], []
        bin_values.append(value)
        bin_series.extend(group)
    if bin_values:
        out.append(([_value_matcher(label, bin_values)], bin_series))
    return out


def _partition(series: list[Labels], max_series: int, used: set[str]) -> list[tuple[list[Matcher], list[Labels]]]:
    """Split by the values of the label with most distinct values (absent counts as the value "")."""
    if len(series) <= max_series:
        return [([], series)]
    names = sorted({n for labels in series for n, _ in labels} - used)
    if not names:
        raise ConfigError("cannot split a batch: its series differ in no label")
    values: dict[str, dict[str, list[Labels]]] = {n: defaultdict(list) for n in names}
    for labels in series:
        d = dict(labels)
        for n in names:
            values[n][d.get(n, "")].append(labels)
    label = max(names, key=lambda n: (len(values[n]), n))
    return _pack_groups(label, values[label], max_series, used)


def split_batch(batch: Batch) -> list[Batch]:
    """Halve a batch that hit a source limit (same series, finer matchers)."""
    if len(batch.series) < 2:
        return [batch]
    target = (len(batch.series) + 1) // 2
    used = {m.name for m in batch.matchers if m.op == "="}
    parts = _partition(list(batch.series), target, used)
    return [Batch.create([*batch.matchers, *extra], part) for extra, part in parts]
