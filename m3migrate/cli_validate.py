"""`m3migrate validate`: run the validation flow with the same options as `migrate`, print the checks.

Exit codes: 0 when no check fails (warnings allowed), 1 when any check fails, 2 for configuration
errors. Registered in cli.py with ``app.command()(validate)``.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

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
    from m3migrate.cli import out

    out.print(table)
