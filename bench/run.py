"""m3migrate benchmark: raw read, raw ingest and m3migrate end to end on one data set, one command.

    .venv/bin/python bench/run.py --preset quick      # 200 series x 1 d x 15 s   (~1.2 M samples)
    .venv/bin/python bench/run.py --preset default    # 1000 series x 7 d x 15 s (~40 M samples)
    .venv/bin/python bench/run.py --preset large      # 10x default's series (RSS comparison)

The source is what users read: the sandbox's M3 Coordinator gateway (its own process, [start, end)
reads, answers passed through at the wire level) in front of the Prometheus 2.42 holding the data.
Steps, each against fresh Prometheus 2.42 servers on 127.0.0.1:
  1. raw read    remote read of the whole range (<= 1 d windows, 2 in flight) through the gateway, bodies
                 decompressed and discarded (and once from the Prometheus directly, for reference)
  2. raw ingest  the same data, pre-encoded as WriteRequests per 60 min window, sent with 2 and 4 in flight
                 (barrier per window so every series stays in order); the best is kept
  3. m3migrate   `python -m cli migrate` as a subprocess, default, tuned and Dask settings,
                 against a running Prefect server (`--prefect-api server`, the deployed setup: started
                 once before measuring) and/or with its own ephemeral API per run (`ephemeral`, one
                 PREFECT_HOME whose database is created before measuring); wall time, CPU seconds
                 of the tool and of the Prefect API server, peak RSS
Also reported: the machine's limit, cores x 1e9 / (the source's CPU ns per sample in step 1 + the
receiver's in step 2, both from /proc/<pid>/stat), and each m3migrate run's wall and transfer rate as
shares of it; the run's fixed costs (process start to its first write, its last write to the exit, seen
by a timing relay in front of the receiver's write URL) and two replication passes with nothing new.
After every write the target is read back and must hold exactly the source's series and samples.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ALL,
    add_preset_args,
    boottime,
    chunks,
    count_all,
    high_water_rss,
    machine_info,
    process_start_boottime,
    read_chunk_ms,
    resolve_preset,
    start_bench_source,
    stat_cpu_s,
    wait_quiet,
)

from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import WriteBody, decode_read_response, encode_labels, pack_write_requests
from sandbox.demo import RunningPrefect, prefect_server
from sandbox.servers import Server, start_m3_gateway, start_prometheus

ROOT = Path(__file__).resolve().parent.parent
GATEWAY_READ_PATH = "/api/v1/prom/remote/read"  # M3 Coordinator's remote-read path
INGEST_WINDOW_MS = 60 * 60_000  # in-order safe: one window at a time stays within the target's 1 h accept window

M3MIGRATE_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"args": [], "ooo": False},
    "tuned-ooo-6h": {
        "args": [
            "--write-mode",
            "out_of_order",
            "--window-minutes",
            "360",
            "--batch-max-series",
            "500",
            "--task-concurrency",
            "4",
            "--write-concurrency",
            "4",
        ],
        "ooo": True,
    },
    # scale-out: the same flow on a Dask LocalCluster of 2 worker processes (one batch group each); with
    # an ephemeral API every worker process would start an API of its own, so it runs against a server only
    "dask-ooo-6h": {
        "server_only": True,
        "args": [
            "--write-mode",
            "out_of_order",
            "--window-minutes",
            "360",
            "--batch-max-series",
            "500",
            "--task-runner",
            "dask",
            "--task-concurrency",
            "2",
            "--write-concurrency",
            "4",
        ],
        "ooo": True,
    },
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _tree(pid: int) -> list:
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_of(pid: int) -> float:
    """CPU seconds a server and its child processes have used so far (Prometheus is one process, a
    Prefect server a few), as /proc/<pid>/stat counts them."""
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(Exception):  # a child that just exited
            total += stat_cpu_s(p.pid)
    return total


def rss_of(pid: int) -> int:
    """Resident memory of a server and its child processes."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(Exception):
            total += p.memory_info().rss
    return total


# -- 1. raw read --------------------------------------------------------------------------------------


def raw_read(
    read_url: str,
    start_ms: int,
    end_ms: int,
    chunk_ms: int,
    samples: int,
    server_pid: int,
    gateway_pid: int | None = None,
    concurrency: int = 2,
) -> dict:
    """Read everything; the source's CPU is the Prometheus' plus the gateway's (when read through it)."""
    ranges = chunks(start_ms, end_ms, chunk_ms)
    nbytes = 0
    with RemoteReadClient(SourceSettings(read_url=read_url), max_connections=4) as client:

        def one(rng: tuple[int, int]) -> int:
            return len(client.read_raw(ALL, *rng))  # decompressed, then discarded

        g0 = cpu_of(gateway_pid) if gateway_pid else 0.0
        c0, s0, t0 = cpu_self(), cpu_of(server_pid), time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for n in pool.map(one, ranges):
                nbytes += n
        wall = time.perf_counter() - t0
        cpu, server_cpu = cpu_self() - c0, cpu_of(server_pid) - s0
        gateway_cpu = cpu_of(gateway_pid) - g0 if gateway_pid else 0.0
    return {
        "via": "gateway" if gateway_pid else "prometheus",
        "prometheus_cpu_ns_per_sample": round(server_cpu / samples * 1e9, 1),
        "gateway_cpu_ns_per_sample": round(gateway_cpu / samples * 1e9, 1),
        "seconds": round(wall, 3),
        "samples_per_s": round(samples / wall),
        "reads": len(ranges),
        "chunk_hours": round(chunk_ms / 3_600_000, 2),
        "concurrency": concurrency,
        "decompressed_bytes": nbytes,
        "client_cpu_s": round(cpu, 2),
        "source_cpu_ns_per_sample": round((server_cpu + gateway_cpu) / samples * 1e9, 1),
    }


# -- 2. raw ingest ------------------------------------------------------------------------------------


def pre_encode(read_url: str, start_ms: int, end_ms: int, req_samples: int, spool: Path) -> tuple[list[list], dict]:
    """Read the data per 30 min window and pack it into WriteRequests spooled to a file.

    Returns per window the list of (offset, length, series, samples) of its requests."""
    windows = chunks(start_ms, end_ms, INGEST_WINDOW_MS)
    index: list[list] = []
    labels_cache: dict[tuple, bytes] = {}
    total = requests = 0
    t0 = time.perf_counter()
    with (
        RemoteReadClient(SourceSettings(read_url=read_url), max_connections=4) as client,
        open(spool, "wb") as f,
        ThreadPoolExecutor(2) as pool,
    ):
        for raw in pool.map(lambda w: client.read_raw(ALL, *w), windows):
            qr = decode_read_response(raw, endpoint=read_url)
            pairs = []
            for ts in qr.timeseries:
                key = tuple((label.name, label.value) for label in ts.labels)
                lb = labels_cache.get(key)
                if lb is None:
                    lb = labels_cache[key] = encode_labels(key)
                ts.ClearField("labels")
                pairs.append((lb, ts))
            chains = pack_write_requests(pairs, max_bytes=64 << 20, max_samples=req_samples)
            entries = []
            for chain in chains:
                if len(chain.requests) != 1:
                    raise RuntimeError("a series exceeds one request in a 30 min window; raise req_samples")
                body = chain.requests[0]
                off = f.tell()
                f.write(body.body)
                entries.append((off, len(body.body), body.series, body.samples))
                total += body.samples
                requests += 1
            index.append(entries)
    return index, {
        "encode_seconds": round(time.perf_counter() - t0, 1),
        "requests": requests,
        "samples": total,
        "spool_bytes": spool.stat().st_size,
    }


def raw_ingest(target_url: str, target_pid: int, index: list[list], spool: Path, in_flight: int) -> dict:
    total = sum(e[3] for w in index for e in w)
    fd = os.open(spool, os.O_RDONLY)
    try:
        with (
            RemoteWriteClient(
                TargetSettings(write_url=f"{target_url}/api/v1/write"), max_connections=in_flight * 2
            ) as client,
            ThreadPoolExecutor(in_flight) as pool,
        ):
            # warm the page cache so the timed part does not measure the disk
            for w in index:
                for off, ln, _, _ in w:
                    os.pread(fd, ln, off)

            def send(e: tuple) -> None:
                off, ln, series, samples = e
                client.write(WriteBody(os.pread(fd, ln, off), series, samples, 0))

            c0, s0, t0 = cpu_self(), cpu_of(target_pid), time.perf_counter()
            for w in index:  # barrier per window: a series is never in two requests in flight
                list(pool.map(send, w))
            wall = time.perf_counter() - t0
            cpu, target_cpu = cpu_self() - c0, cpu_of(target_pid) - s0
    finally:
        os.close(fd)
    return {
        "in_flight": in_flight,
        "seconds": round(wall, 3),
        "samples_per_s": round(total / wall),
        "client_cpu_s": round(cpu, 2),
        "target_cpu_ns_per_sample": round(target_cpu / total * 1e9, 1),
        "target_cores_busy": round(target_cpu / wall, 2),
    }


# -- 3. m3migrate -------------------------------------------------------------------------------------


class TreeSampler:
    """Polls a process tree: last CPU times per pid (so exited children count), peak RSS per role."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(pid)
        self.period = period
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.peak_rss: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _classify(self, p) -> str:
        if p.pid == self.root.pid:
            return "cli"
        try:
            cmd = " ".join(p.cmdline())
        except Exception:
            return "other"
        if "uvicorn" in cmd or "prefect.server" in cmd or "server start" in cmd:
            return "prefect-server"
        if "spawn_main" in cmd or "forkserver" in cmd:
            return "dask-worker"  # LocalCluster worker/nanny processes of the dask task runner
        return "other"

    def _poll(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except self.psutil.Error:
            return
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    rss = max(p.memory_info().rss, high_water_rss(p.pid))
            except self.psutil.Error:
                continue
            if p.pid not in self.role:
                self.role[p.pid] = self._classify(p)
            role = self.role[p.pid]
            self.cpu[p.pid] = t.user + t.system  # children_* would count reaped children twice
            self.peak_rss[role] = max(self.peak_rss.get(role, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, c in self.cpu.items():
            out[self.role[pid]] = out.get(self.role[pid], 0.0) + c
        return out


class WriteTimer:
    """A loopback TCP relay in front of the receiver's write endpoint: it passes the bytes on unchanged and
    notes, on CLOCK_BOOTTIME (the clock of a process's start time in /proc/<pid>/stat), when the tool's
    first request byte arrived and when the receiver's last response byte left. Only the write URL goes
    through it, so every byte it sees is a write (the target's queries go to the receiver directly)."""

    def __init__(self, target_url: str) -> None:
        host, port = target_url.rsplit("//", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self.reset()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self) -> None:
        with self._lock:
            self.first_request: float | None = None
            self.last_response: float | None = None
            self.request_bytes = 0
            self.connections = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.upstream)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, is_request: bool) -> None:
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        try:
            while n := src.recv_into(buf):
                now = boottime()
                with self._lock:
                    if is_request:
                        self.request_bytes += n
                        if self.first_request is None:
                            self.first_request = now
                dst.sendall(view[:n])
                if not is_request:
                    with self._lock:
                        self.last_response = boottime()
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                src.close()

    def close(self) -> None:
        self._listener.close()


def prefect_env(tmp: Path, api_url: str | None = None) -> dict[str, str]:
    """One PREFECT_HOME for every measured run. Without ``api_url`` each CLI run starts its own ephemeral
    API server, on a database that already exists (creating it is a one-time ~7 s, paid in
    warm_prefect_home); with it, runs report to that running server as a deployment does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",  # 20 s by default: too short on a busy machine
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def warm_prefect_home(tmp: Path) -> float:
    """Run one empty flow so the ephemeral API's database exists before anything is measured."""
    (tmp / "prefect-home").mkdir(parents=True, exist_ok=True)
    code = "from prefect import flow\nflow(lambda: None, name='warm-up')()"
    t0 = time.perf_counter()
    subprocess.run([str(ROOT / ".venv/bin/python"), "-c", code], env=prefect_env(tmp), check=True, capture_output=True)
    return round(time.perf_counter() - t0, 1)


def run_m3migrate(
    name: str,
    cfg: dict,
    source: tuple[str, str],
    target_url: str,
    start_ms: int,
    end_ms: int,
    tmp: Path,
    samples: int,
    endpoints: dict[str, int],
    timer: WriteTimer,
    server: RunningPrefect | None = None,
) -> dict:
    """One CLI run; ``source`` is (read URL, query URL); ``endpoints`` names the source's, gateway's and
    target's pids, whose CPU is measured too; the writes go through ``timer`` (the fixed costs)."""
    env = prefect_env(tmp, server.api_url if server else None)
    run_id = f"{name}-{'server' if server else 'ephemeral'}"
    argv = [
        str(ROOT / ".venv/bin/python"), "-m", "cli", "migrate",
        "--source-read-url", source[0], "--source-query-url", source[1],
        "--target-write-url", f"{timer.url}/api/v1/write", "--target-query-url", target_url,
        "--start", iso_ms(start_ms), "--end", iso_ms(end_ms),
        "--migration-id", f"bench-{run_id}", "--skip-validation", "--state-dir", str(tmp / f"state-{run_id}"),
        *cfg["args"],
    ]  # fmt: skip
    log_path = tmp / f"m3migrate-{run_id}.log"
    server_cpu0 = cpu_of(server.pid) if server else 0.0
    endpoint_cpu0 = {role: cpu_of(pid) for role, pid in endpoints.items()}
    timer.reset()
    with open(log_path, "wb") as logf:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=logf, stderr=subprocess.STDOUT)
        started = process_start_boottime(proc.pid)  # the child exists until wait4 reaps it
        sampler = TreeSampler(proc.pid)
        _, status, ru = os.wait4(proc.pid, 0)
        exited = boottime()
        wall = time.perf_counter() - t0
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
    by_role = sampler.cpu_by_role()
    endpoint_cpu = {role: cpu_of(pid) - endpoint_cpu0[role] for role, pid in endpoints.items()}
    if server:
        by_role["prefect-server"] = cpu_of(server.pid) - server_cpu0
        sampler.peak_rss["prefect-server"] = rss_of(server.pid)
    # (wait4's ru_maxrss is not used: Linux carries the bench process's high-water mark across fork + exec)
    cli_tree_cpu = ru.ru_utime + ru.ru_stime
    api_cpu = by_role.get("prefect-server", 0.0)
    # wait4 counts the CLI and the descendants that were reaped; the sampler the CLI and its descendants at
    # their last poll: the larger is the process tree's CPU (a running server is not in the tree)
    sampled_tree = sum(v for k, v in by_role.items() if not (server and k == "prefect-server"))
    tree_cpu = max(cli_tree_cpu, sampled_tree)
    tool_cpu = tree_cpu - (0.0 if server else api_cpu)  # the CLI and its Dask workers
    total_cpu = tool_cpu + api_cpu + sum(endpoint_cpu.values())
    out = {
        "name": name,
        "prefect_api": "server" if server else "ephemeral",
        "args": cfg["args"],
        "exit_code": proc.returncode,
        "seconds": round(wall, 3),
        "samples_per_s": round(samples / wall),
        "cpu_s_wait4": round(cli_tree_cpu, 2),
        "cpu_s_by_role": {k: round(v, 2) for k, v in by_role.items()},
        "cpu_s_prefect_server": round(api_cpu, 2),
        "cpu_s_tool": round(tool_cpu, 2),
        "tool_cpu_ns_per_sample": round(tool_cpu / samples * 1e9, 1),
        "tool_and_api_cpu_ns_per_sample": round((tool_cpu + api_cpu) / samples * 1e9, 1),
        **{f"{role}_cpu_ns_per_sample": round(c / samples * 1e9, 1) for role, c in endpoint_cpu.items()},
        "cpu_s_total": round(total_cpu, 2),
        # on a machine shared by everything, wall time cannot beat the total CPU spread over every core
        "cpu_ceiling_samples_per_s": round(samples * (os.cpu_count() or 1) / total_cpu),
        "peak_rss_mb_cli": round(sampler.peak_rss.get("cli", 0) / 2**20, 1),
        "peak_rss_mb_prefect_server": round(sampler.peak_rss.get("prefect-server", 0) / 2**20, 1),
        "peak_rss_mb_dask_worker": round(sampler.peak_rss.get("dask-worker", 0) / 2**20, 1),
        "log": str(log_path),
        **fixed_costs(timer, started, exited),
    }
    text = log_path.read_text(encoding="utf-8", errors="replace")
    for key in ("seconds", "samples_per_second", "windows", "batches", "requests"):
        m = re.search(rf"\b{key}\s*[│|]\s*([\d.,]+)", text)
        if m:
            out[f"flow_{key}"] = float(m.group(1).replace(",", ""))
    if "flow_seconds" in out:
        out["startup_and_plan_seconds"] = round(wall - out["flow_seconds"], 2)
    if proc.returncode != 0:
        tail = text[-3000:]
        log(f"m3migrate {name} FAILED (exit {proc.returncode}):\n{tail}")
    return out


def fixed_costs(timer: WriteTimer, started: float, exited: float) -> dict[str, Any]:
    """Process start (kernel, 10 ms ticks) to the first write request's first byte at the receiver, and
    the receiver's last response byte to the process's exit (seen by wait4)."""
    if timer.first_request is None or timer.last_response is None:
        return {"write_bytes": timer.request_bytes}
    return {
        "start_to_first_write_s": round(timer.first_request - started, 2),
        "last_write_to_exit_s": round(exited - timer.last_response, 2),
        "writing_s": round(timer.last_response - timer.first_request, 3),
        "write_bytes": timer.request_bytes,
        "write_connections": timer.connections,
    }


def replication_passes(
    run_id: str, state_dir: Path, until_ms: int, env: dict[str, str], timer: WriteTimer, passes: int = 2
) -> list[dict[str, Any]]:
    """`m3migrate replicate` right after the migration, up to its end: a pass with nothing new (the saved
    spec gives the endpoints; no write must reach the receiver)."""
    argv = [
        str(ROOT / ".venv/bin/python"), "-m", "cli", "replicate", "--migration-id", f"bench-{run_id}",
        "--state-dir", str(state_dir), "--until", iso_ms(until_ms),
    ]  # fmt: skip
    out = []
    for _ in range(passes):
        timer.reset()
        t0 = time.perf_counter()
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        up_to_date = proc.returncode == 0 and "up-to-date" in proc.stdout
        if not up_to_date:
            tail = (proc.stdout + proc.stderr)[-3000:]
            log(f"replication pass {run_id}: exit {proc.returncode}, not up to date:\n{tail}")
        out.append({"seconds": round(wall, 2), "up_to_date": up_to_date, "write_bytes": timer.request_bytes})
    return out


# -- main ---------------------------------------------------------------------------------------------


def verify(target: Server, start_ms: int, end_ms: int, chunk_ms: int, expected: dict, what: str) -> bool:
    """The target holds exactly the source's series and samples. As in the tests (sandbox.compare):
    Prometheus < 2.49 can leave out-of-order head chunks out of a read that races an out-of-order head
    compaction (prometheus/prometheus#13115), so a difference is reread, then checked after a restart
    (what a restarted server holds is what it durably stored)."""
    got = count_all(target.url, start_ms, end_ms, chunk_ms)
    for attempt in ("reread", "reread", "restart"):
        if got == expected:
            break
        log(f"{what}: target holds {got}, source {expected}; checking again ({attempt})")
        if attempt == "restart":
            target.stop()
            target.start()
        else:
            time.sleep(1.0)
        got = count_all(target.url, start_ms, end_ms, chunk_ms)
    ok = got == expected
    if ok:
        log(f"{what}: target verified ({got['series']} series, {got['samples']:,} samples)")
    else:
        log(f"*** MISMATCH *** {what}: target holds {got}, source holds {expected}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_args(ap)
    ap.add_argument("--json-out", type=Path, help="default: bench/results/<preset>.json")
    ap.add_argument("--configs", default=",".join(M3MIGRATE_CONFIGS), help="m3migrate configs to run")
    ap.add_argument("--in-flight", default="2,4", help="raw ingest concurrencies to try")
    ap.add_argument("--skip-raw-ingest", action="store_true")
    ap.add_argument(
        "--prefect-api",
        default="server",
        help="comma list: server (a running `prefect server`, as deployed) and/or ephemeral (one API per run)",
    )
    ap.add_argument("--no-wait", action="store_true", help="do not wait for load1 < 0.7")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    p = resolve_preset(a)
    json_out = a.json_out or ROOT / "bench" / "results" / f"{a.preset}.json"
    configs = [c for c in a.configs.split(",") if c]
    modes = [m for m in a.prefect_api.split(",") if m]
    if not set(modes) <= {"server", "ephemeral"}:
        ap.error("--prefect-api takes server and/or ephemeral")
    for c in configs:
        if c not in M3MIGRATE_CONFIGS:
            ap.error(f"unknown config {c!r}; known: {', '.join(M3MIGRATE_CONFIGS)}")

    tmp = Path(tempfile.mkdtemp(prefix="m3migrate-bench-"))
    results: dict[str, Any] = {"preset": a.preset, "params": p, "machine": machine_info(), "argv": sys.argv}
    log(f"preset {a.preset}: {p['series']} series x {p['days']} d x {p['interval']} s; workdir {tmp}")
    t0 = time.monotonic()
    source = start_bench_source(p, tmp)
    st = source.stats
    log(f"source ready in {time.monotonic() - t0:.1f} s (build/copy {source.build_seconds:.1f} s): "
        f"{st.series} series, {st.samples:,} samples, {iso_ms(st.start_ms)} .. {iso_ms(st.end_ms)}")  # fmt: skip
    gateway = start_m3_gateway(tmp, {"default": {"upstream": source.server.url, "retention": "100y"}})
    log(f"M3 gateway (its own process) at {gateway.url} in front of the source")
    servers = [gateway, source.server]
    ok_all = True
    try:
        chunk_ms = read_chunk_ms(st.series, int(p["interval"]))
        expected = count_all(
            source.server.url, st.start_ms, st.end_ms, chunk_ms, read_url=gateway.url + GATEWAY_READ_PATH
        )
        if expected != {"series": st.series, "samples": st.samples}:
            log(f"*** MISMATCH *** source read back {expected}, spec says {st.series} / {st.samples}")
            ok_all = False
        samples = expected["samples"]
        results["data"] = {**expected, "start": iso_ms(st.start_ms), "end": iso_ms(st.end_ms)}
        results["quiet"] = {} if a.no_wait else wait_quiet()
        results["quiet"]["load1_before_measuring"] = round(os.getloadavg()[0], 2)

        # 1. raw read (run twice, keep the best: the first also warms the source's page cache)
        direct = f"{source.server.url}/api/v1/read"
        results["raw_read_prometheus"] = raw_read(direct, st.start_ms, st.end_ms, chunk_ms, samples, source.server.pid)
        rr = [
            raw_read(
                gateway.url + GATEWAY_READ_PATH,
                st.start_ms,
                st.end_ms,
                chunk_ms,
                samples,
                source.server.pid,
                gateway.pid,
            )
            for _ in range(2)
        ]
        results["raw_read"] = max(rr, key=lambda r: r["samples_per_s"])
        direct_rate = results["raw_read_prometheus"]["samples_per_s"]
        log(f"raw read through the gateway: {results['raw_read']['samples_per_s']:,} samples/s "
            f"({[r['seconds'] for r in rr]} s; Prometheus directly: {direct_rate:,})")  # fmt: skip

        # 2. raw ingest
        if not a.skip_raw_ingest:
            window_samples = st.series * INGEST_WINDOW_MS // (int(p["interval"]) * 1000)
            req_samples = int(max(5_000, min(100_000, math.ceil(window_samples / 4))))
            read_url = gateway.url + GATEWAY_READ_PATH
            index, enc = pre_encode(read_url, st.start_ms, st.end_ms, req_samples, tmp / "ingest.spool")
            enc["max_samples_per_request"] = req_samples
            log(f"pre-encoded {enc['requests']} requests ({enc['samples']:,} samples, {enc['spool_bytes']:,} B) "
                f"in {enc['encode_seconds']} s")  # fmt: skip
            runs = []
            for n in [int(x) for x in a.in_flight.split(",")]:
                target = start_prometheus(tmp, name=f"ingest-{n}", remote_write_receiver=True)
                try:
                    r = raw_ingest(target.url, target.pid, index, tmp / "ingest.spool", n)
                    r["verified"] = verify(target, st.start_ms, st.end_ms, chunk_ms, expected, f"raw ingest x{n}")
                    ok_all &= r["verified"]
                finally:
                    target.stop()
                    shutil.rmtree(tmp / f"ingest-{n}", ignore_errors=True)
                log(f"raw ingest {n} in flight: {r['samples_per_s']:,} samples/s in {r['seconds']} s")
                runs.append(r)
            (tmp / "ingest.spool").unlink()
            results["raw_ingest"] = {**max(runs, key=lambda r: r["samples_per_s"]), "runs": runs, "encode": enc}

        results["limit"] = machine_limit(rr, results.get("raw_ingest", {}).get("runs", []))
        if results["limit"]:
            lim = results["limit"]
            log(f"limit of the machine: {lim['cores']} cores x 1e9 / ({lim['source_ns_per_sample']} source + "
                f"{lim['receiver_ns_per_sample']} receiver ns/sample) = {lim['samples_per_s']:,}/s")  # fmt: skip

        # 3. m3migrate end to end
        baseline = min(results["raw_read"]["samples_per_s"], results.get("raw_ingest", {}).get("samples_per_s", 1e18))
        results["baseline_samples_per_s"] = baseline
        results["m3migrate"] = []
        if configs:
            results["prefect_home_creation_seconds"] = warm_prefect_home(tmp)
            log(f"Prefect home created in {results['prefect_home_creation_seconds']} s (not in the figures)")
        for mode in modes:
            with contextlib.ExitStack() as stack:
                server = stack.enter_context(prefect_server(tmp)) if mode == "server" and configs else None
                for name in configs:
                    if mode == "ephemeral" and M3MIGRATE_CONFIGS[name].get("server_only"):
                        log(f"m3migrate {name}: skipped with an ephemeral API (needs a Prefect server)")
                        continue
                    r = measure_config(name, p, source.server, gateway, st, tmp, samples, server, chunk_ms, expected)
                    r["ratio_to_baseline"] = round(r["samples_per_s"] / baseline, 3)
                    r.update(ratios_to_limit(r, results["limit"], samples))
                    ok_all &= r["verified"]
                    log(
                        f"m3migrate {name} ({mode} API): {r['samples_per_s']:,} samples/s "
                        f"({r['ratio_to_baseline']:.0%}), tool CPU {r['tool_cpu_ns_per_sample']} ns/sample, "
                        f"Prefect server {r['cpu_s_prefect_server']} s, peak RSS {r['peak_rss_mb_cli']} MB"
                    )
                    results["m3migrate"].append(r)
    finally:
        for s in servers:
            s.stop()
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    results["verified"] = ok_all
    results["load1_at_end"] = round(os.getloadavg()[0], 2)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    log(f"wrote {json_out}")
    if not ok_all:
        log("*** MISMATCH: at least one target did not hold exactly the source's data ***")
    return 0 if ok_all else 1


def machine_limit(raw_reads: list[dict], ingests: list[dict]) -> dict[str, Any]:
    """What the machine can move when it runs nothing but the two servers: cores x 1e9 / (the source's CPU
    ns per sample at its cheapest read shape + the receiver's at its cheapest write shape). The cheapest
    run of each phase (day-long reads through the gateway; pre-encoded 60 min windows) counts: that is
    the highest limit these runs support."""
    if not raw_reads or not ingests:
        return {}
    source_ns = min(r["source_cpu_ns_per_sample"] for r in raw_reads)
    receiver_ns = min(r["target_cpu_ns_per_sample"] for r in ingests)
    cores = os.cpu_count() or 1
    return {
        "cores": cores,
        "source_ns_per_sample": source_ns,
        "source_read_hours": raw_reads[0]["chunk_hours"],
        "receiver_ns_per_sample": receiver_ns,
        "samples_per_s": round(cores * 1e9 / (source_ns + receiver_ns)),
    }


def ratios_to_limit(run: dict, limit: dict, samples: int) -> dict[str, float]:
    """A run's wall rate and transfer rate (the flow's own seconds) as shares of the machine's limit."""
    if not limit:
        return {}
    out = {"wall_of_limit": round(run["samples_per_s"] / limit["samples_per_s"], 3)}
    if run.get("flow_seconds"):
        out["transfer_samples_per_s"] = round(samples / run["flow_seconds"])
        out["transfer_of_limit"] = round(out["transfer_samples_per_s"] / limit["samples_per_s"], 3)
    return out


def measure_config(
    name: str,
    p: dict,
    source: Server,
    gateway: Server,
    st,
    tmp: Path,
    samples: int,
    server: RunningPrefect | None,
    chunk_ms: int,
    expected: dict,
) -> dict:
    """One m3migrate run into a fresh target, then the target read back."""
    cfg = M3MIGRATE_CONFIGS[name]
    ooo = f"{max(30, math.ceil(p['days']) + 2)}d" if cfg["ooo"] else None
    target = start_prometheus(tmp, name=f"target-{name}", remote_write_receiver=True, ooo_window=ooo)
    timer = WriteTimer(target.url)
    try:
        log(f"m3migrate {name} {' '.join(cfg['args'])} ({'server' if server else 'ephemeral'} API) ...")
        endpoints = {"source": source.pid, "gateway": gateway.pid, "target": target.pid}
        urls = (gateway.url + GATEWAY_READ_PATH, gateway.url)
        r = run_m3migrate(name, cfg, urls, target.url, st.start_ms, st.end_ms, tmp, samples, endpoints, timer, server)
        if r["exit_code"] == 0:
            run_id = f"{name}-{'server' if server else 'ephemeral'}"
            env = prefect_env(tmp, server.api_url if server else None)
            r["replication_passes"] = replication_passes(run_id, tmp / f"state-{run_id}", st.end_ms, env, timer)
        r["verified"] = r["exit_code"] == 0 and verify(
            target, st.start_ms, st.end_ms, chunk_ms, expected, f"m3migrate {name}"
        )
    finally:
        timer.close()
        target.stop()
        shutil.rmtree(tmp / f"target-{name}", ignore_errors=True)
    return r


def print_table(r: dict) -> None:
    """Markdown rows: rate, ratio to min(read, ingest), CPU per sample of the tool and of each server."""
    base = r["baseline_samples_per_s"]
    d = r["data"]
    hdr = ("measurement", "samples/s", "of baseline", "transfer samples/s", "tool ns/sample",
           "source ns/sample (Prometheus + gateway)", "target ns/sample", "Prefect API CPU s",
           "CPU ceiling/s (reached)", "peak RSS MB")  # fmt: skip
    rows = []
    for key, name in (("raw_read", "through the M3 gateway"), ("raw_read_prometheus", "Prometheus directly")):
        if key in r:
            rr = r[key]
            source_cpu = f"{rr['prometheus_cpu_ns_per_sample']} + {rr['gateway_cpu_ns_per_sample']}"
            rows.append({0: f"raw read ({name}, 2 in flight)", 1: rr["samples_per_s"], 5: source_cpu})
    if "raw_ingest" in r:
        ri = r["raw_ingest"]
        name = f"raw ingest (best: {ri['in_flight']} in flight)"
        rows.append({0: name, 1: ri["samples_per_s"], 6: ri["target_cpu_ns_per_sample"]})
    for m in r["m3migrate"]:
        ceiling = m["cpu_ceiling_samples_per_s"]
        rows.append(
            {
                0: f"m3migrate {m['name']} ({m['prefect_api']})" + ("" if m.get("verified") else " MISMATCH"),
                1: m["samples_per_s"],
                2: f"{m['ratio_to_baseline']:.0%}",
                3: round(d["samples"] / m["flow_seconds"]) if m.get("flow_seconds") else "",
                4: m["tool_cpu_ns_per_sample"],
                5: f"{m['source_cpu_ns_per_sample']} + {m.get('gateway_cpu_ns_per_sample', 0)}",
                6: m["target_cpu_ns_per_sample"],
                7: f"{m['cpu_s_prefect_server']:.1f}",
                8: f"{ceiling:,} ({m['samples_per_s'] / ceiling:.0%})",
                9: m["peak_rss_mb_cli"],
            }
        )
    print(f"\n{r['preset']}: {d['series']} series, {d['samples']:,} samples; baseline min(read, ingest) = {base:,}/s")
    print_rows(hdr, rows)
    lim = r.get("limit")
    if lim:
        print(f"\nlimit = {lim['cores']} x 1e9 / ({lim['source_ns_per_sample']} + {lim['receiver_ns_per_sample']}) "
              f"= {lim['samples_per_s']:,} samples/s")  # fmt: skip
    hdr = ("run", "wall of limit", "transfer of limit", "start → first write s", "last write → exit s",
           "replication pass, nothing new s")  # fmt: skip
    rows = []
    for m in r["m3migrate"]:
        passes = m.get("replication_passes", [])
        rows.append(
            {
                0: f"m3migrate {m['name']} ({m['prefect_api']})",
                1: f"{m['wall_of_limit']:.2f}" if "wall_of_limit" in m else "",
                2: f"{m['transfer_of_limit']:.2f}" if "transfer_of_limit" in m else "",
                3: f"{m['start_to_first_write_s']:.2f}" if "start_to_first_write_s" in m else "",
                4: f"{m['last_write_to_exit_s']:.2f}" if "last_write_to_exit_s" in m else "",
                5: ", ".join(f"{p['seconds']:.2f}" + ("" if p["up_to_date"] else " (!)") for p in passes),
            }
        )
    print_rows(hdr, rows)


def print_rows(hdr: tuple[str, ...], rows: list[dict[int, Any]]) -> None:
    print("| " + " | ".join(hdr) + " |")
    print("|---|" + "--:|" * (len(hdr) - 1))
    for row in rows:
        cells = [row.get(i, "") for i in range(len(hdr))]
        print("| " + " | ".join(f"{c:,.0f}" if isinstance(c, int | float) else str(c) for c in cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
