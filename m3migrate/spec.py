"""The migration spec: what to move and how. A pydantic model, so the Prefect UI renders it as a form and
the CLI loads the same thing from a YAML or TOML file."""

from __future__ import annotations

import hashlib
import os
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3migrate.errors import ConfigError
from m3migrate.relabel import Relabeler, RelabelRule, merge_prometheus_prefix_rule
from m3migrate.selectors import ALL_SERIES, parse_selector

WriteMode = Literal["in_order", "out_of_order"]


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
        "out-of-order window covering the range, so windows may be wider and run further ahead.",
    )
    window_minutes: int | None = Field(
        default=None, gt=0, description="Time window per batch. Default: 30 (in_order) or 360 (out_of_order)."
    )
    accept_window_minutes: int = Field(
        default=60,
        gt=0,
        description="How far behind its newest sample the target still accepts samples (Thanos/Prometheus: "
        "half the 2h block range = 60).",
    )
    batch_max_series: int = Field(default=2_000, gt=0, description="Most series read in one batch.")
    task_concurrency: int = Field(default=4, gt=0, le=256, description="Batches transferred in parallel.")
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

    @model_validator(mode="after")
    def _range(self) -> MigrationSpec:
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        if self.end > datetime.now(UTC) + timedelta(minutes=1):
            raise ValueError(
                f"end {self.end.isoformat()} is in the future: migrate history up to now, "
                "then keep new writes flowing with `m3migrate replicate`"
            )
        if self.window_ms > self.accept_window_minutes * 60_000 and self.write_mode == "in_order":
            raise ValueError(
                f"window_minutes={self.window_minutes} is wider than what the target accepts "
                f"({self.accept_window_minutes} min) in in_order mode"
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
        default = 30 if self.write_mode == "in_order" else 360
        return (self.window_minutes or default) * 60_000

    @property
    def windows_in_flight(self) -> int:
        """How many windows may be written at once without leaving the target's accept window."""
        if self.write_mode == "out_of_order":
            return 4
        return max(1, (self.accept_window_minutes * 60_000) // self.window_ms)

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
