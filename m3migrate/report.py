"""Step results and the markdown they are shown in: one table shape and one escaping rule.

A step's result is a dataclass (code reads its attributes) that also reads as the mapping of its figures,
in the order they are shown: the CLI prints them, the artifacts tabulate them, ``to_dict()`` makes them
JSON for Prefect's result storage. So a caller that indexes a result (``summary["samples"]``) keeps
working, as dlt's ``LoadInfo`` is both an object and its printable step info.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from m3migrate.backfill.windows import BackfillResult


def md(text: Any, *, newline: str = " ") -> str:
    """``text`` safe in a markdown table cell: a bare ``|`` would end the cell, a newline the row (GFM)."""
    return str(text).replace("|", "\\|").replace("\n", newline)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, newline: str = " ") -> list[str]:
    """A markdown table's lines; every cell escaped with :func:`md`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(c, newline=newline) for c in row) + " |" for row in rows]
    return lines


def figure_table(figures: Mapping[str, Any]) -> list[str]:
    """The ``| figure | value |`` table of a result's figures."""
    return table(("figure", "value"), figures.items())


def figures_markdown(title: str, figures: Mapping[str, Any]) -> str:
    """A step's artifact: a title, then its figures."""
    return "\n".join([f"# {title}", "", *figure_table(figures)]) + "\n"


def jsonable(value: Any) -> Any:
    """A result, or anything holding results, as plain dicts and lists."""
    if isinstance(value, StepResult):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


class StepResult(Mapping[str, Any]):
    """Base of the dataclass results: the figures are the fields in order, a field that is None left out
    (a result of another outcome does not have it). Subclasses may compute ``figures()`` instead."""

    __slots__ = ()

    def figures(self) -> dict[str, Any]:
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {k: jsonable(v) for k, v in self.figures().items()}

    def __getitem__(self, key: str) -> Any:
        return self.figures()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.figures())

    def __len__(self) -> int:
        return len(self.figures())


@dataclass
class TransferSummary(StepResult):
    """What a run of a stage's front did (the figures: totals include what earlier runs had done)."""

    series: int
    samples: int
    requests: int
    bytes_read: int
    bytes_written: int
    read_retries: int
    write_retries: int
    splits: int
    reconciled_series: int
    windows: int
    batches: int
    tasks: int
    tasks_cached: int  # segments an earlier run had finished (Prefect's cache)
    units: int
    units_skipped: int
    samples_moved_now: int
    new_series_after_discovery: int
    non_utf8_series: int
    skipped_series: int
    skipped_series_examples: list[str]
    seconds: float
    samples_per_second: int


@dataclass
class PassResult(StepResult):
    """One replication pass: ``replicated``, ``up-to-date`` (nothing new yet) or ``skipped-locked``
    (another run holds the migration); the figures an outcome does not have stay None."""

    migration_id: str
    status: Literal["replicated", "up-to-date", "skipped-locked"]
    reason: str | None = None  # skipped-locked: who holds the lock
    watermark: str | None = None
    lag_seconds: float | None = None
    series: int | None = None
    samples: int | None = None
    samples_moved_now: int | None = None
    passes: int | None = None
    source_changes: list[str] | None = None
    late_samples: int | None = None  # arrived after the previous pass, older than its end
    late_samples_recopied: int | None = None


@dataclass
class BackfillSummary(StepResult):
    """What a block backfill did over its windows (``add`` each window's result as it finishes)."""

    block_windows: int
    blocks_uploaded: int = 0
    windows_skipped: int = 0  # the bucket already had their blocks
    windows_empty: int = 0  # no samples in the source
    tasks_cached: int = 0  # windows an earlier run had finished (Prefect's cache)
    removed_partial_uploads: int = 0
    samples: int = 0
    samples_moved_now: int = 0
    bytes_uploaded: int = 0
    bytes_read: int = 0
    read_seconds: float = 0.0
    encode_seconds: float = 0.0
    upload_seconds: float = 0.0
    splits: int = 0
    seconds: float = 0.0
    samples_per_second: int = 0
    bucket: str = ""
    external_labels: dict[str, str] = field(default_factory=dict)

    def add(self, result: BackfillResult, *, cached: bool) -> str:
        """Count one window's result; returns its outcome: uploaded, skipped, empty or cached."""
        outcome = "skipped" if result.skipped else "empty" if result.empty else "uploaded"
        if cached:  # done by an earlier run: its result, not this run's work
            self.tasks_cached += 1
        else:
            self.blocks_uploaded += outcome == "uploaded"
            self.windows_skipped += outcome == "skipped"
            self.windows_empty += outcome == "empty"
            self.samples_moved_now += result.samples
        self.removed_partial_uploads += len(result.removed_partial)
        self.samples += result.samples
        self.bytes_uploaded += result.bytes
        self.bytes_read += result.bytes_read
        self.read_seconds += result.read_seconds
        self.encode_seconds += result.encode_seconds
        self.upload_seconds += result.upload_seconds
        self.splits += result.splits
        return "cached" if cached else outcome

    def finish(self, seconds: float) -> None:
        """The run's duration and rate; the timings rounded as they are shown."""
        self.read_seconds = round(self.read_seconds, 3)
        self.encode_seconds = round(self.encode_seconds, 3)
        self.upload_seconds = round(self.upload_seconds, 3)
        self.seconds = round(seconds, 3)
        self.samples_per_second = round(self.samples_moved_now / seconds) if seconds else 0


@dataclass
class MigrationSummary(StepResult):
    """The migrate step's result: the remote-write front's summary (the whole migration, or hybrid's tail)
    and, in the blocks and hybrid write modes, the block backfill's; ``figures()`` lays them out as shown."""

    migration_id: str
    plan_id: str  # the plan that covers most of the range
    series: int
    transfer: TransferSummary | None = None
    blocks: BackfillSummary | None = None
    write_mode: str | None = None  # set in the block modes
    block_hours: int | None = None
    boundary: str | None = None  # hybrid: where the remote-write tail starts
    tail_series: int | None = None
    tiers: list[dict[str, Any]] = field(default_factory=list)  # the M3 namespace of each part of the range

    @property
    def samples(self) -> int:
        return (self.blocks.samples if self.blocks else 0) + (self.transfer.samples if self.transfer else 0)

    @property
    def samples_moved_now(self) -> int:
        moved = self.blocks.samples_moved_now if self.blocks else 0
        return moved + (self.transfer.samples_moved_now if self.transfer else 0)

    @property
    def seconds(self) -> float:
        return round(
            (self.blocks.seconds if self.blocks else 0.0) + (self.transfer.seconds if self.transfer else 0.0), 3
        )

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"migration_id": self.migration_id, "plan_id": self.plan_id}
        if self.write_mode is None:  # remote write: the front's figures, the plan's series count
            out.update(self.transfer.figures() if self.transfer else {})
        else:
            out.update(self._block_mode_figures())
        out["series"] = self.series
        if self.tiers:
            out["tiers"] = self.tiers
        return out

    def _block_mode_figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {"write_mode": self.write_mode, "block_hours": self.block_hours}
        if self.boundary is not None:
            out["boundary"] = self.boundary
        if self.blocks:
            renamed = ("samples", "seconds")  # the totals below are both parts'
            out.update({f"blocks_{k}" if k in renamed else k: v for k, v in self.blocks.figures().items()})
        if self.transfer:
            out.update(tail_series=self.tail_series, tail_samples=self.transfer.samples)
        out.update(samples=self.samples, samples_moved_now=self.samples_moved_now, seconds=self.seconds)
        return out

    def to_markdown(self) -> str:
        """The migration's summary artifact: the figures, then the tiers."""
        text = figures_markdown(f"Migration {self.migration_id}", {k: v for k, v in self.items() if k != "tiers"})
        if self.tiers:
            rows = [(t["from"], t["to"], t["namespace"], t["storage_policy"]) for t in self.tiers]
            lines = table(("from", "to", "namespace", "storage policy"), rows)
            text += "\n## Tiers (M3 namespace per range)\n\n" + "\n".join(lines) + "\n"
        return text


@dataclass
class CloseResult(StepResult):
    """The close step: the final catch-up, the verification and the cutover decision with its proof
    (``decision`` stays ``undecided`` when nobody decided before the timeout; then nothing changed)."""

    migration_id: str
    flow_run_id: str | None
    replication: PassResult
    verification: dict[str, Any]
    verified: bool
    refusals: int = 0  # decisions refused (invalid input, or a failed verification without override)
    decision: str = "undecided"
    approver: str | None = None
    comment: str | None = None
    override_failed_verification: bool | None = None
    decided_at: str | None = None
    schedule: dict[str, Any] | None = None  # the replicate deployment as read back after the decision

    def figures(self) -> dict[str, Any]:
        out = {
            "migration_id": self.migration_id,
            "flow_run_id": self.flow_run_id,
            "replication": self.replication,
            "verification": self.verification,
            "verified": self.verified,
            "refusals": self.refusals,
            "decision": self.decision,
        }
        if self.decided_at is not None:
            out.update(
                approver=self.approver,
                comment=self.comment,
                override_failed_verification=self.override_failed_verification,
                decided_at=self.decided_at,
                schedule=self.schedule,
            )
        return out
