"""CPU the sandbox's M3 gateway spends per sample it passes through, next to the Prometheus behind it.

    .venv/bin/python bench/gateway.py --preset quick            # 200 series x 1 d x 15 s
    .venv/bin/python bench/gateway.py --preset quick --days 7   # 8 M samples

The gateway runs as its own process (servers.start_m3_gateway) in front of the cached bench source;
the whole range is read by remote read, 2 reads in flight, in 1 d windows (as the raw-read baseline)
and in 60 min windows (a migration's default), first from the Prometheus directly, then through the
gateway. Printed per case (best of ``--runs``): samples/s, gateway and Prometheus CPU ns per sample.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from common import ALL, add_preset_args, chunks, read_chunk_ms, resolve_preset, start_bench_source, wait_quiet

from m3migrate.clients.remote_read import RemoteReadClient, count_samples
from m3migrate.settings.endpoints import SourceSettings
from sandbox.servers import start_m3_gateway

ROOT = Path(__file__).resolve().parent.parent


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def read_through(read_url: str, ranges: list[tuple[int, int]], pids: dict[str, int]) -> dict:
    """Read every range (2 in flight); wall time, samples and CPU seconds of each process in ``pids``."""
    with RemoteReadClient(SourceSettings(read_url=read_url), max_connections=4) as client:
        before = {k: cpu_s(p) for k, p in pids.items()}
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            samples = sum(pool.map(lambda r: count_samples(client.read_raw(ALL, *r)), ranges))
        wall = time.perf_counter() - t0
        cpu = {k: cpu_s(p) - before[k] for k, p in pids.items()}
    return {"seconds": wall, "samples": samples, "cpu": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_args(ap)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-wait", action="store_true")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args(argv)
    p = resolve_preset(a)
    tmp = Path(tempfile.mkdtemp(prefix="m3migrate-bench-gw-"))
    source = start_bench_source(p, tmp)
    st = source.stats
    gateway = start_m3_gateway(tmp, {"default": {"upstream": source.server.url, "retention": "100y"}})
    results: dict = {"params": p, "samples": st.samples, "cases": []}
    try:
        if not a.no_wait:
            results["quiet"] = wait_quiet()
        windows = {
            "1d": read_chunk_ms(st.series, int(p["interval"])),
            "60min": 3_600_000,
        }
        for wname, chunk_ms in windows.items():
            ranges = chunks(st.start_ms, st.end_ms, chunk_ms)
            for via, url, pids in (
                ("prometheus", f"{source.server.url}/api/v1/read", {"prometheus": source.server.pid}),
                (
                    "gateway",
                    gateway.url + "/api/v1/prom/remote/read",
                    {"prometheus": source.server.pid, "gateway": gateway.pid},
                ),
            ):
                runs = [read_through(url, ranges, pids) for _ in range(a.runs)]
                for r in runs:
                    if r["samples"] != st.samples:
                        print(f"*** MISMATCH *** {via} {wname}: read {r['samples']} samples, source holds {st.samples}")
                        return 1
                best = min(runs, key=lambda r: sum(r["cpu"].values()))
                case = {
                    "windows": wname,
                    "reads": len(ranges),
                    "via": via,
                    "samples_per_s": round(st.samples / min(r["seconds"] for r in runs)),
                    **{f"{k}_ns_per_sample": round(v / st.samples * 1e9, 1) for k, v in best["cpu"].items()},
                }
                results["cases"].append(case)
                print(json.dumps(case), flush=True)
    finally:
        gateway.stop()
        source.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{st.series} series, {st.samples:,} samples, best of {a.runs}")
    print("| windows | via | reads | samples/s | gateway ns/sample | Prometheus ns/sample |")
    print("|---|---|--:|--:|--:|--:|")
    for c in results["cases"]:
        gw = c.get("gateway_ns_per_sample", "")
        prom = c["prometheus_ns_per_sample"]
        print(f"| {c['windows']} | {c['via']} | {c['reads']} | {c['samples_per_s']:,} | {gw} | {prom} |")
    out = a.json_out or ROOT / "bench" / "results" / f"gateway-{a.preset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
