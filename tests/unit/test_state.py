"""The state directory: the unit journal survives torn lines and short writes (no record is glued onto a
broken one or cut short); every state file carries a version, and one this m3migrate does not know is refused
naming the file and the version; the spec a migration saves holds no secret."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Batch, Plan
from m3migrate.settings.endpoints import AuthSettings, SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import (
    JournalError,
    MigrationState,
    Progress,
    ReplicationState,
    StateError,
    UnitJournal,
    load_saved_spec,
    resolve_spec,
)
from m3migrate.wire.codec import Matcher


def test_a_record_appended_after_a_torn_last_line_survives_a_reload(tmp_path):
    """kill -9 mid-append leaves a line without its newline; the next run's first record must not join it."""
    path = tmp_path / "j.jsonl"
    UnitJournal(path).mark_done("b0:0", {"samples": 5})
    with open(path, "a") as fh:
        fh.write('{"event":"start","unit":"b0:1"')  # torn: no closing brace, no newline
    rerun = UnitJournal(path)
    rerun.mark_started("b0:2")
    rerun.mark_done("b0:3", {"samples": 7})
    again = UnitJournal(path)
    assert again.done("b0:0") == {"samples": 5}
    assert again.started("b0:2"), "the record written right after the torn line was lost"
    assert again.done("b0:3") == {"samples": 7}
    assert not again.started("b0:1")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"journal": "m3migrate-units", "version": 1}
    assert lines[2:4] == ['{"event":"start","unit":"b0:1"', '{"event":"start","unit":"b0:2"}']


def test_a_short_write_still_ends_with_the_whole_record(tmp_path, monkeypatch):
    """os.write may write fewer bytes than asked (a nearly full disk): the rest must follow."""
    path = tmp_path / "j.jsonl"
    real_write = os.write
    calls: list[int] = []

    def half_write(fd: int, data) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[: max(1, len(data) // 2)]))

    monkeypatch.setattr(os, "write", half_write)
    journal = UnitJournal(path)
    journal.mark_started("b7:3")
    journal.mark_done("b7:3", {"samples": 123, "series": 4})
    monkeypatch.undo()
    assert len(calls) > 2, "the stand-in did write short"
    again = UnitJournal(path)
    assert again.started("b7:3") and again.done("b7:3") == {"samples": 123, "series": 4}


@pytest.mark.parametrize("failure", ["zero", "enospc"])
def test_a_full_disk_is_a_clear_error_and_the_next_record_starts_on_its_own_line(tmp_path, monkeypatch, failure):
    path = tmp_path / "j.jsonl"
    journal = UnitJournal(path)
    journal.mark_done("b0:0", {"samples": 1})
    real_write = os.write
    state = {"n": 0}

    def filling_write(fd: int, data) -> int:
        state["n"] += 1
        if state["n"] == 1:
            return real_write(fd, bytes(data[:10]))  # the disk takes ten more bytes, then is full
        if failure == "zero":
            return 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", filling_write)
    with pytest.raises(JournalError) as caught:
        journal.mark_started("b0:1")
    monkeypatch.undo()
    assert str(path) in str(caught.value) and ("disk full" in str(caught.value) or "No space" in str(caught.value))
    journal.mark_started("b0:2")  # space freed: the run goes on
    again = UnitJournal(path)
    assert again.done("b0:0") == {"samples": 1} and again.started("b0:2") and not again.started("b0:1")


# -- versions ----------------------------------------------------------------------------------------------


_BATCH = Batch("b0", (Matcher("__name__", "=", "up"),), ((("__name__", "up"),),))


def _spec(**kw) -> MigrationSpec:
    return MigrationSpec(start="2026-01-01T00:00:00Z", end="2026-01-02T00:00:00Z", **kw)


def _filled(state: MigrationState) -> dict[str, Path]:
    """Every kind of state file a migration writes, by what it is."""
    plan = Plan("m", 0, 3_600_000, 3_600_000, [_BATCH], selectors=["up"])
    state.save_plan(plan)
    state.save_progress(Progress(plan_id=plan.id, windows_total=1))
    state.save_replication(ReplicationState(watermark_ms=5))
    state.save_boundary(3_600_000)
    state.start_over()  # writes meta.json (and forgets the rest)
    state.save_plan(plan)
    state.save_progress(Progress(plan_id=plan.id, windows_total=1))
    state.save_replication(ReplicationState(watermark_ms=5))
    state.save_boundary(3_600_000)
    state.save_spec(
        _spec(migration_id="m"), SourceSettings(read_url="http://s/r"), TargetSettings(write_url="http://t/w")
    )
    state.journal("migrate", plan.id).mark_started("b0:0")
    files = {
        "plan": state.plan_path(),
        "progress": state.dir / "progress.json",
        "replication": state.dir / "replication.json",
        "boundary": state.dir / "hybrid-boundary.json",
        "meta": state.dir / "meta.json",
        "spec": state.dir / "spec.json",
    }
    (journal,) = state.dir.glob("journal-*.jsonl")
    return {**files, "journal": journal}


def _loaders(state: MigrationState) -> dict:
    return {
        "plan": state.load_plan,
        "progress": state.load_progress,
        "replication": state.load_replication,
        "boundary": state.load_boundary,
        "meta": lambda: state.generation,
        "spec": lambda: load_saved_spec(state.dir.parent, state.migration_id),
        "journal": lambda: state.journal("migrate", state.load_plan().id),
    }


def test_every_state_file_is_written_with_its_version(tmp_path):
    files = _filled(MigrationState(tmp_path, "m"))
    for kind, path in files.items():
        first = path.read_text().splitlines()[0] if kind == "journal" else path.read_text()
        assert isinstance(json.loads(first).get("version"), int), f"{kind} ({path.name}) has no version"
    assert json.loads(files["plan"].read_text())["version"] == 2  # the plan's own layout version


@pytest.mark.parametrize("kind", ["plan", "progress", "replication", "boundary", "meta", "spec", "journal"])
def test_a_state_file_of_an_unknown_version_is_refused_naming_file_and_version(tmp_path, kind):
    state = MigrationState(tmp_path, "m")
    files = _filled(state)
    load = _loaders(state)
    path = files[kind]
    if kind == "journal":
        lines = path.read_text().splitlines()
        path.write_text("\n".join([json.dumps({"journal": "m3migrate-units", "version": 99}), *lines[1:]]) + "\n")
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), "version": 99}))
    with pytest.raises(StateError) as refused:
        load[kind]()
    assert str(path) in str(refused.value) and "version 99" in str(refused.value)


def test_state_files_written_before_versioning_are_still_read(tmp_path):
    """Files of an m3migrate before versions (no version key, no journal header) have version 1's layout."""
    state = MigrationState(tmp_path, "old")
    (state.dir / "progress.json").write_text(json.dumps({"plan_id": "p", "windows_total": 4, "windows_done": 2}))
    (state.dir / "replication.json").write_text(json.dumps({"watermark_ms": 7, "passes": 1}))
    (state.dir / "meta.json").write_text(json.dumps({"generation": 3}))
    (state.dir / "hybrid-boundary.json").write_text(json.dumps({"boundary_ms": 11}))
    journal = state.dir / "journal-migrate-p-g3.jsonl"
    journal.write_text('{"event":"start","unit":"b0:0"}\n{"event":"done","unit":"b0:0","result":{"samples":9}}\n')
    assert state.load_progress().windows_done == 2
    assert state.load_replication().watermark_ms == 7
    assert state.generation == 3 and state.load_boundary() == 11
    old = state.journal("migrate", "p")
    assert old.done("b0:0") == {"samples": 9}
    old.mark_done("b0:1", {"samples": 1})  # appending to an old journal adds no header in the middle
    assert UnitJournal(journal).done("b0:1") == {"samples": 1}
    assert "journal" not in journal.read_text()


def test_two_processes_creating_a_journal_may_both_write_the_header(tmp_path):
    """Both saw an empty file: the second header is accepted, no record is lost."""
    path = tmp_path / "j.jsonl"
    UnitJournal(path).mark_started("b0:0")
    header = path.read_text().splitlines()[0]
    with open(path, "a") as fh:
        fh.write(header + "\n")
    UnitJournal(path).mark_done("b0:0", {"samples": 2})
    assert UnitJournal(path).done("b0:0") == {"samples": 2}


# -- the saved spec ----------------------------------------------------------------------------------------

SECRET = "pa55-never-saved"


def test_the_saved_spec_holds_settings_but_no_secret_and_no_header_value(tmp_path):
    state = MigrationState(tmp_path, "m")
    source = SourceSettings(
        read_url="http://s/r", auth=AuthSettings(username="u", password=SECRET), headers={"X-Api-Key": SECRET}
    )
    target = TargetSettings(write_url="http://t/w", tenant="team", auth=AuthSettings(bearer_token=SECRET))
    assert state.save_spec(_spec(migration_id="m", write_mode="out_of_order"), source, target)
    text = (state.dir / "spec.json").read_text()
    assert SECRET not in text
    saved = load_saved_spec(tmp_path, "m")
    assert saved.spec.write_mode == "out_of_order" and saved.spec.end_ms == _spec().end_ms
    assert saved.source["auth"] == {"username": "u"} and saved.source["header_names"] == ["X-Api-Key"]
    assert saved.target["tenant"] == "team" and "bearer_token" not in saved.target["auth"]


def test_the_spec_is_kept_once_planned_and_replaced_on_start_over(tmp_path):
    state = MigrationState(tmp_path, "m")
    src, tgt = SourceSettings(read_url="http://s/r"), TargetSettings(write_url="http://t/w")
    state.save_spec(_spec(migration_id="m"), src, tgt)
    assert state.save_spec(_spec(migration_id="m", batch_max_series=7), src, tgt), "nothing planned yet: replaced"
    state.save_plan(Plan("m", 0, 1, 1, [_BATCH]))
    assert not state.save_spec(_spec(migration_id="m", batch_max_series=9), src, tgt)
    assert load_saved_spec(tmp_path, "m").spec.batch_max_series == 7
    assert state.save_spec(_spec(migration_id="m", batch_max_series=9), src, tgt, replace=True)
    state.start_over()
    assert load_saved_spec(tmp_path, "m").spec.batch_max_series == 9, "start over keeps the new spec"


def test_resolve_spec_by_id_checks_a_given_spec_and_names_each_difference(tmp_path):
    state = MigrationState(tmp_path, "m")
    src, tgt = SourceSettings(read_url="http://s/r"), TargetSettings(write_url="http://t/w")
    state.save_spec(_spec(migration_id="m", write_mode="out_of_order"), src, tgt)
    by_id = resolve_spec(tmp_path, "m", None, "http://other/r", "http://other/w")
    assert by_id.migration_id == "m" and by_id.write_mode == "out_of_order"
    # a spec given with only what it set: equal fields and per-run tuning pass
    same = MigrationSpec.model_validate(
        {"start": "2026-01-01T00:00Z", "end": "2026-01-02T00:00:00+00:00", "task_concurrency": 9}
    )
    assert resolve_spec(tmp_path, "m", same, "u", "u").task_concurrency == 9
    other = MigrationSpec.model_validate({"start": "2026-01-01T00:00Z", "end": "2026-01-01T12:00Z", "match": ["up"]})
    with pytest.raises(ConfigError) as refused:
        resolve_spec(tmp_path, "m", other, "u", "u")
    text = str(refused.value)
    assert "end: saved '2026-01-02T00:00:00Z', given '2026-01-01T12:00:00Z'" in text
    assert "match: saved ['{__name__=~\".+\"}'], given ['up']" in text and "start" not in text.split("fix:")[0]


def test_resolve_spec_without_a_saved_spec(tmp_path):
    with pytest.raises(ConfigError, match=r"migration 'nope' has no saved spec .*nope/spec.json does not exist"):
        resolve_spec(tmp_path, "nope", None, "u", "u")
    assert not (tmp_path / "nope").exists(), "looking creates no state directory"
    given = _spec()  # a migration older than saved specs: the given spec as it is
    assert resolve_spec(tmp_path, None, given, "http://s/r", "http://t/w").migration_id == given.resolved_id(
        "http://s/r", "http://t/w"
    )
    with pytest.raises(ConfigError, match="give the migration id"):
        resolve_spec(tmp_path, None, None, "u", "u")
    with pytest.raises(ConfigError, match="not valid"):
        resolve_spec(tmp_path, "../etc", None, "u", "u")
