"""Render bench/results/*.json as the markdown tables of BENCHMARKS.md.

.venv/bin/python bench/report.py bench/results/default.json [bench/results/profile-engine-default.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run_table(r: dict) -> str:
    d = r["data"]
    base = r["baseline_samples_per_s"]
    lines = [
        f"**{r['preset']}**: {d['series']:,} series, {d['samples']:,} samples ({d['start']} .. {d['end']}); "
        f"load1 before measuring {r['quiet'].get('load1_before_measuring', '?')}"
        f"{'' if r['quiet'].get('quiet', True) else ' (machine NOT quiet: another CI run was going)'}, "
        f"verified: {r['verified']}",
        "",
        "| measurement | samples/s | ratio to min(read, ingest) | wall s | tool CPU s | tool CPU ns/sample "
        "| Prefect API CPU s | peak RSS MB (CLI) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    rr = r["raw_read"]
    lines.append(f"| raw read ({rr['concurrency']} in flight, {rr['chunk_hours']} h windows) | {rr['samples_per_s']:,} "
                 f"| | {rr['seconds']} | | | | |")  # fmt: skip
    if "raw_ingest" in r:
        for ri in r["raw_ingest"]["runs"]:
            best = " (best)" if ri["samples_per_s"] == r["raw_ingest"]["samples_per_s"] else ""
            lines.append(f"| raw ingest ({ri['in_flight']} in flight){best} | {ri['samples_per_s']:,} | | "
                         f"{ri['seconds']} | | | | |")  # fmt: skip
    for m in r["m3migrate"]:
        flags = " ".join(m["args"]) or "(defaults)"
        bad = "" if m.get("verified") else " **MISMATCH**"
        lines.append(
            f"| m3migrate {m['name']}{bad}: `{flags}` | {m['samples_per_s']:,} | {m['ratio_to_baseline']:.1%} "
            f"| {m['seconds']} | {m['cpu_s_tool']} | {m['tool_cpu_ns_per_sample']:,.0f} | {m['cpu_s_prefect_server']} "
            f"| {m['peak_rss_mb_cli']:.0f} |"
        )
    lines.append("")
    lines.append(f"Baseline min(raw read, raw ingest) = {base:,} samples/s.")
    return "\n".join(lines)


def profile_table(r: dict) -> str:
    lines = [
        f"**engine only ({r['preset']})**",
        "",
        "| settings | tasks | samples/s | wall s | CPU s | CPU ns/sample | peak RSS MB | verified |",
        "|---|--:|--:|--:|--:|--:|--:|---|",
    ]
    for x in r["runs"]:
        if x.get("profiled") or "cpu_s" not in x:
            continue
        lines.append(
            f"| {x['name']} `{' '.join(x['settings']) or '(defaults)'}` | {x['tasks']} | {x['samples_per_s']:,} "
            f"| {x['seconds']} | {x['cpu_s']} | {x['cpu_ns_per_sample']:,.0f} | {x['peak_rss_mb']:.0f} "
            f"| {x['verified']} |"
        )
    for x in r["runs"]:
        if "py_spy" in x:
            lines += ["", f"py-spy ({x['name']}, --gil, {x['py_spy']['samples']} samples), top self frames:", ""]
            lines += [f"- {pc}% `{f}`" for f, pc in x["py_spy"]["self"][:12]]
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        r = json.loads(Path(path).read_text())
        print(profile_table(r) if "runs" in r else run_table(r))
        print()


if __name__ == "__main__":
    main()
