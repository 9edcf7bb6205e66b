"""The migration spec (m3migrate/settings/spec.py): times, window sizes per write mode, the migration id, the check
that a resumed step reads what was planned, and the relabeling the spec builds. No servers.

Expectations come from the field descriptions and docstrings of MigrationSpec (the contract the Prefect
form and the README show) and from Thanos/Prometheus: a receiver without an out-of-order window accepts
samples up to half its 2 h block range behind its newest one, and Thanos compacts 2 h, 8 h and 48 h blocks.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from m3migrate.errors import ConfigError
from m3migrate.relabel import RelabelRule
from m3migrate.settings.spec import (
    HYBRID_MARGIN_MS,
    MigrationSpec,
    check_migration_id,
    check_same_spec,
    format_validation_error,
    load_config_file,
)
from m3migrate.timefmt import iso_ms

HOUR_MS = 3_600_000
DAY = {"start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"}
SRC, TGT = "http://m3:7201/api/v1/prom/remote/read", "http://receive:19291/api/v1/receive"


def _fields(exc: ValidationError) -> set[str]:
    return {".".join(str(p) for p in err["loc"]) for err in exc.errors()}


# -- times ---------------------------------------------------------------------------------------------------


def test_times_are_rfc3339_and_utc_when_no_offset_is_given() -> None:
    naive = MigrationSpec(start="2025-01-01T00:00:00", end="2025-01-01T01:00:00")
    offset = MigrationSpec(start="2025-01-01T02:00:00+02:00", end="2025-01-01T01:00:00Z")
    assert naive.start == offset.start == datetime(2025, 1, 1, tzinfo=UTC)
    assert naive.start_ms == offset.start_ms == 1_735_689_600_000
    assert naive.end_ms == 1_735_689_600_000 + HOUR_MS  # end is an instant, kept as given (inclusive)
    assert MigrationSpec(start="2025-01-01T00:00:00.250Z", end=DAY["end"]).start_ms % 1000 == 250


@pytest.mark.parametrize("field", ["start", "end"])
def test_a_time_that_does_not_parse_is_named_by_its_field(field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MigrationSpec(**{**DAY, field: "yesterday-ish"})
    assert _fields(caught.value) == {field}
    text = format_validation_error(caught.value, "migration settings")
    assert text.startswith("invalid migration settings:") and f"  {field}: " in text
    assert "yesterday-ish" not in text, "input values are never echoed (they may be secrets)"


def test_missing_times_are_named() -> None:
    with pytest.raises(ValidationError) as caught:
        MigrationSpec()
    assert _fields(caught.value) == {"start", "end"}


def test_end_must_be_after_start_and_not_in_the_future() -> None:
    with pytest.raises(ValidationError, match=r"end 2025-01-01T00:00:00\+00:00 is not after start"):
        MigrationSpec(start=DAY["start"], end=DAY["start"])
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    with pytest.raises(ValidationError, match=r"is in the future.*m3migrate replicate"):
        MigrationSpec(start=DAY["start"], end=future)
    near_now = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()  # within the minute of clock skew allowed
    assert MigrationSpec(start=DAY["start"], end=near_now).end > datetime.now(UTC)


def test_selectors_are_checked_and_named() -> None:
    with pytest.raises(ValidationError, match="give at least one selector") as caught:
        MigrationSpec(**DAY, match=[])
    assert _fields(caught.value) == {"match"}
    with pytest.raises(ValidationError) as caught:
        MigrationSpec(**DAY, match=["up", "rate(up[5m])"])
    assert _fields(caught.value) == {"match"}


def test_unknown_fields_are_refused_by_name() -> None:
    """A typo in a config file must not silently fall back to a default."""
    with pytest.raises(ValidationError) as caught:
        MigrationSpec(**DAY, windw_minutes=10)
    assert _fields(caught.value) == {"windw_minutes"}


# -- windows per write mode ---------------------------------------------------------------------------------


def test_spec_defaults_and_label_rules():
    spec = MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z", write_mode="blocks")
    assert spec.block_ms == 2 * HOUR_MS and spec.uses_blocks
    assert spec.backfill_external_labels("m-1") == {"m3migrate_backfill": "m-1"}
    day = {"start": "2025-01-01T00:00:00Z", "end": "2025-01-02T00:00:00Z"}
    assert MigrationSpec(**day).window_ms == 60 * 60_000, "in order: one window is the whole accept window"
    assert MigrationSpec(**day, accept_window_minutes=20).window_ms == 20 * 60_000
    assert MigrationSpec(**day, accept_window_minutes=720).window_ms == 60 * 60_000, "capped: memory per unit"
    assert MigrationSpec(**day, write_mode="out_of_order").window_ms == 360 * 60_000
    with pytest.raises(ValueError, match="block_hours"):
        MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z", block_hours=3)
    with pytest.raises(ValueError, match="label every migrated series gets"):
        MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z", backfill_labels={"_source": "x"})
    with pytest.raises(ValueError, match="not a valid Prometheus label name"):
        MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z", backfill_labels={"a-b": "x"})


@pytest.mark.parametrize("mode", ["in_order", "hybrid"])
def test_in_order_windows_never_exceed_the_accept_window(mode: str) -> None:
    """A window wider than what the target accepts would be refused as out of bounds halfway through."""
    with pytest.raises(ValidationError, match=f"wider than what the target accepts .60 min. in {mode} mode"):
        MigrationSpec(**DAY, write_mode=mode, window_minutes=61)
    assert MigrationSpec(**DAY, write_mode=mode, window_minutes=60).window_ms == 60 * 60_000
    assert MigrationSpec(**DAY, write_mode=mode, accept_window_minutes=120, window_minutes=120).window_ms == 2 * HOUR_MS


@pytest.mark.parametrize("mode", ["out_of_order", "blocks"])
def test_wide_windows_are_allowed_where_the_accept_window_does_not_bind(mode: str) -> None:
    assert MigrationSpec(**DAY, write_mode=mode, window_minutes=720).window_ms == 12 * HOUR_MS


def test_windows_in_flight_stay_inside_the_accept_window() -> None:
    assert MigrationSpec(**DAY).windows_in_flight == 1, "the default window is the whole accept window"
    assert MigrationSpec(**DAY, window_minutes=15).windows_in_flight == 4
    assert MigrationSpec(**DAY, window_minutes=25).windows_in_flight == 2, "never more than fit in 60 min"
    assert MigrationSpec(**DAY, write_mode="hybrid", window_minutes=20).windows_in_flight == 3
    assert MigrationSpec(**DAY, write_mode="out_of_order").windows_in_flight > 1, "may run further ahead"


def test_blocks_are_thanos_compaction_ranges() -> None:
    for hours in (2, 8, 48):
        assert MigrationSpec(**DAY, write_mode="blocks", block_hours=hours).block_ms == hours * HOUR_MS
    assert not MigrationSpec(**DAY, write_mode="out_of_order").uses_blocks
    assert MigrationSpec(**DAY, write_mode="hybrid").uses_blocks


def test_hybrid_boundary_is_a_block_edge_inside_the_accept_window_of_now():
    start, end = 1_700_000_000_000, 1_700_000_000_000 + 3 * 86_400_000
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(end), write_mode="hybrid", accept_window_minutes=720)
    now = end + 5 * 60_000
    b = spec.hybrid_boundary_ms(now)
    assert b % (2 * HOUR_MS) == 0
    assert now - 720 * 60_000 + HYBRID_MARGIN_MS <= b < now - 720 * 60_000 + HYBRID_MARGIN_MS + 2 * HOUR_MS
    assert spec.hybrid_boundary_ms(end + 30 * 86_400_000) == end + 1  # old history: everything as blocks
    assert spec.hybrid_boundary_ms(start) == start  # nothing older than the window: everything by remote write
    eight = spec.model_copy(update={"block_hours": 8})
    assert eight.hybrid_boundary_ms(now) % (8 * HOUR_MS) == 0


# -- backfill labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({}, "at least one backfill label"),
        ({"__tenant": "x"}, "not a valid Prometheus label name"),
        ({"ok\n": "x"}, "not a valid Prometheus label name"),
        ({"backfill": ""}, "has an empty value"),
    ],
)
def test_backfill_labels_must_be_valid_external_labels(labels: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        MigrationSpec(**DAY, write_mode="blocks", backfill_labels=labels)
    assert _fields(caught.value) == {"backfill_labels"}


def test_the_source_label_may_be_a_backfill_label_once_disabled() -> None:
    spec = MigrationSpec(**DAY, write_mode="blocks", source_label_value="", backfill_labels={"_source": "m3"})
    assert spec.backfill_external_labels("any") == {"_source": "m3"}


# -- migration id -------------------------------------------------------------------------------------------


def test_a_given_migration_id_is_the_id() -> None:
    assert MigrationSpec(**DAY, migration_id="prod-2025").resolved_id(SRC, TGT) == "prod-2025"


def test_the_derived_id_is_stable_and_changes_with_what_identifies_the_migration() -> None:
    base = MigrationSpec(**DAY)
    derived = base.resolved_id(SRC, TGT)
    assert derived == MigrationSpec(**DAY).resolved_id(SRC, TGT), "the same migration finds its state again"
    assert check_migration_id(derived) == derived, "it names a directory like a given id"
    others = {
        base.resolved_id(SRC + "x", TGT),
        base.resolved_id(SRC, TGT + "x"),
        MigrationSpec(start="2025-01-01T00:00:01Z", end=DAY["end"]).resolved_id(SRC, TGT),
        MigrationSpec(start=DAY["start"], end="2025-01-01T23:00:00Z").resolved_id(SRC, TGT),
        MigrationSpec(**DAY, match=["up"]).resolved_id(SRC, TGT),
    }
    assert derived not in others and len(others) == 5
    tuned = MigrationSpec(**DAY, task_concurrency=16, batch_max_series=10, window_minutes=30)
    assert tuned.resolved_id(SRC, TGT) == derived, "how fast it runs is not what it moves"


@pytest.mark.parametrize("bad", ["../etc", "Prod", "-lead", "a" * 64, "a.b", "a/b", "", "a\n"])
def test_an_invalid_migration_id_is_refused_both_as_a_field_and_as_a_directory_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not valid"):
        check_migration_id(bad)
    with pytest.raises(ValidationError) as caught:
        MigrationSpec(**DAY, migration_id=bad)
    assert _fields(caught.value) == {"migration_id"}
    assert check_migration_id("a" * 63) == "a" * 63


# -- a step resumed from the saved spec ------------------------------------------------------------------


def test_check_same_spec_names_every_difference_with_both_values() -> None:
    saved = MigrationSpec(**DAY, migration_id="m", write_mode="out_of_order", window_minutes=120)
    with pytest.raises(ConfigError) as caught:
        check_same_spec(saved, {"write_mode": "in_order", "window_minutes": 60, "batch_max_series": 2000}, "the saved")
    text = str(caught.value)
    assert text.startswith("the options differ from the saved: ")
    assert "write_mode: saved 'out_of_order', given 'in_order'" in text
    assert "window_minutes: saved 120, given 60" in text
    assert "batch_max_series" not in text.split("(fix:")[0], "an equal field is no difference"
    assert "--migration-id" in text and "--start-over" in text


def test_check_same_spec_applies_run_tuning_and_ignores_the_id() -> None:
    saved = MigrationSpec(**DAY, migration_id="m", match=["up"])
    given = {"migration_id": "other", "task_concurrency": 32, "write_concurrency": 2, "task_runner": "dask"}
    merged = check_same_spec(saved, {**given, "dask_address": "tcp://d:8786"}, "the saved spec")
    assert (merged.task_concurrency, merged.write_concurrency, merged.task_runner) == (32, 2, "dask")
    assert merged.match == ["up"] and merged.start == saved.start, "what is not given stays as saved"


def test_check_same_spec_refuses_an_invalid_value_as_a_validation_error() -> None:
    with pytest.raises(ValidationError) as caught:
        check_same_spec(MigrationSpec(**DAY), {"task_concurrency": 0}, "the saved spec")
    assert _fields(caught.value) == {"task_concurrency"}


# -- the relabeling the spec builds -------------------------------------------------------------------------


def test_the_relabeler_adds_the_source_label_after_the_rules() -> None:
    node = (("__name__", "node_load1"), ("job", "node"))
    assert MigrationSpec(**DAY).relabeler()(node) == (("__name__", "node_load1"), ("_source", "m3db"), ("job", "node"))
    custom = MigrationSpec(**DAY, source_label_name="origin", source_label_value="m3-eu")
    assert dict(custom.relabeler()(node) or ()) == {"__name__": "node_load1", "job": "node", "origin": "m3-eu"}
    assert MigrationSpec(**DAY, source_label_value="").relabeler()(node) == node, "empty value: no label"
    drop_job = RelabelRule(regex="job", action="labeldrop")
    assert MigrationSpec(**DAY, relabel_rules=[drop_job]).relabeler()(node) == (
        ("__name__", "node_load1"),
        ("_source", "m3db"),
    )


def test_merge_prometheus_prefix_adds_the_rename_rule() -> None:
    m3_name = (("__name__", "prometheus_http_requests_total"), ("code", "200"))
    plain = MigrationSpec(**DAY, source_label_value="").relabeler()
    merging = MigrationSpec(**DAY, source_label_value="", merge_prometheus_prefix=True).relabeler()
    assert plain(m3_name) == m3_name
    assert merging(m3_name) == (("__name__", "http_requests_total"), ("code", "200"))


def test_an_invalid_source_label_name_is_refused_when_the_spec_is_built() -> None:
    with pytest.raises(ValidationError, match="needs a valid name"):
        MigrationSpec(**DAY, source_label_name="1source")


# -- config files -----------------------------------------------------------------------------------------


def test_config_files_load_as_yaml_or_toml(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("migration:\n  start: 2025-01-01T00:00:00Z\n  match: ['up']\n")
    (tmp_path / "m.toml").write_text('[migration]\nstart = "2025-01-01T00:00:00Z"\nmatch = ["up"]\n')
    assert load_config_file(tmp_path / "m.yaml")["migration"]["match"] == ["up"]
    assert load_config_file(tmp_path / "m.toml") == {"migration": {"start": "2025-01-01T00:00:00Z", "match": ["up"]}}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("m.yaml", "- a\n- b\n", "must hold a mapping at the top level"),
        ("m.yaml", "a: [unclosed\n", "does not parse"),
        ("m.toml", "a = \n", "does not parse"),
    ],
)
def test_a_bad_config_file_is_a_config_error_naming_it(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config_file(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")
