"""Preparing a migration run: its id, state, and plan (reused on rerun, rebuilt on start-over)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from m3migrate.clients.m3admin import M3AdminClient, M3Namespace
from m3migrate.clients.promql import PromQLClient
from m3migrate.errors import ConfigError
from m3migrate.plan.batches import (
    DAY_MS,
    Batch,
    Labels,
    Plan,
    batch_metrics,
    discover,
    discover_metrics,
    make_batches,
)
from m3migrate.plan.tiers import Tier, plan_tiers, split_by_tier
from m3migrate.relabel import Relabeler
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage
from m3migrate.timefmt import iso_ms

log = logging.getLogger("m3migrate.plan.migration")


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
    tiers = source_tiers(source, spec, start_ms, end_ms)
    slice_ms = spec.discovery_slice_hours * 3_600_000 if spec.discovery_slice_hours else DAY_MS
    max_series = min(spec.batch_max_series, source.max_series_per_query)
    parts = list(split_by_tier(tiers, start_ms, end_ms))
    batches: list[Batch] = []
    if len(parts) == 1:  # one namespace: each metric is batched as soon as it is discovered
        tier, a, b = parts[0]
        with _discovery_client(source, tier) as promql:
            found = discover_metrics(
                selectors, a, b, api=_PromQLDiscovery(promql), slice_ms=slice_ms, on_metric=on_metric
            )
            batches.extend(batch_metrics(selectors, found, max_series))
    else:
        per_tier: list[list[list[Labels]]] = []
        for tier, a, b in parts:
            with _discovery_client(source, tier) as promql:
                per_tier.append(
                    discover(selectors, a, b, api=_PromQLDiscovery(promql), slice_ms=slice_ms, on_metric=on_metric)
                )
        batches = make_batches(selectors, merge_discoveries(per_tier), max_series)
        del per_tier
    check_collisions(spec.relabeler(), batches)
    return Plan(
        migration_id=migration_id,
        start_ms=start_ms,
        end_ms=end_ms,
        window_ms=spec.window_ms,
        batches=batches,
        selectors=list(spec.match),
        writing=writing_settings(spec),
        tiers=tiers,
    )


def _discovery_client(source: SourceSettings, tier: Tier | None) -> PromQLClient:
    headers = {**source.m3_headers(), **(tier.headers() if tier else {})}  # each tier in its own namespace
    return PromQLClient(source.promql_base, source, extra_headers=headers)


def check_collisions(relabeler: Relabeler, batches: Sequence[Batch]) -> None:
    """Refuse a plan whose relabeling makes two source series one (their samples would overwrite each
    other). Without rules, distinct series stay distinct unless one already has an added label (which the
    added value overwrites) or an empty value (dropped): only then are the series relabeled one by one."""
    if not relabeler.rules and not any(_may_merge(batch, relabeler.add_labels) for batch in batches):
        for batch in batches:  # the label names are still checked before any data moves
            if _INVALID_NAME.search(batch.series_text):
                for labels in batch.decoded():
                    relabeler(labels)  # raises naming the series and its invalid label name
        return
    collisions = relabeler.find_collisions(s for batch in batches for s in batch.decoded())
    if collisions:
        first, second, out = collisions[0]
        raise ConfigError(
            f"{len(collisions)}+ pairs of source series would become one series after relabeling, e.g. "
            f"{dict(first)} and {dict(second)} both become {dict(out)}",
            hint="their samples would overwrite each other: narrow the rename rule or the selectors",
        )


# A label pair of a batch's JSON text whose name is not a Prometheus label name (relabel.LABEL_NAME). Only a
# pair starts with `["`: inside a string a quote is escaped.
_INVALID_NAME = re.compile(r'\["(?![a-zA-Z_][a-zA-Z0-9_]*")')


def _may_merge(batch: Batch, added: dict[str, str]) -> bool:
    """Whether a series of the batch has one of the ``added`` label names, or an empty value. Read off the
    batch's JSON text: a quote inside a string is escaped, so ``["name", `` is a label name and ``, ""]``
    an empty value."""
    text = batch.series_text
    return ', ""]' in text or any(f"[{json.dumps(name, ensure_ascii=False)}, " in text for name in added)


def source_tiers(source: SourceSettings, spec: MigrationSpec, start_ms: int, end_ms: int) -> list[Tier]:
    """The M3 namespace of each part of [start, end] (m3migrate.plan.tiers), fixed now for the whole run; []
    when one namespace is pinned, namespaces=unpinned, or the source has no M3 namespace API."""
    if source.namespaces != "auto" or source.metrics_type:
        return []
    with M3AdminClient(source.admin_base, source) as admin:
        namespaces = admin.namespaces()
    return spec_tiers(namespaces or [], spec, start_ms, end_ms)


def spec_tiers(
    namespaces: Sequence[M3Namespace], spec: MigrationSpec, start_ms: int, end_ms: int, now_ms: int | None = None
) -> list[Tier]:
    """plan_tiers on the spec's grid (windows; blocks too in blocks/hybrid mode) and margin."""
    align_ms = math.lcm(spec.window_ms, spec.block_ms) if spec.uses_blocks else spec.window_ms
    margin_ms = round(spec.tier_margin_hours * 3_600_000)
    return plan_tiers(namespaces, start_ms, end_ms, align_ms=align_ms, margin_ms=margin_ms, now_ms=now_ms)


def merge_discoveries(per_tier: list[list[list[Labels]]]) -> list[list[Labels]]:
    """One series list per selector from each tier's discovery; first selector wins, as within one."""
    if len(per_tier) == 1:
        return per_tier[0]
    seen: set[Labels] = set()
    merged: list[list[Labels]] = []
    for i in range(len(per_tier[0])):
        group: list[Labels] = []
        for found in per_tier:
            for labels in found[i]:
                if labels not in seen:
                    seen.add(labels)
                    group.append(labels)
        merged.append(group)
    return merged


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
