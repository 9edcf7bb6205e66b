"""The "Start migration" step: plan, then advance a time front of batch × window transfers.

Every batch of window k is written before any sample newer than window k + depth, where depth keeps
everything in flight inside the target's accept window (Thanos/Prometheus accept samples at most ~1 h
older than their newest one unless an out-of-order window is set). Within that front, batches run in
parallel on the configured task runner; one batch's windows run in order, so no series is ever written
by two requests at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import M3Source, ThanosTarget
from flows.validate import validate
from m3migrate.errors import ConfigError
from m3migrate.migration import prepare
from m3migrate.plan import Plan
from m3migrate.spec import MigrationSpec, default_state_dir
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms
from tasks.transfer import TransferContext, close_transfers, results_storage, transfer_batch_window

ProgressListener = Callable[[dict[str, Any]], None]
PROGRESS_LISTENERS: list[ProgressListener] = []  # the CLI's progress bar subscribes here

SUMMARY_FIELDS = (
    "series",
    "samples",
    "requests",
    "bytes_read",
    "bytes_written",
    "read_retries",
    "write_retries",
    "splits",
    "reconciled_series",
)


def build_task_runner(spec: MigrationSpec):
    if spec.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if spec.dask_address:
            return DaskTaskRunner(address=spec.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": spec.task_concurrency, "processes": True, "threads_per_worker": 1}
        )
    return ThreadPoolTaskRunner(max_workers=spec.task_concurrency)


@task(name="plan-migration", cache_policy=NONE)
def plan_migration(source: M3Source, spec: MigrationSpec, state: MigrationState, start_over: bool) -> Plan:
    """Discover and batch the series (first run, start over) or load the saved plan (resume)."""
    logger = get_run_logger()
    prepared = prepare(
        source.settings(),
        spec,
        state,
        start_over=start_over,
        on_metric=lambda name, n: logger.debug("discovered %d series of %s", n, name),
    )
    plan = prepared.plan
    logger.info(
        "%s plan %s: %d series in %d batches × %d windows of %d min (%s)",
        "resuming" if prepared.reused_plan else "new",
        plan.id,
        plan.series_count,
        len(plan.batches),
        len(plan.windows),
        plan.window_ms // 60_000,
        spec.write_mode,
    )
    return plan


def _notify(event: dict[str, Any]) -> None:
    for listener in list(PROGRESS_LISTENERS):
        try:
            listener(event)
        except Exception:  # a broken progress bar must never stop a migration
            logging.getLogger("m3migrate").debug("progress listener failed", exc_info=True)


@flow(name="transfer-windows", log_prints=False)
def transfer_windows(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    migration_id: str,
    state_dir: str,
    stage: Stage = "migrate",
) -> dict[str, Any]:
    """Submit batch × window tasks along the time front and record the watermark as windows complete.

    Its parameters stay small: the plan of the stage (bulk migration or replication pass) is read from
    the migration's state, not passed through the Prefect API.
    """
    logger = get_run_logger()
    state = MigrationState(Path(state_dir), migration_id)
    plan = state.load_plan(stage)
    if plan is None:
        raise ConfigError(f"migration {migration_id!r} has no saved {stage} plan", hint=f"run the {stage} flow")
    ctx = _transfer_context(source, target, spec, state, plan)
    depth = spec.windows_in_flight
    progress = state.load_progress(stage)
    progress.plan_id, progress.generation, progress.windows_total = plan.id, ctx.generation, len(plan.windows)
    task_fn = transfer_batch_window.with_options(result_storage=results_storage(Path(ctx.results_dir)))
    artifact_id = create_progress_artifact(
        0.0, key=f"{ctx.migration_id}-{stage}-progress", description=f"Migration {ctx.migration_id}: {stage} front"
    )
    nb, nw = len(plan.batches), len(plan.windows)
    futures: dict[tuple[int, int], PrefectFuture] = {}
    totals = dict.fromkeys((*SUMMARY_FIELDS, "series_windows"), 0)
    moved_now = 0
    cached = 0
    window_rows: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def complete(k: int) -> None:
        nonlocal moved_now, cached
        samples = series = 0
        for b in range(nb):
            future = futures.pop((b, k))
            result = future.result()  # raises the batch's error: the front stops here
            from_cache = future.state.name == "Cached"
            cached += from_cache
            for f in SUMMARY_FIELDS:
                totals[f] += result.get(f, 0)
            totals["series_windows"] += result["series"]
            samples += result["samples"]
            series += result["series"]
            if not from_cache:
                moved_now += result["samples"]
        window = plan.windows[k]
        progress.windows_done = k + 1
        progress.front_end_ms = window.end_ms
        progress.samples = totals["samples"]
        state.save_progress(progress, stage)
        elapsed = time.monotonic() - t0
        rate = moved_now / elapsed if elapsed > 0 else 0.0
        remaining = nw - k - 1
        eta = elapsed / (k + 1) * remaining
        window_rows.append(
            {
                "window": k,
                "start": iso_ms(window.start_ms),
                "end": iso_ms(window.end_ms),
                "series": series,
                "samples": samples,
            }
        )
        update_progress_artifact(artifact_id, 100.0 * (k + 1) / nw)
        if k == nw - 1 or (k + 1) % max(1, nw // 20) == 0:
            logger.info(
                "front at %s: window %d/%d, %d samples so far, %.0f samples/s, ETA %.0f s",
                iso_ms(window.end_ms),
                k + 1,
                nw,
                totals["samples"],
                rate,
                eta,
            )
        _notify({"windows_done": k + 1, "windows_total": nw, "samples": totals["samples"], "rate": rate})

    for window in plan.windows:
        k = window.index
        if k >= depth:
            complete(k - depth)
        for b, batch in enumerate(plan.batches):
            previous = futures.get((b, k - 1))
            futures[(b, k)] = task_fn.submit(ctx, batch, window, wait_for=[previous] if previous else None)
    for k in range(max(0, nw - depth), nw):
        complete(k)
    elapsed = time.monotonic() - t0
    if window_rows:
        create_table_artifact(
            window_rows, key=f"{ctx.migration_id}-{stage}-windows", description="Samples written per time window"
        )
    return {
        **totals,
        "windows": nw,
        "batches": nb,
        "tasks_cached": cached,
        "samples_moved_now": moved_now,
        "seconds": round(elapsed, 3),
        "samples_per_second": round(moved_now / elapsed) if elapsed else 0,
    }


def run_transfer(
    source: M3Source, target: ThanosTarget, spec: MigrationSpec, state: MigrationState, stage: Stage
) -> dict[str, Any]:
    """Run a stage's saved plan on the spec's task runner (the caller holds the migration's lock)."""
    try:
        return transfer_windows.with_options(task_runner=build_task_runner(spec))(
            source, target, spec, state.migration_id, str(state.dir.parent), stage
        )
    finally:
        close_transfers()


def _transfer_context(
    source: M3Source, target: ThanosTarget, spec: MigrationSpec, state: MigrationState, plan: Plan
) -> TransferContext:
    relabel = spec.relabeler()
    return TransferContext(
        migration_id=state.migration_id,
        plan_id=plan.id,
        generation=state.generation,
        source=source.settings(),
        target=target.settings(),
        relabeler_rules=tuple(relabel.rules),
        add_labels=tuple(relabel.add_labels.items()),
        write_concurrency=spec.write_concurrency,
        results_dir=str(state.results_dir),
    )


@flow(name="migrate", log_prints=False)
def migrate(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    start_over: bool = False,
    state_dir: str | None = None,
    skip_validation: bool = False,
) -> dict[str, Any]:
    """Move the spec's history from the M3 source into the Thanos target; rerun to resume.

    The validation flow runs first (a failing check stops the migration before any data moves) unless
    skip_validation is set.
    """
    logger = get_run_logger()
    state_root = Path(state_dir) if state_dir else default_state_dir()
    state = MigrationState(state_root, spec.resolved_id(source.read_url, target.write_url))
    if skip_validation:
        logger.warning("validation skipped (skip_validation=True)")
    else:
        # Resuming: probe at the saved front, the oldest instant this run still writes.
        front = None if start_over else state.load_progress().front_end_ms
        validate(source, target, spec, probe_at_ms=front)
    with state.lock():
        plan = plan_migration(source, spec, state, start_over)
        summary = run_transfer(source, target, spec, state, "migrate")
    summary = {"migration_id": state.migration_id, "plan_id": plan.id, **summary, "series": plan.series_count}
    create_markdown_artifact(
        _summary_markdown(summary), key=f"{state.migration_id}-summary", description="Migration summary"
    )
    logger.info(
        "migration %s complete: %d series, %d samples (%d moved in this run) in %.1f s",
        summary["migration_id"],
        summary["series"],
        summary["samples"],
        summary["samples_moved_now"],
        summary["seconds"],
    )
    return summary


def _summary_markdown(summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in summary.items())
    return f"# Migration {summary['migration_id']}\n\n| figure | value |\n|---|---|\n{rows}\n"
