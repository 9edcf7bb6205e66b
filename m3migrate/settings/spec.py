"""The migration spec: what to move and how. A pydantic model, so the Prefect UI renders it as a form and
the CLI loads the same thing from a YAML or TOML file."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3migrate.errors import ConfigError
from m3migrate.model import HOUR_MS
from m3migrate.plan.selectors import ALL_SERIES, parse_selector
from m3migrate.relabel import Relabeler, RelabelRule, merge_prometheus_prefix_rule

WriteMode = Literal["in_order", "out_of_order", "blocks", "hybrid"]
BLOCK_MODES = ("blocks", "hybrid")  # write modes that upload TSDB blocks into the Thanos bucket
BACKFILL_LABEL = "m3migrate_backfill"  # default external label of the backfill's blocks (value: the migration id)
# The hybrid boundary stays this far inside the target's accept window, so the remote-write tail is still
# accepted after planning and writing it took a while (and across a small clock skew).
HYBRID_MARGIN_MS = 15 * 60_000
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")  # \Z: $ would accept a trailing newline
_MIGRATION_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
# Spec fields a step may set differently from the migration's saved spec: how fast it runs, not what it
# reads or writes. Any other field given that differs from the saved spec is refused (check_same_spec).
RUN_TUNING = frozenset({"task_concurrency", "write_concurrency", "task_runner", "dask_address"})


def default_state_dir() -> Path:
    return Path(os.environ.get("M3MIGRATE_STATE_DIR", Path.home() / ".m3migrate"))


class MigrationSpec(BaseModel):
    """Time range, selection, naming and tuning of one migration."""

    model_config = ConfigDict(extra="forbid")

    migration_id: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Names the migration's saved progress. Default: derived from the URLs, range and selectors.",
    )
    start: datetime = Field(description="First instant to migrate (RFC 3339, UTC if no offset).")
    end: datetime = Field(description="Last instant to migrate (inclusive; not in the future).")
    match: list[str] = Field(default_factory=lambda: [ALL_SERIES], description="Series selectors to migrate.")
    source_label_name: str = Field(default="_source", description="Label added to every migrated series.")
    source_label_value: str = Field(default="m3db", description="Its value; empty disables the label.")
    merge_prometheus_prefix: bool = Field(
        default=False, description="Rename prometheus_<name> to <name> (how M3 stored Prometheus metrics)."
    )
    relabel_rules: list[RelabelRule] = Field(
        default_factory=list, description="Prometheus relabel_config rules applied to every series."
    )
    write_mode: WriteMode = Field(
        default="in_order",
        description="in_order: advance a time front over all series so a receiver without an out-of-order "
        "window accepts the history (it must hold nothing newer). out_of_order: the target has an "
        "out-of-order window covering the range, so windows may be wider and run further ahead. blocks: "
        "upload the history as TSDB blocks into the Thanos bucket (needs a bucket). hybrid: blocks for the "
        "history older than the target's accept window, remote write (in_order) for the recent tail.",
    )
    tier_margin_hours: float = Field(
        default=6,
        ge=0,
        description="M3 tiers (source namespaces=auto): a namespace's tier starts this long after its oldest "
        "data, so that data is not deleted by M3's retention before the run reads it. Cover the migration's "
        "expected duration (validate estimates it).",
    )
    block_hours: Literal[2, 8, 48] = Field(
        default=2, description="blocks/hybrid: hours per block, epoch-aligned (Thanos' compaction ranges 2, 8, 48)."
    )
    backfill_labels: dict[str, str] | None = Field(
        default=None,
        description="blocks/hybrid: the blocks' Thanos external labels, unique to the backfill so its blocks "
        "never overlap Receive's in the compactor. Default: {m3migrate_backfill: <migration id>}. Keep them "
        "the same on every run: a rerun finds the finished windows by them.",
    )
    window_minutes: int | None = Field(
        default=None,
        gt=0,
        description="Time window per batch (remote write). Default: 360 (out_of_order), else accept_window_minutes "
        "up to 60 (the widest a receiver without an out-of-order window accepts: fewer, larger reads).",
    )
    accept_window_minutes: int = Field(
        default=60,
        gt=0,
        description="How far behind its newest sample the target still accepts samples (Thanos/Prometheus: "
        "half the 2h block range = 60).",
    )
    batch_max_series: int = Field(default=2_000, gt=0, description="Most series read in one batch.")
    task_concurrency: int = Field(
        default=4,
        gt=0,
        le=256,
        description="batch × window units moved in parallel (thread runner), or Dask workers (dask runner).",
    )
    write_concurrency: int = Field(default=4, gt=0, le=256, description="Remote-write requests in flight.")
    task_runner: Literal["thread", "dask"] = Field(default="thread", description="Prefect task runner.")
    dask_address: str | None = Field(default=None, description="Dask scheduler address for task_runner=dask.")
    discovery_slice_hours: int = Field(default=24, gt=0, description="Time slice of one series-discovery query.")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @field_validator("match")
    @classmethod
    def _selectors(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one selector")
        for s in v:
            parse_selector(s)
        return v

    @field_validator("backfill_labels")
    @classmethod
    def _backfill_labels(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("give at least one backfill label (an empty set would be Receive's own stream)")
        for name, value in v.items():
            if not _LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(f"backfill label name {name!r} is not a valid Prometheus label name")
            if not value:
                raise ValueError(f"backfill label {name!r} has an empty value")
        return v

    @model_validator(mode="after")
    def _range(self) -> MigrationSpec:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        if self.end > datetime.now(UTC) + timedelta(minutes=1):
            raise ValueError(
                f"end {self.end.isoformat()} is in the future: migrate history up to now, "
                "then keep new writes flowing with `m3migrate replicate`"
            )
        if self.window_ms > self.accept_window_minutes * 60_000 and self.write_mode in ("in_order", "hybrid"):
            raise ValueError(
                f"window_minutes={self.window_minutes} is wider than what the target accepts "
                f"({self.accept_window_minutes} min) in {self.write_mode} mode"
            )
        if self.backfill_labels and self.source_label_value and self.source_label_name in self.backfill_labels:
            raise ValueError(
                f"backfill label {self.source_label_name!r} is also the label every migrated series gets: "
                "external labels must not be label names of the series"
            )
        self.relabeler()  # rules must compile
        return self

    @property
    def start_ms(self) -> int:
        return int(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return int(self.end.timestamp() * 1000)

    @property
    def window_ms(self) -> int:
        # in order (hybrid's tail too): one window = the accept window, so the front writes one window at a
        # time and reads the next meanwhile (Front.READ_AHEAD_WINDOWS); larger reads cost the source less.
        default = 360 if self.write_mode == "out_of_order" else min(self.accept_window_minutes, 60)
        return (self.window_minutes or default) * 60_000

    @property
    def windows_in_flight(self) -> int:
        """How many windows may be written at once without leaving the target's accept window."""
        if self.write_mode == "out_of_order":
            return 4
        return max(1, (self.accept_window_minutes * 60_000) // self.window_ms)

    @property
    def uses_blocks(self) -> bool:
        return self.write_mode in BLOCK_MODES

    @property
    def block_ms(self) -> int:
        return self.block_hours * HOUR_MS

    def backfill_external_labels(self, migration_id: str) -> dict[str, str]:
        """The blocks' Thanos labels: given, or {m3migrate_backfill: <migration id>}.

        Why the migration id: a label Receive never sets makes the blocks their own compaction stream (no
        overlap with Receive's blocks, no compactor halt), and a value per migration keeps two migrations of
        different selectors in one bucket from taking each other's blocks for finished windows.
        """
        return dict(self.backfill_labels) if self.backfill_labels else {BACKFILL_LABEL: migration_id}

    def hybrid_boundary_ms(self, now_ms: int) -> int:
        """hybrid: the first instant written by remote write; blocks hold everything before it.

        The target's accept window is anchored at its NEWEST sample, which for a target that already
        receives live data is about now, not the migration's end: remote write can only bring samples
        newer than now - accept_window. So the boundary is the first block-window edge at or after
        now - accept_window + HYBRID_MARGIN_MS, clamped to [start, end + 1] (end + 1: no tail, all blocks;
        start: no blocks). On a block edge, the last block is a whole aligned window and the two parts
        neither overlap nor leave a gap.
        """
        earliest = now_ms - self.accept_window_minutes * 60_000 + HYBRID_MARGIN_MS
        edge = -(-earliest // self.block_ms) * self.block_ms
        return min(max(edge, self.start_ms), self.end_ms + 1)

    def selectors(self) -> list[list]:
        return [parse_selector(s) for s in self.match]

    def relabeler(self) -> Relabeler:
        rules = ([merge_prometheus_prefix_rule()] if self.merge_prometheus_prefix else []) + list(self.relabel_rules)
        add = {self.source_label_name: self.source_label_value} if self.source_label_value else {}
        return Relabeler(rules, add_labels=add)

    def resolved_id(self, source_url: str, target_url: str) -> str:
        """The migration id: given, or a stable hash of what identifies the migration."""
        if self.migration_id:
            return self.migration_id
        key = "|".join([source_url, target_url, str(self.start_ms), str(self.end_ms), *self.match])
        return "m-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def check_migration_id(migration_id: str) -> str:
    """A migration id names a directory: only what MigrationSpec accepts (no path separators, no dots)."""
    if not isinstance(migration_id, str) or not _MIGRATION_ID.match(migration_id):
        raise ConfigError(
            f"migration id {str(migration_id)[:70]!r} is not valid",
            hint="lowercase letters, digits and dashes, starting with a letter or digit, at most 63 characters",
        )
    return migration_id


def check_same_spec(saved: MigrationSpec, given: dict[str, Any], what: str) -> MigrationSpec:
    """The saved spec with the given fields applied, if none of them changes it.

    A step resumed from a saved spec must read and write what the migration planned; every given field whose
    value differs (compared after validation, so 2025-01-01T00:00:00Z equals 2025-01-01T00:00Z) is named
    with both values. The id selected the saved spec, so it is not compared; RUN_TUNING fields may differ.
    Raises pydantic's ValidationError for a given value that is invalid in itself.
    """
    candidate = MigrationSpec.model_validate({**saved.model_dump(mode="json"), **given})
    old, new = saved.model_dump(mode="json"), candidate.model_dump(mode="json")
    differences = [
        f"{name}: saved {old[name]!r}, given {new[name]!r}"
        for name in given
        if name in old and name not in RUN_TUNING and name != "migration_id" and old[name] != new[name]
    ]
    if differences:
        raise ConfigError(
            f"the options differ from {what}: " + "; ".join(differences),
            hint="leave them out (the saved spec applies), or choose another --migration-id for another "
            "migration (migrate --start-over replans this one with new settings)",
        )
    return candidate


def load_config_file(path: Path) -> dict:
    """A YAML or TOML file as a dict (keys checked by the models that consume it)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def format_validation_error(exc: ValidationError, what: str) -> str:
    """A pydantic error as one readable line per problem (never echoing input values: they may be secrets)."""
    lines = [f"invalid {what}:"]
    for err in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or what
        lines.append(f"  {loc}: {err['msg']}")
    return "\n".join(lines)
