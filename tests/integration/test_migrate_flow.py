"""The migrate flow against real servers: exact copies, resume after kill -9, splits on source limits."""

from __future__ import annotations

import gc
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import step_argv

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms as _iso
from sandbox.compare import diff_target, read_all, with_label
from sandbox.history import SourceSandbox
from sandbox.servers import Server, start_prometheus

pytestmark = [pytest.mark.servers, pytest.mark.prefect]


def _spec(source: SourceSandbox, **kw) -> MigrationSpec:
    return MigrationSpec(start=_iso(source.stats.start_ms), end=_iso(source.stats.end_ms), **kw)


def _blocks(source: SourceSandbox, target_url: str) -> tuple[M3Source, ThanosTarget]:
    """The source through its M3 Coordinator gateway, the target directly."""
    return (
        M3Source(read_url=source.read_url, query_url=source.query_url),
        ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url),
    )


@pytest.fixture(scope="module")
def expected(source_history: SourceSandbox) -> dict:
    """The source read back by remote read, as the target must hold it (with _source="m3db")."""
    data = read_all(source_history.server.url, source_history.stats.start_ms, source_history.stats.end_ms)
    assert sum(len(s) for s in data.values()) == source_history.stats.samples
    return with_label(data, "_source", "m3db")


def _target_data(target_url: str, source: SourceSandbox) -> dict:
    return read_all(target_url, source.stats.start_ms, source.stats.end_ms)


def _target_diff(expected: dict, target: Server, source: SourceSandbox) -> list[str]:
    return diff_target(expected, target.url, source.stats.start_ms, source.stats.end_ms, restart=target)


def test_fresh_target_without_ooo_window_gets_an_exact_copy(
    prefect_api, source_history, prometheus_target, expected, tmp_path, default_gc_thresholds, plan_reads
):
    target = prometheus_target()
    source_block, target_block = _blocks(source_history, target.url)
    summary = migrate(source_block, target_block, _spec(source_history), state_dir=str(tmp_path))
    assert gc.get_threshold() == default_gc_thresholds, "remote write (and validation) keep the collector's defaults"
    assert plan_reads == [], "the run transfers the plan it made: its tasks in this process do not read it back"
    assert summary["samples"] == source_history.stats.samples
    assert summary["series"] == source_history.stats.series
    assert _target_diff(expected, target, source_history) == []

    again = migrate(source_block, target_block, _spec(source_history), state_dir=str(tmp_path))
    assert len(plan_reads) == 2, "a resume reads the saved plan once for validation's probe and once to run it"
    assert again["samples_moved_now"] == 0, "a rerun of a finished migration must write nothing"
    assert again["tasks_cached"] == again["tasks"] > 1
    assert _target_diff(expected, target, source_history) == []


def test_ooo_target_holding_recent_data_gets_an_exact_copy(
    prefect_api, source_history, prometheus_target, expected, tmp_path
):
    from m3migrate.clients.remote_write import RemoteWriteClient
    from m3migrate.prompb import TimeSeries
    from m3migrate.settings.endpoints import TargetSettings
    from m3migrate.wire.codec import encode_labels, frame_series, single_request

    target = prometheus_target(ooo_window="30d")
    live = TimeSeries()
    live.samples.add(timestamp=int(time.time() * 1000), value=1.0)
    with RemoteWriteClient(TargetSettings(write_url=f"{target.url}/api/v1/write")) as writer:
        writer.write(
            single_request(frame_series(encode_labels([("__name__", "live_metric")]), live.SerializeToString()), 1)
        )
    source_block, target_block = _blocks(source_history, target.url)
    spec = _spec(source_history, write_mode="out_of_order", batch_max_series=64, task_concurrency=3)
    summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path))
    assert summary["batches"] > 1
    assert _target_diff(expected, target, source_history) == []


def test_source_limit_splits_batches_and_stays_exact(prefect_api, source_history, prometheus_target, tmp_path):
    """A source refusing big reads (Prometheus' remote-read sample limit) forces splits, not truncation."""
    data_dir = tmp_path / "limited-data"
    shutil.copytree(
        source_history.server.data_dir, data_dir, ignore=shutil.ignore_patterns("lock", "wal", "chunks_head")
    )
    limited = start_prometheus(
        tmp_path, name="limited", data_dir=data_dir, extra_flags=["--storage.remote.read-sample-limit=2000"]
    )
    try:
        stats = source_history.block_stats
        end_ms = stats.start_ms + 6 * 3_600_000 - 1
        expected = with_label(read_all(source_history.server.url, stats.start_ms, end_ms), "_source", "m3db")
        target = prometheus_target()
        source_block = M3Source(read_url=f"{limited.url}/api/v1/read", query_url=limited.url)
        target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
        spec = MigrationSpec(start=_iso(stats.start_ms), end=_iso(end_ms))
        summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path / "state"))
        assert summary["splits"] > 0
        assert diff_target(expected, target.url, stats.start_ms, end_ms, restart=target) == []
    finally:
        limited.stop()


def _cli(source_url: str, target_url: str, source: SourceSandbox, state_dir: Path, *extra: str) -> list[str]:
    return step_argv(
        "migrate",
        source_url,
        target_url,
        state_dir,
        "--start",
        _iso(source.stats.start_ms),
        "--end",
        _iso(source.stats.end_ms),
        "--migration-id",
        "killtest",
        *extra,
    )


@pytest.mark.parametrize("ooo_window", [None, "30d"], ids=["no-ooo", "ooo"])
def test_kill_9_then_rerun_resumes_to_an_exact_copy(
    prefect_api, source_history, prometheus_target, expected, tmp_path, ooo_window
):
    target = prometheus_target(ooo_window=ooo_window)
    state_dir = tmp_path / "state"
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(Path(__file__).parents[2])}
    # Few, big tasks keep the test quick; the 3 batches still run in parallel.
    extra = ["--write-mode", "out_of_order", "--window-minutes", "120"] if ooo_window else ["--window-minutes", "60"]
    cmd = _cli(source_history.server.url, target.url, source_history, state_dir, *extra, "--batch-max-series", "70")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    progress = state_dir / "killtest" / "progress.json"
    deadline = time.monotonic() + 240
    windows_total = None
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists():
            p = json.loads(progress.read_text())
            windows_total = p["windows_total"]
            if p["windows_done"] >= max(2, windows_total // 3):
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = _target_data(target.url, source_history)
    assert 0 < sum(len(s) for s in partial.values()) < sum(len(s) for s in expected.values())

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _target_diff(expected, target, source_history) == []


def test_start_over_rewrites_everything(prefect_api, source_history, prometheus_target, expected, tmp_path):
    target = prometheus_target(ooo_window="30d")
    source_block, target_block = _blocks(source_history, target.url)
    spec = _spec(source_history, write_mode="out_of_order")
    first = migrate(source_block, target_block, spec, state_dir=str(tmp_path))
    again = migrate(source_block, target_block, spec, start_over=True, state_dir=str(tmp_path))
    assert again["tasks_cached"] == 0
    assert again["samples_moved_now"] == first["samples"] == source_history.stats.samples
    assert _target_diff(expected, target, source_history) == []


def test_dask_cluster_of_worker_processes_by_address(prefect_api, source_history, prometheus_target, tmp_path):
    """The scale-out path: the same flow on a dask.distributed cluster given by its scheduler address."""
    from distributed import Client, LocalCluster

    target = prometheus_target(ooo_window="30d")
    source_block, target_block = _blocks(source_history, target.url)
    end_ms = source_history.stats.start_ms + 12 * 3_600_000 - 1
    with LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        spec = MigrationSpec(
            start=_iso(source_history.stats.start_ms),
            end=_iso(end_ms),
            write_mode="out_of_order",
            window_minutes=120,
            batch_max_series=50,
            task_runner="dask",
            task_concurrency=2,
            dask_address=cluster.scheduler_address,
        )
        summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path))
        with Client(cluster) as client:  # each worker process opened its own Transfer: both did work
            transfers_per_worker = client.run(lambda: len(__import__("tasks.transfer").transfer._transfers))
    expected = with_label(read_all(source_history.server.url, source_history.stats.start_ms, end_ms), "_source", "m3db")
    assert summary["batches"] >= 4 and summary["tasks"] > 2
    assert sorted(transfers_per_worker.values()) == [1, 1], transfers_per_worker
    assert diff_target(expected, target.url, source_history.stats.start_ms, end_ms, restart=target) == []


@pytest.mark.parametrize("api_url_set", [True, False])
def test_dask_without_a_prefect_api_url_warns(prefect_api, caplog, api_url_set):
    """Dask workers are other processes: without PREFECT_API_URL each one would start an API of its own."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.transfer import dask_task_runner

    spec = MigrationSpec(
        start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z", task_runner="dask", dask_address="tcp://127.0.0.1:1"
    )

    @flow(name="dask-runner-check")
    def build() -> str:
        if api_url_set:
            return type(dask_task_runner(spec)).__name__
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            return type(dask_task_runner(spec)).__name__

    caplog.set_level("WARNING")
    assert build() == "DaskTaskRunner"
    warned = [r for r in caplog.records if "without PREFECT_API_URL" in r.getMessage()]
    assert bool(warned) is not api_url_set
