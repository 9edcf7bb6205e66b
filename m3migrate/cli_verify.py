"""How `m3migrate verify` prints a verification: totals, then the first N missing, extra and differing
series by their labels (the command itself is in cli.py)."""

from typing import Any

from rich.table import Table


def print_totals(summary: dict[str, Any]) -> None:
    from m3migrate.cli import out

    status = "[green]equal[/green]" if summary.get("ok") else "[bold red]DIFFERENT[/bold red]"
    table = Table(title=f"verification of {summary.get('migration_id', '')}: {status}", show_header=False)
    for k, v in summary.items():
        if k not in ("migration_id", "ok"):
            table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
    out.print(table)


def print_problems(problems: Any, show: int) -> None:
    """The first ``show`` series of each kind by their labels, then "and K more"."""
    from m3migrate.cli import out

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
    from m3migrate.timefmt import iso_ms
    from m3migrate.verify import optional_int

    return iso_ms(optional_int(ms))
