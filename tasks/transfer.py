"""The unit of orchestrated work: one segment (a group of batches over a run of windows) of the front.

Inside a segment the engine's :class:`~m3migrate.transfer.front.Front` moves batch × window units in parallel and
journals each one, so a Prefect task costs its overhead once per segment, not once per unit, while a
crash or a retry still resumes at the unit. The segment's result is cached (key: migration, plan,
generation, stage, segment) under the migration's state directory, so a rerun skips finished segments
without even opening a connection, and `--start-over` (a new generation) rewrites everything.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import update_progress_artifact
from prefect.context import TaskRunContext

from m3migrate.errors import ConfigError
from m3migrate.failpoints import failpoint
from m3migrate.plan.batches import Plan
from m3migrate.plan.tiers import Tier
from m3migrate.progress import PHASES, Progress, lag_seconds
from m3migrate.relabel import Relabeler
from m3migrate.settings.endpoints import TargetSettings
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.front import Front, FrontTotals, Segment, WindowDone
from m3migrate.transfer.unit import Transfer
from tasks.context import UnitContext
from tasks.retries import TASK_RETRIES, retry_unless_terminal

KEEP_TRANSFERS = 4  # per process: the open connection pools of the most recent runs
PROGRESS_EVERY_SECONDS = 2.0  # UI progress updates from inside a segment (each is one API call)

ProgressListener = Callable[[dict[str, Any]], None]
PROGRESS_LISTENERS: list[ProgressListener] = []  # in-process subscribers (the CLI's progress bar)


def notify(event: dict[str, Any]) -> None:
    for listener in list(PROGRESS_LISTENERS):
        try:
            listener(event)
        except Exception:  # a broken progress bar must never stop a migration
            logging.getLogger("m3migrate").debug("progress listener failed", exc_info=True)


@dataclass(frozen=True)
class TransferContext(UnitContext):
    """Everything a segment task needs besides its segment."""

    target: TargetSettings
    write_concurrency: int
    units_in_flight: int
    depth: int
    windows_total: int
    progress_artifact_id: str | None = None

    @property
    def fingerprint(self) -> tuple:
        """What a cached Transfer was built for: the plan (whose id covers the relabeling, source label
        and write mode) and the relabeler itself, so a changed rule never reuses an old label cache."""
        rules = tuple(json.dumps(r.model_dump(mode="json"), sort_keys=True) for r in self.relabeler_rules)
        return (self.migration_id, self.plan_id, self.generation, rules, self.add_labels)


_transfers: dict[tuple, Transfer] = {}
_plans: dict[tuple, Plan] = {}
_shared_lock = threading.Lock()


def get_transfer(ctx: TransferContext) -> Transfer:
    """One Transfer (connection pools, write threads, label cache) per process and migration run."""
    with _shared_lock:
        transfer = _transfers.get(ctx.fingerprint)
        if transfer is None:
            while len(_transfers) >= KEEP_TRANSFERS:  # a long-lived Dask worker serves many runs
                _transfers.pop(next(iter(_transfers))).close()
            relabeler = Relabeler(list(ctx.relabeler_rules), add_labels=dict(ctx.add_labels))
            transfer = Transfer(ctx.source, ctx.target, relabeler, write_concurrency=ctx.write_concurrency)
            _transfers[ctx.fingerprint] = transfer
        return transfer


def saved_plan(state_root: str, migration_id: str, stage: Stage, plan_id: str) -> Plan:
    """A stage's saved plan, parsed once per process (a plan of a million series is big); a ConfigError
    if another run has replanned the migration since this run's flow read it."""
    key = (state_root, migration_id, stage, plan_id)
    with _shared_lock:
        plan = _plans.get(key)
        if plan is None:
            plan = MigrationState(Path(state_root), migration_id).load_plan(stage)
            if plan is None or plan.id != plan_id:
                raise ConfigError(
                    f"migration {migration_id!r}: the saved {stage} plan is not {plan_id}",
                    hint="another run replanned this migration meanwhile; rerun",
                )
            _plans[key] = plan
        return plan


def remember_plan(state: MigrationState, stage: Stage, plan: Plan) -> None:
    """Share a plan a flow of this process has just saved or read with the tasks it runs here: reading a
    plan of 10^5 series again costs ~0.8 s of CPU and holds a second copy of it."""
    with _shared_lock:
        _plans[(str(state.dir.parent), state.migration_id, stage, plan.id)] = plan


def stage_plan(state: MigrationState, stage: Stage, plan_id: str | None = None) -> Plan | None:
    """A stage's saved plan for a subflow: the one its caller holds (``plan_id``: taken from this process's
    cache when the caller remembered it, else read and checked), or the state's (``None``); remembered
    either way, so the subflow's tasks in this process read no plan. None when the stage has no plan."""
    if plan_id is not None:
        return saved_plan(str(state.dir.parent), state.migration_id, stage, plan_id)
    plan = state.load_plan(stage)
    if plan is not None:
        remember_plan(state, stage, plan)
    return plan


def forget_plans() -> None:
    with _shared_lock:
        _plans.clear()


def close_transfers() -> None:
    with _shared_lock:
        for transfer in _transfers.values():
            transfer.close()
        _transfers.clear()
    forget_plans()


def segment_cache_key(context: TaskRunContext, parameters: dict) -> str:
    ctx: TransferContext = parameters["ctx"]
    seg: Segment = parameters["segment"]
    return (
        f"{ctx.migration_id}-{ctx.plan_id}-g{ctx.generation}-{ctx.stage}"
        f"-w{seg.first_window}-{seg.last_window}-grp{seg.group}of{seg.groups}"
    )


def results_storage(results_dir: Path) -> Path:
    """Prefect resolves a Path to local file storage without a saved block."""
    results_dir.mkdir(parents=True, exist_ok=True)
    return results_dir


class _SegmentProgress:
    """Logs and UI progress from inside a segment, throttled (each artifact update is an API call)."""

    def __init__(self, ctx: TransferContext, segment: Segment, samples_before: int, tiers: Sequence[Tier] = ()) -> None:
        self.ctx = ctx
        self.tiers = tiers
        self.segment = segment
        self.samples_before = samples_before
        self.logger = get_run_logger()
        self.t0 = self.last = time.monotonic()

    def __call__(self, done: WindowDone, totals: FrontTotals) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_SECONDS or done.index == self.segment.last_window:
            return  # the flow reports each segment's end
        self.last = now
        elapsed = now - self.t0
        rate = totals.samples_moved_now / elapsed if elapsed > 0 else 0.0
        report = Progress(
            PHASES.get(self.ctx.stage, self.ctx.stage),
            done.index + 1,
            self.ctx.windows_total,
            self.samples_before + totals.samples,
            rate,
            elapsed,
            lag_seconds=lag_seconds(done.end_ms) if self.ctx.stage == "replicate" else None,
            front_end_ms=done.end_ms,
            windows_before=self.segment.first_window,  # the ETA at this segment's pace
        )
        if self.ctx.progress_artifact_id and self.segment.group == 0:
            description = report.description(self.ctx.migration_id)
            artifact_id = UUID(self.ctx.progress_artifact_id)
            update_progress_artifact(artifact_id, report.percent, description=description)
        tier = next((t for t in self.tiers if t.start_ms <= done.end_ms <= t.end_ms), None)
        where = f" (tier {tier.namespace}, {tier.storage_policy})" if tier else ""
        self.logger.info("front at %s%s: %s", iso_ms(done.end_ms), where, report.log_line())
        notify(report.event())


@task(
    name="transfer-segment",
    task_run_name="{segment.label}",
    **TASK_RETRIES,
    retry_condition_fn=retry_unless_terminal,
    cache_key_fn=segment_cache_key,
    persist_result=True,
)
def transfer_segment(ctx: TransferContext, segment: Segment, samples_before: int = 0) -> FrontTotals:
    """Move one segment's batch × window units along the front; returns the segment's totals.

    Units an earlier attempt finished are skipped, units it started are reconciled (journal).
    ``samples_before`` (what earlier segments moved) only makes the progress figures global.
    """
    plan = saved_plan(ctx.state_root, ctx.migration_id, ctx.stage, ctx.plan_id)
    windows = segment.windows(plan)
    transfer = get_transfer(ctx)
    transfer.use_plan(plan)  # series new since discovery: migrated by the batch that owns them
    front = Front(
        transfer,
        segment.batches(plan),
        windows,
        ctx.state.journal(ctx.stage, ctx.plan_id, range(windows[0].index, windows[-1].index + 1)),
        depth=ctx.depth,
        concurrency=ctx.units_in_flight,
        on_window=_SegmentProgress(ctx, segment, samples_before, plan.tiers),
    )
    totals = front.run()
    failpoint("segment.done")
    return totals
