"""Progress as the user sees it: the figures' arithmetic, and a replication pass's lag behind now in its
progress artifact (read back from the Prefect API), its log and the CLI bar."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
from progress_helpers import read_progress, recording

from m3migrate.progress import Progress, duration, lag_seconds


def test_eta_comes_from_this_runs_pace_and_the_description_names_every_figure():
    p = Progress("block windows", 3, 12, 30_000, 1500.0, 6.0, blocks_uploaded=2)
    assert p.percent == 25.0 and p.eta_seconds == 18.0  # 2 s per window, 9 to go
    assert (
        p.description("m")
        == "m: block windows: **3/12 windows** · 30,000 samples · 1,500 samples/s · 2 blocks uploaded · ETA 18 s"
    )
    resumed = Progress("time front", 10, 12, 0, 0.0, 4.0, windows_before=8)  # 2 windows in 4 s this run
    assert resumed.eta_seconds == 4.0
    assert Progress("time front", 0, 5, 0, 0.0, 1.0).eta_seconds is None
    assert "done in 1 min 5 s" in Progress("time front", 5, 5, 9, 1.0, 65.0).description("m")
    assert Progress("replication pass", 1, 2, 0, 0.0, 1.0, lag_seconds=3700).detail == "lag 1 h 1 min"
    assert lag_seconds(1_000, now_ms=61_000) == 60.0 and lag_seconds(5_000, now_ms=1_000) == 0.0
    assert duration(59.6) == "1 min 0 s"


@pytest.mark.servers
@pytest.mark.prefect
def test_a_replication_pass_reports_its_lag_behind_now(
    prefect_api, source_history, prometheus_target, tmp_path, caplog
):
    from blocks import M3Source, ThanosTarget
    from cli.console import progress_bar
    from flows.migrate import migrate
    from flows.replicate import replicate
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.timefmt import iso_ms
    from tasks.transfer import PROGRESS_LISTENERS

    end = source_history.stats.end_ms
    target = prometheus_target()
    source = M3Source(read_url=source_history.read_url, query_url=source_history.query_url)
    sink = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    spec = MigrationSpec(
        start=iso_ms(end - 4 * 3_600_000), end=iso_ms(end - 3 * 3_600_000), migration_id="lagging", window_minutes=20
    )
    state_dir = str(tmp_path / "state")
    migrate(source, sink, spec, state_dir=state_dir, skip_validation=True)
    until_ms = end - 3_600_000  # the pass copies two hours and stays an hour (and a bit) behind now
    bar, bar_listener = progress_bar()
    caplog.set_level(logging.INFO)
    logging.getLogger("prefect").addHandler(caplog.handler)  # prefect's loggers do not propagate
    try:
        with recording({"replication pass": "lagging-replicate-progress"}) as progress:
            result = replicate(
                source, sink, spec, until=datetime.fromtimestamp(until_ms / 1000, UTC), state_dir=state_dir
            )
    finally:
        PROGRESS_LISTENERS.remove(bar_listener)
        logging.getLogger("prefect").removeHandler(caplog.handler)
    done = time.time() * 1000
    assert result["status"] == "replicated"
    readings = progress.phase("replication pass")
    assert len(readings) >= 2, [r.event for r in readings]
    for r in readings:  # the lag is how far behind now the copied front is, as it moves
        assert r.event["front_end_ms"] <= until_ms
        assert (
            (done - r.event["front_end_ms"]) / 1000 - 120
            <= r.event["lag_seconds"]
            <= (done - r.event["front_end_ms"]) / 1000
        )
        assert "lag " in r.description and duration(r.event["lag_seconds"]) in r.description
    lags = [r.event["lag_seconds"] for r in readings]
    assert lags[0] > lags[-1] + 1800, lags  # the front caught up by more than half an hour of data
    assert readings[-1].event["front_end_ms"] == until_ms and read_progress("lagging-replicate-progress")[0] == 100.0
    assert abs(result["lag_seconds"] - (done - until_ms) / 1000) < 60
    assert f"replication lag {duration(result['lag_seconds'])}" in caplog.text
    (row,) = bar.tasks
    assert row.description == "replication pass" and row.completed == row.total
    assert row.fields["detail"].startswith("lag ") and row.fields["detail"] == readings[-1].event["detail"]
