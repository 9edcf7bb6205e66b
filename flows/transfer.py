"""The remote-write front as a subflow: a stage's saved plan (bulk migration, hybrid tail or replication
pass) run segment by segment on threads or Dask, with its progress artifact and watermark.

Every batch of window k is written before any sample newer than window k + depth, where depth keeps
everything in flight inside the target's accept window (Thanos/Prometheus accept samples at most ~1 h
older than their newest one unless an out-of-order window is set). The engine's Front keeps that order
inside each task; the flow runs the front in a few segments (tasks), so Prefect's per-task cost is paid
a handful of times, not once per batch × window. With Dask, each segment is split into batch groups
that run on separate workers and meet at the segment's end. Used by flows.migrate, flows.backfill
(hybrid's tail) and flows.replicate, so it imports none of them.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import Flow, flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

from blocks import M3Source, ThanosTarget
from m3migrate.clients.limits import reset_limits
from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Plan
from m3migrate.progress import PHASES, Progress, lag_seconds
from m3migrate.report import TransferSummary
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.front import FrontTotals, plan_segments
from tasks.context import unit_fields
from tasks.transfer import (
    TransferContext,
    close_transfers,
    notify,
    remember_plan,
    results_storage,
    stage_plan,
    transfer_segment,
)


def batch_groups(spec: MigrationSpec, batches: int) -> int:
    """How many groups of batches run on separate workers: one per Dask worker, else one (threads)."""
    return max(1, min(spec.task_concurrency, batches)) if spec.task_runner == "dask" else 1


def units_in_flight(spec: MigrationSpec) -> int:
    """batch × window units one process moves at once (each also has its write requests in flight)."""
    return 2 if spec.task_runner == "dask" else spec.task_concurrency


def dask_task_runner(spec: MigrationSpec):
    """One Dask worker per batch group: on the cluster at dask_address, else a LocalCluster of processes."""
    from prefect.settings import get_current_settings
    from prefect_dask import DaskTaskRunner

    if get_current_settings().api.url is None:
        get_run_logger().warning(
            "task_runner=dask without PREFECT_API_URL: every Dask worker process starts a temporary Prefect API "
            "of its own (its task runs are not in this run's UI, and on one machine they share its database). "
            "Run `prefect server start` and export PREFECT_API_URL for the workers and this run."
        )

    if spec.dask_address:
        return DaskTaskRunner(address=spec.dask_address)
    cluster = {"n_workers": spec.task_concurrency, "processes": True, "threads_per_worker": 1}
    return DaskTaskRunner(cluster_kwargs=cluster)


def transfer_windows(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    migration_id: str,
    state_dir: str,
    stage: Stage = "migrate",
    plan_id: str | None = None,
) -> TransferSummary:
    """Run the front segment by segment (one task per batch group) and record the watermark after each.

    A subflow on Dask (it carries the Dask task runner: transfer_windows_flow); with threads, run_transfer
    calls it inside the calling flow. Its parameters stay small: the plan of the stage (bulk migration or
    replication pass) is read from the migration's state, not passed through the Prefect API; ``plan_id``
    names the one the caller holds (then not read again in this process).
    """
    logger = get_run_logger()
    state = MigrationState(Path(state_dir), migration_id)
    plan = stage_plan(state, stage, plan_id)
    if plan is None:
        raise ConfigError(f"migration {migration_id!r} has no saved {stage} plan", hint=f"run the {stage} flow")
    progress = state.load_progress(stage)
    progress.plan_id, progress.generation, progress.windows_total = plan.id, state.generation, len(plan.windows)
    phase = PHASES.get(stage, stage)
    # called from a sync flow, Prefect's sync/async dual function returns the UUID, not a coroutine
    artifact_id = cast(
        UUID,
        create_progress_artifact(
            0.0, key=f"{state.migration_id}-{stage}-progress", description=f"Migration {state.migration_id}: {phase}"
        ),
    )
    ctx = _transfer_context(source, target, spec, state, plan, stage, artifact_id)
    task_fn = transfer_segment.with_options(result_storage=results_storage(state.results_dir))
    nb, nw = len(plan.batches), len(plan.windows)
    segments = plan_segments(nw, ctx.depth, batch_groups(spec, nb))
    totals = FrontTotals()
    cached = 0
    window_rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for run in segments:
        futures = [task_fn.submit(ctx, segment, samples_before=totals.samples) for segment in run]
        results = [FrontTotals.of(f.result()) for f in futures]  # raises a segment's error: the front stops here
        for future, result in zip(futures, results, strict=True):
            from_cache = future.state.name == "Cached"
            cached += from_cache
            totals.merge(result, cached=from_cache)
        first, last = plan.windows[run[0].first_window], plan.windows[run[0].last_window]
        progress.windows_done = last.index + 1
        progress.front_end_ms = last.end_ms
        progress.samples = totals.samples
        state.save_progress(progress, stage)
        elapsed = time.monotonic() - t0
        rate = totals.samples_moved_now / elapsed if elapsed > 0 else 0.0
        report = Progress(
            phase,
            progress.windows_done,
            nw,
            totals.samples,
            rate,
            elapsed,
            lag_seconds=lag_seconds(last.end_ms) if stage == "replicate" else None,
            front_end_ms=last.end_ms,
        )
        update_progress_artifact(artifact_id, report.percent, description=report.description(state.migration_id))
        window_rows.append(
            {
                "windows": run[0].label.split(",")[0],
                "start": iso_ms(first.start_ms),
                "end": iso_ms(last.end_ms),
                "samples": sum(r.samples for r in results),
                "tasks": len(run),
            }
        )
        logger.info("front at %s: %s", iso_ms(last.end_ms), report.log_line())
        notify(report.event())
    elapsed = time.monotonic() - t0
    if window_rows:
        create_table_artifact(
            window_rows, key=f"{state.migration_id}-{stage}-segments", description="Samples written per segment"
        )
    tasks = sum(len(run) for run in segments)
    return totals.summary(windows=nw, batches=nb, tasks=tasks, tasks_cached=cached, seconds=elapsed)


@functools.cache
def transfer_windows_flow() -> Flow[..., TransferSummary]:
    """The subflow "transfer-windows", built on first use: Prefect builds a flow's parameter schema when the
    flow is made (~0.1 s of start-up), and only the Dask runner needs this one."""
    return flow(name="transfer-windows", log_prints=False)(transfer_windows)


def run_transfer(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    state: MigrationState,
    stage: Stage,
    plan: Plan | None = None,
) -> TransferSummary:
    """Run a stage's saved plan on the spec's task runner (the caller holds the migration's lock); ``plan``:
    that plan as the caller has it, so this process does not read it again.

    Each run starts at the endpoints' configured concurrency again: what the adaptive limiters learned
    from an earlier run's 429/503s may no longer hold."""
    reset_limits()
    if plan is not None:
        remember_plan(state, stage, plan)
    args = (source, target, spec, state.migration_id, str(state.dir.parent), stage, plan.id if plan else None)
    try:
        if spec.task_runner == "thread":
            # Segments run one after another in the calling flow (the engine's Front moves task_concurrency
            # units in parallel inside each): a subflow would only add ~1 s of bookkeeping per run and pass.
            return transfer_windows(*args)
        return transfer_windows_flow().with_options(task_runner=dask_task_runner(spec))(*args)
    finally:
        close_transfers()


def _transfer_context(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    state: MigrationState,
    plan: Plan,
    stage: Stage,
    artifact_id: Any,
) -> TransferContext:
    return TransferContext(
        **unit_fields(spec, state, plan, stage, source.settings()),
        target=target.settings(),
        write_concurrency=spec.write_concurrency,
        units_in_flight=units_in_flight(spec),
        depth=spec.windows_in_flight,
        windows_total=len(plan.windows),
        progress_artifact_id=str(artifact_id) if artifact_id else None,
    )
