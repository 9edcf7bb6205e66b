"""Shared pieces of the benchmark scripts: presets, the cached source, quiet-machine wait, counting."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.wire.codec import Matcher, decode_read_response

PRESETS: dict[str, dict[str, float]] = {
    "quick": {"series": 200, "days": 1, "interval": 15},
    "default": {"series": 1000, "days": 7, "interval": 15},
    "large": {"series": 10_000, "days": 7, "interval": 15},  # 10x default's series, for the RSS comparison
}
CACHE_DIR = Path("/tmp/m3migrate-bench-cache")
ALL = [Matcher("__name__", "=~", ".+")]
PROBE_METRIC = "m3migrate_probe"
DAY_MS = 86_400_000
MAX_SAMPLES_PER_READ = 6_000_000  # keeps one remote-read response (and the server's memory) bounded


def add_preset_args(ap) -> None:
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--series", type=int, help="override the preset's series count")
    ap.add_argument("--days", type=float, help="override the preset's days")
    ap.add_argument("--interval", type=int, help="override the preset's seconds between samples")


def resolve_preset(a) -> dict[str, Any]:
    p = dict(PRESETS[a.preset])
    for k in ("series", "days", "interval"):
        if getattr(a, k) is not None:
            p[k] = getattr(a, k)
    return p


def stable_end_ms(interval_s: int) -> int:
    """Last sample: today's 00:00 UTC minus 2 h, so the cached blocks stay valid all day."""
    end = (int(time.time() * 1000) // DAY_MS) * DAY_MS - 2 * 3_600_000
    step = interval_s * 1000
    return (end // step) * step


def history_spec(p: dict[str, Any]):
    from sandbox.history import HistorySpec

    return HistorySpec(
        series=int(p["series"]),
        span_s=int(p["days"] * 86400),
        interval_s=int(p["interval"]),
        end_ms=stable_end_ms(int(p["interval"])),
    )


def start_bench_source(p: dict[str, Any], workdir: Path):
    """The source Prometheus on cached promtool blocks (no live tail: the data set is exactly the spec)."""
    from sandbox.history import start_source

    spec = history_spec(p)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    return start_source(spec, workdir, cache_dir=CACHE_DIR, tail_minutes=None)


def read_chunk_ms(series: int, interval_s: int, max_ms: int = DAY_MS) -> int:
    """Remote-read window: at most a day and at most MAX_SAMPLES_PER_READ samples per response."""
    per_ms = series / (interval_s * 1000)
    return int(max(interval_s * 1000, min(max_ms, MAX_SAMPLES_PER_READ / per_ms)))


def chunks(start_ms: int, end_ms: int, chunk_ms: int) -> list[tuple[int, int]]:
    out = []
    a = start_ms
    while a <= end_ms:
        b = min(a + chunk_ms - 1, end_ms)
        out.append((a, b))
        a = b + 1
    return out


def count_all(
    base_url: str, start_ms: int, end_ms: int, chunk_ms: int, concurrency: int = 2, read_url: str | None = None
) -> dict[str, int]:
    """Series and samples a Prometheus holds in [start, end] (the validation probe left out), read at
    ``read_url`` when given (the source through the M3 gateway), else at its /api/v1/read."""
    series: set[tuple] = set()
    samples = 0

    def one(rng: tuple[int, int]) -> tuple[set[tuple], int]:
        raw = client.read_raw(ALL, *rng)
        qr = decode_read_response(raw, endpoint=base_url)
        keys, n = set(), 0
        for ts in qr.timeseries:
            key = tuple(sorted((label.name, label.value) for label in ts.labels))
            if ("__name__", PROBE_METRIC) in key:
                continue
            keys.add(key)
            n += len(ts.samples)
        return keys, n

    settings = SourceSettings(read_url=read_url or f"{base_url}/api/v1/read")
    with RemoteReadClient(settings, max_connections=4) as client, ThreadPoolExecutor(concurrency) as pool:
        for keys, n in pool.map(one, chunks(start_ms, end_ms, chunk_ms)):
            series |= keys
            samples += n
    return {"series": len(series), "samples": samples}


def wait_quiet(threshold: float = 0.7, max_wait_s: float = 600.0) -> dict[str, Any]:
    """Wait until the 1-minute load average is below the threshold (another CI run may be going)."""
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() - t0 < max_wait_s:
        print(f"[bench] waiting for a quiet machine: load1={load:.2f} >= {threshold}", flush=True)
        time.sleep(15)
        load = os.getloadavg()[0]
    return {"load1_at_start": round(load, 2), "quiet": load < threshold, "waited_s": round(time.monotonic() - t0, 1)}


def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        prom = subprocess.run(["prometheus", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except Exception:
        prom = "?"
    mem_kb = 0
    with contextlib.suppress(Exception):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gb": round(mem_kb / 1e6, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "prometheus": prom,
    }


def high_water_rss(pid: int | str = "self") -> int:
    """The process's own peak RSS so far (VmHWM, kept by the kernel per address space, so a peak between
    two polls is not missed, and unlike wait4's ru_maxrss it does not inherit the parent's before exec)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 (state) comes first."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def stat_cpu_s(pid: int) -> float:
    """CPU seconds (utime + stime) the kernel has charged to one process so far, from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of proc(5)


def boottime() -> float:
    """Seconds since boot on the clock /proc/<pid>/stat's starttime counts in (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start_boottime(pid: int) -> float:
    """When the kernel created the process (field 22 of /proc/<pid>/stat, 1/CLK_TCK resolution)."""
    return int(_stat_fields(pid)[19]) / CLOCK_TICKS
