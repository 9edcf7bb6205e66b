"""The "Run validation" step: check source, target and spec before any data moves.

Each check of :mod:`m3migrate.checks.validate` runs as its own task (in parallel; transient failures retried).
The flow writes nothing the migration does not write itself: the target write check sends an empty write
request and one real sample of the migration, which it writes again later (see docs/validation.md); it
publishes a markdown table artifact, returns the JSON report, and raises ValidationFailed (flow run
Failed) when any check fails, so the migrate flow can run it first and stop.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from blocks import M3Source, ThanosBucket, ThanosTarget
from m3migrate.checks.validate import (
    CHECKS,
    ValidationFailed,
    ValidationInput,
    ValidationReport,
    checks_for,
    shared_listings,
)
from m3migrate.settings.spec import MigrationSpec
from tasks.validate import result_of, validation_check


def artifact_key(migration_id: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{migration_id}-validation".lower())


# Prefect types task_runner as TaskRunner[PrefectFuture[Any]], invariant in the future: PrefectHQ/prefect#16938
@flow(name="validate", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=len(CHECKS)))  # type: ignore[arg-type]
def validate(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    clock_skew_threshold_s: float = 30.0,
    retries: int = 2,
    retry_delay_seconds: float = 2.0,
    probe_at_ms: int | None = None,
    bucket: ThanosBucket | None = None,
    state_dir: str | None = None,
) -> dict[str, Any]:
    """Run every check; the report as a dict. Raises ValidationFailed when a check fails.

    ``probe_at_ms``: hybrid: the saved boundary, where the remote-write tail begins.
    ``state_dir``: the migration's state root: a resumed run is probed where its unit journal says it goes
    on (not at its saved front, which lags the units written after it).
    ``bucket``: where write_mode blocks/hybrid uploads blocks (checked for writability).
    """
    logger = get_run_logger()
    inp = ValidationInput(
        source.settings(),
        target.settings(),
        spec,
        clock_skew_threshold_s,
        probe_at_ms,
        bucket.settings() if bucket is not None else None,
        state_dir,
    )
    checks = []
    with shared_listings():  # the checks list the source's last hour once between them
        futures = {
            name: validation_check.with_options(
                name=f"check-{re.sub(r'[^a-z0-9]+', '-', name.lower())}",
                retries=retries,
                retry_delay_seconds=retry_delay_seconds,
            ).submit(name, inp)
            for name in checks_for(spec)
        }
        for name, future in futures.items():
            future.wait()
            checks.append(result_of(name, future.state))
    report = ValidationReport(checks, migration_id=inp.migration_id)
    for check in report.checks:
        log = logger.error if check.status == "fail" else logger.warning if check.status == "warn" else logger.info
        log(
            "%s %s: %s%s",
            check.status.upper(),
            check.name,
            check.observed,
            f" -> fix: {check.fix}" if check.fix else "",
        )
    create_markdown_artifact(
        report.to_markdown(), key=artifact_key(inp.migration_id), description=f"Validation of {inp.migration_id}"
    )
    data = report.to_dict()
    if report.failed:
        failed = [c.name for c in report.checks if c.status == "fail"]
        raise ValidationFailed(f"validation failed: {len(failed)} check(s) failed: {', '.join(failed)}", data)
    return data
