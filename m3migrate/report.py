"""Step results and the markdown they are shown in: one table shape and one escaping rule.

A step's result is a dataclass (code reads its attributes) that also reads as the mapping of its figures,
in the order they are shown: the CLI prints them, the artifacts tabulate them, ``to_dict()`` makes them
JSON for Prefect's result storage. So a caller that indexes a result (``summary["samples"]``) keeps
working, as dlt's ``LoadInfo`` is both an object and its printable step info.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal


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
