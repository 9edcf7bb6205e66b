"""What every unit task (a segment of the remote-write front, a block window) is given besides its unit.

Small and picklable, since Dask ships it to every worker; the plan itself is read from the migration's
state by each process, never passed through the Prefect API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m3migrate.plan.batches import Plan
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, Stage


@dataclass(frozen=True)
class UnitContext:
    """Which migration, plan and generation a unit belongs to, where its state is, the source, the relabeling."""

    migration_id: str
    plan_id: str
    generation: int
    stage: Stage
    state_root: str
    source: SourceSettings
    relabeler_rules: tuple
    add_labels: tuple[tuple[str, str], ...]

    @property
    def state(self) -> MigrationState:
        return MigrationState(Path(self.state_root), self.migration_id)


def unit_fields(
    spec: MigrationSpec, state: MigrationState, plan: Plan, stage: Stage, source: SourceSettings
) -> dict[str, Any]:
    """The UnitContext fields of a stage's run, for the context of either sink."""
    relabel = spec.relabeler()
    return {
        "migration_id": state.migration_id,
        "plan_id": plan.id,
        "generation": state.generation,
        "stage": stage,
        "state_root": str(state.dir.parent),
        "source": source,
        "relabeler_rules": tuple(relabel.rules),
        "add_labels": tuple(relabel.add_labels.items()),
    }
