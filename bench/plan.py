"""Discovery and planning at scale (issue 15): wall, CPU and peak RSS of the engine's plan step.

Builds (once, kept under ``--data-root``) a source Prometheus holding N series of ``--samples`` samples
each, written by remote write as the sandbox's writers do, then runs in a fresh interpreter per size
what the migrate flow runs before any data moves: ``m3migrate.plan.migration.prepare`` (tiers, discovery
metric by metric, collision check, batching, plan saved), without Prefect. Afterwards it writes one
journal record per unit (every batch × window done, as a finished run leaves it) and reloads plan and
journal, as a resume does. Printed per size: wall, CPU, peak RSS (VmHWM) and the file sizes.

    flock /tmp/bench.lock .venv/bin/python -m bench.plan --series 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DATA_ROOT = Path("/tmp/m3migrate-bench-plan")
METRICS = 100  # metric names; series spread evenly over them (10^6 series: 10,000 per metric)
SAMPLE_STEP_MS = 15_000
READY_FILE = "bench-plan.json"


def series_labels(i: int) -> list[tuple[str, str]]:
    """Series i of the bench source: node-exporter-like labels (sorted by name, as remote write wants)."""
    host = i // METRICS
    return [
        ("__name__", f"bench_metric_{i % METRICS:03d}_total"),
        ("env", "prod" if host % 5 else "staging"),
        ("instance", f"10.{host >> 16 & 255}.{host >> 8 & 255}.{host & 255}:9100"),
        ("job", f"node-{host % 20:02d}"),
        ("region", f"eu-{host % 7}"),
    ]


def build_source(series: int, samples: int, data_dir: Path, workdir: Path) -> dict[str, Any]:
    """A Prometheus TSDB with the series, remote-written into a fresh server's head; reused when built."""
    ready = data_dir / READY_FILE
    if ready.exists():
        info = json.loads(ready.read_text())
        if info.get("series") == series and info.get("samples") == samples:
            return info
    from m3migrate.clients.remote_write import RemoteWriteClient
    from m3migrate.prompb import prompb_pb2
    from m3migrate.settings.endpoints import TargetSettings
    from m3migrate.wire.codec import encode_labels, pack_write_requests
    from sandbox.servers import start_prometheus

    if data_dir.exists():
        shutil.rmtree(data_dir)
    first_ms = (int(time.time() * 1000) // SAMPLE_STEP_MS - samples - 4) * SAMPLE_STEP_MS
    t0 = time.monotonic()
    with start_prometheus(workdir, name=f"build-{series}", remote_write_receiver=True, data_dir=data_dir) as server:
        settings = TargetSettings(write_url=f"{server.url}/api/v1/write")
        with RemoteWriteClient(settings) as writer:
            chunk = 20_000
            for lo in range(0, series, chunk):
                pairs = []
                for i in range(lo, min(lo + chunk, series)):
                    ts = prompb_pb2.TimeSeries()
                    for k in range(samples):
                        ts.samples.add(timestamp=first_ms + k * SAMPLE_STEP_MS, value=float(i + k))
                    pairs.append((encode_labels(series_labels(i)), ts))
                for write_chain in pack_write_requests(pairs, max_bytes=1 << 22, max_samples=50_000):
                    for request in write_chain.requests:
                        writer.write(request)
                print(f"[bench.plan] wrote {min(lo + chunk, series):,} of {series:,} series", flush=True)
    info = {
        "series": series,
        "samples": samples,
        "first_ms": first_ms,
        "last_ms": first_ms + (samples - 1) * SAMPLE_STEP_MS,
        "build_s": round(time.monotonic() - t0, 1),
    }
    ready.write_text(json.dumps(info))
    return info


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(query_url: str, first_ms: int, last_ms: int, state_root: Path, days: float) -> dict[str, Any]:
    """In this (fresh) process: prepare() as the migrate flow calls it, then a done journal, then a resume's loads."""
    from datetime import UTC, datetime

    from m3migrate.plan.migration import prepare
    from m3migrate.settings.endpoints import SourceSettings
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.state import MigrationState
    from m3migrate.transfer.unit import TransferResult

    def at(ms: int) -> datetime:
        return datetime.fromtimestamp(ms / 1000, tz=UTC)

    source = SourceSettings(read_url=f"{query_url}/api/v1/read", query_url=query_url, namespaces="unpinned")
    # the range a migration of the last `days` would ask for (the series hold samples in its last minutes)
    end_ms = last_ms + 60_000
    # exactly `days` long (end inclusive): one discovery slice a day
    start_ms = end_ms - int(days * 86_400_000) + 1
    spec = MigrationSpec(start=at(start_ms), end=at(end_ms), migration_id="bench-plan")
    rss_start = _status_bytes("VmRSS")
    out: dict[str, Any] = {"rss_after_imports_mb": round(rss_start / 2**20)}

    state = MigrationState(state_root, "bench-plan")
    t0, c0 = time.monotonic(), _cpu_s()
    discovery_rss = [0]

    def sample_rss(name: str, count: int) -> None:  # after each metric: where in planning the peak is
        discovery_rss[0] = max(discovery_rss[0], _status_bytes("VmRSS"))

    prepared = prepare(source, spec, state, start_over=True, on_metric=sample_rss)
    plan = prepared.plan
    out |= {
        "plan_wall_s": round(time.monotonic() - t0, 2),
        "plan_cpu_s": round(_cpu_s() - c0, 2),
        "plan_peak_rss_mb": round(_status_bytes("VmHWM") / 2**20),
        "plan_held_rss_mb": round((_status_bytes("VmRSS") - rss_start) / 2**20),
        "discovery_max_rss_mb": round(discovery_rss[0] / 2**20),
        "series": plan.series_count,
        "batches": len(plan.batches),
        "windows": len(plan.windows),
        "plan_file_mb": round(state.plan_path().stat().st_size / 2**20, 1),
    }

    journal = state.journal("migrate", plan.id)
    t0 = time.monotonic()
    for batch in plan.batches:
        for window in plan.windows:
            key = journal.key(batch.id, window.index)
            size = getattr(batch, "size", None) or len(batch.series)  # (a plan before batches held text)
            result = TransferResult(batch.id, window.index, series=size, samples=2 * size)
            journal.mark_done(key, result.as_dict())
    out["journal_write_s"] = round(time.monotonic() - t0, 2)
    out["journal_file_mb"] = round(journal.path.stat().st_size / 2**20, 2)
    plan_id = plan.id
    del prepared, plan, journal
    gc.collect()

    rss0 = _status_bytes("VmRSS")
    t0 = time.monotonic()
    loaded = state.load_plan()
    assert loaded is not None and loaded.id == plan_id
    out["plan_load_s"] = round(time.monotonic() - t0, 2)
    out["plan_load_held_mb"] = round((_status_bytes("VmRSS") - rss0) / 2**20)
    rss0, t0 = _status_bytes("VmRSS"), time.monotonic()
    reloaded = state.journal("migrate", plan_id)
    out["journal_load_s"] = round(time.monotonic() - t0, 2)
    out["journal_load_held_mb"] = round((_status_bytes("VmRSS") - rss0) / 2**20)
    assert len(reloaded.done_units()) == len(loaded.batches) * len(loaded.windows)
    out["peak_rss_mb"] = round(_status_bytes("VmHWM") / 2**20)
    return out


def run_size(args: argparse.Namespace, series: int, workdir: Path) -> dict[str, Any]:
    from sandbox.servers import start_prometheus

    data_dir = args.data_root / f"s{series}-n{args.samples}"
    info = build_source(series, args.samples, data_dir, workdir)
    runs = []
    with start_prometheus(workdir, name=f"source-{series}", data_dir=data_dir, ready_timeout=900) as server:
        for _ in range(args.repeat):
            state_root = Path(tempfile.mkdtemp(prefix="state-", dir=workdir))
            argv = [sys.executable, "-m", "bench.plan", "--measure", server.url]
            argv += [str(info["first_ms"]), str(info["last_ms"]), str(state_root), str(args.days)]
            t0 = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"measurement failed:\n{proc.stderr[-3000:]}")
            run = json.loads(proc.stdout.strip().splitlines()[-1])
            run["process_wall_s"] = round(time.monotonic() - t0, 2)
            runs.append(run)
            print(f"[bench.plan] {series:,} series: {json.dumps(run)}", flush=True)
            shutil.rmtree(state_root, ignore_errors=True)
    return {"series": series, "build": info, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--samples", type=int, default=2, help="samples per series")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--days", type=float, default=1.0, help="the migration's range, ending just after the samples")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT, help="kept between runs (never committed)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--measure", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        url, first, last, state_dir, days = args.measure
        print(json.dumps(measure(url, int(first), int(last), Path(state_dir), float(days))))
        return
    args.data_root.mkdir(parents=True, exist_ok=True)
    results = {"load_before": os.getloadavg(), "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-plan-", dir="/tmp") as tmp:
        for series in args.series:
            results["sizes"].append(run_size(args, series, Path(tmp)))
    results["load_after"] = os.getloadavg()
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
