"""Blocks write mode end to end against the sandbox source: wall, samples/s, tool CPU per sample and peak
RSS, beside the raw remote-read rate of the same source in the same run (the path's limit).

    .venv/bin/python bench/blocks.py --series 1000 --hours 96 --interval 15
    .venv/bin/python bench/blocks.py --series 100000 --hours 2 --interval 30
    .venv/bin/python bench/blocks.py --series 1000 --hours 96 --cli      # the CLI (Prefect, validation)
    .venv/bin/python bench/blocks.py --series 1000,10000,100000 --hours 2 --interval 30 --cli --prefect-server
                                                                         # a sweep: one table row per data set

``engine`` (default) runs plan + every block window (read, encode, upload into a local bucket) in a child
process, ``task_concurrency`` windows at once as the flow does, so its CPU and peak RSS are the blocks
path's alone; ``--cli`` runs ``m3migrate migrate --write-mode blocks`` with validation, on an ephemeral
Prefect API (its CPU counted as the tool's) unless PREFECT_API_URL is set or ``--prefect-server``
starts one (as deployments run; its CPU is not counted). The source is a Prometheus on cached promtool
blocks (no live tail), read through the M3 gateway with --m3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from common import high_water_rss  # noqa: E402 (bench/ goes on the path first)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args: argparse.Namespace) -> None:
    """The measured blocks run (in its own process): plan, then every window, as the flow's task does."""
    t0, c0 = time.perf_counter(), _cpu()
    from m3migrate import collector
    from m3migrate.backfill.windows import backfill_from_source, block_windows
    from m3migrate.clients.bucket import Bucket
    from m3migrate.clients.remote_read import RemoteReadClient
    from m3migrate.plan.migration import build_plan
    from m3migrate.settings.endpoints import SourceSettings
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.timefmt import iso_ms

    t_import = time.perf_counter() - t0
    collector.tune_for_bulk_data()  # as the flows do
    source = SourceSettings(read_url=args.read_url, query_url=args.query_url)
    spec = MigrationSpec(start=iso_ms(args.start), end=iso_ms(args.end), write_mode="blocks")
    plan = build_plan(source, spec, "bench-blocks", start_ms=args.start, end_ms=args.end)
    t_plan = time.perf_counter() - t0
    work = Path(args.work)
    bucket = Bucket(work / "bucket")  # one per process, as the flow's tasks share it (tasks.backfill.get_bucket)
    with RemoteReadClient(source) as reader, ThreadPoolExecutor(spec.task_concurrency) as pool:

        def one(window):  # what the flow's backfill-window task does
            return backfill_from_source(
                reader,
                plan.batches,
                window=window,
                bucket=bucket,
                relabeler=spec.relabeler(),
                external_labels={"backfill": "bench"},
                work_dir=work,
                tiers=plan.tiers,
            )

        results = list(pool.map(one, block_windows(args.start, args.end, spec.block_ms)))
    samples = sum(r.samples for r in results)
    read = sum(r.read_seconds for r in results)
    encode = sum(r.encode_seconds for r in results)
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "samples": int(samples),
                "seconds": wall,
                "import_s": t_import,
                "plan_s": t_plan - t_import,
                "read_s": read,
                "encode_s": encode,
                "cpu_s": _cpu() - c0,
                "peak_rss": high_water_rss(),
            }
        )
    )


def raw_read(read_url: str, start: int, end: int, chunk_ms: int, concurrency: int = 2) -> tuple[float, int]:
    """Seconds to read everything (decompressed, discarded), 2 reads in flight as run.py does."""
    from common import ALL, chunks

    from m3migrate.clients.remote_read import RemoteReadClient
    from m3migrate.settings.endpoints import SourceSettings

    with RemoteReadClient(SourceSettings(read_url=read_url), max_connections=4) as client:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            nbytes = sum(pool.map(lambda r: len(client.read_raw(ALL, *r)), chunks(start, end, chunk_ms)))
        return time.perf_counter() - t0, nbytes


def _poll_hwm(pid: int, out: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        out[0] = max(out[0], high_water_rss(pid))
        stop.wait(0.2)


def run_cli(a: argparse.Namespace, src, target_url: str, start: int, end: int, tmp: Path) -> dict:
    from m3migrate.timefmt import iso_ms

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") or k == "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), PREFECT_LOGGING_LEVEL="WARNING")
    argv = [
        sys.executable, "-m", "cli", "migrate",
        "--source-read-url", src.read_url, "--source-query-url", src.query_url,
        "--target-write-url", f"{target_url}/api/v1/write", "--target-query-url", target_url,
        "--start", iso_ms(start), "--end", iso_ms(end), "--migration-id", "bench-blocks",
        "--state-dir", str(tmp / "state"), "--write-mode", "blocks", "--bucket-dir", str(tmp / "bucket"),
    ]  # fmt: skip
    peak, stop = [0], threading.Event()
    with open(tmp / "cli.log", "wb") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
        poller = threading.Thread(target=_poll_hwm, args=(proc.pid, peak, stop), daemon=True)
        poller.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit((tmp / "cli.log").read_text(errors="replace")[-3000:])
    return {"seconds": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss": peak[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", default="1000", help="series count, or a comma list (a sweep)")
    ap.add_argument("--hours", default="24", help="hours of history, or a comma list (a sweep)")
    ap.add_argument("--interval", type=int, default=15)
    ap.add_argument("--m3", action="store_true", help="read through the sandbox's M3 gateway")
    ap.add_argument("--cli", action="store_true", help="run the CLI (Prefect, validation) instead of the engine")
    ap.add_argument("--prefect-server", action="store_true", help="--cli against a running Prefect server")
    ap.add_argument("--profile", action="store_true", help="engine run under cProfile: print the top functions")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("read-url", "query-url", "work"):
        ap.add_argument(f"--{name}", help=argparse.SUPPRESS)
    for name in ("start", "end"):
        ap.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child and a.profile:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]  # bench/profile.py
        import cProfile
        import pstats

        with cProfile.Profile() as prof:
            child(a)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)
        return
    if a.child:
        child(a)
        return

    runs = [(series, hours) for series in _numbers(a.series, int) for hours in _numbers(a.hours, float)]
    rows = [measure(a, series, hours) for series, hours in runs]
    if len(rows) > 1:
        print(f"\n{'CLI' if a.cli else 'engine'}, {a.interval} s between samples:\n")
        print("| series | hours | samples | wall | samples/s | x raw read | tool CPU ns/sample | peak RSS |")
        print("|--:|--:|--:|--:|--:|--:|--:|--:|")
        for row in rows:
            print(
                f"| {row['series']:,} | {row['hours']:g} | {row['samples'] / 1e6:.1f} M | {row['seconds']:.1f} s "
                f"| {row['rate'] / 1e6:.2f} M | {row['x_raw']:.2f} | {row['ns_per_sample']:,.0f} "
                f"| {row['peak_rss'] / 2**20:,.0f} MB |"
            )


def _numbers(text: str, kind: type) -> list:
    return [kind(part) for part in str(text).split(",") if part]


def measure(a: argparse.Namespace, series: int, hours: float) -> dict:
    """One data set: the raw read, then the engine or the CLI on it; prints and returns the figures."""
    from common import read_chunk_ms, start_bench_source

    p = {"series": series, "days": hours / 24, "interval": a.interval}
    with tempfile.TemporaryDirectory(prefix="m3migrate-bench-blocks-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        src = start_bench_source(p, tmp)
        gateway = None
        try:
            if a.m3:
                from sandbox.m3gateway import GatewayNamespace, M3Gateway

                gateway = M3Gateway({"default": GatewayNamespace(src.server.url, retention="3650d")}).__enter__()
                src.m3 = gateway
            stats = src.stats
            start, end, samples = stats.start_ms, stats.end_ms, stats.samples
            print(f"source: {stats.series:,} series, {samples:,} samples ({time.perf_counter() - t0:.0f} s to start)")
            chunk_ms = read_chunk_ms(series, a.interval)
            raw_s, nbytes = raw_read(src.read_url, start, end, chunk_ms)
            rate = samples / raw_s / 1e6
            print(f"raw remote read: {rate:.2f} M samples/s ({raw_s:.1f} s, {nbytes / samples:.1f} B/sample)")
            if a.cli:
                from sandbox.servers import start_prometheus

                target = start_prometheus(tmp, name="target", remote_write_receiver=True)
                try:
                    if a.prefect_server:
                        from sandbox.demo import prefect_server

                        with prefect_server(tmp) as server:
                            os.environ["PREFECT_API_URL"] = server.api_url
                            r = run_cli(a, src, target.url, start, end, tmp)
                    else:
                        r = run_cli(a, src, target.url, start, end, tmp)
                finally:
                    target.stop()
                r["samples"] = samples
            else:
                argv = [
                    sys.executable, __file__, "--child", "--read-url", src.read_url, "--query-url", src.query_url,
                    "--work", str(tmp), "--start", str(start), "--end", str(end), *(["--profile"] if a.profile else []),
                ]  # fmt: skip
                done = subprocess.run(argv, capture_output=True, text=True, check=False)
                if done.returncode:
                    raise SystemExit(done.stderr[-3000:])
                if a.profile:
                    print(done.stderr[-6000:])
                r = json.loads(done.stdout.strip().splitlines()[-1])
                if r["samples"] != samples:
                    raise SystemExit(f"blocks hold {r['samples']:,} samples, the source {samples:,}")
        finally:
            if gateway is not None:
                gateway.__exit__(None, None, None)
            src.stop()
    rate = samples / r["seconds"]
    print(f"blocks ({'cli' if a.cli else 'engine'}): {r['seconds']:.1f} s wall, {rate / 1e6:.2f} M samples/s "
          f"({rate * raw_s / samples:.2f} x raw read), tool CPU {r['cpu_s'] / samples * 1e9:,.0f} ns/sample, "
          f"peak RSS {r['peak_rss'] / 2**20:,.0f} MB")  # fmt: skip
    extra = {k: round(v, 2) for k, v in r.items() if k.endswith("_s") and k != "cpu_s"}
    if extra:
        print("  " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    return {
        **r,
        "series": series,
        "hours": hours,
        "samples": samples,
        "rate": rate,
        "x_raw": rate * raw_s / samples,
        "ns_per_sample": r["cpu_s"] / samples * 1e9,
    }


if __name__ == "__main__":
    main()
