"""The "Replication" step: keep copying new writes from M3 into Thanos until cutover.

One run is one pass from the migration's watermark to `now - lag` (the lag covers writes that reach M3
late, within its namespaces' bufferPast). A scheduled deployment runs it every few minutes; the
migration's lock makes overlapping runs impossible (a second run waits briefly, then skips cleanly).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from blocks import M3Source, ThanosTarget
from flows.migrate import run_transfer
from m3migrate.failpoints import failpoint
from m3migrate.plan import Plan
from m3migrate.replication import finish_pass, namespace_changes, plan_pass
from m3migrate.spec import MigrationSpec, default_state_dir
from m3migrate.state import MigrationLocked, MigrationState
from m3migrate.timefmt import iso_ms

DEFAULT_LAG_MINUTES = 15  # more than M3's default bufferPast (10m): late writes are not missed


@task(name="plan-replication-pass", cache_policy=NONE)
def plan_replication_pass(
    source: M3Source, spec: MigrationSpec, state: MigrationState, until_ms: int
) -> tuple[Plan | None, list[str]]:
    """The pass to run (None when up to date) and the source changes seen since the last pass."""
    logger = get_run_logger()
    changes = namespace_changes(source.settings(), state)
    for change in changes:
        logger.warning("source changed since the last pass: %s (replication continues for the rest)", change)
    plan = plan_pass(source.settings(), spec, state, until_ms)
    if plan is not None:
        logger.info(
            "replication pass %s: %d series over %s .. %s",
            plan.id,
            plan.series_count,
            iso_ms(plan.start_ms),
            iso_ms(plan.end_ms),
        )
    return plan, changes


@flow(name="replicate", log_prints=False)
def replicate(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    lag_minutes: int = DEFAULT_LAG_MINUTES,
    until: datetime | None = None,
    state_dir: str | None = None,
    wait_for_lock_seconds: float = 10.0,
) -> dict[str, Any]:
    """Copy what reached the source since the last pass, up to `until` (default: now - lag)."""
    logger = get_run_logger()
    state = MigrationState(
        Path(state_dir) if state_dir else default_state_dir(), spec.resolved_id(source.read_url, target.write_url)
    )
    until_ms = int((until.timestamp() if until else time.time() - lag_minutes * 60) * 1000)
    try:
        with state.lock(wait_seconds=wait_for_lock_seconds):
            plan, changes = plan_replication_pass(source, spec, state, until_ms)
            if plan is None:
                lag = time.time() - (state.load_replication().watermark_ms or 0) / 1000
                logger.info("nothing to replicate: the watermark is already at %s", iso_ms(until_ms))
                return {
                    "migration_id": state.migration_id,
                    "status": "up-to-date",
                    "lag_seconds": round(lag, 1),
                    "source_changes": changes,
                }
            summary = run_transfer(source, target, spec, state, "replicate")
            failpoint("replicate.finish")
            outcome = finish_pass(state, plan, summary["samples"])
    except MigrationLocked as exc:
        logger.warning("skipped: %s", exc)
        return {"migration_id": state.migration_id, "status": "skipped-locked", "reason": str(exc)}
    result = {
        "migration_id": state.migration_id,
        "status": "replicated",
        "watermark": iso_ms(outcome.replication.watermark_ms),
        "lag_seconds": round(outcome.lag_seconds, 1),
        "series": plan.series_count,
        "samples": summary["samples"],
        "samples_moved_now": summary["samples_moved_now"],
        "passes": outcome.replication.passes,
        "source_changes": changes,
    }
    if outcome.lag_growing:
        logger.warning(
            "replication lag grew to %.0f s: passes take longer than the schedule interval, or the "
            "source is slow; consider a longer interval or more concurrency",
            outcome.lag_seconds,
        )
    logger.info(
        "replication lag %.0f s (watermark %s), %d samples in this pass",
        outcome.lag_seconds,
        result["watermark"],
        summary["samples"],
    )
    create_markdown_artifact(
        "# Replication\n\n| figure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in result.items()),
        key=f"{state.migration_id}-replication",
        description=f"Replication lag: {outcome.lag_seconds:.0f} s",
    )
    return result
