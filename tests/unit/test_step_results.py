"""The typed step results: what each step counts, the figures it shows (names and order, as the CLI
prints them), and that a result is plain JSON for Prefect's result storage."""

from __future__ import annotations

import json

from cli.console import out, print_summary
from m3migrate.backfill.windows import BackfillResult
from m3migrate.report import BackfillSummary, CloseResult, MigrationSummary, PassResult
from m3migrate.transfer.front import SKIPPED_EXAMPLES, FrontTotals

TIERS = [{"from": "a", "to": "b", "namespace": "agg|1m", "storage_policy": "1m:40d", "resolution": "1m"}]


def _segment(samples: int, moved: int, new: list[str]) -> FrontTotals:
    return FrontTotals(series=2, samples=samples, units=2, samples_moved_now=moved, new_series=new)


def test_a_cached_segment_counts_in_the_totals_but_moved_nothing_now() -> None:
    totals = FrontTotals()
    totals.merge(_segment(100, 100, ["s1"]))
    totals.merge(_segment(50, 50, ["s1", "s2"]), cached=True)
    assert (totals.samples, totals.samples_moved_now, totals.units) == (150, 100, 4)
    assert totals.new_series == ["s1", "s2"]  # a new series is in every window's result: counted once


def test_a_segment_result_cached_as_a_dict_by_an_earlier_version_still_reads() -> None:
    legacy = {**_segment(7, 7, ["x"]).as_dict(), "gone_field": 1}
    assert FrontTotals.of(legacy) == _segment(7, 7, ["x"])
    totals = FrontTotals()
    totals.merge(legacy)
    assert totals.samples == 7


def test_the_front_summary_shows_counts_of_named_series_and_at_most_some_examples() -> None:
    totals = FrontTotals(samples=1000, samples_moved_now=500, skipped_series=[f"s{i}: bad" for i in range(30)])
    summary = totals.summary(windows=4, batches=2, tasks=3, tasks_cached=1, seconds=2.00049)
    assert list(summary)[:9] == [
        "series",
        "samples",
        "requests",
        "bytes_read",
        "bytes_written",
        "read_retries",
        "write_retries",
        "splits",
        "reconciled_series",
    ]
    assert summary.skipped_series == 30 and len(summary.skipped_series_examples) == SKIPPED_EXAMPLES
    assert (summary.seconds, summary.samples_per_second) == (2.0, 250)


def test_the_backfill_summary_counts_each_window_by_its_outcome() -> None:
    summary = BackfillSummary(4, bucket="file:///b", external_labels={"replica": "m"})
    outcomes = [
        summary.add(BackfillResult(0, 1, ulid="U1", samples=10, bytes=100, read_seconds=0.12345), cached=False),
        summary.add(BackfillResult(1, 2, skipped=True, removed_partial=["P"]), cached=False),
        summary.add(BackfillResult(2, 3, empty=True), cached=False),
        summary.add(BackfillResult(3, 4, ulid="U0", samples=7, bytes=70), cached=True),
    ]
    assert outcomes == ["uploaded", "skipped", "empty", "cached"]
    summary.finish(2.0)
    figures = dict(summary)
    assert figures["blocks_uploaded"] == figures["windows_skipped"] == figures["windows_empty"] == 1
    assert figures["tasks_cached"] == 1 and figures["removed_partial_uploads"] == 1
    assert (figures["samples"], figures["samples_moved_now"], figures["bytes_uploaded"]) == (17, 10, 170)
    assert (figures["read_seconds"], figures["samples_per_second"]) == (0.123, 5)


def _transfer(samples: int, moved: int, seconds: float):
    return FrontTotals(series=1, samples=samples, samples_moved_now=moved).summary(
        windows=1, batches=1, tasks=1, tasks_cached=0, seconds=seconds
    )


def test_a_remote_write_migration_shows_the_plans_series_and_its_tiers() -> None:
    summary = MigrationSummary("m", "p1", 9, transfer=_transfer(100, 60, 1.5), tiers=TIERS)
    figures = list(summary.items())
    assert figures[:4] == [("migration_id", "m"), ("plan_id", "p1"), ("series", 9), ("samples", 100)]
    assert figures[-1] == ("tiers", TIERS) and (summary.samples, summary.samples_moved_now) == (100, 60)
    text = summary.to_markdown()
    assert "| series | 9 |" in text and "| a | b | agg\\|1m | 1m:40d |" in text
    assert "tiers" not in text.split("## Tiers")[0]  # the tiers are their own table, not a figure


def test_a_hybrid_migration_adds_both_parts() -> None:
    blocks = BackfillSummary(2)
    blocks.add(BackfillResult(0, 1, ulid="U", samples=40), cached=False)
    blocks.finish(3.0)
    summary = MigrationSummary(
        "m",
        "p2",
        9,
        transfer=_transfer(100, 60, 1.5),
        blocks=blocks,
        write_mode="hybrid",
        block_hours=2,
        boundary="2025-01-01T00:00:00Z",
        tail_series=5,
    )
    figures = dict(summary)
    assert list(figures)[2:5] == ["write_mode", "block_hours", "boundary"]
    assert (figures["blocks_samples"], figures["tail_samples"], figures["samples"]) == (40, 100, 140)
    assert (figures["samples_moved_now"], figures["blocks_seconds"], figures["seconds"]) == (100, 3.0, 4.5)
    assert figures["tail_series"] == 5 and figures["series"] == 9 and "requests" not in figures
    assert json.loads(json.dumps(summary.to_dict())) == figures


def test_each_replication_outcome_has_its_own_figures() -> None:
    skipped = PassResult("m", "skipped-locked", reason="locked by pid 7")
    assert dict(skipped) == {"migration_id": "m", "status": "skipped-locked", "reason": "locked by pid 7"}
    up = PassResult("m", "up-to-date", lag_seconds=3.0, source_changes=[], late_samples=0, late_samples_recopied=0)
    assert list(up) == [
        "migration_id",
        "status",
        "lag_seconds",
        "source_changes",
        "late_samples",
        "late_samples_recopied",
    ]
    assert up.get("watermark", "-") == "-"  # the close form shows '-' for a pass with no new watermark


def test_close_result_undecided_and_decided() -> None:
    replication = PassResult("m", "replicated", watermark="2025-01-01T00:00:00Z", samples=3)
    result = CloseResult("m", "run-1", replication, {"ok": True}, verified=True)
    assert result["decision"] == "undecided" and "approver" not in result and "schedule" not in result
    result.decision, result.approver, result.decided_at, result.schedule = "keep_replicating", "bob", "t", {"found": 1}
    data = json.loads(json.dumps(result.to_dict()))
    assert data["replication"] == {
        "migration_id": "m",
        "status": "replicated",
        "watermark": "2025-01-01T00:00:00Z",
        "samples": 3,
    }
    assert data["approver"] == "bob" and data["schedule"] == {"found": 1} and data["refusals"] == 0


def test_the_cli_prints_a_result_as_it_printed_its_dict() -> None:
    summary = MigrationSummary("m", "p1", 1234, transfer=_transfer(1_000_000, 10, 1.0), tiers=TIERS)
    with out.capture() as typed:
        print_summary(summary)
    with out.capture() as plain:
        print_summary(summary.to_dict())
    assert typed.get() == plain.get()
    assert "1,000,000" in typed.get() and "a .. b  agg|1m (1m:40d)" in typed.get()
