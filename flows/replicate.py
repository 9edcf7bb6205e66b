"""The "Replication" step: keep copying new writes from M3 into Thanos until cutover.

One run is one pass from the migration's watermark to `now - lag` (the lag covers writes that reach M3
late, within its namespaces' bufferPast). A scheduled deployment runs it every few minutes; the
migration's lock makes overlapping runs impossible (a second run waits briefly, then skips cleanly).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import TypedDict

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from blocks import M3Source, ThanosTarget
from flows.transfer import run_transfer
from m3migrate.errors import ConfigError
from m3migrate.failpoints import failpoint
from m3migrate.plan.batches import Plan
from m3migrate.progress import duration, lag_seconds
from m3migrate.report import PassResult, figures_markdown
from m3migrate.settings.spec import MigrationSpec, default_state_dir
from m3migrate.state import MigrationLocked, MigrationState, resolve_spec
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.latewrites import LateWindow, recheck_late_writes, record_late_check
from m3migrate.transfer.replication import finish_pass, namespace_changes, plan_pass, replication_start_ms

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


def pass_until_ms(until: datetime | None, lag_minutes: int, now_ms: int | None = None) -> int:
    """Where the pass ends: now - lag, or ``until``, which must not be in the future: the watermark would
    move past now, and whatever reaches the source later with an older timestamp would never be copied."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if until is None:
        return now_ms - lag_minutes * 60_000
    until_ms = int(until.timestamp() * 1000)
    if until_ms > now_ms:
        raise ConfigError(
            f"--until {iso_ms(until_ms)} is in the future (now is {iso_ms(now_ms)}): the watermark would move "
            "past now and writes reaching the source later, older than it, would never be replicated",
            hint="leave --until out (the pass then ends at now - lag) or give an instant in the past",
        )
    return until_ms


@task(name="recheck-late-writes", cache_policy=NONE)
def recheck_previous_pass(
    source: M3Source, target: ThanosTarget, spec: MigrationSpec, state: MigrationState, lag_minutes: int
) -> list[LateWindow]:
    """Find (and copy again) samples that reached the source after the last pass, older than its end."""
    logger = get_run_logger()
    late = recheck_late_writes(source.settings(), target.settings(), spec, state)
    if late:
        logger.warning(
            "%d samples arrived in M3 after lag %d min, in %d windows the last pass had copied (%s); %s; "
            "raise --lag (it must cover how late writes reach M3, its bufferPast)",
            sum(w.late for w in late),
            lag_minutes,
            len(late),
            ", ".join(f"{iso_ms(w.start_ms)} .. {iso_ms(w.end_ms)}: {w.late}" for w in late),
            "re-copied them" if all(w.recopied for w in late) else "copied again where the target took them",
        )
    for w in late:
        if not w.recopied:
            logger.warning(
                "%d late samples in %s .. %s are NOT in the target: it refused them (%s); give the target an "
                "out-of-order window covering them, or accept the gap (m3migrate verify shows it)",
                w.late,
                iso_ms(w.start_ms),
                iso_ms(w.end_ms),
                w.refused,
            )
    return late


@flow(name="replicate", log_prints=False)
def replicate(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec | None = None,
    lag_minutes: int = DEFAULT_LAG_MINUTES,
    until: datetime | None = None,
    state_dir: str | None = None,
    wait_for_lock_seconds: float = 10.0,
    migration_id: str | None = None,
) -> PassResult:
    """Copy what reached the source since the last pass, up to `until` (default: now - lag).

    ``migration_id`` alone is enough once migrate saved the spec (a spec given is checked against it).
    """
    logger = get_run_logger()
    root = Path(state_dir) if state_dir else default_state_dir()
    spec = resolve_spec(root, migration_id, spec, source.read_url, target.write_url)
    state = MigrationState(root, spec.resolved_id(source.read_url, target.write_url))
    until_ms = pass_until_ms(until, lag_minutes)
    try:
        with state.lock(wait_seconds=wait_for_lock_seconds):
            late = recheck_previous_pass(source, target, spec, state, lag_minutes)
            plan, changes = plan_replication_pass(source, spec, state, until_ms)
            if plan is None:
                watermark = replication_start_ms(state) - 1  # the watermark, or the migration's end
                lag = lag_seconds(watermark)
                logger.info(
                    "nothing to replicate: the watermark is already at %s, replication lag %s",
                    iso_ms(watermark),
                    duration(lag),
                )
                return PassResult(
                    state.migration_id, "up-to-date", lag_seconds=round(lag, 1), source_changes=changes, **_late(late)
                )
            summary = run_transfer(source, target, spec, state, "replicate", plan)
            failpoint("replicate.finish")
            record_late_check(state, plan, lag_minutes * 60_000)
            outcome = finish_pass(state, plan, summary.samples)
    except MigrationLocked as exc:
        logger.warning("skipped: %s", exc)
        return PassResult(state.migration_id, "skipped-locked", reason=str(exc))
    result = PassResult(
        state.migration_id,
        "replicated",
        watermark=iso_ms(outcome.replication.watermark_ms),
        lag_seconds=round(outcome.lag_seconds, 1),
        series=plan.series_count,
        samples=summary.samples,
        samples_moved_now=summary.samples_moved_now,
        passes=outcome.replication.passes,
        source_changes=changes,
        **_late(late),
    )
    if outcome.lag_growing:
        logger.warning(
            "replication lag grew to %.0f s: passes take longer than the schedule interval, or the "
            "source is slow; consider a longer interval or more concurrency",
            outcome.lag_seconds,
        )
    logger.info(
        "replication lag %s (watermark %s), %d samples in this pass",
        duration(outcome.lag_seconds),
        result.watermark,
        summary.samples,
    )
    create_markdown_artifact(
        figures_markdown("Replication", result),
        key=f"{state.migration_id}-replication",
        description=f"Replication lag: {outcome.lag_seconds:.0f} s",
    )
    return result


class _LateFigures(TypedDict):
    late_samples: int
    late_samples_recopied: int


def _late(late: list[LateWindow]) -> _LateFigures:
    """The late writes found in the previous pass's windows, for the result and the artifact."""
    return {
        "late_samples": sum(w.late for w in late),
        "late_samples_recopied": sum(w.late for w in late if w.recopied),
    }
