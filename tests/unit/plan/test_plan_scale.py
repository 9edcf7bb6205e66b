"""Planning at scale (issue 15): series held compactly, batched as discovered, the plan file read and
written batch by batch, with the same ids and file content as a plan of plain tuples."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest

from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Batch, Plan, batch_metrics, discover_metrics, make_batches, read_plan_object
from m3migrate.plan.migration import check_collisions
from m3migrate.plan.selectors import parse_selector
from m3migrate.relabel import Relabeler
from m3migrate.wire.codec import Matcher


def _labels(i: int) -> tuple[tuple[str, str], ...]:
    return (
        ("__name__", f"metric_{i % 7}_total"),
        ("env", "prod"),
        ("instance", f"10.0.{i >> 8 & 255}.{i & 255}:9100"),
        ("job", f"node-{i % 20:02d}"),
        ("region", f"eu-{i % 5}"),
    )


def test_planned_series_are_held_in_a_fraction_of_their_tuples_memory():
    n = 20_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        series = [_labels(i) for i in range(n)]  # fresh strings, as a discovery answer gives
        batches = make_batches([parse_selector('{__name__=~".+"}')], [series], 2_000)
        del series
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sum(len(b.series) for b in batches) == n
    # as tuples of str: ~600 bytes a series; as the batch's JSON text ~130
    assert held < 250 * n, f"{held / n:.0f} bytes per planned series"


class _CountingAPI:
    """Three metrics of two series each; records the metrics queried so far."""

    def __init__(self) -> None:
        self.queried: list[str] = []

    def series(self, selector, start_ms, end_ms):
        name = selector.split('"')[1]
        self.queried.append(name)
        return [{"__name__": name, "i": str(i)} for i in range(2)]

    def label_names(self, selector, start_ms, end_ms):
        return ["__name__", "i"]

    def label_values(self, name, selector, start_ms, end_ms):
        return ["c", "a", "b"]


def test_each_batch_is_made_as_soon_as_its_metrics_are_discovered():
    api = _CountingAPI()
    selectors = [parse_selector('{__name__=~".+"}')]
    yielded: list[str] = []

    def counted():
        for metric in discover_metrics(selectors, 0, 10, api=api):
            yielded.append(metric[1])
            yield metric

    batches = batch_metrics(selectors, counted(), max_series=2)
    first = next(batches)
    assert first.series == ((("__name__", "a"), ("i", "0")), (("__name__", "a"), ("i", "1")))
    assert yielded == ["a", "b"]  # metric b was needed to know that a's batch is full; c not yet
    assert [b.size for b in batches] == [2, 2] and yielded == ["a", "b", "c"]
    assert sorted(api.queried) == ["a", "b", "c"]  # each metric queried once


def test_batch_ids_and_the_plan_file_are_those_of_the_plain_json_of_the_plan(tmp_path):
    series = [(("__name__", "a"), ("zürich", "東京")), (("__name__", "a"), ("q", 'x"\\y'))]
    matchers = [Matcher("__name__", "=", "a")]
    batch = Batch.create(matchers, series)
    ordered = sorted(series)
    legacy = json.dumps([[[m.name, m.op, m.value] for m in matchers], ordered], ensure_ascii=False)
    assert batch.id == hashlib.sha256(legacy.encode()).hexdigest()[:16] and batch.series == tuple(ordered)
    plan = Plan("m1", 0, 10_000_000, 1_800_000, [batch, Batch.create(matchers, series[:1])], ["a"], {"w": 1})
    plan.save(tmp_path / "plan.json")
    assert (tmp_path / "plan.json").read_text(encoding="utf-8") == json.dumps(plan.to_json(), ensure_ascii=False)


def test_a_plan_file_with_other_spacing_or_key_order_reads_the_same():
    batch = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"), ("i", "1"))])
    plan = Plan("m1", 0, 10_000_000, 1_800_000, [batch], ["a"], {"w": 1})
    data = plan.to_json()
    for text in (json.dumps(data, indent=1), json.dumps(dict(reversed(list(data.items()))), separators=(",", ":"))):
        loaded = Plan.from_json(read_plan_object(text))
        assert loaded.id == plan.id and loaded.batches == plan.batches


def test_an_added_label_a_series_already_has_is_still_found_merging_two_series():
    """The relabel pass is skipped only when nothing can merge: here the added label overwrites one."""
    add = Relabeler([], add_labels={"source": "m3db"})
    a = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"),), (("__name__", "a"), ("source", "x"))])
    with pytest.raises(ConfigError, match="would become one series"):
        check_collisions(add, [a])
    empty = Batch("e", [Matcher("__name__", "=", "a")], [(("__name__", "a"),), (("__name__", "a"), ("k", ""))])
    with pytest.raises(ConfigError, match="would become one series"):
        check_collisions(Relabeler([]), [empty])
    tricky = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"), ("v", '["source", x'))])
    check_collisions(add, [tricky])  # the added name inside a value merges nothing


@pytest.mark.parametrize("name", ["host.name", "1st", "", "é", 'q"uote'])
def test_an_invalid_label_name_is_refused_at_planning_without_rules(name):
    """Prometheus refuses the label name (model.LabelNameRE of 2.42: [a-zA-Z_][a-zA-Z0-9_]*): the plan
    says so before any data moves, also when the relabel pass itself is skipped."""
    bad = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"),), (("__name__", "a"), (name, "v"))])
    with pytest.raises(ConfigError, match="invalid label name") as refused:
        check_collisions(Relabeler([], add_labels={"_source": "m3db"}), [bad])
    assert "labelmap" in (refused.value.hint or "")


def test_label_names_only_look_like_pairs_inside_values():
    fine = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"), ("v", '["1st", "x'))])
    check_collisions(Relabeler([], add_labels={"_source": "m3db"}), [fine])
