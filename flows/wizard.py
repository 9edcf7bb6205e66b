"""The whole wizard in one run: validate → migrate → replicate → close.

For a data engineer who wants one button: each step is its own subflow (visible as such in the Prefect
UI), and the run ends paused at the cutover form of the close step.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from blocks import M3Source, ThanosBucket, ThanosTarget
from flows.close import DEFAULT_APPROVAL_HOURS, REPLICATE_DEPLOYMENT, close
from flows.migrate import migrate
from flows.replicate import DEFAULT_LAG_MINUTES, replicate
from m3migrate.settings.spec import MigrationSpec


@flow(name="end-to-end", log_prints=False, timeout_seconds=close.timeout_seconds, persist_result=True)
def end_to_end(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    start_over: bool = False,
    state_dir: str | None = None,
    lag_minutes: int = DEFAULT_LAG_MINUTES,
    replicate_deployment: str = REPLICATE_DEPLOYMENT,
    approval_timeout_hours: float = DEFAULT_APPROVAL_HOURS,
    sample_fraction: float = 1.0,
    poll_interval_seconds: int = 10,
    bucket: ThanosBucket | None = None,
) -> dict[str, Any]:
    """Validate and migrate (a failing check stops here), one replication pass, then close and wait for approval."""
    logger = get_run_logger()
    # migrate runs the validate flow first (probing at its saved front when resuming) and stops on a fail
    migration = migrate(source, target, spec, start_over=start_over, state_dir=state_dir, bucket=bucket)
    replication = replicate(source, target, spec, lag_minutes=lag_minutes, state_dir=state_dir)
    logger.info(
        "migrated %d samples; replication at %s; closing",
        migration.samples,
        replication.watermark or replication.status,
    )
    closed = close(
        source,
        target,
        spec,
        replicate_deployment=replicate_deployment,
        approval_timeout_hours=approval_timeout_hours,
        sample_fraction=sample_fraction,
        state_dir=state_dir,
        lag_minutes=lag_minutes,
        poll_interval_seconds=poll_interval_seconds,
    )
    # plain JSON in the persisted result: whoever reads it back (the demo) needs none of these classes
    return {"migration": migration.to_dict(), "replication": replication.to_dict(), "close": closed.to_dict()}
