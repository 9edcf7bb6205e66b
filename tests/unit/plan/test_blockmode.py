"""The blocks and hybrid write modes' split of the range (m3migrate/plan/blockmode.py), without servers.

The contract is the module docstring: blocks hold [start, boundary - 1], remote write [boundary, end], no
gap and no overlap; the hybrid boundary is fixed once from the clock and saved, so a rerun splits at the
same instant; a backfill of the whole range is the migration's own plan (migrate stage), so replication
continues from its end. The boundary's placement on a block edge is MigrationSpec's (tests/unit/settings/test_spec.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from m3migrate.plan import blockmode
from m3migrate.plan.batches import Batch, Plan
from m3migrate.plan.blockmode import (
    backfill_stage,
    boundary_ms,
    fix_boundary,
    mark_migrated,
    prepare_backfill,
    prepare_tail,
)
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.replication import replication_start_ms
from m3migrate.wire.codec import Matcher

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
SOURCE = SourceSettings(read_url="http://127.0.0.1:9/api/v1/read")  # never contacted here
PAST = {"start": "2025-01-01T00:00:00Z", "end": "2025-01-03T00:00:00Z"}


def _recent_hybrid(now_ms: int) -> MigrationSpec:
    """Three days up to ten minutes ago, into a target accepting the last 12 h: the boundary falls inside."""
    return MigrationSpec(
        start=iso_ms(now_ms - 3 * DAY_MS),
        end=iso_ms(now_ms - 10 * 60_000),
        write_mode="hybrid",
        accept_window_minutes=720,
    )


def _clock(monkeypatch: pytest.MonkeyPatch, now_ms: int) -> None:
    monkeypatch.setattr(blockmode, "time", SimpleNamespace(time=lambda: now_ms / 1000))


# -- the boundary ------------------------------------------------------------------------------------------


def test_blocks_mode_puts_everything_in_blocks_and_remote_write_modes_nothing() -> None:
    assert boundary_ms(MigrationSpec(**PAST, write_mode="blocks")) == MigrationSpec(**PAST).end_ms + 1
    for mode in ("in_order", "out_of_order"):
        spec = MigrationSpec(**PAST, write_mode=mode)
        assert boundary_ms(spec) == spec.start_ms


def test_hybrid_takes_the_boundary_of_the_clock_until_one_is_saved(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    spec = _recent_hybrid(now)
    state = MigrationState(tmp_path, "h")
    assert boundary_ms(spec, state, now_ms=now) == spec.hybrid_boundary_ms(now)
    state.save_boundary(spec.start_ms + 4 * HOUR_MS)
    assert boundary_ms(spec, state, now_ms=now) == spec.start_ms + 4 * HOUR_MS, "the saved split wins"


def test_the_hybrid_boundary_is_fixed_at_the_first_run_and_kept_as_the_clock_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time() * 1000)
    spec = _recent_hybrid(now)
    state = MigrationState(tmp_path, "h")
    _clock(monkeypatch, now)
    first = fix_boundary(spec, state)
    assert spec.start_ms < first <= spec.end_ms and first % (2 * HOUR_MS) == 0, "a block edge inside the range"
    assert state.load_boundary() == first
    _clock(monkeypatch, now + 2 * DAY_MS)  # a rerun two days later: the clock alone would say "all blocks"
    assert spec.hybrid_boundary_ms(now + 2 * DAY_MS) == spec.end_ms + 1
    assert fix_boundary(spec, state) == first


def test_start_over_forgets_the_saved_boundary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = int(time.time() * 1000)
    spec = _recent_hybrid(now)
    state = MigrationState(tmp_path, "h")
    state.save_boundary(spec.start_ms + 2 * HOUR_MS)
    _clock(monkeypatch, now)
    assert fix_boundary(spec, state, start_over=True) == spec.hybrid_boundary_ms(now)


def test_only_hybrid_saves_a_boundary(tmp_path: Path) -> None:
    state = MigrationState(tmp_path, "b")
    spec = MigrationSpec(**PAST, write_mode="blocks")
    assert fix_boundary(spec, state) == spec.end_ms + 1
    assert state.load_boundary() is None


# -- which part goes where ---------------------------------------------------------------------------------


def test_the_backfill_is_the_migrations_own_plan_only_without_a_tail() -> None:
    spec = MigrationSpec(**PAST, write_mode="hybrid")
    assert backfill_stage(spec, spec.end_ms + 1) == "migrate"
    assert backfill_stage(spec, spec.end_ms) == "backfill", "a tail of one millisecond has the migrate stage"
    assert backfill_stage(spec, spec.start_ms + 2 * HOUR_MS) == "backfill"


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The parts blockmode asks migration.prepare for (start_ms, end_ms, stage), answered with a marker."""
    calls: list[dict] = []

    def fake_prepare(source: object, spec: MigrationSpec, state: object, **kw: object) -> str:
        calls.append({"start_ms": kw.get("start_ms"), "end_ms": kw.get("end_ms"), "stage": kw.get("stage", "migrate")})
        return "prepared"

    monkeypatch.setattr(blockmode, "prepare", fake_prepare)
    return calls


def test_a_hybrid_split_leaves_no_gap_and_no_overlap(tmp_path: Path, prepared: list[dict]) -> None:
    spec = MigrationSpec(**PAST, write_mode="hybrid")
    state = MigrationState(tmp_path, "h")
    boundary = spec.start_ms + 10 * HOUR_MS
    assert prepare_tail(SOURCE, spec, state, boundary) == "prepared"
    assert prepare_backfill(SOURCE, spec, state, boundary) == "prepared"
    tail, history = prepared
    assert tail == {"start_ms": boundary, "end_ms": None, "stage": "migrate"}, "[boundary, end] by remote write"
    assert history == {"start_ms": None, "end_ms": boundary - 1, "stage": "backfill"}, "[start, boundary - 1]"


def test_all_blocks_has_no_tail_and_the_backfill_covers_the_range_end(tmp_path: Path, prepared: list[dict]) -> None:
    spec = MigrationSpec(**PAST, write_mode="blocks")
    state = MigrationState(tmp_path, "b")
    assert prepare_tail(SOURCE, spec, state, spec.end_ms + 1) is None
    assert prepare_backfill(SOURCE, spec, state, spec.end_ms + 1) == "prepared"
    assert prepared == [{"start_ms": None, "end_ms": spec.end_ms, "stage": "migrate"}]


def test_no_backfill_when_everything_goes_by_remote_write(tmp_path: Path, prepared: list[dict]) -> None:
    spec = MigrationSpec(**PAST, write_mode="hybrid")
    assert prepare_backfill(SOURCE, spec, MigrationState(tmp_path, "h"), spec.start_ms) is None
    assert prepared == []


# -- a finished backfill of the whole range ------------------------------------------------------------------


def test_a_finished_backfill_lets_replication_continue_from_the_range_end(tmp_path: Path) -> None:
    spec = MigrationSpec(**PAST, write_mode="blocks")
    state = MigrationState(tmp_path, "b")
    batch = Batch.create([Matcher("__name__", "=", "up")], [(("__name__", "up"),)])
    plan = Plan("b", spec.start_ms, spec.end_ms, spec.window_ms, [batch], list(spec.match))
    state.save_plan(plan)
    mark_migrated(state, plan, samples=1234)
    progress = state.load_progress()
    # 48 hours and the inclusive end instant, which opens a 49th hourly window
    assert (progress.plan_id, progress.windows_done, progress.windows_total) == (plan.id, 49, 49)
    assert (progress.front_end_ms, progress.samples, progress.series) == (spec.end_ms, 1234, 1)
    assert replication_start_ms(state) == spec.end_ms + 1
    mark_migrated(state, plan, samples=0)  # a rerun that found every window done uploads nothing
    assert state.load_progress().samples == 1234, "the samples moved are not forgotten by a rerun"
