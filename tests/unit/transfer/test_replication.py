"""Replication's bookkeeping (m3migrate/transfer/replication.py), without servers: where the next pass starts, which
pass runs, and what a finished pass records (watermark, lag, whether the lag grows).

Contract from the module docstring: a pass copies (watermark, until]; it is saved before it starts, so an
interrupted pass resumes as planned; only a completed pass advances the watermark. Passes run end to end
with real servers in tests/integration/test_replicate.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Batch, Plan
from m3migrate.plan.migration import writing_settings
from m3migrate.relabel import RelabelRule
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, Progress, ReplicationState
from m3migrate.transfer import replication
from m3migrate.transfer.replication import finish_pass, plan_pass, replication_start_ms
from m3migrate.wire.codec import Matcher

HOUR_MS = 3_600_000
SOURCE = SourceSettings(read_url="http://127.0.0.1:9/api/v1/read")  # never contacted here
SPEC = MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-01T05:59:59.999Z", migration_id="r")
BATCH = Batch.create([Matcher("__name__", "=", "up")], [(("__name__", "up"),)])


def _plan(start_ms: int, end_ms: int, spec: MigrationSpec = SPEC) -> Plan:
    return Plan("r", start_ms, end_ms, spec.window_ms, [BATCH], list(spec.match), writing_settings(spec))


def _migrated(tmp_path: Path, windows_done: int | None = None) -> tuple[MigrationState, Plan]:
    state = MigrationState(tmp_path, "r")
    plan = _plan(SPEC.start_ms, SPEC.end_ms)
    state.save_plan(plan)
    done = len(plan.windows) if windows_done is None else windows_done
    state.save_progress(Progress(plan_id=plan.id, windows_total=len(plan.windows), windows_done=done))
    return state, plan


# -- where the next pass starts -------------------------------------------------------------------------------


def test_the_first_pass_starts_just_after_the_finished_migration(tmp_path: Path) -> None:
    state, plan = _migrated(tmp_path)
    assert replication_start_ms(state) == plan.end_ms + 1 == SPEC.end_ms + 1


def test_later_passes_start_just_after_the_watermark(tmp_path: Path) -> None:
    state, _ = _migrated(tmp_path)
    state.save_replication(ReplicationState(watermark_ms=SPEC.end_ms + 5 * HOUR_MS))
    assert replication_start_ms(state) == SPEC.end_ms + 5 * HOUR_MS + 1


def test_a_migration_that_never_ran_has_nothing_to_continue(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'r' never ran") as caught:
        replication_start_ms(MigrationState(tmp_path, "r"))
    assert "m3migrate migrate" in str(caught.value)


def test_an_unfinished_migration_is_not_continued(tmp_path: Path) -> None:
    """Replicating from the range's end would leave the windows not yet written as a gap."""
    state, plan = _migrated(tmp_path, windows_done=2)
    with pytest.raises(ConfigError, match=rf"has not finished \(2/{len(plan.windows)} windows\)"):
        replication_start_ms(state)
    state.save_progress(Progress(plan_id="another-plan", windows_done=len(plan.windows)))
    with pytest.raises(ConfigError, match="has not finished"):
        replication_start_ms(state)


# -- which pass runs ---------------------------------------------------------------------------------------


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The ranges replication asks the planner for; the plan returned covers exactly that range."""
    ranges: list[tuple[int, int]] = []

    def fake_build_plan(source: object, spec: MigrationSpec, migration_id: str, on_metric: object, **kw: int) -> Plan:
        ranges.append((kw["start_ms"], kw["end_ms"]))
        return _plan(kw["start_ms"], kw["end_ms"], spec)

    monkeypatch.setattr(replication, "build_plan", fake_build_plan)
    return ranges


def test_a_new_pass_copies_from_the_watermark_to_until_and_is_saved_first(
    tmp_path: Path, planned: list[tuple[int, int]]
) -> None:
    state, _ = _migrated(tmp_path)
    until = SPEC.end_ms + HOUR_MS
    plan = plan_pass(SOURCE, SPEC, state, until)
    assert plan is not None and planned == [(SPEC.end_ms + 1, until)]
    saved = state.load_plan("replicate")
    assert saved is not None and saved.id == plan.id, "saved before it starts: a crash resumes this pass"


def test_nothing_to_copy_when_until_is_not_past_the_watermark(tmp_path: Path, planned: list[tuple[int, int]]) -> None:
    state, _ = _migrated(tmp_path)
    assert plan_pass(SOURCE, SPEC, state, SPEC.end_ms) is None
    assert plan_pass(SOURCE, SPEC, state, SPEC.end_ms + 1) is not None, "one millisecond is a pass"
    assert planned == [(SPEC.end_ms + 1, SPEC.end_ms + 1)]


def test_an_interrupted_pass_resumes_as_planned(tmp_path: Path, planned: list[tuple[int, int]]) -> None:
    state, _ = _migrated(tmp_path)
    pending = _plan(SPEC.end_ms + 1, SPEC.end_ms + HOUR_MS)
    state.save_plan(pending, "replicate")
    resumed = plan_pass(SOURCE, SPEC, state, until_ms=SPEC.end_ms + 9 * HOUR_MS)  # a later until: same pass
    assert resumed is not None and resumed.id == pending.id and planned == []


def test_an_interrupted_pass_is_not_resumed_with_other_relabeling(
    tmp_path: Path, planned: list[tuple[int, int]]
) -> None:
    state, _ = _migrated(tmp_path)
    state.save_plan(_plan(SPEC.end_ms + 1, SPEC.end_ms + HOUR_MS), "replicate")
    renamed = SPEC.model_copy(update={"relabel_rules": [RelabelRule(regex="job", action="labeldrop")]})
    with pytest.raises(ConfigError, match="relabel_rules: planned"):
        plan_pass(SOURCE, renamed, state, SPEC.end_ms + HOUR_MS)


# -- a finished pass ---------------------------------------------------------------------------------------


def test_a_finished_pass_advances_the_watermark_and_records_the_lag(tmp_path: Path) -> None:
    state, _ = _migrated(tmp_path)
    plan = _plan(SPEC.end_ms + 1, SPEC.end_ms + HOUR_MS)
    state.save_plan(plan, "replicate")
    now = plan.end_ms + 120_000
    outcome = finish_pass(state, plan, samples=42, now_ms=now)
    assert outcome.lag_seconds == 120.0 and not outcome.lag_growing, "a first pass has nothing to grow from"
    saved = state.load_replication()
    assert (saved.watermark_ms, saved.passes, saved.last_lag_seconds) == (plan.end_ms, 1, 120.0)
    assert saved.history == [
        {
            "pass": 1,
            "start_ms": plan.start_ms,
            "end_ms": plan.end_ms,
            "series": 1,
            "samples": 42,
            "lag_seconds": 120.0,
            "finished_at": now,
        }
    ]
    assert state.load_plan("replicate") is None, "the next pass is a new one"
    assert replication_start_ms(state) == plan.end_ms + 1


def test_a_lag_growing_from_pass_to_pass_is_flagged_a_steady_one_not(tmp_path: Path) -> None:
    """README: "a warning says when it grows from pass to pass"."""
    state, _ = _migrated(tmp_path)
    state.save_replication(ReplicationState(watermark_ms=SPEC.end_ms, passes=3, last_lag_seconds=900.0))
    plan = _plan(SPEC.end_ms + 1, SPEC.end_ms + HOUR_MS)
    assert not finish_pass(state, plan, 0, now_ms=plan.end_ms + 900_000).lag_growing, "15 min again: steady"
    later = _plan(plan.end_ms + 1, plan.end_ms + HOUR_MS)
    assert finish_pass(state, later, 0, now_ms=later.end_ms + 1_800_000).lag_growing, "15 -> 30 min: growing"
    shrinking = _plan(later.end_ms + 1, later.end_ms + HOUR_MS)
    assert not finish_pass(state, shrinking, 0, now_ms=shrinking.end_ms + 60_000).lag_growing
    assert state.load_replication().passes == 6


def test_a_pass_ending_in_the_future_has_no_negative_lag(tmp_path: Path) -> None:
    state, _ = _migrated(tmp_path)
    plan = _plan(SPEC.end_ms + 1, SPEC.end_ms + HOUR_MS)
    assert finish_pass(state, plan, 0, now_ms=plan.end_ms - 5_000).lag_seconds == 0.0
