"""Replication: continue the migration's time front from its watermark to `now - lag`, pass by pass.

Each pass discovers the series that have samples in (watermark, until] (so series born since the
last pass are included), plans batches and windows like the bulk migration, and is saved before it
starts: a pass interrupted by a crash is resumed as planned, and only a completed pass advances the
watermark.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from m3migrate.clients.m3admin import M3AdminClient
from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Plan
from m3migrate.plan.migration import build_plan, check_writing
from m3migrate.progress import lag_seconds
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, ReplicationState


@dataclass
class PassOutcome:
    replication: ReplicationState
    lag_seconds: float
    lag_growing: bool


def replication_start_ms(state: MigrationState) -> int:
    """The first instant the next pass copies: just after the watermark (or the migration's end)."""
    replication = state.load_replication()
    if replication.watermark_ms is not None:
        return replication.watermark_ms + 1
    plan = state.load_plan("migrate")
    progress = state.load_progress("migrate")
    if plan is None:
        raise ConfigError(
            f"migration {state.migration_id!r} never ran, so there is nothing to continue",
            hint="run `m3migrate migrate` with the same options (and --migration-id) first",
        )
    if progress.plan_id != plan.id or progress.windows_done < len(plan.windows):
        raise ConfigError(
            f"migration {state.migration_id!r} has not finished ({progress.windows_done}/{len(plan.windows)} windows)",
            hint="rerun `m3migrate migrate` with the same options until it completes, then replicate",
        )
    return plan.end_ms + 1


def plan_pass(
    source: SourceSettings,
    spec: MigrationSpec,
    state: MigrationState,
    until_ms: int,
    on_metric: Callable[[str, int], None] | None = None,
) -> Plan | None:
    """The pass to run: an interrupted one as it was planned, else a new one; None when up to date."""
    pending = state.load_plan("replicate")
    if pending is not None:
        check_writing(pending, spec)  # an interrupted pass resumes only with the relabeling it was planned with
        return pending
    start_ms = replication_start_ms(state)
    if until_ms < start_ms:
        return None
    plan = build_plan(source, spec, state.migration_id, on_metric, start_ms=start_ms, end_ms=until_ms)
    state.save_plan(plan, "replicate")
    return plan


def finish_pass(state: MigrationState, plan: Plan, samples: int, now_ms: int | None = None) -> PassOutcome:
    """Advance the watermark to the pass's end and record the replication lag."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    replication = state.load_replication()
    lag = lag_seconds(plan.end_ms, now_ms)  # how far behind now the copied front is
    growing = replication.last_lag_seconds is not None and lag > replication.last_lag_seconds + 60
    replication.watermark_ms = plan.end_ms
    replication.passes += 1
    replication.last_lag_seconds = lag
    replication.history = [
        *replication.history,
        {
            "pass": replication.passes,
            "start_ms": plan.start_ms,
            "end_ms": plan.end_ms,
            "series": plan.series_count,
            "samples": samples,
            "lag_seconds": round(lag, 1),
            "finished_at": now_ms,
        },
    ][-50:]
    state.save_replication(replication)
    state.clear_stage("replicate")
    return PassOutcome(replication, lag, growing)


def namespace_changes(source: SourceSettings, state: MigrationState) -> list[str]:
    """M3 namespaces created or deleted since the last pass (empty for a non-M3 source)."""
    with M3AdminClient(source.admin_base, source) as admin:
        try:
            namespaces = admin.namespaces()
        except Exception:  # the admin API is optional: its absence must not stop replication
            return []
    if namespaces is None:
        return []
    current = sorted({(ns.name, ns.storage_policy or "unaggregated") for ns in namespaces})
    replication = state.load_replication()
    previous = {tuple(item) for item in (replication.namespaces or [])}
    changes: list[str] = []
    if replication.namespaces is not None:
        changes += [
            f"namespace created: {name} ({policy})" for name, policy in current if (name, policy) not in previous
        ]
        changes += [
            f"namespace deleted: {name} ({policy})"
            for name, policy in sorted(previous)
            if (name, policy) not in set(current)
        ]
    replication.namespaces = [list(item) for item in current]
    state.save_replication(replication)
    return changes
