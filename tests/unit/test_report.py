"""The one markdown table of every artifact and report, and the step results' figures.

GitHub-flavoured markdown ends a table cell at an unescaped ``|`` and a row at a newline, so a label
value holding either must not change the table's shape (https://github.github.com/gfm/#tables-extension-).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pandas as pd

from m3migrate.checks.validate import CheckResult, ValidationReport
from m3migrate.checks.verify import PROBLEM_COLUMNS, VerificationReport
from m3migrate.report import StepResult, figure_table, figures_markdown, md, table


def cells(row: str) -> list[str]:
    """A GFM table row's cells: split at the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def test_md_escapes_what_would_end_a_cell_or_a_row() -> None:
    assert md('job="a|b"\nnext') == 'job="a\\|b" next'
    assert md("one\ntwo", newline="<br>") == "one<br>two"
    assert md(12) == "12" and md(None) == "None"


def test_a_cell_holding_pipes_and_newlines_keeps_the_table_shape() -> None:
    lines = table(("series", "what"), [('{job="a|b"}', "first\nsecond | third")])
    assert lines[:2] == ["| series | what |", "|---|---|"]
    assert len(lines) == 3 and len(cells(lines[2])) == 2


def test_figures_markdown_is_a_title_and_the_figure_value_table() -> None:
    text = figures_markdown("Replication", {"status": "replicated", "samples": 30})
    assert text == "# Replication\n\n| figure | value |\n|---|---|\n| status | replicated |\n| samples | 30 |\n"
    assert figure_table({}) == ["| figure | value |", "|---|---|"]


def test_validation_report_table_keeps_newlines_as_breaks() -> None:
    report = ValidationReport([CheckResult("tls", "warn", "line 1\nline|2", "")], migration_id="m")
    row = report.to_markdown().splitlines()[-1]
    assert row == "| WARN | tls | line 1<br>line\\|2 | - |"


def test_verification_report_rows_survive_label_values_with_pipes() -> None:
    problems = pd.DataFrame(
        [
            {"kind": "missing", "series": '{job="a|b"}', "windows": 3, "source_count": 5, "target_count": 0},
            {
                "kind": "mismatch",
                "series": '{job="m"}',
                "window_start": "2025-01-01T00:00:00Z",
                "source_count": 4,
                "target_count": 4,
                "first_diff_ts": 2000,
                "first_diff": "value 1 | 2",
            },
        ],
        columns=PROBLEM_COLUMNS,
    )
    totals = {"mismatches": 1, "missing": 1, "extra": 0}
    lines = VerificationReport(totals, pd.DataFrame(), problems, "mid").to_markdown().splitlines()
    assert lines[:6] == [
        "# Verification mid: **DIFFERENT**",
        "",
        "| figure | value |",
        "|---|---|",
        "| mismatches | 1 |",
        "| missing | 1 |",
    ]
    missing = next(line for line in lines if "a\\|b" in line)
    assert len(cells(missing)) == 5 and cells(missing)[0] == ' `{job="a\\|b"}` '
    mismatch = next(line for line in lines if 'm"}`' in line)
    assert len(cells(mismatch)) == 5 and mismatch.endswith("| 1970-01-01T00:00:02.000Z | value 1 \\| 2 |")


@dataclass
class _Pass(StepResult):
    migration_id: str
    status: str
    samples: int | None = None
    nested: StepResult | None = None


def test_step_result_reads_as_its_figures_and_is_json() -> None:
    skipped = _Pass("m", "skipped-locked")
    assert dict(skipped) == {"migration_id": "m", "status": "skipped-locked"}  # an outcome's absent figures
    assert skipped["status"] == "skipped-locked" and "samples" not in skipped and skipped.get("samples", 0) == 0
    outer = _Pass("m", "replicated", samples=30, nested=skipped)
    assert outer.samples == 30 and outer["nested"]["status"] == "skipped-locked"
    assert json.loads(json.dumps(outer.to_dict())) == {
        "migration_id": "m",
        "status": "replicated",
        "samples": 30,
        "nested": {"migration_id": "m", "status": "skipped-locked"},
    }
