"""The "Verify migration" step: compare source and target per series and window, publish the report.

Reuses the migration's saved plan (same batches) when there is one, else discovers the series again.
Publishes a table artifact (the problems), a markdown artifact (totals and first problems) and a
markdown artifact pointing at the CSV/Parquet/PNG files; returns the totals, and raises
VerificationFailed (the flow run ends Failed) when anything differs.
"""

from __future__ import annotations

import math
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from blocks import M3Source, ThanosTarget
from m3migrate import collector
from m3migrate.checks.verify import DEFAULT_SAMPLES_FRACTION, VerificationFailed, VerificationReport, verify
from m3migrate.model import DEFAULT_IGNORE_LABELS
from m3migrate.plan.batches import Plan
from m3migrate.settings.spec import MigrationSpec, default_state_dir
from m3migrate.state import MigrationState, resolve_spec

TABLE_ROWS = 200


def artifact_key(migration_id: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]", "-", f"{migration_id}-verify-{what}".lower())


def _saved_plan(state_root: Path, migration_id: str, spec: MigrationSpec) -> Plan | None:
    plan_path = state_root / migration_id / "plan.json"
    if not plan_path.exists():
        return None
    plan = MigrationState(state_root, migration_id).load_plan()
    if plan is None or (plan.start_ms, plan.end_ms, plan.selectors) != (spec.start_ms, spec.end_ms, list(spec.match)):
        return None  # planned for another range or selection: discover again
    return plan


@task(name="verify-series", cache_policy=NONE)
def run_verification(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    state_dir: str,
    sample_fraction: float,
    seed: int,
    window_minutes: int | None,
    ignore_labels: list[str],
    evidence: str = "figures",
    samples_fraction: float = DEFAULT_SAMPLES_FRACTION,
) -> VerificationReport:
    logger = get_run_logger()
    src, tgt = source.settings(), target.settings()
    migration_id = spec.resolved_id(src.read_url, tgt.write_url)
    plan = _saved_plan(Path(state_dir), migration_id, spec)
    logger.info(
        "verifying migration %s with %s", migration_id, f"its saved plan {plan.id}" if plan else "a fresh discovery"
    )
    step = 0

    def progress(done: int, total: int) -> None:
        nonlocal step
        if done == total or done * 10 // total > step:
            step = done * 10 // total
            logger.info("verified %d/%d batch × window tasks", done, total)

    return verify(
        src,
        tgt,
        spec,
        plan,
        window_ms=window_minutes * 60_000 if window_minutes else None,
        sample_fraction=sample_fraction,
        seed=seed,
        concurrency=spec.task_concurrency,
        ignore_labels=ignore_labels,
        migration_id=migration_id,
        on_progress=progress,
        evidence=evidence,
        samples_fraction=samples_fraction,
    )


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else value if math.isfinite(value) else str(value)
    if hasattr(value, "item"):  # numpy / pandas scalars
        return _jsonable(value.item())
    return value if isinstance(value, int | str | bool) else str(value)


def _table_rows(report: VerificationReport, limit: int = TABLE_ROWS) -> list[dict[str, Any]]:
    head = report.problems.head(limit).astype(object).where(report.problems.head(limit).notna(), None)
    return [{k: _jsonable(v) for k, v in row.items()} for row in head.to_dict(orient="records")]


@flow(name="verify", log_prints=False)
def verify_flow(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec | None = None,
    sample_fraction: float = 1.0,
    state_dir: str | None = None,
    report_dir: str | None = None,
    seed: int = 0,
    window_minutes: int | None = None,
    ignore_labels: list[str] | None = None,
    migration_id: str | None = None,
    until: datetime | None = None,
    evidence: str = "figures",
    samples_fraction: float = DEFAULT_SAMPLES_FRACTION,
) -> dict[str, Any]:
    """Compare the migrated range of source and target; Failed when anything differs.

    ``migration_id`` alone is enough once migrate saved the spec (a spec given is checked against it);
    ``until``: verify up to this instant instead of the spec's end (what replication added since);
    ``evidence``/``samples_fraction``: see docs/verification.md ("samples": every series × window
    sample by sample).
    """
    collector.tune_for_bulk_data()  # this process now holds the migration's data
    logger = get_run_logger()
    state_root = Path(state_dir) if state_dir else default_state_dir()
    spec = resolve_spec(state_root, migration_id, spec, source.read_url, target.write_url)
    if until is not None:
        until = until.replace(tzinfo=UTC) if until.tzinfo is None else until.astimezone(UTC)
        if until.timestamp() * 1000 > spec.end_ms:
            spec = spec.model_copy(update={"end": until})
    report = run_verification(
        source,
        target,
        spec,
        str(state_root),
        sample_fraction,
        seed,
        window_minutes,
        list(DEFAULT_IGNORE_LABELS if ignore_labels is None else ignore_labels),
        evidence,
        samples_fraction,
    )
    mid = report.migration_id
    out_dir = Path(report_dir) if report_dir else Path(tempfile.mkdtemp(prefix=f"m3migrate-verify-{mid}-"))
    paths = report.write(out_dir)
    summary = {**report.summary(), "report_dir": str(out_dir)}

    create_table_artifact(
        _table_rows(report),
        key=artifact_key(mid, "problems"),
        description=f"Verification of {mid}: missing, extra and differing series (first {TABLE_ROWS} rows)",
    )
    create_markdown_artifact(
        report.to_markdown(limit=20), key=artifact_key(mid, "summary"), description=f"Verification of {mid}"
    )
    files = "\n".join(f"- {name}: [{path.name}]({path.resolve().as_uri()}) `{path}`" for name, path in paths.items())
    create_markdown_artifact(
        f"# Verification report files of {mid}\n\n{files}\n",
        key=artifact_key(mid, "files"),
        description="CSV / Parquet / PNG for download",
    )
    t = report.totals
    logger.info(
        "verification of %s: %d series checked, %d/%d samples (source/target), %d mismatches, %d missing, %d extra",
        mid,
        t["series_checked"],
        t["samples_source"],
        t["samples_target"],
        t["mismatches"],
        t["missing"],
        t["extra"],
    )
    if not report.ok:
        raise VerificationFailed(
            f"verification of {mid} failed: {t['mismatches']} mismatching series × windows, "
            f"{t['missing']} missing and {t['extra']} extra series (report: {out_dir})",
            summary,
        )
    return summary
