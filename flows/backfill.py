"""The blocks and hybrid write modes of the migrate flow: history as TSDB blocks in the Thanos bucket.

``blocks``: one Prefect task per epoch-aligned block window over all the plan's batches (read, encode,
upload; a few consecutive windows per task past MAX_WINDOW_TASKS), at most ``task_concurrency`` tasks at
once (memory: one window per worker). ``hybrid``: the
remote-write tail [boundary, end] first, by the ordinary transfer front (it must land while the target's
accept window still covers it), then the blocks for [start, boundary - 1]. Replication continues by
remote write from the end either way. The bucket's meta.json files are the resume state: a rerun skips
every window that has its block, cleans crashed uploads and writes only what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import M3Source, ThanosBucket, ThanosTarget
from flows.transfer import dask_task_runner, run_transfer
from m3migrate import collector
from m3migrate.backfill.windows import BackfillResult, BlockWindow, block_windows
from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Plan
from m3migrate.plan.blockmode import backfill_stage, fix_boundary, mark_migrated, prepare_backfill, prepare_tail
from m3migrate.plan.tiers import tier_table
from m3migrate.progress import PHASES, Progress
from m3migrate.report import BackfillSummary, MigrationSummary, TransferSummary, figures_markdown
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms
from tasks.backfill import BackfillContext, backfill_block_windows, clear_caches, get_bucket
from tasks.context import unit_fields
from tasks.transfer import notify, remember_plan, results_storage, stage_plan

BLOCKS_PHASE = PHASES["backfill"]


def require_bucket(spec: MigrationSpec, bucket: ThanosBucket | None) -> ThanosBucket:
    """The bucket of a blocks/hybrid migration, or a ConfigError saying how to give one."""
    if bucket is None:
        raise ConfigError(
            f"write_mode={spec.write_mode} uploads blocks into the Thanos bucket, but no bucket is configured",
            hint="pass --bucket-dir DIR (Thanos FILESYSTEM layout) or --bucket-url s3://|gs://|az://..., a "
            "`bucket:` section in the config file, or a ThanosBucket block as the flow's bucket parameter",
        )
    return bucket


@task(name="plan-migration-part", cache_policy=NONE)
def plan_part(
    source: M3Source, spec: MigrationSpec, state: MigrationState, boundary: int, part: Literal["tail", "backfill"]
) -> Plan | None:
    """Discover and batch the series of the remote-write tail or of the block backfill (or load its plan)."""
    logger = get_run_logger()
    prepare = prepare_tail if part == "tail" else prepare_backfill
    prepared = prepare(source.settings(), spec, state, boundary)
    if prepared is None:
        return None
    plan = prepared.plan
    logger.info(
        "%s %s plan %s: %d series in %d batches over %s .. %s",
        "resuming" if prepared.reused_plan else "new",
        "remote-write tail" if part == "tail" else "block backfill",
        plan.id,
        plan.series_count,
        len(plan.batches),
        iso_ms(plan.start_ms),
        iso_ms(plan.end_ms),
    )
    return plan


@flow(name="backfill-blocks", log_prints=False)
def backfill_blocks(
    source: M3Source,
    spec: MigrationSpec,
    bucket: ThanosBucket,
    migration_id: str,
    state_dir: str,
    stage: Stage = "migrate",
    plan_id: str | None = None,
) -> BackfillSummary:
    """Write every block window of the stage's saved plan into the bucket; returns the backfill's totals.
    ``plan_id``: the plan the calling flow holds (then not read again in this process)."""
    collector.tune_for_bulk_data()  # this process now holds the migration's data
    state = MigrationState(Path(state_dir), migration_id)
    plan = stage_plan(state, stage, plan_id)
    if plan is None:
        raise ConfigError(f"migration {migration_id!r} has no saved {stage} plan", hint="run the migrate flow")
    labels = spec.backfill_external_labels(migration_id)
    windows = block_windows(plan.start_ms, plan.end_ms, spec.block_ms)
    ctx = backfill_context(source, spec, bucket, state, plan, stage, labels)
    summary = BackfillSummary(len(windows), bucket=get_bucket(ctx.bucket).description, external_labels=labels)
    log_backfill_start(spec, plan, windows, summary)
    progress = _BackfillProgress(migration_id, stage, len(windows))
    task_fn = backfill_block_windows.with_options(result_storage=results_storage(state.results_dir))
    rows: list[dict[str, Any]] = []
    for window, result, cached in finished_windows(task_fn, ctx, windows, spec.task_concurrency):
        outcome = summary.add(result, cached=cached)
        rows.append(window_row(window, result, outcome))
        progress.window_done(window, outcome, summary)
    clear_caches()
    summary.finish(progress.elapsed())
    publish_backfill(migration_id, rows, summary)
    return summary


def backfill_context(
    source: M3Source,
    spec: MigrationSpec,
    bucket: ThanosBucket,
    state: MigrationState,
    plan: Plan,
    stage: Stage,
    labels: dict[str, str],
) -> BackfillContext:
    """What every window's task needs."""
    return BackfillContext(
        **unit_fields(spec, state, plan, stage, source.settings()),
        bucket=bucket.settings(),
        external_labels=tuple(sorted(labels.items())),
    )


def log_backfill_start(spec: MigrationSpec, plan: Plan, windows: list[BlockWindow], summary: BackfillSummary) -> None:
    get_run_logger().info(
        "backfill %s .. %s: %d windows of %d h, %d series in %d batches, labels %s, into %s",
        iso_ms(plan.start_ms),
        iso_ms(plan.end_ms),
        len(windows),
        spec.block_hours,
        plan.series_count,
        len(plan.batches),
        summary.external_labels,
        summary.bucket,
    )


MAX_WINDOW_TASKS = 256  # past this many windows, consecutive windows share a task


def window_groups(windows: list[BlockWindow]) -> list[list[BlockWindow]]:
    """The windows in tasks: one each, or, for a history of more than MAX_WINDOW_TASKS windows, runs of
    consecutive windows (100 days of 2 h blocks: 1,200 windows in 240 tasks of 5). Fixed by the window
    list alone, so a rerun's groups (and cache keys) are the first run's."""
    size = -(-len(windows) // MAX_WINDOW_TASKS)
    return [windows[i : i + size] for i in range(0, len(windows), size)]


def finished_windows(
    task_fn: Any, ctx: BackfillContext, windows: list[BlockWindow], concurrency: int
) -> Iterator[tuple[BlockWindow, BackfillResult, bool]]:
    """Run the windows' tasks, at most ``concurrency`` at once; yields each window's result as its task
    finishes and whether it came from Prefect's cache (done by an earlier run)."""
    todo = list(reversed(window_groups(windows)))
    in_flight: dict[PrefectFuture, list[BlockWindow]] = {}
    while todo or in_flight:
        while todo and len(in_flight) < concurrency:
            group = todo.pop()
            in_flight[task_fn.submit(ctx, group)] = group
        future = next(as_completed(list(in_flight)))
        group = in_flight.pop(future)
        results = future.result()  # raises a window's error: the backfill stops here, the rerun resumes
        if not isinstance(results, list):  # one window's result, cached by an earlier version
            results = [results]
        cached = future.state.name == "Cached"
        for window, result in zip(group, results, strict=True):
            if isinstance(result, dict):  # cached by an earlier version
                result = BackfillResult(**result)
            yield window, result, cached


def window_row(window: BlockWindow, result: BackfillResult, outcome: str) -> dict[str, Any]:
    """The window's row in the backfill's table artifact."""
    return {
        "min_time": iso_ms(window.min_time),
        "max_time": iso_ms(window.max_time),
        "block": result.ulid or "-",
        "outcome": outcome,
        "series": result.series,
        "samples": result.samples,
        "bytes": result.bytes,
    }


class _BackfillProgress:
    """The progress artifact, log line and progress event after each window (in any order: no front)."""

    def __init__(self, migration_id: str, stage: Stage, windows: int) -> None:
        self.migration_id = migration_id
        self.windows = windows
        self.done = 0
        self.logger = get_run_logger()
        # blocks mode: the migration's own progress artifact (the key remote write uses); hybrid: the backfill's
        # called from a sync flow, Prefect's sync/async dual function returns the UUID, not a coroutine
        self.artifact_id = cast(
            UUID,
            create_progress_artifact(
                0.0, key=f"{migration_id}-{stage}-progress", description=f"Migration {migration_id}: {BLOCKS_PHASE}"
            ),
        )
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def window_done(self, window: BlockWindow, outcome: str, summary: BackfillSummary) -> None:
        self.done += 1
        elapsed = self.elapsed()
        report = Progress(
            BLOCKS_PHASE,
            self.done,
            self.windows,
            summary.samples,
            summary.samples_moved_now / elapsed if elapsed > 0 else 0.0,
            elapsed,
            blocks_uploaded=summary.blocks_uploaded,
        )
        update_progress_artifact(self.artifact_id, report.percent, description=report.description(self.migration_id))
        self.logger.info(
            "block window %s .. %s %s: %s",
            iso_ms(window.min_time),
            iso_ms(window.max_time),
            outcome,
            report.log_line(),
        )
        notify(report.event())


def publish_backfill(migration_id: str, rows: list[dict[str, Any]], summary: BackfillSummary) -> None:
    """The windows' table (in time order) and the summary as artifacts."""
    rows.sort(key=lambda r: r["min_time"])
    create_table_artifact(rows, key=f"{migration_id}-backfill-windows", description="Blocks per window")
    create_markdown_artifact(
        figures_markdown("Block backfill", summary),
        key=f"{migration_id}-backfill-summary",
        description="Block backfill summary",
    )


def run_backfill(
    source: M3Source, spec: MigrationSpec, bucket: ThanosBucket, state: MigrationState, stage: Stage, plan: Plan
) -> BackfillSummary:
    """The backfill subflow of the stage's saved ``plan`` (shared with it in this process, not read again) on
    a runner that runs at most task_concurrency windows at once."""
    remember_plan(state, stage, plan)
    runner = dask_task_runner(spec) if spec.task_runner == "dask" else ThreadPoolTaskRunner(spec.task_concurrency)
    # Prefect types task_runner as TaskRunner[PrefectFuture[Any]], invariant in the future: PrefectHQ/prefect#16938
    return backfill_blocks.with_options(task_runner=runner)(  # type: ignore[arg-type]
        source, spec, bucket, state.migration_id, str(state.dir.parent), stage, plan.id
    )


def migrate_blocks(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    state: MigrationState,
    bucket: ThanosBucket | None,
    start_over: bool,
) -> MigrationSummary:
    """The migrate flow's work in blocks/hybrid mode (the caller holds the lock): tail, then blocks.

    The summary's plan is the one that covers most of the range.
    """
    logger = get_run_logger()
    bucket = require_bucket(spec, bucket)
    boundary = fix_boundary(spec, state, start_over=start_over)
    tail_plan = plan_part(source, spec, state, boundary, "tail")
    tail: TransferSummary | None = None
    if tail_plan is not None:
        logger.info("remote-write tail %s .. %s first", iso_ms(tail_plan.start_ms), iso_ms(tail_plan.end_ms))
        tail = run_transfer(source, target, spec, state, "migrate", tail_plan)
    backfill_plan = plan_part(source, spec, state, boundary, "backfill")
    blocks: BackfillSummary | None = None
    if backfill_plan is not None:
        stage = backfill_stage(spec, boundary)
        blocks = run_backfill(source, spec, bucket, state, stage, backfill_plan)
        if stage == "migrate":  # no tail: the backfill was the whole migration
            mark_migrated(state, backfill_plan, blocks.samples)
    plan = backfill_plan or tail_plan
    assert plan is not None  # the range is never empty, so one of the parts holds it
    return MigrationSummary(
        state.migration_id,
        plan.id,
        plan.series_count,
        transfer=tail,
        blocks=blocks,
        write_mode=spec.write_mode,
        block_hours=spec.block_hours,
        boundary=(iso_ms(boundary) if boundary <= spec.end_ms else "none (all blocks)")
        if spec.write_mode == "hybrid"
        else None,
        tail_series=tail_plan.series_count if tail_plan else None,
        tiers=tier_table(plan.tiers),
    )
