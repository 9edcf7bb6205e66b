"""Planning: discover the series, pack them into disjoint batches, and cut the range into windows.

A plan is deterministic for a given discovery result (stable ids), is saved with the migration's state,
and is reused on rerun so resume picks up exactly where it stopped. Each batch carries its series: the
transfer writes only those, so overlapping selectors or extra matches can never send one series from
two places at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from m3migrate import bulkjson, collector
from m3migrate.errors import ConfigError, SourceLimitExceeded
from m3migrate.model import DAY_MS, Labels
from m3migrate.plan.selectors import re2_escape
from m3migrate.plan.tiers import Tier
from m3migrate.wire.codec import Matcher, selector_string

MAX_SPLIT_DEPTH = 4
DISCOVERY_CONCURRENCY = 3  # metrics queried at once: the source works while an answer is batched
PLAN_VERSION = 2  # 2: the plan records what changes what is written (`writing`)


@dataclass(frozen=True)
class Window:
    """A time window [start_ms, end_ms], both inclusive (remote read's convention)."""

    index: int
    start_ms: int
    end_ms: int


class Batch:
    """A set of series read together: the matchers select them, the series list bounds them.

    The series are held as their JSON text (the plan file's form, ~4x smaller than tuples of str: a
    plan of 10^6 series holds ~0.2 GB, not ~0.9 GB) and decoded when the batch is first read.
    """

    __slots__ = ("__dict__", "id", "matchers", "series_text", "size")

    def __init__(
        self,
        id: str,
        matchers: Sequence[Matcher],
        series: Iterable[Labels] = (),
        *,
        series_text: str | None = None,
        size: int | None = None,
    ) -> None:
        self.id = id
        self.matchers = tuple(matchers)
        if series_text is None:
            listed = tuple(series)
            series_text, size = _series_text(listed), len(listed)
            self.__dict__["series"] = listed  # given as tuples: the caller's own objects are the batch's
        self.series_text = series_text
        self.size = len(bulkjson.loads(series_text)) if size is None else size

    @cached_property
    def series(self) -> tuple[Labels, ...]:
        """The series, decoded on first use and then kept: a batch being transferred holds its label tuples
        once, so caches keyed on them (the relabeler's) hold no copies."""
        return self.decoded()

    def decoded(self) -> tuple[Labels, ...]:
        """The series decoded anew, not kept (a pass over every batch of a plan)."""
        with collector.paused():  # the tuples are made while the lists are alive: tracked, too
            return tuple(tuple(map(tuple, labels)) for labels in json.loads(self.series_text))

    @cached_property
    def keys(self) -> frozenset[Labels]:
        return frozenset(self.series)

    @cached_property
    def fingerprint(self) -> bytes:
        """A digest of the listed series: the same for this batch in a plan loaded again, different for
        any other list (what a process may remember about a batch's series is keyed on it)."""
        return hashlib.blake2b(self.series_text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @property
    def selector(self) -> str:
        return selector_string(self.matchers)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Batch):
            return NotImplemented
        return (self.id, self.matchers, self.series_text) == (other.id, other.matchers, other.series_text)

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it was

    def __repr__(self) -> str:
        return f"Batch(id={self.id!r}, selector={self.selector!r}, series={self.size})"

    def to_json(self) -> dict:
        return {"id": self.id, "matchers": _matchers_json(self.matchers), "series": json.loads(self.series_text)}

    def json_text(self) -> str:
        """The batch as :meth:`to_json` would be dumped, without decoding its series."""
        head = json.dumps({"id": self.id, "matchers": _matchers_json(self.matchers)}, ensure_ascii=False)
        return f'{head[:-1]}, "series": {self.series_text}}}'

    @classmethod
    def from_json(cls, data: dict) -> Batch:
        series = data["series"]
        return cls(
            id=data["id"],
            matchers=tuple(Matcher(*m) for m in data["matchers"]),
            series_text=_series_text(series),
            size=len(series),
        )

    @classmethod
    def create(cls, matchers: Sequence[Matcher], series: Iterable[Labels]) -> Batch:
        ordered = sorted(series)
        text = _series_text(ordered)
        # the id hashes json.dumps([matchers, series]): the same ids as plans saved before series were text
        matchers_text = json.dumps(_matchers_json(matchers), ensure_ascii=False)
        digest = hashlib.sha256(f"[{matchers_text}, {text}]".encode()).hexdigest()
        return cls(id=digest[:16], matchers=tuple(matchers), series_text=text, size=len(ordered))


def _matchers_json(matchers: Iterable[Matcher]) -> list[list[str]]:
    return [[m.name, m.op, m.value] for m in matchers]


def _series_text(series: Sequence[Labels] | list) -> str:
    return json.dumps(series, ensure_ascii=False)


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
        return sum(b.size for b in self.batches)

    def to_json(self) -> dict:
        return {**self._head(), "batches": [b.to_json() for b in self.batches], **self._tail()}

    def _head(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "migration_id": self.migration_id,
            "plan_id": self.id,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "window_ms": self.window_ms,
            "selectors": self.selectors,
        }

    def _tail(self) -> dict:
        return {"writing": self.writing, "tiers": [t.to_json() for t in self.tiers]}

    @classmethod
    def from_json(cls, data: dict) -> Plan:
        """From the saved object; its batches as dicts, or as Batches (:func:`read_plan_object`)."""
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
            batches=[b if isinstance(b, Batch) else Batch.from_json(b) for b in data["batches"]],
            selectors=data.get("selectors", []),
            writing=data.get("writing") if version >= 2 else None,
            tiers=[Tier.from_json(t) for t in data.get("tiers") or []],
        )
        if data.get("plan_id") not in (None, plan.id):
            raise ConfigError("the saved plan is corrupt (its id does not match its content)")
        return plan

    def save(self, path: Path) -> None:
        """Write atomically, so a kill never leaves half a plan; batch by batch, as json.dumps(to_json())
        would, without building the whole document (the series are already their JSON text)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(self._head(), ensure_ascii=False)[:-1] + ', "batches": [')
            for i, batch in enumerate(self.batches):
                fh.write(", " + batch.json_text() if i else batch.json_text())
            fh.write("], " + json.dumps(self._tail(), ensure_ascii=False)[1:])
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls.from_json(read_plan_object(path.read_text(encoding="utf-8")))


def read_plan_object(text: str) -> Any:
    """A saved plan's JSON object, each batch made a Batch as soon as the decoder has read it: the whole
    document as Python objects (~8x the file) is never held, only one batch's decoded series at a time.
    Raises ValueError (json.JSONDecodeError) on bad JSON."""
    return bulkjson.loads(text, object_hook=_batch_or_object)


def _batch_or_object(data: dict) -> Batch | dict:
    """json's object_hook, called bottom-up as each object closes: a batch's object (its series are lists
    of pairs, never objects) becomes a Batch; any other object stays a dict."""
    return Batch.from_json(data) if {"id", "matchers", "series"} <= data.keys() else data


# ---------------------------------------------------------------------------------------------------
# discovery


class DiscoveryAPI(Protocol):
    """What discovery needs from a PromQL HTTP API (M3 Coordinator, Prometheus, Thanos Query)."""

    def series(self, selector: str, start_ms: int, end_ms: int) -> list[dict[str, str]]: ...

    def label_names(self, selector: str, start_ms: int, end_ms: int) -> list[str]: ...

    def label_values(self, name: str, selector: str, start_ms: int, end_ms: int) -> list[str]: ...


def _to_labels(series: dict[str, str]) -> Labels:
    return tuple(sorted(series.items()))


MetricSeries = tuple[int, str, list[Labels]]  # (selector index, metric name, its series)


def discover(
    selectors: Sequence[Sequence[Matcher]],
    start_ms: int,
    end_ms: int,
    *,
    api: DiscoveryAPI,
    slice_ms: int = DAY_MS,
    on_metric: Callable[[str, int], None] | None = None,
) -> list[list[Labels]]:
    """Series of each selector in [start, end] (first selector wins): :func:`discover_metrics`, collected."""
    per_selector: list[list[Labels]] = [[] for _ in selectors]
    for index, _, series in discover_metrics(
        selectors, start_ms, end_ms, api=api, slice_ms=slice_ms, on_metric=on_metric
    ):
        per_selector[index].extend(series)
    return per_selector


def discover_metrics(
    selectors: Sequence[Sequence[Matcher]],
    start_ms: int,
    end_ms: int,
    *,
    api: DiscoveryAPI,
    slice_ms: int = DAY_MS,
    on_metric: Callable[[str, int], None] | None = None,
    concurrency: int = DISCOVERY_CONCURRENCY,
) -> Iterator[MetricSeries]:
    """Series of each selector in [start, end], metric by metric (in name order) and slice by slice;
    a series two selectors match belongs to the first. Yielded per metric, so a caller can batch them as
    they come instead of holding every series.

    Querying one metric name at a time over bounded time slices keeps each series query under the
    source's series limit (M3: 100,000 by default). A metric still over the limit is split by the values
    of its label with most values, recursively. ``concurrency`` metrics are queried at once.
    """
    # A series has one name: a metric's series are deduplicated among themselves, and (several selectors)
    # against the same metric's series of the earlier selectors.
    earlier: dict[str, set[Labels]] = {}

    def metric_series(matchers: list[Matcher]) -> list[Labels]:
        found: dict[Labels, None] = {}  # an ordered set: a series is listed by every slice it has samples in
        for a in range(start_ms, end_ms + 1, slice_ms):
            b = min(a + slice_ms - 1, end_ms)
            found.update(dict.fromkeys(_series_split_on_limit(api, matchers, a, b)))
        return list(found)

    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="discovery") as pool:
        for index, matchers in enumerate(selectors):
            exact = [m.value for m in matchers if m.name == "__name__" and m.op == "="]
            names = exact[:1] or sorted(api.label_values("__name__", selector_string(matchers), start_ms, end_ms))
            base = [m for m in matchers if not (m.name == "__name__" and m.op == "=")]
            queries = (pool.submit(metric_series, [Matcher("__name__", "=", name), *base]) for name in names)
            # a few metrics in flight: the source answers one while the last answer is batched
            pending = deque(itertools.islice(queries, concurrency))
            for name in names:
                series = pending.popleft().result()
                pending.extend(itertools.islice(queries, 1))
                before = earlier.get(name)
                if before:
                    series = [s for s in series if s not in before]
                if len(selectors) > 1:
                    earlier.setdefault(name, set()).update(series)
                if on_metric:
                    on_metric(name, len(series))
                yield index, name, series


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

    def by_metric() -> Iterator[MetricSeries]:
        for index, series in enumerate(per_selector):
            by_name: dict[str, list[Labels]] = defaultdict(list)
            for labels in series:
                by_name[dict(labels).get("__name__", "")].append(labels)
            for name in sorted(by_name):
                yield index, name, by_name[name]

    if len(selectors) != len(per_selector):
        raise ValueError("one series list per selector")
    return list(batch_metrics(selectors, by_metric(), max_series))


def batch_metrics(
    selectors: Sequence[Sequence[Matcher]], metrics: Iterable[MetricSeries], max_series: int
) -> Iterator[Batch]:
    """:func:`make_batches` of a stream of metrics (each selector's in name order, as
    :func:`discover_metrics` yields them): each batch is made as soon as its series are known."""
    for index, group in itertools.groupby(metrics, key=lambda metric: metric[0]):
        # Name matchers are implied by the discovered names, which the batch lists explicitly.
        base = [m for m in selectors[index] if m.name != "__name__"]
        named = ((name, series) for _, name, series in group)
        for extra, part in _pack_groups("__name__", named, max_series, used=set()):
            yield Batch.create([*extra[:1], *base, *extra[1:]], part)


def _value_matcher(label: str, values: list[str]) -> Matcher:
    if len(values) == 1:
        return Matcher(label, "=", values[0])
    return Matcher(label, "=~", "|".join(re2_escape(v) for v in values))


def _pack_groups(
    label: str, groups: Iterable[tuple[str, list[Labels]]], max_series: int, used: set[str]
) -> Iterator[tuple[list[Matcher], list[Labels]]]:
    """Pack the value groups of one label (given in value order) into bins of at most max_series series.

    A bin becomes one matcher on the label (= or an alternation regex); a group too big for one bin is
    split further by another label.
    """
    bin_values: list[str] = []
    bin_series: list[Labels] = []
    for value, group in groups:
        if len(group) > max_series:
            for extra, part in _partition(group, max_series, used | {label}):
                yield [Matcher(label, "=", value), *extra], part
            continue
        if bin_series and len(bin_series) + len(group) > max_series:
            yield [_value_matcher(label, bin_values)], bin_series
            bin_values, bin_series = [], []
        bin_values.append(value)
        bin_series.extend(group)
    if bin_values:
        yield [_value_matcher(label, bin_values)], bin_series


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
    return list(_pack_groups(label, sorted(values[label].items()), max_series, used))


def split_batch(batch: Batch) -> list[Batch]:
    """Halve a batch that hit a source limit (same series, finer matchers)."""
    if len(batch.series) < 2:
        return [batch]
    target = (len(batch.series) + 1) // 2
    used = {m.name for m in batch.matchers if m.op == "="}
    parts = _partition(list(batch.series), target, used)
    return [Batch.create([*batch.matchers, *extra], part) for extra, part in parts]
