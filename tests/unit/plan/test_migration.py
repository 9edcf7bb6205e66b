"""Preparing a run (m3migrate/plan/migration.py): a saved plan is reused only for the same range, window,
selectors and writing settings; a new plan is discovered, checked for relabeling collisions and saved.

The source is a small local PromQL series API (http.server) or, where only the decision around
discovery matters, no source at all. Expectations from the docstrings and the README's "Same settings".
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from m3migrate.errors import ConfigError
from m3migrate.plan import migration
from m3migrate.plan.batches import Batch, Plan
from m3migrate.plan.migration import build_plan, check_writing, merge_discoveries, prepare, writing_settings
from m3migrate.relabel import RelabelRule
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.wire.codec import Matcher

HOUR_MS = 3_600_000
DEAD = SourceSettings(read_url="http://127.0.0.1:9/api/v1/read", namespaces="unpinned")  # never answers
RENAME = RelabelRule(source_labels=["__name__"], regex="node_(.*)", target_label="__name__", replacement="host_$1")


def _spec(**kw: object) -> MigrationSpec:
    return MigrationSpec.model_validate(
        {"start": "2025-01-01T00:00:00Z", "end": "2025-01-01T05:59:59.999Z", "migration_id": "m", **kw}
    )


def _plan(spec: MigrationSpec, **kw: object) -> Plan:
    batch = Batch.create([Matcher("__name__", "=", "up")], [(("__name__", "up"),)])
    fields: dict = {
        "migration_id": "m",
        "start_ms": spec.start_ms,
        "end_ms": spec.end_ms,
        "window_ms": spec.window_ms,
        "batches": [batch],
        "selectors": list(spec.match),
        "writing": writing_settings(spec),
        **kw,
    }
    return Plan(**fields)


def _labels(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


# -- writing settings --------------------------------------------------------------------------------------


def test_writing_settings_are_what_changes_the_written_series() -> None:
    spec = _spec(relabel_rules=[RENAME], merge_prometheus_prefix=True, write_mode="out_of_order")
    settings = writing_settings(spec)
    assert set(settings) == {
        "relabel_rules",
        "merge_prometheus_prefix",
        "source_label_name",
        "source_label_value",
        "write_mode",
    }
    assert settings["relabel_rules"][0]["replacement"] == "host_$1"
    json.dumps(settings)  # saved in plan.json
    assert writing_settings(_spec(task_concurrency=64, batch_max_series=5)) == writing_settings(_spec())


@pytest.mark.parametrize(
    ("changed", "named"),
    [
        ({"relabel_rules": [RENAME]}, "relabel_rules: planned [], now [{"),
        ({"merge_prometheus_prefix": True}, "merge_prometheus_prefix: planned False, now True"),
        ({"source_label_name": "origin"}, "source_label_name: planned '_source', now 'origin'"),
        ({"source_label_value": ""}, "source_label_value: planned 'm3db', now ''"),
        ({"write_mode": "out_of_order"}, "write_mode: planned 'in_order', now 'out_of_order'"),
    ],
)
def test_a_resume_with_other_writing_settings_is_refused_naming_both_values(changed: dict, named: str) -> None:
    plan = _plan(_spec())
    check_writing(plan, _spec(task_concurrency=9))  # tuning changes nothing written
    with pytest.raises(ConfigError, match="was planned with other settings that change what is written") as caught:
        check_writing(plan, _spec(**changed))
    text = str(caught.value)
    assert named in text and "--start-over" in text
    assert text.count(": planned ") == 1, "only what differs is named"


# -- discoveries of several M3 tiers ---------------------------------------------------------------------


def test_one_tier_is_its_own_discovery() -> None:
    found = [[_labels(__name__="a")], []]
    assert merge_discoveries([found]) is found


def test_tiers_merge_per_selector_each_series_once_and_the_first_selector_wins() -> None:
    a, b, c = _labels(__name__="a"), _labels(__name__="b"), _labels(__name__="c")
    old_tier = [[a], [b, c]]  # selector 0 found a, selector 1 found b and c
    new_tier = [[b, a], [c]]  # in the newer tier selector 0 also matches b
    assert merge_discoveries([old_tier, new_tier]) == [[a, b], [c]]


# -- prepare: reuse or plan -----------------------------------------------------------------------------


def _no_discovery(*args: object, **kw: object) -> Plan:
    raise AssertionError("a saved plan of the same migration must be reused, not rediscovered")


def test_a_saved_plan_of_the_same_migration_is_reused_without_asking_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec()
    state = MigrationState(tmp_path, "m")
    state.save_plan(_plan(spec))
    monkeypatch.setattr(migration, "build_plan", _no_discovery)
    prepared = prepare(DEAD, spec.model_copy(update={"task_concurrency": 12}), state)
    assert prepared.reused_plan and prepared.plan.id == _plan(spec).id
    assert (prepared.migration_id, prepared.generation) == ("m", state.generation)


@pytest.mark.parametrize(
    "changed",
    [
        {"end": "2025-01-01T04:59:59.999Z"},
        {"start": "2025-01-01T01:00:00Z"},
        {"window_minutes": 30},
        {"match": ["up", "node_load1"]},
    ],
)
def test_a_saved_plan_of_another_range_window_or_selectors_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changed: dict
) -> None:
    state = MigrationState(tmp_path, "m")
    state.save_plan(_plan(_spec()))
    monkeypatch.setattr(migration, "build_plan", _no_discovery)
    with pytest.raises(ConfigError, match="was planned with another range, window or selectors"):
        prepare(DEAD, _spec(**changed), state)


def test_start_over_replans_in_a_new_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec()
    state = MigrationState(tmp_path, "m")
    state.save_plan(_plan(_spec(window_minutes=30)))  # a plan the new spec could not resume
    before = state.generation
    fresh = _plan(spec, batches=[Batch.create([Matcher("__name__", "=", "x")], [(("__name__", "x"),)])])
    monkeypatch.setattr(migration, "build_plan", lambda *a, **kw: fresh)
    prepared = prepare(DEAD, spec, state, start_over=True)
    assert not prepared.reused_plan and prepared.generation == before + 1
    loaded = state.load_plan()
    assert loaded is not None and loaded.id == fresh.id, "the new plan is saved before anything is written"


def test_an_empty_whole_range_is_refused_but_an_empty_part_is_a_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hybrid migration's tail or history may hold no series; the migration as a whole must."""
    spec = _spec()
    state = MigrationState(tmp_path, "m")
    monkeypatch.setattr(migration, "build_plan", lambda *a, **kw: _plan(spec, batches=[], **_range(kw)))
    with pytest.raises(ConfigError, match=r"the source holds no series matching .* nothing to migrate"):
        prepare(DEAD, spec, state)
    assert state.load_plan() is None, "nothing saved for a migration that cannot run"
    part = prepare(DEAD, spec, state, end_ms=spec.start_ms + HOUR_MS - 1, stage="backfill")
    assert part.plan.series_count == 0 and state.load_plan("backfill") is not None


def _range(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k in ("start_ms", "end_ms") and v is not None}


# -- build_plan against a PromQL series API --------------------------------------------------------------


@pytest.fixture
def series_api() -> Iterator[tuple[str, list[dict]]]:
    """POST /api/v1/series answering the label sets (of the list it yields) whose name the match[] names."""
    series: list[dict] = []
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            seen.append(form)
            names = [s["__name__"] for s in series if f'__name__="{s["__name__"]}"' in form["match[]"][0]]
            data = [s for s in series if s["__name__"] in names]
            body = json.dumps({"status": "success", "data": data}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", series
    server.shutdown()
    server.server_close()


def _source(url: str, **kw: object) -> SourceSettings:
    return SourceSettings(read_url=f"{url}/api/v1/read", namespaces="unpinned", retry_attempts=1, **kw)


def test_build_plan_packs_the_discovered_series_with_what_it_writes(series_api: tuple[str, list[dict]]) -> None:
    url, series = series_api
    series += [{"__name__": "node_load1", "instance": f"n{i}"} for i in range(5)] + [{"__name__": "up"}]
    spec = _spec(match=["node_load1", "up"], batch_max_series=4, relabel_rules=[RENAME])
    plan = build_plan(_source(url, max_series_per_query=3), spec, "m")
    assert plan.series_count == 6
    assert max(len(b.series) for b in plan.batches) == 3, "the smaller of batch_max_series and the source's limit"
    assert (plan.start_ms, plan.end_ms, plan.window_ms, plan.selectors) == (
        spec.start_ms,
        spec.end_ms,
        spec.window_ms,
        ["node_load1", "up"],
    )
    assert plan.writing == writing_settings(spec) and plan.tiers == []


def test_series_that_relabeling_would_merge_are_refused_naming_them(series_api: tuple[str, list[dict]]) -> None:
    """Their samples would overwrite each other in the target."""
    url, series = series_api
    series += [{"__name__": "node_cpu", "cpu": "0"}, {"__name__": "host_cpu", "cpu": "0"}]
    spec = _spec(match=["node_cpu", "host_cpu"], relabel_rules=[RENAME])
    with pytest.raises(ConfigError, match="would become one series after relabeling") as caught:
        build_plan(_source(url), spec, "m")
    text = str(caught.value)
    assert "'node_cpu'" in text and "'host_cpu'" in text and "narrow the rename rule" in text
    assert build_plan(_source(url), _spec(match=["node_cpu", "host_cpu"]), "m").series_count == 2
