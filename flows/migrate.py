"""The "Start migration" step: validate, plan, then advance a time front of batch × window transfers
(flows/transfer.py) or, in the blocks and hybrid write modes, upload history as blocks (flows/backfill.py).

Every batch of window k is written before any sample newer than window k + depth, where depth keeps
everything in flight inside the target's accept window (Thanos/Prometheus accept samples at most ~1 h
older than their newest one unless an out-of-order window is set). The engine's Front keeps that order
inside each task; the flow runs the front in a few segments (tasks), so Prefect's per-task cost is paid
a handful of times, not once per batch × window. With Dask, each segment is split into batch groups
that run on separate workers and meet at the segment's end.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
)
from prefect.cache_policies import NONE

from blocks import M3Source, ThanosBucket, ThanosTarget
from flows.transfer import run_transfer
from m3migrate.plan.batches import Plan
from m3migrate.plan.migration import prepare
from m3migrate.plan.tiers import tier_table
from m3migrate.report import MigrationSummary
from m3migrate.settings.spec import MigrationSpec, default_state_dir
from m3migrate.state import MigrationState


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
    log_tiers(logger, plan)
    return plan


def log_tiers(logger: Any, plan: Plan) -> None:
    """The M3 namespace each part of the range is read from (the plan's tiers), one line each."""
    for row in tier_table(plan.tiers):
        logger.info("tier %(from)s .. %(to)s: namespace %(namespace)s (%(storage_policy)s)", row)


@flow(name="migrate", log_prints=False)
def migrate(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    start_over: bool = False,
    state_dir: str | None = None,
    skip_validation: bool = False,
    bucket: ThanosBucket | None = None,
) -> MigrationSummary:
    """Move the spec's history from the M3 source into the Thanos target; rerun to resume.

    The validation flow runs first (a failing check stops the migration before any data moves) unless
    skip_validation is set. write_mode blocks/hybrid upload history as TSDB blocks into ``bucket``.
    """
    logger = get_run_logger()
    state_root = Path(state_dir) if state_dir else default_state_dir()
    state = MigrationState(state_root, spec.resolved_id(source.read_url, target.write_url))
    if skip_validation:
        logger.warning("validation skipped (skip_validation=True)")
    else:
        # Resuming: the probe goes where the unit journal says this run goes on (read from state_dir);
        # hybrid: the remote-write tail starts at the saved boundary.
        boundary = None if start_over or spec.write_mode != "hybrid" else state.load_boundary()
        resume_from = None if start_over else str(state_root)
        from flows.validate import validate  # here: building a flow (its parameter schema) is ~0.1 s of start-up

        validate(source, target, spec, probe_at_ms=boundary, bucket=bucket, state_dir=resume_from)
    with state.lock():
        # the later steps (replicate, verify, close) then need only the migration id; no secret is saved
        state.save_spec(spec, source.settings(), target.settings(), replace=start_over)
        if spec.uses_blocks:
            from flows.backfill import migrate_blocks  # only the blocks and hybrid modes need it

            summary = migrate_blocks(source, target, spec, state, bucket, start_over)
        else:
            plan = plan_migration(source, spec, state, start_over)
            transfer = run_transfer(source, target, spec, state, "migrate", plan)
            summary = MigrationSummary(
                state.migration_id, plan.id, plan.series_count, transfer=transfer, tiers=tier_table(plan.tiers)
            )
    create_markdown_artifact(
        summary.to_markdown(), key=f"{state.migration_id}-summary", description="Migration summary"
    )
    logger.info(
        "migration %s complete: %d series, %d samples (%d moved in this run) in %.1f s",
        summary.migration_id,
        summary.series,
        summary.samples,
        summary.samples_moved_now,
        summary.seconds,
    )
    if summary.get("new_series_after_discovery"):
        logger.warning(
            "new series found after discovery: %d (each migrated by the first batch whose selectors match it; "
            "the transfer log names them)",
            summary["new_series_after_discovery"],
        )
    warn_about_label_bytes(summary, logger)
    return summary


def warn_about_label_bytes(summary: Mapping[str, Any], logger: Any) -> None:
    """Say loudly what became of series whose label bytes are not UTF-8 (exit code stays 0: README)."""
    if summary.get("non_utf8_series"):
        logger.warning(
            "%d series with label bytes that are not UTF-8 were written byte-exact; a receiver that drops such "
            "series silently (Prometheus 2.44-2.x answers 204) loses them: run verify",
            summary["non_utf8_series"],
        )
    if summary.get("skipped_series"):
        logger.warning(
            "WARN: %d series were NOT migrated (label bytes that are not UTF-8): %s",
            summary["skipped_series"],
            "; ".join(summary.get("skipped_series_examples") or ()),
        )
