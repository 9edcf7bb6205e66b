"""Reliability against real servers behind the fault proxy: faults, dead endpoints, restarts, caps.

Every server here is a real Prometheus 2.42, the source read through the sandbox's M3 Coordinator
gateway (M3's paths and [start, end) reads); sandbox.faultproxy sits between m3migrate and
them and injects what production shows (5xx, 429 + Retry-After, resets, truncated bodies, stalls past
the client timeout, slow answers). Ranges start 1 ms after a sample and so end on one (the sample an
M3 read of [start, end) would lose), and every window's first millisecond holds one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from m3migrate.clients.limits import reset_limits
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import TransientError
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import encode_labels, frame_series, single_request
from sandbox.compare import diff_target, read_all, with_label
from sandbox.faultproxy import FaultProxy
from sandbox.history import SourceSandbox
from sandbox.m3gateway import READ_PATH

pytestmark = [pytest.mark.servers]

HOUR_MS = 3_600_000
# Short bounds so a dead endpoint fails fast; stalls (3 s) outlast the 2 s client timeout.
FAST = {"timeout_seconds": 2.0, "retry_attempts": 12, "retry_timeout_seconds": 60.0, "retry_wait_max_seconds": 0.5}


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    """Each test starts with every endpoint's adaptive limit at its ceiling."""
    reset_limits()
    yield
    reset_limits()


@pytest.fixture
def proxies() -> Iterator[list[FaultProxy]]:
    started: list[FaultProxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def _proxy(proxies: list[FaultProxy], upstream: str, **kw) -> FaultProxy:
    proxy = FaultProxy(upstream, **kw).start()
    proxies.append(proxy)
    return proxy


def _blocks(source_url: str, target_url: str, **settings) -> tuple[M3Source, ThanosTarget]:
    """``source_url``: the M3 gateway (or a proxy in front of it)."""
    return (
        M3Source(read_url=f"{source_url}{READ_PATH}", query_url=source_url, **settings),
        ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url, **settings),
    )


def _range(source: SourceSandbox, hours: int) -> tuple[int, int]:
    """[start, end] from 1 ms after the first sample: the end is then a sample (of the 60 s grid), and so
    is every (aligned) window's first millisecond."""
    start = source.block_stats.start_ms + 1
    return start, start + hours * HOUR_MS - 1


def _expected(source: SourceSandbox, start_ms: int, end_ms: int) -> dict:
    return with_label(read_all(source.server.url, start_ms, end_ms), "_source", "m3db")


@pytest.mark.prefect
def test_ten_percent_faults_on_both_sides_still_give_an_exact_copy(
    prefect_api, source_history, prometheus_target, proxies, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="m3migrate")
    start_ms, end_ms = _range(source_history, 8)
    target = prometheus_target()
    src = _proxy(proxies, source_history.m3.url, rate=0.1, seed=81, stall_seconds=3.0)
    tgt = _proxy(proxies, target.url, rate=0.1, seed=82, stall_seconds=3.0)
    source_block, target_block = _blocks(src.url, tgt.url, **FAST)
    spec = MigrationSpec(start=iso_ms(start_ms), end=iso_ms(end_ms), batch_max_series=70)
    # Validation is a one-shot probe by design (it reports, it does not retry): skipped here.
    summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)

    assert src.injected > 0 and tgt.injected > 0, (src.counters, tgt.counters)
    assert summary["read_retries"] + summary["write_retries"] > 0
    assert diff_target(_expected(source_history, start_ms, end_ms), target.url, start_ms, end_ms) == []


@pytest.mark.prefect
def test_dead_endpoints_fail_in_bounded_time_naming_them_and_a_clean_rerun_resumes_exactly(
    prefect_api, source_history, prometheus_target, proxies, tmp_path
):
    start_ms, end_ms = _range(source_history, 6)
    target = prometheus_target()
    short = {**FAST, "retry_attempts": 3, "retry_timeout_seconds": 5.0, "retry_wait_max_seconds": 0.2}
    spec = MigrationSpec(start=iso_ms(start_ms), end=iso_ms(end_ms), migration_id="dead", batch_max_series=70)

    # 1. Everything fails on both sides: discovery on the source is the first to stop.
    src = _proxy(proxies, source_history.m3.url, rate=1.0, kinds=["5xx", "429"], retry_after=0)
    tgt = _proxy(proxies, target.url, rate=1.0, kinds=["5xx", "429"], retry_after=0)
    source_block, target_block = _blocks(src.url, tgt.url, **short)
    t0 = time.monotonic()
    with pytest.raises(TransientError) as failed:
        migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)
    assert time.monotonic() - t0 < 120
    assert src.url in str(failed.value) and re.search(r"HTTP (429|500|502|503)", str(failed.value)), failed.value

    # 2. The source recovers, the target dies after some windows were written.
    src.rate = 0.0
    tgt.rate, tgt.kinds, tgt.start_after = 1.0, ("5xx",), tgt.counters["requests"] + 8
    t0 = time.monotonic()
    with pytest.raises(TransientError) as failed:
        migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)
    assert time.monotonic() - t0 < 180  # includes Prefect's task retries (2 + 10 + 30 s)
    message = str(failed.value)
    assert f"{tgt.url}/api/v1/write" in message and re.search(r"HTTP 50[023]", message), message
    progress = json.loads((tmp_path / "dead" / "progress.json").read_text())
    assert 0 < progress["windows_done"] < progress["windows_total"]

    # 3. No faults: the rerun resumes and ends with an exact copy.
    tgt.rate = 0.0
    summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)
    assert summary["tasks_cached"] > 0
    assert diff_target(_expected(source_history, start_ms, end_ms), target.url, start_ms, end_ms) == []


@pytest.mark.prefect
def test_target_restart_mid_migration_is_survived_by_retrying(prefect_api, source_history, prometheus_target, tmp_path):
    start_ms, end_ms = _range(source_history, 12)
    target = prometheus_target()
    patient = {"timeout_seconds": 10.0, "retry_attempts": 40, "retry_timeout_seconds": 120.0}
    source_block, target_block = _blocks(source_history.m3.url, target.url, **patient)
    spec = MigrationSpec(
        start=iso_ms(start_ms), end=iso_ms(end_ms), migration_id="restart", batch_max_series=70, window_minutes=30
    )
    progress = tmp_path / "restart" / "progress.json"
    restarted = threading.Event()

    def restart_when_a_quarter_is_written() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if progress.exists():
                p = json.loads(progress.read_text())
                if p["windows_done"] >= max(2, p["windows_total"] // 4):
                    target.stop()
                    time.sleep(1.0)
                    target.start()
                    restarted.set()
                    return
            time.sleep(0.02)

    with ThreadPoolExecutor(1) as pool:
        watcher = pool.submit(restart_when_a_quarter_is_written)
        summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)
        watcher.result()
    assert restarted.is_set(), "the migration ended before the target could be restarted"
    assert summary["windows"] * summary["batches"] > 0
    assert diff_target(_expected(source_history, start_ms, end_ms), target.url, start_ms, end_ms) == []


def _one_series(name: str, n: int = 10, t0: int = 1_700_000_000_000):
    ts = TimeSeries()
    for i in range(n):
        ts.samples.add(timestamp=t0 + i * 1000, value=float(i))
    return single_request(frame_series(encode_labels([("__name__", name)]), ts.SerializeToString()), n)


def test_concurrency_cap_holds_and_429s_lower_it_then_successes_raise_it(prometheus_target, proxies, caplog):
    caplog.set_level(logging.INFO, logger="m3migrate.clients.limits")
    target = prometheus_target()
    proxy = _proxy(proxies, target.url, rate=0.0, latency_seconds=0.2)
    settings = TargetSettings(write_url=f"{proxy.url}/api/v1/write", max_concurrency=4, retry_wait_max_seconds=0.2)
    with RemoteWriteClient(settings, max_connections=16) as writer, ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda i: writer.write(_one_series(f"capped_{i}")), range(36)))
        assert proxy.peak_in_flight == 4, "the server must see exactly the cap in flight, never more"
        limiter = writer.limits.concurrency

        proxy.rate, proxy.kinds, proxy.retry_after = 0.5, ("429",), 0
        list(pool.map(lambda i: writer.write(_one_series(f"throttled_{i}")), range(24)))
        assert limiter.decreases >= 1
        assert "target answered 429: lowering write concurrency 4 -> 2" in caplog.text

        proxy.rate = 0.0
        list(pool.map(lambda i: writer.write(_one_series(f"recovered_{i}")), range(60)))
        assert limiter.limit == 4 and limiter.increases >= 1
        assert re.search(r"target answers again: raising write concurrency \d -> \d", caplog.text)
    changes = [r.getMessage() for r in caplog.records if "concurrency" in r.getMessage()]
    assert len(changes) == limiter.decreases + limiter.increases, "each change is logged exactly once"
    assert sum(len(s) for s in read_all(target.url, 1_700_000_000_000, 1_700_000_010_000).values()) == 120 * 10


def test_stalls_past_the_timeout_lower_the_read_concurrency(source_history, proxies, caplog):
    from m3migrate.clients.remote_read import RemoteReadClient
    from m3migrate.settings.endpoints import SourceSettings
    from m3migrate.wire.codec import Matcher

    caplog.set_level(logging.INFO, logger="m3migrate.clients.limits")
    proxy = _proxy(proxies, source_history.m3.url, rate=1.0, kinds=["stall"], stall_seconds=3.0)
    settings = SourceSettings(read_url=f"{proxy.url}{READ_PATH}", max_concurrency=4, **FAST)
    start_ms, _ = _range(source_history, 1)

    def heal() -> None:
        time.sleep(2.5)  # after the first stalled attempt timed out (2 s)
        proxy.rate = 0.0

    threading.Thread(target=heal, daemon=True).start()
    with RemoteReadClient(settings) as reader:
        result = reader.read([Matcher("__name__", "=~", ".+")], start_ms, start_ms + 60_000)
    assert proxy.counters["stall"] >= 1 and reader.stats.retries >= 1
    assert len(result.timeseries) == source_history.stats.series
    assert "source timed out: lowering read concurrency 4 -> 2" in caplog.text


def test_request_and_sample_rate_limits_slow_the_client_down(prometheus_target, proxies):
    target = prometheus_target()
    proxy = _proxy(proxies, target.url)
    by_requests = TargetSettings(write_url=f"{proxy.url}/api/v1/write", max_requests_per_second=5)
    t0 = time.monotonic()
    with RemoteWriteClient(by_requests) as writer:
        for i in range(15):
            writer.write(_one_series(f"rps_{i}"))
    assert time.monotonic() - t0 >= 1.5  # 5 at once, then 5 per second: at least 2 s for 15

    reset_limits()
    by_samples = TargetSettings(write_url=f"{proxy.url}/api/v1/write", max_samples_per_second=2000)
    t0 = time.monotonic()
    with RemoteWriteClient(by_samples) as writer:
        for i in range(6):
            writer.write(_one_series(f"sps_{i}", n=1000))
    assert time.monotonic() - t0 >= 1.5  # 6000 samples at 2000/s with a burst of 2000: at least 2 s
    assert proxy.counters["forwarded"] == 21
