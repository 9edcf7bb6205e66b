"""The blocks and hybrid write modes of the migrate flow: history as TSDB blocks in the Thanos bucket.

``blocks``: one Prefect task per epoch-aligned block window over all the plan's batches (read, encode,
upload), at most ``task_concurrency`` windows at once (memory: one window per worker). ``hybrid``: the
remote-write tail [boundary, end] first, by the ordinary transfer front (it must land while the target's
accept window still covers it), then the blocks for [start, boundary - 1]. Replication continues by
remote write from the end either way. The bucket's meta.json files are the resume state: a rerun skips
every window that has its block, cleans crashed uploads and writes only what is missing.
"""

from __future__ import annotations

import time
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
from m3migrate.backfill import block_windows
from m3migrate.blockmode import backfill_stage, fix_boundary, mark_migrated, prepare_backfill, prepare_tail
from m3migrate.errors import ConfigError
from m3migrate.plan import Plan
from m3migrate.progress import PHASES, Progress
from m3migrate.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms
from tasks.backfill import BackfillContext, backfill_block_window, clear_caches, get_bucket
from tasks.transfer import notify, results_storage

BLOCKS_PHASE = PHASES["backfill"]
SUM_FIELDS = ("samples", "bytes", "bytes_read", "read_seconds", "encode_seconds", "upload_seconds", "splits")


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
) -> dict[str, Any]:
    """Write every block window of the stage's saved plan into the bucket; returns the backfill's totals."""
    logger = get_run_logger()
    state = MigrationState(Path(state_dir), migration_id)
    plan = state.load_plan(stage)
    if plan is None:
        raise ConfigError(f"migration {migration_id!r} has no saved {stage} plan", hint="run the migrate flow")
    labels = spec.backfill_external_labels(migration_id)
    windows = block_windows(plan.start_ms, plan.end_ms, spec.block_ms)
    relabel = spec.relabeler()
    settings = bucket.settings()
    ctx = BackfillContext(
        migration_id=migration_id,
        plan_id=plan.id,
        generation=state.generation,
        stage=stage,
        state_root=state_dir,
        source=source.settings(),
        bucket=settings,
        relabeler_rules=tuple(relabel.rules),
        add_labels=tuple(relabel.add_labels.items()),
        external_labels=tuple(sorted(labels.items())),
    )
    logger.info(
        "backfill %s .. %s: %d windows of %d h, %d series in %d batches, labels %s, into %s",
        iso_ms(plan.start_ms),
        iso_ms(plan.end_ms),
        len(windows),
        spec.block_hours,
        plan.series_count,
        len(plan.batches),
        labels,
        get_bucket(settings).description,
    )
    # blocks mode: the migration's own progress artifact (the key remote write uses); hybrid: the backfill's
    # called from a sync flow, Prefect's sync/async dual function returns the UUID, not a coroutine
    artifact_id = cast(
        UUID,
        create_progress_artifact(
            0.0, key=f"{migration_id}-{stage}-progress", description=f"Migration {migration_id}: {BLOCKS_PHASE}"
        ),
    )
    task_fn = backfill_block_window.with_options(result_storage=results_storage(state.results_dir))
    t0 = time.monotonic()
    totals: dict[str, Any] = {f: 0 for f in SUM_FIELDS}
    counts = {"uploaded": 0, "skipped": 0, "empty": 0, "cached": 0}
    moved_now = 0
    removed: list[str] = []
    rows: list[dict[str, Any]] = []
    todo = list(reversed(windows))
    in_flight: dict[PrefectFuture, Any] = {}
    while todo or in_flight:
        while todo and len(in_flight) < spec.task_concurrency:
            window = todo.pop()
            in_flight[task_fn.submit(ctx, window)] = window
        future = next(as_completed(list(in_flight)))
        window = in_flight.pop(future)
        result = future.result()  # raises the window's error: the backfill stops here, the rerun resumes
        cached = future.state.name == "Cached"  # done by an earlier run: its result, not this run's work
        for f in SUM_FIELDS:
            totals[f] += result[f]
        kind = "skipped" if result["skipped"] else "empty" if result["empty"] else "uploaded"
        counts["cached" if cached else kind] += 1
        moved_now += 0 if cached else result["samples"]
        removed += result["removed_partial"]
        rows.append(
            {
                "min_time": iso_ms(window.min_time),
                "max_time": iso_ms(window.max_time),
                "block": result["ulid"] or "-",
                "outcome": "cached" if cached else kind,
                "series": result["series"],
                "samples": result["samples"],
                "bytes": result["bytes"],
            }
        )
        elapsed = time.monotonic() - t0
        report = Progress(
            BLOCKS_PHASE,
            len(rows),
            len(windows),
            totals["samples"],
            moved_now / elapsed if elapsed > 0 else 0.0,
            elapsed,
            blocks_uploaded=counts["uploaded"],  # windows finish in any order: no front here
        )
        update_progress_artifact(artifact_id, report.percent, description=report.description(migration_id))
        logger.info(
            "block window %s .. %s %s: %s",
            iso_ms(window.min_time),
            iso_ms(window.max_time),
            "cached" if cached else kind,
            report.log_line(),
        )
        notify(report.event())
    clear_caches()
    elapsed = time.monotonic() - t0
    rows.sort(key=lambda r: r["min_time"])
    create_table_artifact(rows, key=f"{migration_id}-backfill-windows", description="Blocks per window")
    summary = {
        "block_windows": len(windows),
        "blocks_uploaded": counts["uploaded"],
        "windows_skipped": counts["skipped"],
        "windows_empty": counts["empty"],
        "tasks_cached": counts["cached"],
        "removed_partial_uploads": len(removed),
        "samples": totals["samples"],
        "samples_moved_now": moved_now,
        "bytes_uploaded": totals["bytes"],
        "bytes_read": totals["bytes_read"],
        "read_seconds": round(totals["read_seconds"], 3),
        "encode_seconds": round(totals["encode_seconds"], 3),
        "upload_seconds": round(totals["upload_seconds"], 3),
        "splits": totals["splits"],
        "seconds": round(elapsed, 3),
        "samples_per_second": round(moved_now / elapsed) if elapsed else 0,
        "bucket": get_bucket(settings).description,
        "external_labels": labels,
    }
    create_markdown_artifact(
        "# Block backfill\n\n| figure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in summary.items()),
        key=f"{migration_id}-backfill-summary",
        description="Block backfill summary",
    )
    return summary


def run_backfill(
    source: M3Source, spec: MigrationSpec, bucket: ThanosBucket, state: MigrationState, stage: Stage
) -> dict[str, Any]:
    """The backfill subflow on a runner that runs at most task_concurrency windows at once."""
    runner = dask_task_runner(spec) if spec.task_runner == "dask" else ThreadPoolTaskRunner(spec.task_concurrency)
    # Prefect types task_runner as TaskRunner[PrefectFuture[Any]], invariant in the future: PrefectHQ/prefect#16938
    return backfill_blocks.with_options(task_runner=runner)(  # type: ignore[arg-type]
        source, spec, bucket, state.migration_id, str(state.dir.parent), stage
    )


def migrate_blocks(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    state: MigrationState,
    bucket: ThanosBucket | None,
    start_over: bool,
) -> tuple[Plan, dict[str, Any]]:
    """The migrate flow's work in blocks/hybrid mode (the caller holds the lock): tail, then blocks.

    Returns the plan that covers most of the range (for the summary) and the summary's figures.
    """
    logger = get_run_logger()
    bucket = require_bucket(spec, bucket)
    boundary = fix_boundary(spec, state, start_over=start_over)
    summary: dict[str, Any] = {"write_mode": spec.write_mode, "block_hours": spec.block_hours}
    if spec.write_mode == "hybrid":
        summary["boundary"] = iso_ms(boundary) if boundary <= spec.end_ms else "none (all blocks)"
    tail_plan = plan_part(source, spec, state, boundary, "tail")
    tail: dict[str, Any] = {}
    if tail_plan is not None:
        logger.info("remote-write tail %s .. %s first", iso_ms(tail_plan.start_ms), iso_ms(tail_plan.end_ms))
        tail = run_transfer(source, target, spec, state, "migrate")
    backfill_plan = plan_part(source, spec, state, boundary, "backfill")
    blocks: dict[str, Any] = {}
    if backfill_plan is not None:
        stage = backfill_stage(spec, boundary)
        blocks = run_backfill(source, spec, bucket, state, stage)
        if stage == "migrate":  # no tail: the backfill was the whole migration
            mark_migrated(state, backfill_plan, blocks["samples"])
    plan = backfill_plan or tail_plan
    assert plan is not None  # the range is never empty, so one of the parts holds it
    summary.update({f"blocks_{k}" if k in ("samples", "seconds") else k: v for k, v in blocks.items()})
    summary.update({"tail_series": tail_plan.series_count, "tail_samples": tail["samples"]} if tail_plan else {})
    summary["samples"] = blocks.get("samples", 0) + tail.get("samples", 0)
    summary["samples_moved_now"] = blocks.get("samples_moved_now", 0) + tail.get("samples_moved_now", 0)
    summary["seconds"] = round(blocks.get("seconds", 0.0) + tail.get("seconds", 0.0), 3)
    return plan, summary
