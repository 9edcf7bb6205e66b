"""Planning the blocks and hybrid write modes: which part of the range goes as blocks, which by remote write.

``blocks``: the whole range is backfilled as TSDB blocks; its plan is the migration's own (migrate stage),
so replication continues from the range's end exactly as after a remote-write migration.

``hybrid``: the history before a boundary goes as blocks (its own plan, stage ``backfill``), the tail from
the boundary to the end by remote write (the migrate stage's plan, run by the ordinary transfer front).
The boundary is computed once, at the first run, from the clock (see
:meth:`~m3migrate.settings.spec.MigrationSpec.hybrid_boundary_ms`) and saved, so reruns split the range at the same
instant: blocks hold [start, boundary - 1], remote write [boundary, end], no gap and no overlap. A tail
must be written soon after its boundary was fixed (the target's accept window moves with its clock), so
the flow writes the tail first and plans the backfill after it. Engine code: no Prefect here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from m3migrate.errors import ConfigError
from m3migrate.plan.batches import Plan
from m3migrate.plan.migration import PreparedMigration, prepare
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms

log = logging.getLogger("m3migrate.plan.blockmode")


def boundary_ms(spec: MigrationSpec, state: MigrationState | None = None, now_ms: int | None = None) -> int:
    """The first instant written by remote write (end + 1 when everything goes as blocks).

    hybrid: the saved boundary of this migration, else the one the clock gives now (not saved here).
    """
    if spec.write_mode == "blocks":
        return spec.end_ms + 1
    if spec.write_mode != "hybrid":
        return spec.start_ms
    saved = state.load_boundary() if state is not None else None
    if saved is not None:
        return saved
    return spec.hybrid_boundary_ms(int(time.time() * 1000) if now_ms is None else now_ms)


def fix_boundary(spec: MigrationSpec, state: MigrationState, *, start_over: bool = False) -> int:
    """Start over if asked, then fix (compute and save) or load the migration's boundary."""
    if start_over:
        generation = state.start_over()
        log.info("starting migration %s over (generation %d)", state.migration_id, generation)
    boundary = boundary_ms(spec, state)
    if not spec.start_ms <= boundary <= spec.end_ms + 1:
        raise ConfigError(
            f"migration {state.migration_id!r} was split at {iso_ms(boundary)}, outside the range "
            f"{iso_ms(spec.start_ms)} .. {iso_ms(spec.end_ms)}",
            hint="rerun with the same range to resume, pass --start-over to replan, or choose another --migration-id",
        )
    if spec.write_mode == "hybrid" and state.load_boundary() is None:
        state.save_boundary(boundary)
        log.info(
            "hybrid migration %s: blocks before %s, remote write from there to %s",
            state.migration_id,
            iso_ms(boundary),
            iso_ms(spec.end_ms),
        )
    return boundary


def backfill_stage(spec: MigrationSpec, boundary: int) -> Stage:
    """Where the backfill's plan lives: the migration's own plan unless a remote-write tail has it."""
    return "migrate" if boundary > spec.end_ms else "backfill"


def prepare_tail(
    source: SourceSettings,
    spec: MigrationSpec,
    state: MigrationState,
    boundary: int,
    on_metric: Callable[[str, int], None] | None = None,
) -> PreparedMigration | None:
    """The remote-write tail [boundary, end] as the migrate stage's plan; None when there is no tail."""
    if boundary > spec.end_ms:
        return None
    return prepare(source, spec, state, on_metric=on_metric, start_ms=boundary)


def prepare_backfill(
    source: SourceSettings,
    spec: MigrationSpec,
    state: MigrationState,
    boundary: int,
    on_metric: Callable[[str, int], None] | None = None,
) -> PreparedMigration | None:
    """The block backfill's plan over [start, boundary - 1]; None when everything goes by remote write."""
    if boundary <= spec.start_ms:
        return None
    stage = backfill_stage(spec, boundary)
    return prepare(source, spec, state, on_metric=on_metric, end_ms=min(boundary - 1, spec.end_ms), stage=stage)


def mark_migrated(state: MigrationState, plan: Plan, samples: int) -> None:
    """Record a backfill of the migration's own plan as a finished migration, so `replicate` continues
    from the plan's end (as after a remote-write migration)."""
    progress = state.load_progress()
    if progress.plan_id != plan.id or progress.generation != state.generation:
        progress.samples = 0
    progress.plan_id, progress.generation = plan.id, state.generation
    progress.windows_total = progress.windows_done = len(plan.windows)
    progress.front_end_ms = plan.end_ms
    progress.samples = max(samples, progress.samples)  # a rerun skips the windows it finds done
    progress.series = plan.series_count
    state.save_progress(progress)
