"""Cheap evidence for verification: per series × window figures the target's PromQL engine computes,
compared exactly with the same figures computed here from the source's samples.

Reading a window's raw samples back through the query API costs ~5 µs of CPU per sample (JSON); one
figure per series costs the same whatever the series holds. The figures, as Prometheus 2.42 computes
them over a range selector (promql/functions.go; stale markers are never part of a range, engine.go
``matrixIterSlice``):

* ``count_over_time``: the number of samples, exact;
* ``sum_over_time``: the Kahan-Neumaier sum in time order (``kahanSumInc``), reproduced here operation
  for operation (:func:`kahan_sum`), so equal samples give equal bits. Equal sums do **not** prove equal
  values (two changes can cancel, a change below the sum's last bit vanishes): the sum only finds
  differences, never proves equality. A server summing another way (another engine) makes every series
  differ and go to the samples level: slower, never wrong;
* ``last_over_time``: the last value, exact;
* ``timestamp(sel offset R) == start - 1 ms`` at the window's end: the series whose last sample at or
  before the window's start - 1 ms lies exactly there (the literal parses to the same double as Go's
  ``float64(t) / 1000``: both are the correctly rounded quotient). A sample exactly there is inside
  the range on Prometheus 2 ([T-R, T]) and outside on Prometheus 3 and Thanos ((T-R, T]); where one
  exists the figures are ambiguous and the series goes to the samples level.

No figure bounds timestamps inside the window (Prometheus 2.42 has no exact min/max-timestamp function),
so a sample moved in time with its value, keeping count, sum and last, is found at the samples level
only (``samples_fraction``, see docs/verification.md).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from m3migrate.clients.promql import format_seconds
from m3migrate.errors import MalformedResponse
from m3migrate.model import Labels

AGGREGATE_LABEL = "__m3migrate_figure"  # tags each figure's vector in the one `or`-ed answer
NAME_LABEL = "__m3migrate_name"  # the metric name, which *_over_time drop and `or` does not compare
FIGURES = ("count", "sum", "last", "edge")
EXPRESSIONS = {
    "count": "count_over_time({sel}[{r}ms])",
    "sum": "sum_over_time({sel}[{r}ms])",
    "last": "last_over_time({sel}[{r}ms])",
    "edge": "timestamp({sel} offset {r}ms) == {edge}",  # filtered: only series with a sample exactly there
}


def _kahan_sum(values: np.ndarray) -> float:
    """sum_over_time as Prometheus 2.42 computes it: Kahan-Neumaier compensated, in time order."""
    total = 0.0
    c = 0.0
    for v in values:
        t = total + v
        if abs(total) >= abs(v):
            c += (total - t) + v
        else:
            c += (v - t) + total
        total = t
    if math.isinf(total):
        return total
    return total + c


@functools.cache
def _compiled_kahan_sum() -> Callable[[np.ndarray], float]:
    from numba import njit  # compiled on first use: importing verification stays cheap

    return njit(cache=True)(_kahan_sum)


def kahan_sum(values: np.ndarray) -> float:
    """:func:`_kahan_sum` compiled (no fastmath: every operation rounds as Go's does)."""
    return float(_compiled_kahan_sum()(np.ascontiguousarray(values, dtype=np.float64)))


@dataclass(frozen=True)
class Figures:
    """One series' figures in one window: sample count, sum and last value (floats compared as
    equal when both are NaN; -0.0 equals +0.0, as the samples comparison has it)."""

    count: int
    total: float
    last: float

    @classmethod
    def of(cls, values: np.ndarray) -> Figures:
        """The figures of a window's values (time order, stale markers left out)."""
        if not len(values):
            return cls(0, 0.0, math.nan)
        return cls(len(values), kahan_sum(values), float(values[-1]))

    def matches(self, other: Figures) -> bool:
        return self.count == other.count and _same(self.total, other.total) and _same(self.last, other.last)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


@dataclass
class TargetFigures:
    """What the target's answer says of one target series (its labels as answered, figure tag removed)."""

    count: int = 0
    total: float = math.nan
    last: float = math.nan
    edge_ms: int | None = None  # the last sample at or before the window's start - 1 ms

    def figures(self) -> Figures:
        return Figures(self.count, self.total, self.last)


def promql_string(text: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def figures_expression(selectors: dict[str, str], range_ms: int, end_ms: int) -> str:
    """One expression answering every figure of every series under ``selectors`` (metric name ->
    selector of that one name), evaluated at ``end_ms``: the *_over_time functions drop the metric name,
    and `or` matches label sets without it, so each name's vector carries it in NAME_LABEL (label_replace
    from the empty source label, which always matches ""); each figure is tagged with AGGREGATE_LABEL, so
    that all the vectors can be `or`-ed into one answer without one hiding another. The `or`s form a balanced tree: each
    `or` hashes every label set of both sides, so a chain would cost the square of the terms."""
    terms = []
    edge = format_seconds(end_ms - range_ms)
    for name, selector in sorted(selectors.items()):
        replacement = promql_string(name.replace("$", "$$"))
        for figure in FIGURES:
            inner = EXPRESSIONS[figure].format(sel=selector, r=int(range_ms), edge=edge)
            named = f'label_replace({inner}, "{NAME_LABEL}", {replacement}, "", "")'
            terms.append(f'label_replace({named}, "{AGGREGATE_LABEL}", "{figure}", "", "")')
    return _balanced_or(terms)


def _balanced_or(terms: list[str]) -> str:
    while len(terms) > 1:
        terms = [f"({a} or {b})" for a, b in zip(terms[::2], terms[1::2], strict=False)] + (
            [terms[-1]] if len(terms) % 2 else []
        )
    return terms[0]


def parse_figures(result: Any, *, endpoint: str) -> dict[Labels, TargetFigures]:
    """An instant-vector answer of :func:`figures_expression` by target series (labels sorted)."""
    out: dict[Labels, TargetFigures] = {}
    if not isinstance(result, list):
        raise MalformedResponse("PromQL figures: expected a vector", endpoint=endpoint)
    try:
        for item in result:  # JSON gives str names and values: labels are sorted as they come (~per series)
            metric = item["metric"]
            figure = metric.pop(AGGREGATE_LABEL)
            metric["__name__"] = metric.pop(NAME_LABEL)
            value = float(item["value"][1])
            key = tuple(sorted(metric.items()))
            entry = out.get(key)
            if entry is None:
                entry = out[key] = TargetFigures()
            if figure == "count":
                entry.count = int(value)
            elif figure == "sum":
                entry.total = value
            elif figure == "last":
                entry.last = value
            elif figure == "edge":
                entry.edge_ms = round(value * 1000)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise MalformedResponse(f"PromQL figures: bad vector entry ({type(exc).__name__})", endpoint=endpoint) from None
    return out
