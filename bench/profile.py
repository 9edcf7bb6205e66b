"""Engine-only benchmark and profiles: m3migrate's Transfer without Prefect, or the CLI under py-spy.

    .venv/bin/python bench/profile.py --preset default                      # engine only: samples/s, ns/sample, RSS
    .venv/bin/python bench/profile.py --preset default --py-spy             # + py-spy profile of the engine
    .venv/bin/python bench/profile.py --preset quick --mode cli --py-spy    # py-spy over the whole CLI (Prefect incl.)

Engine mode plans the migration exactly as the flow does (m3migrate.plan.migration.prepare), then runs the
whole plan through the engine's Front (the code each Prefect segment task runs), so the difference to
`bench/run.py`'s end-to-end figure is what the orchestration costs. py-spy (from /tmp/benchtools or
PATH) samples at 100 Hz with --gil, so its top frames are where the tool's own CPU goes; the collapsed
stacks are kept for flame graphs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import add_preset_args, count_all, read_chunk_ms, resolve_preset, start_bench_source, wait_quiet

from m3migrate.plan.migration import prepare
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.front import Front
from m3migrate.transfer.unit import Transfer
from sandbox.servers import start_prometheus

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "default": [],
    "tuned-ooo-6h": [
        "--write-mode", "out_of_order", "--window-minutes", "360", "--batch-max-series", "500",
        "--task-concurrency", "4", "--write-concurrency", "4",
    ],
}  # fmt: skip


def log(msg: str) -> None:
    print(f"[profile {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def py_spy_bin() -> str | None:
    for cand in ("/tmp/benchtools/bin/py-spy", shutil.which("py-spy")):
        if cand and Path(cand).exists():
            return cand
    return None


def spec_kwargs(args: list[str]) -> dict:
    out = {}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        key = flag.lstrip("-").replace("-", "_")
        out[key] = value if key == "write_mode" else int(value)
    return out


def top_frames(raw: Path, n: int = 25) -> dict:
    """From py-spy's collapsed stacks: top self (leaf) and inclusive frames, as % of samples."""
    leaf: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        c = int(count)
        total += c
        frames = stack.split(";")
        # frames look like "function (file.py:line)": drop the line so one function is one row
        names = [f.rsplit(":", 1)[0] + ")" if ":" in f else f for f in frames]
        leaf[names[-1]] += c
        for name in set(names):
            incl[name] += c
    pct = lambda c: round(100 * c / total, 1)  # noqa: E731
    return {
        "samples": total,
        "self": [(f, pct(c)) for f, c in leaf.most_common(n)],
        "inclusive": [(f, pct(c)) for f, c in incl.most_common(n * 2)],
    }


def count_elsewhere(*args) -> dict:
    """count_all in a spawned process, so decoding whole days does not inflate this process's peak RSS."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(count_all, *args).result()


def run_engine(source_url: str, target_url: str, start_ms: int, end_ms: int, settings: list[str], tmp: Path) -> dict:
    spec = MigrationSpec(
        migration_id="bench-engine", start=iso_ms(start_ms), end=iso_ms(end_ms), **spec_kwargs(settings)
    )
    src = SourceSettings(read_url=f"{source_url}/api/v1/read", query_url=source_url)
    tgt = TargetSettings(write_url=f"{target_url}/api/v1/write", query_url=target_url)
    state = MigrationState(tmp / "state", "bench-engine")
    t0 = time.perf_counter()
    plan = prepare(src, spec, state, start_over=True).plan
    plan_s = time.perf_counter() - t0
    nb = len(plan.batches)
    with Transfer(src, tgt, spec.relabeler(), write_concurrency=spec.write_concurrency) as transfer:
        front = Front(
            transfer,
            plan.batches,
            plan.windows,
            state.journal("migrate", plan.id),
            depth=spec.windows_in_flight,
            concurrency=spec.task_concurrency,
        )
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        samples = front.run().samples
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {
        "settings": settings,
        "batches": nb,
        "windows": len(plan.windows),
        "units": nb * len(plan.windows),
        "plan_seconds": round(plan_s, 2),
        "seconds": round(wall, 3),
        "samples": samples,
        "samples_per_s": round(samples / wall),
        "cpu_s": round(cpu, 2),
        "cpu_ns_per_sample": round(cpu / samples * 1e9, 1),
        "peak_rss_mb": round(r1.ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_args(ap)
    ap.add_argument("--mode", choices=["engine", "cli"], default="engine")
    ap.add_argument("--settings", default="default,tuned-ooo-6h", help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--py-spy", action="store_true", help="also record a py-spy profile (one extra run per setting)")
    ap.add_argument("--json-out", type=Path)
    ap.add_argument("--no-wait", action="store_true")
    a = ap.parse_args(argv)
    p = resolve_preset(a)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    json_out = a.json_out or out_dir / f"profile-{a.mode}-{a.preset}.json"
    tmp = Path(tempfile.mkdtemp(prefix="m3migrate-profile-"))
    source = start_bench_source(p, tmp)
    st = source.stats
    chunk_ms = read_chunk_ms(st.series, int(p["interval"]))
    expected = {"series": st.series, "samples": st.samples}
    results: dict = {"preset": a.preset, "params": p, "mode": a.mode, "argv": sys.argv, "runs": []}
    results["quiet"] = {} if a.no_wait else wait_quiet()
    spy = py_spy_bin()
    try:
        for name in [s for s in a.settings.split(",") if s]:
            settings = SETTINGS[name]
            ooo = "60d" if "out_of_order" in settings else None
            passes = [False, True] if a.py_spy and spy else [False]
            if a.mode == "cli":
                passes = [True]
            for profiled in passes:
                target = start_prometheus(tmp, name=f"t-{name}-{profiled}", remote_write_receiver=True, ooo_window=ooo)
                raw = out_dir / f"pyspy-{a.mode}-{a.preset}-{name}.txt"
                try:
                    if a.mode == "engine":
                        spy_proc = None
                        if profiled:
                            spy_proc = subprocess.Popen(
                                [spy, "record", "--pid", str(os.getpid()), "--gil", "--rate", "100",
                                 "--format", "raw", "-o", str(raw)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            )  # fmt: skip
                            time.sleep(1.0)
                        r = run_engine(source.server.url, target.url, st.start_ms, st.end_ms, settings, tmp)
                        if spy_proc is not None:
                            spy_proc.send_signal(2)
                            spy_proc.wait(60)
                    else:
                        r = run_cli(spy, name, settings, source.server.url, target.url, st, tmp, raw)
                    got = count_elsewhere(target.url, st.start_ms, st.end_ms, chunk_ms)
                    r["verified"] = got == expected
                    if not r["verified"]:
                        log(f"*** MISMATCH *** {name}: target holds {got}, source {expected}")
                        time.sleep(10)
                        again = count_elsewhere(target.url, st.start_ms, st.end_ms, chunk_ms)
                        r["recount_after_10s"] = again
                        log(f"    recount after 10 s: {again}")
                finally:
                    target.stop()
                    shutil.rmtree(tmp / f"t-{name}-{profiled}", ignore_errors=True)
                r.update(name=name, profiled=profiled)
                if profiled and raw.exists():
                    r["py_spy"] = top_frames(raw)
                    r["py_spy_raw"] = str(raw.relative_to(ROOT))
                log(
                    f"{a.mode} {name}{' (under py-spy)' if profiled else ''}: {r.get('samples_per_s', 0):,} samples/s, "
                    f"{r.get('cpu_ns_per_sample', '?')} ns/sample CPU, peak RSS {r.get('peak_rss_mb', '?')} MB, "
                    f"{r.get('units', '?')} units, verified={r['verified']}"
                )
                if profiled and "py_spy" in r:
                    for f, pc in r["py_spy"]["self"][:12]:
                        print(f"    self {pc:5.1f}%  {f}")
                results["runs"].append(r)
    finally:
        source.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    json_out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {json_out}")
    return 0 if all(r["verified"] for r in results["runs"]) else 1


def run_cli(
    spy: str | None, name: str, settings: list[str], source_url: str, target_url: str, st, tmp: Path, raw: Path
):
    """The migrate CLI under `py-spy record --subprocesses` (Prefect's API server included)."""
    if spy is None:
        raise SystemExit("py-spy not found (python3 -m venv /tmp/benchtools && /tmp/benchtools/bin/pip install py-spy)")
    home = tmp / f"prefect-{name}"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_LOGGING_LEVEL="WARNING")
    argv = [
        spy, "record", "--subprocesses", "--rate", "100", "--format", "raw", "-o", str(raw), "--",
        str(ROOT / ".venv/bin/python"), "-m", "cli", "migrate",
        "--source-read-url", f"{source_url}/api/v1/read", "--source-query-url", source_url,
        "--target-write-url", f"{target_url}/api/v1/write", "--target-query-url", target_url,
        "--start", iso_ms(st.start_ms), "--end", iso_ms(st.end_ms), "--migration-id", f"prof-{name}",
        "--skip-validation", "--state-dir", str(tmp / f"state-{name}"), *settings,
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        log(proc.stdout[-2000:] + proc.stderr[-2000:])
    return {"seconds": round(wall, 2), "samples_per_s": round(st.samples / wall), "exit_code": proc.returncode}


if __name__ == "__main__":
    sys.exit(main())
