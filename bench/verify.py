"""Verification of a remote-write copy: wall, tool CPU per sample, peak RSS and samples/s, per evidence level.

    .venv/bin/python bench/verify.py                                   # 10,000 and 100,000 series × 2 h × 30 s
    .venv/bin/python bench/verify.py --series 10000 --evidence figures,samples

The source is a Prometheus 2.42 on cached promtool blocks (bench/common.py), copied into a fresh
Prometheus 2.42 (remote-write receiver) by the engine exactly as bench/profile.py runs it (plan saved in
a state directory). Each verification then runs in a child process, as ``m3migrate verify`` does with
the saved plan (``task_concurrency`` tasks at once), whose CPU (whole process: imports included) and peak
RSS (VmHWM) are the tool's; the target Prometheus' CPU during the verification is reported beside it
(the figures level moves work from the tool to the target's engine). A verification that does not find
the copy equal fails the benchmark.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from common import high_water_rss, stat_cpu_s  # noqa: E402 (bench/ goes on the path first)

MIGRATION_ID = "bench-engine"  # the id bench/profile.py's run_engine saves its plan under


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _profile_module():
    """bench/profile.py by path (its name is the standard library's profile module's)."""
    spec = importlib.util.spec_from_file_location("bench_profile", ROOT / "bench" / "profile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(a: argparse.Namespace) -> None:
    """The measured verification (its own process), with the plan the copy saved."""
    t0, c0 = time.perf_counter(), _cpu()
    from m3migrate import collector
    from m3migrate.checks.verify import verify
    from m3migrate.settings.endpoints import SourceSettings, TargetSettings
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.state import MigrationState
    from m3migrate.timefmt import iso_ms

    collector.tune_for_bulk_data()  # as the verify flow does
    source = SourceSettings(read_url=f"{a.source_url}/api/v1/read", query_url=a.source_url)
    target = TargetSettings(write_url=f"{a.target_url}/api/v1/write", query_url=a.target_url)
    spec = MigrationSpec(migration_id=MIGRATION_ID, start=iso_ms(a.start), end=iso_ms(a.end))
    plan = MigrationState(Path(a.state), MIGRATION_ID).load_plan()
    report = verify(
        source,
        target,
        spec,
        plan,
        concurrency=spec.task_concurrency,
        evidence=a.evidence,
        samples_fraction=a.samples_fraction,
    )
    t = report.totals
    print(
        json.dumps(
            {
                "ok": report.ok,
                "seconds": time.perf_counter() - t0,
                "verify_s": t["seconds"],
                "cpu_s": _cpu() - c0,
                "peak_rss": high_water_rss(),
                **{k: t[k] for k in ("samples_source", "samples_target", "checked_by_figures", "checked_by_samples")},
            }
        )
    )


def run_child(a: argparse.Namespace, src, target, stats, state: Path, evidence: str) -> dict:
    argv = [
        sys.executable, __file__, "--child", "--source-url", src.server.url, "--target-url", target.url,
        "--state", str(state), "--start", str(stats.start_ms), "--end", str(stats.end_ms),
        "--evidence", evidence, "--samples-fraction", str(a.samples_fraction),
    ]  # fmt: skip
    target_cpu = stat_cpu_s(target.process.pid)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(err[-3000:])
    r = json.loads(out.strip().splitlines()[-1])
    r.update(wall=wall, target_cpu_s=stat_cpu_s(target.process.pid) - target_cpu)
    if not r["ok"] or r["samples_source"] != r["samples_target"]:
        raise SystemExit(f"*** the copy did not verify equal: {r}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="10000,100000", help="comma list of series counts")
    ap.add_argument("--hours", type=float, default=2)
    ap.add_argument("--interval", type=int, default=30)
    ap.add_argument("--evidence", default="figures", help="comma list of evidence levels (figures, samples)")
    ap.add_argument("--samples-fraction", type=float, default=0.01)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("source-url", "target-url", "state"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("start", "end"):
        ap.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a)
        return

    from common import start_bench_source

    from sandbox.servers import start_prometheus

    run_engine = _profile_module().run_engine
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    for series in [int(s) for s in a.series.split(",") if s]:
        p = {"series": series, "days": a.hours / 24, "interval": a.interval}
        with tempfile.TemporaryDirectory(prefix="m3migrate-bench-verify-") as tmp_s:
            tmp = Path(tmp_s)
            src = start_bench_source(p, tmp)
            target = start_prometheus(tmp, name="target", remote_write_receiver=True)
            try:
                stats = src.stats
                copy = run_engine(src.server.url, target.url, stats.start_ms, stats.end_ms, [], tmp)
                print(f"{series:,} series: copied {copy['samples']:,} samples in {copy['seconds']:.1f} s", flush=True)
                for evidence in [e for e in a.evidence.split(",") if e]:
                    r = run_child(a, src, target, stats, tmp / "state", evidence)
                    n = r["samples_source"]
                    print(
                        f"verify {evidence} ({series:,} series, {n:,} samples): {r['wall']:.1f} s wall "
                        f"(verify() {r['verify_s']:.1f} s), {n / r['wall'] / 1e6:.2f} M samples/s, tool CPU "
                        f"{r['cpu_s'] / n * 1e9:,.0f} ns/sample, target CPU {r['target_cpu_s'] / n * 1e9:,.0f} "
                        f"ns/sample, peak RSS {r['peak_rss'] / 2**20:,.0f} MB; by figures "
                        f"{r['checked_by_figures']:,}, by samples {r['checked_by_samples']:,} series × windows",
                        flush=True,
                    )
            finally:
                target.stop()
                src.stop()
    print(f"load after: {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
