"""Replication against real servers: new samples and new series follow, kills resume, runs never overlap.

The source is read through the sandbox's M3 Coordinator gateway ([start, end) reads) in front of a
Prometheus; new writes go to that Prometheus and expectations are read from it. Its samples lie 1 ms
before each minute, so they sit on the last millisecond of every window, time split and pass, and on the
migration's start and end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from flows.replicate import replicate
from m3migrate.errors import ConfigError
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.timefmt import iso_ms as _iso
from sandbox.compare import diff_target, read_all, with_label
from sandbox.history import HistorySpec, append_minutely, start_source
from sandbox.m3gateway import GatewayNamespace, M3Gateway

pytestmark = [pytest.mark.servers, pytest.mark.prefect]
MINUTE = 60_000


@pytest.fixture
def small_source(tmp_path):
    """60 series x 6 h; ``.read_url``/``.query_url`` are the M3 gateway's in front of it."""
    # samples 1 ms before each minute: on the last millisecond of every window and of every time split
    spec = HistorySpec(series=60, span_s=6 * 3600, interval_s=60)
    spec = HistorySpec(series=60, span_s=6 * 3600, interval_s=60, end_ms=spec.last_ms - 1)
    source = start_source(spec, tmp_path, tail_minutes=None)
    try:
        with M3Gateway({"default": GatewayNamespace(source.server.url, retention="30d")}) as m3:
            source.m3 = m3
            yield source
    finally:
        source.stop()


def test_three_passes_new_series_kill_and_nothing_new(prefect_api, small_source, prometheus_target, tmp_path):
    target = prometheus_target()
    src_url = small_source.server.url
    start, end = small_source.stats.start_ms, small_source.stats.end_ms
    spec = MigrationSpec(migration_id="rep", start=_iso(start), end=_iso(end), window_minutes=10)
    source_block = M3Source(read_url=small_source.read_url, query_url=small_source.query_url)
    target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    state_dir = tmp_path / "state"

    def check_equal(until_ms: int) -> None:
        expected = with_label(read_all(src_url, start, until_ms), "_source", "m3db")
        assert diff_target(expected, target.url, start, until_ms) == []

    with pytest.raises(ConfigError, match="never ran"):
        replicate(
            source_block,
            target_block,
            spec,
            until=datetime.fromtimestamp(end / 1000 + 600, UTC),
            state_dir=str(state_dir),
        )
    migrate(source_block, target_block, spec, state_dir=str(state_dir))
    some = sorted(read_all(src_url, end - MINUTE, end))[:5]
    newborn = (("__name__", "replication_newborn_total"), ("job", "late"))

    # pass 1: new samples for existing series and a brand-new series
    until1 = end + 20 * MINUTE
    append_minutely(src_url, [*some, newborn], end, until1)
    result = replicate(
        source_block, target_block, spec, until=datetime.fromtimestamp(until1 / 1000, UTC), state_dir=str(state_dir)
    )
    assert result["status"] == "replicated" and result["samples"] == 6 * 20
    check_equal(until1)

    # pass 2: killed with kill -9 halfway through, then rerun to completion
    until2 = until1 + 60 * MINUTE
    append_minutely(src_url, some, until1, until2)
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "replicate",
        "--source-read-url",
        small_source.read_url,
        "--source-query-url",
        small_source.query_url,
        "--target-write-url",
        f"{target.url}/api/v1/write",
        "--migration-id",
        "rep",
        "--start",
        _iso(start),
        "--end",
        _iso(end),
        "--window-minutes",
        "10",
        "--until",
        _iso(until2),
        "--state-dir",
        str(state_dir),
    ]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    progress = state_dir / "rep" / "replication-pass.progress.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and json.loads(progress.read_text())["windows_done"] >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (state_dir / "rep" / "replication-pass.plan.json").exists(), "the interrupted pass stays planned"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    check_equal(until2)
    assert MigrationState(state_dir, "rep").load_replication().watermark_ms == until2

    # pass 3: nothing new
    until3 = until2 + 5 * MINUTE
    result = replicate(
        source_block, target_block, spec, until=datetime.fromtimestamp(until3 / 1000, UTC), state_dir=str(state_dir)
    )
    assert result["samples"] == 0
    check_equal(until3)
    state = MigrationState(state_dir, "rep").load_replication()
    assert state.watermark_ms == until3 and state.passes == 3


def test_concurrent_runs_never_overlap(prefect_api, small_source, prometheus_target, tmp_path):
    target = prometheus_target()
    start, end = small_source.stats.start_ms, small_source.stats.end_ms
    spec = MigrationSpec(migration_id="lockme", start=_iso(start), end=_iso(end))
    source_block = M3Source(read_url=small_source.read_url, query_url=small_source.query_url)
    target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write")
    migrate(source_block, target_block, spec, state_dir=str(tmp_path))
    with MigrationState(tmp_path, "lockme").lock():  # another run holds the migration
        result = replicate(
            source_block,
            target_block,
            spec,
            until=datetime.fromtimestamp(end / 1000 + 600, UTC),
            state_dir=str(tmp_path),
            wait_for_lock_seconds=1,
        )
    assert result["status"] == "skipped-locked"
    assert MigrationState(tmp_path, "lockme").load_replication().watermark_ms is None
    result = replicate(
        source_block, target_block, spec, until=datetime.fromtimestamp(end / 1000 + 600, UTC), state_dir=str(tmp_path)
    )
    assert result["status"] == "replicated"


def test_namespace_changes_on_an_m3_source_are_reported_and_replication_continues(
    prefect_api, small_source, prometheus_target, tmp_path
):
    """Namespaces are M3-only: a named fake coordinator serves them, forwarding data to the real source."""
    from fake_m3 import FakeM3Coordinator, fake_namespace

    target = prometheus_target()
    src_url = small_source.server.url
    start, end = small_source.stats.start_ms, small_source.stats.end_ms
    with FakeM3Coordinator(
        {"default": fake_namespace("48h")}, upstream_read_url=f"{src_url}/api/v1/read", upstream_query_url=src_url
    ) as m3:
        source_block = M3Source(read_url=f"{m3.url}/api/v1/prom/remote/read", query_url=m3.url)
        target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write")
        spec = MigrationSpec(migration_id="ns", start=_iso(start), end=_iso(end))
        migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)
        first = replicate(
            source_block,
            target_block,
            spec,
            until=datetime.fromtimestamp(end / 1000 + 300, UTC),
            state_dir=str(tmp_path),
        )
        assert first["source_changes"] == []
        m3.namespaces["agg_1m_40d"] = fake_namespace("40d", resolution="1m")
        del m3.namespaces["default"]
        m3.namespaces["default_v2"] = fake_namespace("72h")
        # new samples after the first pass's watermark (end + 5 min)
        append_minutely(src_url, sorted(read_all(src_url, end - MINUTE, end))[:2], end + 5 * MINUTE, end + 10 * MINUTE)
        second = replicate(
            source_block,
            target_block,
            spec,
            until=datetime.fromtimestamp(end / 1000 + 600, UTC),
            state_dir=str(tmp_path),
        )
    assert second["status"] == "replicated" and second["samples"] == 2 * 5
    assert sorted(second["source_changes"]) == [
        "namespace created: agg_1m_40d (1m:40d)",
        "namespace created: default_v2 (unaggregated)",
        "namespace deleted: default (unaggregated)",
    ]


def test_an_until_in_the_future_is_refused_by_the_flow_and_the_cli(
    prefect_api, small_source, prometheus_target, tmp_path
):
    """A watermark past now would make every later write older than it invisible to replication."""
    from cli_helpers import run_cli

    target = prometheus_target()
    start, end = small_source.stats.start_ms, small_source.stats.end_ms
    spec = MigrationSpec(migration_id="future", start=_iso(start), end=_iso(end))
    source_block = M3Source(read_url=small_source.read_url, query_url=small_source.query_url)
    target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write")
    migrate(source_block, target_block, spec, state_dir=str(tmp_path))
    future = datetime.fromtimestamp(time.time() + 3600, UTC)
    with pytest.raises(ConfigError, match="is in the future"):
        replicate(source_block, target_block, spec, until=future, state_dir=str(tmp_path))
    result = run_cli(
        "replicate",
        *("--source-read-url", small_source.read_url, "--source-query-url", small_source.query_url),
        *("--target-write-url", f"{target.url}/api/v1/write", "--migration-id", "future"),
        *("--start", _iso(start), "--end", _iso(end), "--state-dir", str(tmp_path)),
        *("--until", future.isoformat()),
        env={"PREFECT_API_URL": prefect_api},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "is in the future" in " ".join((result.stdout + result.stderr).split())
    assert MigrationState(tmp_path, "future").load_replication().watermark_ms is None


@pytest.mark.parametrize("ooo_window", ["30d", None])
def test_a_write_reaching_the_source_after_the_lag_is_found_on_the_next_pass(
    prefect_api, small_source, prometheus_target, tmp_path, caplog, ooo_window
):
    """A sample older than the last pass's end arrives after it: re-copied where the target takes it
    (an out-of-order window), else reported with its window and count."""
    import logging

    target = prometheus_target(ooo_window=ooo_window)
    src_url = small_source.server.url
    start, end = small_source.stats.start_ms, small_source.stats.end_ms
    spec = MigrationSpec(migration_id="late", start=_iso(start), end=_iso(end), window_minutes=10)
    source_block = M3Source(read_url=small_source.read_url, query_url=small_source.query_url)
    target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    state_dir = str(tmp_path / "state")
    migrate(source_block, target_block, spec, state_dir=state_dir)
    some = sorted(read_all(src_url, end - MINUTE, end))[:3]
    until1, until2 = end + 20 * MINUTE, end + 30 * MINUTE
    append_minutely(src_url, some, end, until1)
    first = replicate(
        source_block,
        target_block,
        spec,
        lag_minutes=15,
        until=datetime.fromtimestamp(until1 / 1000, UTC),
        state_dir=state_dir,
    )
    assert first["samples"] == 3 * 20 and first["late_samples"] == 0
    # after the pass: one sample 2 minutes before its end (a series M3 received late), and new samples
    late_series = (("__name__", "late_arrival_total"), ("job", "late"))
    append_minutely(src_url, [late_series], until1 - 3 * MINUTE, until1 - 2 * MINUTE)
    append_minutely(src_url, some, until1, until2)
    logging.getLogger("prefect").addHandler(caplog.handler)
    try:
        second = replicate(
            source_block,
            target_block,
            spec,
            lag_minutes=15,
            until=datetime.fromtimestamp(until2 / 1000, UTC),
            state_dir=state_dir,
        )
    finally:
        logging.getLogger("prefect").removeHandler(caplog.handler)
    assert second["samples"] == 3 * 10 and second["late_samples"] == 1
    assert "1 samples arrived in M3 after lag 15 min" in caplog.text and "raise --lag" in caplog.text
    window = f"{_iso(end + 1 + 10 * MINUTE)} .. {_iso(end + 20 * MINUTE)}"  # end is 1 ms before a boundary
    assert window in caplog.text
    expected = with_label(read_all(src_url, start, until2), "_source", "m3db")
    if ooo_window:
        assert second["late_samples_recopied"] == 1
        assert diff_target(expected, target.url, start, until2) == []
    else:  # in order: the target refuses samples older than what its series hold
        assert second["late_samples_recopied"] == 0
        assert "late samples in " + window + " are NOT in the target" in caplog.text
        problems = diff_target(expected, target.url, start, until2)
        assert problems and all("late_arrival_total" in str(p) for p in problems)
    third = replicate(
        source_block,
        target_block,
        spec,
        lag_minutes=15,
        until=datetime.fromtimestamp(until2 / 1000, UTC),
        state_dir=state_dir,
    )
    assert third["status"] == "up-to-date" and third["late_samples"] == 0
