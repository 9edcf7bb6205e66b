"""Planning: discovery under a series limit, disjoint stable batches, windows."""

from __future__ import annotations

import re

import pytest

from m3migrate.errors import ConfigError, SourceLimitExceeded
from m3migrate.plan.batches import Batch, Plan, discover, make_batches, make_windows, split_batch
from m3migrate.plan.selectors import parse_selector
from m3migrate.wire.codec import Matcher


def _series(n_a: int = 25) -> list[dict[str, str]]:
    out = [{"__name__": "a", "i": str(i), "job": "x" if i % 2 else "y"} for i in range(n_a)]
    out += [{"__name__": "b", "i": str(i), "j": "x y"} for i in range(3)]
    out += [{"__name__": "c"}, {"__name__": "prometheus_up", "job": 'q"u\\ote'}]
    return out


def _matches(series: dict[str, str], matchers: list[Matcher]) -> bool:
    for m in matchers:
        value = series.get(m.name, "")
        ok = {
            "=": value == m.value,
            "!=": value != m.value,
            "=~": re.fullmatch(m.value, value) is not None,
            "!~": re.fullmatch(m.value, value) is None,
        }[m.op]
        if not ok:
            return False
    return True


class LimitedAPI:
    """An in-memory series index with a per-query series limit, like M3's exhaustive limit.

    Not a server: it exercises the discovery algorithm (the limit of a real M3 is covered by the fake
    M3 coordinator tests)."""

    def __init__(self, series: list[dict[str, str]], limit: int) -> None:
        self.all = series
        self.limit = limit
        self.queries: list[str] = []

    def _select(self, selector: str) -> list[dict[str, str]]:
        return [s for s in self.all if _matches(s, parse_selector(selector))]

    def series(self, selector, start_ms, end_ms):
        self.queries.append(selector)
        found = self._select(selector)
        if len(found) > self.limit:
            raise SourceLimitExceeded("query exceeded limit", endpoint="fake")
        return found

    def label_names(self, selector, start_ms, end_ms):
        return sorted({n for s in self._select(selector) for n in s})

    def label_values(self, name, selector, start_ms, end_ms):
        return sorted({s[name] for s in self._select(selector) if name in s})


def test_discovery_splits_a_metric_over_the_series_limit_and_finds_every_series_once():
    api = LimitedAPI(_series(25), limit=10)
    (found,) = discover([parse_selector('{__name__=~".+"}')], 0, 1000, api=api)
    assert sorted(found) == sorted(tuple(sorted(s.items())) for s in api.all)
    assert len(found) == len(set(found))
    assert any("i=" in q for q in api.queries), "metric a must have been split by its busiest label"


def test_discovery_fails_clearly_when_no_label_can_split():
    api = LimitedAPI([{"__name__": "a", "i": str(i)} for i in range(5)], limit=0)
    with pytest.raises(SourceLimitExceeded):
        discover([parse_selector("a")], 0, 10, api=api)


def test_discovery_first_selector_wins_for_overlaps():
    api = LimitedAPI(_series(4), limit=100)
    first, second = discover([parse_selector("a"), parse_selector('{job="x"}')], 0, 10, api=api)
    assert len(first) == 4
    assert all(dict(s)["__name__"] != "a" for s in second)


@pytest.mark.parametrize("max_series", [1, 2, 3, 10, 100])
def test_batches_are_disjoint_bounded_and_select_exactly_their_series(max_series):
    series = _series(25)
    labels = [tuple(sorted(s.items())) for s in series]
    selectors = [parse_selector('{__name__=~".+"}')]
    batches = make_batches(selectors, [labels], max_series)
    covered = [s for b in batches for s in b.series]
    assert sorted(covered) == sorted(labels)
    assert len(covered) == len(set(covered))
    for batch in batches:
        assert len(batch.series) <= max_series
        selected = {tuple(sorted(s.items())) for s in series if _matches(s, list(batch.matchers))}
        assert selected == set(batch.series), batch.selector
    assert [b.id for b in make_batches(selectors, [labels], max_series)] == [b.id for b in batches]


def test_split_batch_halves_and_keeps_the_series():
    labels = [tuple(sorted(s.items())) for s in _series(25) if s["__name__"] == "a"]
    (batch,) = make_batches([parse_selector("a")], [labels], 100)
    parts = split_batch(batch)
    assert len(parts) == 2
    assert sorted(s for p in parts for s in p.series) == sorted(labels)


def test_windows_are_aligned_inclusive_and_cover_the_range():
    windows = make_windows(5, 3_600_000, 1_800_000)
    assert [(w.start_ms, w.end_ms) for w in windows] == [(5, 1_799_999), (1_800_000, 3_599_999), (3_600_000, 3_600_000)]
    with pytest.raises(ConfigError):
        make_windows(10, 5, 1000)


def test_plan_round_trips_through_json_and_detects_corruption(tmp_path):
    batch = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"), ("zürich", "東京"))])
    plan = Plan("m1", 0, 10_000_000, 1_800_000, [batch], ["a"])
    plan.save(tmp_path / "plan.json")
    loaded = Plan.load(tmp_path / "plan.json")
    assert loaded.id == plan.id and loaded.batches[0].series == batch.series
    text = (tmp_path / "plan.json").read_text().replace('"m1"', '"m2"', 1)
    (tmp_path / "plan.json").write_text(text)
    with pytest.raises(ConfigError, match="corrupt"):
        Plan.load(tmp_path / "plan.json")
