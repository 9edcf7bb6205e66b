"""Preparing a migration run: its id, state, and plan (reused on rerun, rebuilt on start-over)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from m3migrate.config import SourceSettings
from m3migrate.errors import ConfigError
from m3migrate.plan import DAY_MS, Plan, discover, make_batches
from m3migrate.promql import PromQLClient
from m3migrate.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms

log = logging.getLogger("m3migrate.migration")


@dataclass
class PreparedMigration:
    migration_id: str
    state: MigrationState
    plan: Plan
    generation: int
    reused_plan: bool


class _PromQLDiscovery:
    """Adapts PromQLClient to the planner's DiscoveryAPI (one selector per call)."""

    def __init__(self, client: PromQLClient) -> None:
        self.client = client

    def series(self, selector: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
        return self.client.series([selector], start_ms, end_ms)

    def label_names(self, selector: str, start_ms: int, end_ms: int) -> list[str]:
        return self.client.label_names([selector], start_ms, end_ms)

    def label_values(self, name: str, selector: str, start_ms: int, end_ms: int) -> list[str]:
        return self.client.label_values(name, [selector], start_ms, end_ms)


WRITING_KEYS = ("relabel_rules", "merge_prometheus_prefix", "source_label_name", "source_label_value", "write_mode")


def writing_settings(spec: MigrationSpec) -> dict:
    """The spec's settings that change what is written: part of a plan's identity, so a resume with
    other relabeling cannot write earlier windows under old names and later ones under new."""
    return {
        "relabel_rules": [rule.model_dump(mode="json") for rule in spec.relabel_rules],
        "merge_prometheus_prefix": spec.merge_prometheus_prefix,
        "source_label_name": spec.source_label_name,
        "source_label_value": spec.source_label_value,
        "write_mode": spec.write_mode,
    }


def check_writing(plan: Plan, spec: MigrationSpec) -> None:
    """Refuse to resume a plan written with other relabeling, source label or write mode, naming what differs."""
    if plan.writing is None:
        raise ConfigError(
            f"the saved plan of migration {plan.migration_id!r} predates plan version 2: it does not record "
            "the relabeling, source label and write mode its windows were written with",
            hint="pass --start-over to replan and rewrite, or finish it with the m3migrate version that started it",
        )
    now = writing_settings(spec)
    changed = [k for k in WRITING_KEYS if plan.writing.get(k) != now[k]]
    if changed:
        detail = "; ".join(f"{k}: planned {_short(plan.writing.get(k))}, now {_short(now[k])}" for k in changed)
        raise ConfigError(
            f"migration {plan.migration_id!r} was planned with other settings that change what is written "
            f"({detail}): resuming would write earlier windows one way and later ones another",
            hint="rerun with the settings it was planned with, pass --start-over to replan and rewrite "
            "everything, or choose another --migration-id",
        )


def _short(value: object, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def build_plan(
    source: SourceSettings,
    spec: MigrationSpec,
    migration_id: str,
    on_metric: Callable[[str, int], None] | None = None,
    *,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> Plan:
    """Discover the spec's series on the source and pack them into batches (default: the spec's range)."""
    start_ms = spec.start_ms if start_ms is None else start_ms
    end_ms = spec.end_ms if end_ms is None else end_ms
    selectors = spec.selectors()
    with PromQLClient(source.promql_base, source, extra_headers=source.m3_headers()) as promql:
        per_selector = discover(
            selectors,
            start_ms,
            end_ms,
            api=_PromQLDiscovery(promql),
            slice_ms=spec.discovery_slice_hours * 3_600_000 if spec.discovery_slice_hours else DAY_MS,
            on_metric=on_metric,
        )
    relabeler = spec.relabeler()
    collisions = relabeler.find_collisions(s for group in per_selector for s in group)
    if collisions:
        first, second, out = collisions[0]
        raise ConfigError(
            f"{len(collisions)}+ pairs of source series would become one series after relabeling, e.g. "
            f"{dict(first)} and {dict(second)} both become {dict(out)}",
            hint="their samples would overwrite each other: narrow the rename rule or the selectors",
        )
    batches = make_batches(selectors, per_selector, min(spec.batch_max_series, source.max_series_per_query))
    return Plan(
        migration_id=migration_id,
        start_ms=start_ms,
        end_ms=end_ms,
        window_ms=spec.window_ms,
        batches=batches,
        selectors=list(spec.match),
        writing=writing_settings(spec),
    )


def prepare(
    source: SourceSettings,
    spec: MigrationSpec,
    state: MigrationState,
    *,
    start_over: bool = False,
    on_metric: Callable[[str, int], None] | None = None,
    start_ms: int | None = None,
    end_ms: int | None = None,
    stage: Stage = "migrate",
) -> PreparedMigration:
    """Load the saved plan (resume) or discover a new one (first run / start over).

    ``start_ms``/``end_ms``/``stage``: a part of the spec's range with its own plan (a hybrid migration's
    remote-write tail and block backfill); default the whole range as the migrate stage.
    The caller holds the migration's lock, so no other run can replan or write meanwhile.
    """
    migration_id = state.migration_id
    # the whole range must hold series; a part of it (a hybrid migration's tail or history) may be empty
    whole_range = start_ms in (None, spec.start_ms) and end_ms in (None, spec.end_ms)
    start_ms = spec.start_ms if start_ms is None else start_ms
    end_ms = spec.end_ms if end_ms is None else end_ms
    if start_over:
        generation = state.start_over()
        log.info("starting migration %s over (generation %d)", migration_id, generation)
    plan = state.load_plan(stage)
    reused = plan is not None
    if plan is not None and (plan.start_ms, plan.end_ms, plan.window_ms, plan.selectors) != (
        start_ms,
        end_ms,
        spec.window_ms,
        list(spec.match),
    ):
        raise ConfigError(
            f"migration {migration_id!r} was planned with another range, window or selectors",
            hint="rerun with the same spec to resume, pass --start-over to replan and rewrite, "
            "or choose another --migration-id",
        )
    if plan is not None:
        check_writing(plan, spec)
    if plan is None:
        plan = build_plan(source, spec, migration_id, on_metric=on_metric, start_ms=start_ms, end_ms=end_ms)
        if plan.series_count == 0 and whole_range:
            raise ConfigError(
                f"the source holds no series matching {', '.join(spec.match)} between "
                f"{iso_ms(plan.start_ms)} and {iso_ms(plan.end_ms)}: nothing to migrate",
                hint="check the selectors (--match), the time range, the source URL and, on M3, the namespace "
                "pin (--source-metrics-type / --source-storage-policy) and its retention",
            )
        state.save_plan(plan, stage)
    return PreparedMigration(migration_id, state, plan, state.generation, reused)
