"""Odd sources against real servers: an empty one is one clear error, a 10 M-sample series moves exactly
in bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from blocks import M3Source, ThanosBucket, ThanosTarget
from flows.migrate import migrate
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import ConfigError
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import Matcher, encode_labels, frame_series, single_request
from sandbox.compare import read_all
from sandbox.servers import start_prometheus

pytestmark = [pytest.mark.servers, pytest.mark.prefect]
ROOT = Path(__file__).parents[2]
HOUR_MS = 3_600_000
BIG = 10_000_000
STEP_MS = 10  # 10 M samples, 10 ms apart: 27.8 h of one series
PEAK_RSS_LIMIT_MB = 600


@pytest.mark.parametrize("write_mode", ["in_order", "blocks"])
def test_an_empty_source_is_one_clear_error_and_writes_nothing(prefect_api, prometheus_target, tmp_path, write_mode):
    empty = start_prometheus(tmp_path, name="empty")
    try:
        target = prometheus_target()
        bucket_dir = tmp_path / "bucket"
        now = int(time.time() * 1000)
        spec = MigrationSpec(start=iso_ms(now - 6 * HOUR_MS), end=iso_ms(now - HOUR_MS), write_mode=write_mode)
        with pytest.raises(ConfigError, match="no series matching") as refused:
            migrate(
                M3Source(read_url=f"{empty.url}/api/v1/read", query_url=empty.url),
                ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
                spec,
                state_dir=str(tmp_path / "state"),
                skip_validation=True,
                bucket=ThanosBucket(url=str(bucket_dir)) if write_mode == "blocks" else None,
            )
        assert "--match" in refused.value.hint
        assert read_all(target.url, now - 6 * HOUR_MS, now) == {}
        assert not bucket_dir.exists() or not any(bucket_dir.iterdir()), "no block may be uploaded"
    finally:
        empty.stop()


def _sample_bytes(start_ms: int, n: int) -> bytes:
    """n encoded Sample fields (tag, length, value, timestamp), built with numpy instead of n messages."""
    ts = start_ms + np.arange(n, dtype=np.int64) * STEP_MS
    assert ts[0] >= 1 << 35 and ts[-1] < 1 << 42, "every timestamp must be a 6-byte varint"
    out = np.empty((n, 18), dtype=np.uint8)
    out[:, 0], out[:, 1], out[:, 2] = 0x12, 16, 0x09  # Sample field, 16 bytes, value field (fixed64)
    values = np.sin(np.arange(n) / 1000.0) * 1e3 + 2e3  # never 0.0, which proto3 would leave out
    out[:, 3:11] = values.astype("<f8").view(np.uint8).reshape(n, 8)
    out[:, 11] = 0x10  # timestamp field (varint)
    for i in range(6):
        byte = (ts >> (7 * i)) & 0x7F
        out[:, 12 + i] = byte | (0x80 if i < 5 else 0)
    return out.tobytes()


def test_a_series_of_10m_samples_moves_exactly_in_bounded_memory(prefect_api, prometheus_target, tmp_path):
    source = start_prometheus(tmp_path, name="big-source", remote_write_receiver=True)
    try:
        target = prometheus_target()
        end_ms = (int(time.time() * 1000) - HOUR_MS) // 1000 * 1000
        start_ms = end_ms - (BIG - 1) * STEP_MS
        labels = encode_labels([("__name__", "huge_series"), ("job", "x")])
        data = _sample_bytes(start_ms, BIG)
        per_request = 100_000 * 18
        with RemoteWriteClient(TargetSettings(write_url=f"{source.url}/api/v1/write")) as writer:
            for offset in range(0, len(data), per_request):
                chunk = data[offset : offset + per_request]
                writer.write(single_request(frame_series(labels, chunk), len(chunk) // 18))
        del data

        cmd = [
            sys.executable, "-m", "cli", "migrate",
            "--source-read-url", f"{source.url}/api/v1/read", "--source-query-url", source.url,
            "--target-write-url", f"{target.url}/api/v1/write", "--target-query-url", target.url,
            "--start", iso_ms(start_ms), "--end", iso_ms(end_ms),
            "--state-dir", str(tmp_path / "state"), "--skip-validation",
        ]  # fmt: skip
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = _watch_rss(proc)
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
        assert peak < PEAK_RSS_LIMIT_MB * 2**20, f"peak RSS {peak / 2**20:.0f} MB"

        moved = 0
        with (
            RemoteReadClient(SourceSettings(read_url=f"{source.url}/api/v1/read")) as src,
            RemoteReadClient(SourceSettings(read_url=f"{target.url}/api/v1/read")) as dst,
        ):
            for a in range(start_ms, end_ms + 1, 2 * HOUR_MS):
                b = min(a + 2 * HOUR_MS - 1, end_ms)
                want = src.read([Matcher("__name__", "=", "huge_series")], a, b).timeseries
                got = dst.read([Matcher("__name__", "=", "huge_series")], a, b).timeseries
                assert len(want) == len(got) == 1
                assert {(x.name, x.value) for x in got[0].labels} == {
                    ("__name__", "huge_series"), ("job", "x"), ("_source", "m3db")
                }  # fmt: skip
                got[0].ClearField("labels"), want[0].ClearField("labels")
                assert got[0].SerializeToString() == want[0].SerializeToString(), f"samples differ in [{a}, {b}]"
                moved += len(got[0].samples)
        assert moved == BIG
    finally:
        source.stop()


def _watch_rss(proc: subprocess.Popen) -> int:
    """Peak RSS of a running process, sampled every 50 ms until it exits."""
    peak = 0
    watched = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set() and proc.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    proc.wait(timeout=600)
    done.set()
    thread.join()
    return peak
