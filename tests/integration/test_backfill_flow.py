"""The blocks and hybrid write modes of the migrate flow against real tools: a Prometheus 2.42 started on
a copy of the bucket serves the history bit for bit, a rerun uploads nothing, hybrid splits the range at
a block edge with no gap and no overlap, validation checks the bucket, and the CLI takes --bucket-dir."""

from __future__ import annotations

import gc
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cli_helpers import OFFLINE_MIGRATE, run_cli
from progress_helpers import assert_advances, read_progress, recording

from blocks import M3Source, ThanosBucket, ThanosTarget
from cli.console import progress_bar
from m3migrate import collector
from m3migrate.backfill.windows import block_windows
from m3migrate.checks.validate import ValidationInput, check_bucket, check_target_write
from m3migrate.clients.bucket import BucketSettings
from m3migrate.errors import ConfigError
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.replication import replication_start_ms
from sandbox.compare import Labels, Samples, diff, diff_target, read_all, with_label
from sandbox.history import SourceSandbox
from sandbox.servers import start_prometheus
from tasks.transfer import PROGRESS_LISTENERS

HOUR_MS = 3_600_000


def _blocks(source: SourceSandbox, target_url: str) -> tuple[M3Source, ThanosTarget]:
    """The source through its M3 Coordinator gateway, the target directly."""
    return (
        M3Source(read_url=source.read_url, query_url=source.query_url),
        ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url),
    )


def _block_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and len(p.name) == 26)


def _serve_blocks(bucket_dir: Path, tmp_path: Path, name: str):
    """A Prometheus 2.42 on a copy of the bucket directory (what a store gateway would serve)."""
    data = tmp_path / f"{name}-data"
    shutil.copytree(bucket_dir, data, ignore=shutil.ignore_patterns("m3migrate"))
    return start_prometheus(tmp_path, name=name, data_dir=data)


def _block_task_runs(after: datetime) -> list[str]:
    """The names of the backfill's window task runs started since ``after`` (this test's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName, TaskRunFilterStartTime

    mine = TaskRunFilter(name=TaskRunFilterName(like_="block "), start_time=TaskRunFilterStartTime(after_=after))
    with get_client(sync_client=True) as client:
        return [run.name for run in client.read_task_runs(task_run_filter=mine)]


def _split(data: dict[Labels, Samples], boundary: int) -> tuple[dict, dict]:
    before = {k: [s for s in v if s[0] < boundary] for k, v in data.items()}
    after = {k: [s for s in v if s[0] >= boundary] for k, v in data.items()}
    return {k: v for k, v in before.items() if v}, {k: v for k, v in after.items() if v}


def _live_sample(target_url: str) -> None:
    """Make the target one that already receives live data: a sample at now."""
    from m3migrate.clients.remote_write import RemoteWriteClient
    from m3migrate.prompb import TimeSeries
    from m3migrate.wire.codec import encode_labels, frame_series, single_request

    live = TimeSeries()
    live.samples.add(timestamp=int(time.time() * 1000), value=1.0)
    with RemoteWriteClient(TargetSettings(write_url=f"{target_url}/api/v1/write")) as writer:
        writer.write(
            single_request(frame_series(encode_labels([("__name__", "live_metric")]), live.SerializeToString()), 1)
        )


# -- no servers --------------------------------------------------------------------------------------


def test_bucket_block_keeps_credentials_secret():
    block = ThanosBucket(url="s3://thanos/blocks", access_key_id="AKIDEXAMPLE", secret_access_key="s3cr3t-key")
    for text in (repr(block), str(block), repr(block.settings()), str(block.model_dump())):
        assert "s3cr3t-key" not in text and "AKIDEXAMPLE" not in text
    assert block.settings().store_config()["secret_access_key"] == "s3cr3t-key"


def test_cli_blocks_mode_without_a_bucket_exits_2():
    done = run_cli(*OFFLINE_MIGRATE, "--write-mode", "blocks")
    assert done.returncode == 2 and "--bucket-dir" in done.stderr


# -- real servers ------------------------------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.prefect
@pytest.mark.parametrize("migration_id", ["blocks-flow", "blocks-grouped"])
def test_blocks_mode_backfills_exactly_and_a_rerun_uploads_nothing(
    prefect_api,
    source_history,
    prometheus_target,
    tmp_path,
    default_gc_thresholds,
    plan_reads,
    monkeypatch,
    migration_id,
):
    """One task per window, and ("blocks-grouped") several windows per task, as for a long history: the
    same exact blocks, progress per window, a rerun that finds every window done."""
    import flows.backfill
    from flows.migrate import migrate

    stats = source_history.stats
    start, end = stats.start_ms + 30 * 60_000, stats.start_ms + 12 * HOUR_MS
    windows = block_windows(start, end)
    if migration_id == "blocks-grouped":
        monkeypatch.setattr(flows.backfill, "MAX_WINDOW_TASKS", 2)
        assert len(flows.backfill.window_groups(windows)) == 2 < len(windows)
    target = prometheus_target()
    source_block, target_block = _blocks(source_history, target.url)
    bucket_dir = tmp_path / "bucket"
    bucket = ThanosBucket(url=str(bucket_dir))
    spec = MigrationSpec(
        start=iso_ms(start), end=iso_ms(end), write_mode="blocks", migration_id=migration_id, task_concurrency=3
    )
    state_dir = tmp_path / "state"
    key = f"{migration_id}-migrate-progress"
    began = datetime.now(UTC) - timedelta(seconds=1)
    bar, bar_listener = progress_bar()  # the CLI's bar, fed by the same events
    try:
        with recording({"block windows": key}) as progress:
            summary = migrate(source_block, target_block, spec, state_dir=str(state_dir), bucket=bucket)
    finally:
        PROGRESS_LISTENERS.remove(bar_listener)
    assert gc.get_threshold() == collector.BULK_THRESHOLDS, "the blocks flow collects as a data-holding process"
    assert plan_reads == [], "the backfill and its window tasks use the plan the run made, not a copy read back"
    # the task runs as the UI lists them: one per window, or one per run of windows
    groups = [[w] for w in windows] if migration_id == "blocks-flow" else flows.backfill.window_groups(windows)
    assert sorted(_block_task_runs(began)) == sorted(
        f"block {g[0].label}" if len(g) == 1 else f"block {g[0].label} .. {g[-1].label} ({len(g)})" for g in groups
    )
    assert summary["blocks_uploaded"] == len(windows) == len(_block_dirs(bucket_dir))
    # the migration's progress artifact (the key remote write uses) advanced window by window to 100 %,
    # naming windows done / total, samples/s, blocks uploaded and the ETA
    n = len(windows)
    assert_advances(progress.readings, n)
    assert [r.event["blocks_uploaded"] for r in progress.readings] == list(range(1, n + 1))
    assert f"{n} blocks uploaded" in progress.readings[-1].description
    assert f"{summary['samples']:,} samples" in progress.readings[-1].description
    assert read_progress(key)[0] == 100.0
    (row,) = bar.tasks
    assert row.description == "block windows" and row.completed == row.total == n
    assert row.fields["detail"] == f"{n} blocks uploaded" and row.fields["samples"] == summary["samples"]
    expected = with_label(read_all(source_history.server.url, start, end), "_source", "m3db")
    assert summary["samples"] == sum(len(s) for s in expected.values())
    with _serve_blocks(bucket_dir, tmp_path, "blocks") as prom:
        assert diff_target(expected, prom.url, start, end) == []
    assert read_all(target.url, start, end) == {}, "blocks mode must not write history through the target"
    # replication continues by remote write from the end, as after a remote-write migration
    assert replication_start_ms(MigrationState(state_dir, migration_id)) == end + 1

    before = _block_dirs(bucket_dir)
    again = migrate(source_block, target_block, spec, state_dir=str(state_dir), bucket=bucket, skip_validation=True)
    assert again["blocks_uploaded"] == 0 and again["samples_moved_now"] == 0
    assert again["tasks_cached"] == len(windows)
    # without Prefect's result cache the bucket alone is the resume state
    shutil.rmtree(state_dir / migration_id / "results")
    third = migrate(source_block, target_block, spec, state_dir=str(state_dir), bucket=bucket, skip_validation=True)
    assert third["blocks_uploaded"] == 0 and third["windows_skipped"] == len(windows)
    assert _block_dirs(bucket_dir) == before


def test_a_long_history_runs_consecutive_windows_per_task():
    from flows.backfill import MAX_WINDOW_TASKS, window_groups

    days = block_windows(0, 100 * 24 * HOUR_MS - 1)  # 100 days of 2 h blocks
    groups = window_groups(days)
    assert len(days) == 1200 and len(groups) == 240 and {len(g) for g in groups} == {5}
    assert [w for g in groups for w in g] == days, "every window once, in order"
    few = block_windows(0, MAX_WINDOW_TASKS * 2 * HOUR_MS - 1)
    assert window_groups(few) == [[w] for w in few], "up to MAX_WINDOW_TASKS windows: one task each"
    odd = window_groups(days[:1001])
    assert len(odd) <= MAX_WINDOW_TASKS and [w for g in odd for w in g] == days[:1001]


@pytest.mark.servers
@pytest.mark.prefect
def test_hybrid_splits_at_a_block_edge_with_no_gap_and_no_overlap(
    prefect_api, source_history, prometheus_target, tmp_path, monkeypatch
):
    """A target that already receives live data and has a 1-day out-of-order window: history older than
    its accept window (12 h here) goes as blocks, the recent tail by remote write."""
    from flows.migrate import migrate

    stats = source_history.stats
    start, end = stats.end_ms - 24 * HOUR_MS, stats.end_ms
    target = prometheus_target(ooo_window="1d")
    _live_sample(target.url)
    source_block, target_block = _blocks(source_history, target.url)
    bucket_dir = tmp_path / "bucket"
    spec = MigrationSpec(
        start=iso_ms(start),
        end=iso_ms(end),
        write_mode="hybrid",
        accept_window_minutes=720,
        migration_id="hybrid-flow",
        task_concurrency=3,
    )
    state_dir = tmp_path / "state"
    keys = {"time front": "hybrid-flow-migrate-progress", "block windows": "hybrid-flow-backfill-progress"}
    # the tail fits the accept window, so its front is one segment: report from inside it at every window
    monkeypatch.setattr("tasks.transfer.PROGRESS_EVERY_SECONDS", 0.0)
    with recording(keys) as progress:
        summary = migrate(
            source_block, target_block, spec, state_dir=str(state_dir), bucket=ThanosBucket(url=str(bucket_dir))
        )
    boundary = MigrationState(state_dir, "hybrid-flow").load_boundary()
    assert boundary is not None and start < boundary <= end and boundary % (2 * HOUR_MS) == 0
    # each part's progress artifact advanced to 100 % with the figures remote write shows: the tail first
    tail_plan = MigrationState(state_dir, "hybrid-flow").load_plan("migrate")
    assert tail_plan is not None and tail_plan.start_ms == boundary
    phases = [r.event["phase"] for r in progress.readings]
    assert phases == sorted(phases, key=lambda p: p != "time front"), "the tail is written before the blocks"
    assert_advances(progress.phase("time front"), len(tail_plan.windows))
    blocks = progress.phase("block windows")
    n = len(block_windows(start, boundary - 1))
    assert_advances(blocks, n)
    assert f"{summary['blocks_uploaded']} blocks uploaded" in blocks[-1].description and summary["blocks_uploaded"] == n
    assert read_progress("hybrid-flow-migrate-progress")[0] == read_progress("hybrid-flow-backfill-progress")[0] == 100
    assert summary["boundary"] == iso_ms(boundary)
    expected = with_label(read_all(source_history.server.url, start, end), "_source", "m3db")
    want_blocks, want_tail = _split(expected, boundary)
    assert want_blocks and want_tail
    with _serve_blocks(bucket_dir, tmp_path, "hybrid-blocks") as prom:
        got_blocks = read_all(prom.url, start, end)
    got_tail = read_all(target.url, start, end)
    assert diff(want_blocks, got_blocks) == [] and diff(want_tail, got_tail) == []
    assert (
        max(t for s in got_blocks.values() for t, _ in s) < boundary <= min(t for s in got_tail.values() for t, _ in s)
    )
    assert summary["samples"] == sum(len(s) for s in expected.values())
    assert replication_start_ms(MigrationState(state_dir, "hybrid-flow")) == end + 1


def _validation_input(source_url: str, target_url: str, spec: MigrationSpec, bucket: BucketSettings | None):
    return ValidationInput(
        SourceSettings(read_url=f"{source_url}/api/v1/read", query_url=source_url),
        TargetSettings(write_url=f"{target_url}/api/v1/write", query_url=target_url),
        spec,
        bucket=bucket,
    )


@pytest.mark.servers
def test_validation_statuses_in_blocks_mode(source_history, prometheus_target, tmp_path):
    """A target that holds live data refuses history: in_order fails recommending blocks; blocks mode only
    warns (history goes to the bucket; replication from an old end would be refused) and checks the bucket."""
    stats = source_history.stats
    target = prometheus_target()
    _live_sample(target.url)
    url = source_history.server.url
    rng = {"start": iso_ms(stats.start_ms), "end": iso_ms(stats.start_ms + 12 * HOUR_MS)}
    in_order = check_target_write(_validation_input(url, target.url, MigrationSpec(**rng), None))
    assert in_order.status == "fail" and "--write-mode blocks" in in_order.fix
    blocks_spec = MigrationSpec(**rng, write_mode="blocks")
    inp = _validation_input(url, target.url, blocks_spec, BucketSettings(url=str(tmp_path / "bucket")))
    probe = check_target_write(inp)  # nothing written by remote write; replication from an old end would be refused
    assert probe.status == "warn" and "goes as blocks" in probe.observed and "replicate" in probe.observed
    assert "probe_timestamp_ms" not in probe.details
    assert check_bucket(inp).status == "pass"
    missing = check_bucket(_validation_input(url, target.url, blocks_spec, None))
    assert missing.status == "fail" and "--bucket-dir" in missing.fix
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        ro = check_bucket(_validation_input(url, target.url, blocks_spec, BucketSettings(url=str(tmp_path / "ro"))))
    finally:
        (tmp_path / "ro").chmod(0o700)
    if os.geteuid() != 0:  # root writes anyway
        assert ro.status == "fail" and "writable" in ro.fix


@pytest.mark.servers
@pytest.mark.prefect
def test_validate_flow_reports_the_bucket_check(prefect_api, source_history, prometheus_target, tmp_path):
    from flows.validate import validate

    stats = source_history.stats
    target = prometheus_target()
    source_block, target_block = _blocks(source_history, target.url)
    spec = MigrationSpec(start=iso_ms(stats.start_ms), end=iso_ms(stats.start_ms + 12 * HOUR_MS), write_mode="blocks")
    report = validate(source_block, target_block, spec, bucket=ThanosBucket(url=str(tmp_path / "bucket")))
    bucket_check = next(c for c in report["checks"] if c["name"] == "bucket")
    assert bucket_check["status"] == "pass" and "writable" in bucket_check["observed"]
    plain = validate(source_block, target_block, spec.model_copy(update={"write_mode": "in_order"}))
    assert "bucket" not in {c["name"] for c in plain["checks"]}


@pytest.mark.servers
@pytest.mark.prefect
def test_cli_migrate_blocks_into_a_bucket_dir(prefect_api, source_history, prometheus_target, tmp_path):
    stats = source_history.stats
    start, end = stats.start_ms, stats.start_ms + 6 * HOUR_MS
    target = prometheus_target()
    url = source_history.server.url
    bucket_dir = tmp_path / "bucket"
    args = [
        "migrate",
        "--source-read-url",
        f"{url}/api/v1/read",
        "--source-query-url",
        url,
        "--target-write-url",
        f"{target.url}/api/v1/write",
        "--start",
        iso_ms(start),
        "--end",
        iso_ms(end),
        "--write-mode",
        "blocks",
        "--bucket-dir",
        str(bucket_dir),
        "--backfill-label",
        "backfill=m3db",
        "--state-dir",
        str(tmp_path / "state"),
        "--skip-validation",
    ]
    done = run_cli(*args, env={"PREFECT_API_URL": prefect_api})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "blocks_uploaded" in done.stdout
    dirs = _block_dirs(bucket_dir)
    assert len(dirs) == len(block_windows(start, end))
    from m3migrate.tsdb import BlockMeta

    assert {BlockMeta.load(bucket_dir / d / "meta.json").labels["backfill"] for d in dirs} == {"m3db"}


def test_blocks_plan_range_changes_are_refused(tmp_path):
    """A hybrid migration's saved boundary outside a changed range is a ConfigError, not a silent resplit."""
    from m3migrate.plan.blockmode import fix_boundary

    spec = MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-03T00:00:00Z", write_mode="hybrid")
    state = MigrationState(tmp_path, "m")
    state.save_boundary(spec.end_ms + 10 * HOUR_MS)
    with pytest.raises(ConfigError, match="outside the range"):
        fix_boundary(spec, state)
    assert fix_boundary(spec, state, start_over=True) == spec.end_ms + 1  # 2025 is long past: all blocks
