"""The console: where every command prints (tables to stdout, progress and errors to stderr), its exit
codes, the live progress bar fed by the flows' events, and how step results and reports are printed."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console(stderr=True)
out = Console()

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_BUSY = 3  # another run of the same migration holds its lock


def progress_bar() -> tuple[Progress, Any]:
    """One bar per phase (time front, block windows, replication pass), fed by the flows' progress events:
    windows done / total, samples, samples/s, blocks uploaded or a pass's lag, and the flow's ETA."""
    from m3migrate.progress import duration
    from tasks.transfer import PROGRESS_LISTENERS

    progress = Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} windows"),
        TextColumn("{task.fields[samples]:,} samples"),
        TextColumn("{task.fields[rate]:,.0f}/s"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    bars: dict[str, Any] = {}
    lock = threading.Lock()  # segments report from their own threads

    def listener(event: dict[str, Any]) -> None:
        eta = event.get("eta_seconds")
        fields = {
            "samples": event["samples"],
            "rate": event["rate"],
            "detail": event.get("detail") or "",
            "eta": "?" if eta is None else duration(eta),
        }
        phase = event.get("phase") or "time front"
        with lock:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=event["windows_total"], **fields)
            progress.update(bars[phase], completed=event["windows_done"], total=event["windows_total"], **fields)

    PROGRESS_LISTENERS.append(listener)
    return progress, listener


@contextmanager
def live_progress() -> Iterator[None]:
    """The progress bar while a step's flow runs (its listener is removed afterwards)."""
    from tasks.transfer import PROGRESS_LISTENERS

    progress, listener = progress_bar()
    try:
        with progress:
            yield
    finally:
        PROGRESS_LISTENERS.remove(listener)


def print_summary(summary: Mapping[str, Any]) -> None:
    """A step's result (its figures), one row each."""
    table = Table(title=f"migration {summary.get('migration_id', '')}", show_header=False)
    for k, v in summary.items():
        if k == "tiers":  # one row per M3 namespace the range was read from
            v = "\n".join(f"{t['from']} .. {t['to']}  {t['namespace']} ({t['storage_policy']})" for t in v)
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    out.print(table)


# `m3migrate validate`: exit 0 when no check fails (warnings allowed), 1 when any check fails.


STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def print_report(report: dict[str, Any]) -> None:
    """The checks as a rich table: status, check, observed, fix."""
    counts = report.get("counts", {})
    table = Table(
        title=f"validation of {report.get('migration_id', '')}: {counts.get('pass', 0)} pass, "
        f"{counts.get('warn', 0)} warn, {counts.get('fail', 0)} fail",
        show_lines=True,
    )
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("observed", overflow="fold")
    table.add_column("fix", overflow="fold")
    for check in report.get("checks", []):
        status = check["status"]
        table.add_row(f"[{STYLE[status]}]{status.upper()}[/]", check["name"], check["observed"], check["fix"] or "-")
    out.print(table)


# `m3migrate verify`: totals, then the first N missing, extra and differing series by their labels.


def print_totals(summary: dict[str, Any]) -> None:
    status = "[green]equal[/green]" if summary.get("ok") else "[bold red]DIFFERENT[/bold red]"
    table = Table(title=f"verification of {summary.get('migration_id', '')}: {status}", show_header=False)
    for k, v in summary.items():
        if k not in ("migration_id", "ok"):
            table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    out.print(table)


def print_problems(problems: Any, show: int) -> None:
    """The first ``show`` series of each kind by their labels, then "and K more"."""
    titles = {
        "missing": "missing on the target",
        "extra": "extra on the target (not in the source)",
        "mismatch": "differing",
    }
    for kind, title in titles.items():
        rows = problems[problems["kind"] == kind]
        if rows.empty:
            continue
        if kind == "mismatch":
            series = rows.drop_duplicates("series")
            out.print(f"[bold]{series.shape[0]} series {title}[/bold] ({len(rows)} series × windows):")
        else:
            series = rows
            out.print(f"[bold]{len(rows)} series {title}:[/bold]")
        for r in series.head(show).itertuples():
            detail = f"  ({r.source_count} source / {r.target_count} target samples)"
            if kind == "mismatch":
                detail = f"  window {r.window_start}: {r.first_diff} at {_ts(r.first_diff_ts)}"
            out.print(f"  {r.series}{detail}", markup=False, highlight=False, soft_wrap=True)
        if len(series) > show:
            out.print(f"  and {len(series) - show} more")


def _ts(ms: Any) -> str:
    from m3migrate.checks.verify import optional_int
    from m3migrate.timefmt import iso_ms

    return iso_ms(optional_int(ms))
