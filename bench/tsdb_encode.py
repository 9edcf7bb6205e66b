"""Block encoding speed: samples/s of the XOR encoder alone, of remote-read results -> arrays, and of a whole
BlockWriter (chunks + index + meta.json) on realistic data, and what compiling the numba kernels costs
once (a fresh cache) and on each later start (the cache loaded). No servers needed.

    .venv/bin/python bench/tsdb_encode.py [--series 2000] [--points 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from m3migrate.prompb import ReadResponse
from m3migrate.tsdb import BlockWriter, encode_xor_chunks, series_arrays
from m3migrate.tsdb.kernels import xor_records
from m3migrate.tsdb.samples import read_response_arrays
from m3migrate.tsdb.xor import chunk_starts

_WARM = """
import time
t0 = time.perf_counter()
import numpy as np
from m3migrate.tsdb.kernels import postings_sections, postings_table, scan_read_response, series_entries, xor_records
t, i = np.arange(3, dtype=np.int64), np.array([0, 3])
xor_records(t, t.astype(np.uint64), i, 120)
scan_read_response(np.zeros(0, np.uint8))
series_entries(i[:1], np.array([0, 0]), np.array([0, 0]), t, t, t, 0)
postings_sections(t, i, 0)
postings_table(i[:1], i[:1], i[:1], np.zeros(1, np.uint8), np.array([0, 1]))
print(time.perf_counter() - t0)
"""


def _first_call_seconds() -> tuple[float, float]:
    """Seconds to import and call every kernel once: compiled afresh, then from the cache just written."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        runs = [subprocess.run([sys.executable, "-c", _WARM], env=env, capture_output=True, text=True, check=True)]
        runs.append(subprocess.run([sys.executable, "-c", _WARM], env=env, capture_output=True, text=True, check=True))
    return float(runs[0].stdout), float(runs[1].stdout)


H = 7_200_000


def _data(series: int, points: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    n = series * points
    return {
        "counter (integers)": np.cumsum(rng.integers(0, 50, n)).astype(np.float64),
        "gauge (2 decimals)": np.round(rng.normal(100, 5, n), 2),
        "gauge (full precision)": rng.normal(100, 5, n),
    }


def _best(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--points", type=int, default=1000)
    args = ap.parse_args()
    step = 60_000
    t0 = 1_700_000_000_000 // (48 * H) * (48 * H)
    n = args.series * args.points
    t = np.tile(t0 + np.arange(args.points, dtype=np.int64) * step, args.series)
    starts = np.concatenate([k * args.points + chunk_starts(args.points) for k in range(args.series)])
    compile_s, cached_s = _first_call_seconds()
    print(f"numba kernels: first call {compile_s:.1f} s compiling (a fresh cache), {cached_s:.2f} s from the cache")
    print(f"{args.series} series x {args.points} samples = {n:,} samples, 120 samples per chunk")
    for name, values in _data(args.series, args.points).items():
        bits = values.view(np.uint64)
        seconds = _best(lambda bits=bits: encode_xor_chunks(t, bits, starts))
        size = sum(map(len, encode_xor_chunks(t, bits, starts)))
        print(f"  XOR encode, {name:24s} {n / seconds / 1e6:6.2f} M samples/s  {size / n:5.2f} bytes/sample")
    offsets = np.arange(args.series + 1, dtype=np.int64) * args.points
    for name, values in _data(args.series, args.points).items():
        bits = values.view(np.uint64)
        seconds = _best(lambda bits=bits: xor_records(t, bits, offsets, 120))
        print(f"  XOR -> segment records, {name:24s} {n / seconds / 1e6:6.2f} M samples/s (the block writer's path)")

    rr = ReadResponse()
    qr = rr.results.add()
    values = _data(args.series, args.points)["gauge (2 decimals)"]
    for k in range(args.series):
        ts = qr.timeseries.add()
        ts.labels.add(name="__name__", value="bench_metric")
        ts.labels.add(name="instance", value=f"host-{k:05d}")
        for i in range(args.points):
            ts.samples.add(timestamp=int(t[i]), value=float(values[k * args.points + i]))
    seconds = _best(lambda: list(series_arrays(qr)))
    print(f"  remote-read result -> numpy arrays (protobuf, the fallback)  {n / seconds / 1e6:6.2f} M samples/s")
    raw = rr.SerializeToString()
    seconds = _best(lambda: read_response_arrays(raw))
    print(f"  ReadResponse bytes -> numpy arrays (compiled wire walk)      {n / seconds / 1e6:6.2f} M samples/s")

    def whole_block() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            span = args.points * step
            block = 48 * H if span <= 48 * H else ((span // H) + 1) * H
            with BlockWriter(Path(tmp), min_time=t0, max_time=t0 + block, external_labels={"bench": "1"}) as w:
                labels, counts, ts_, bits, utf8 = read_response_arrays(raw)
                w.add_batch(labels, counts, ts_, bits, utf8=utf8)
                w.finish()

    seconds = _best(whole_block, repeat=2)
    print(f"  ReadResponse bytes -> finished block on disk                 {n / seconds / 1e6:6.2f} M samples/s")


if __name__ == "__main__":
    main()
