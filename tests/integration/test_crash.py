"""kill -9 at chosen points of a migration or a replication pass, then rerun: the target ends exact.

The CLI runs as a subprocess with ``M3MIGRATE_FAILPOINT=<point>:<n>`` (see m3migrate/failpoints.py):
it SIGKILLs itself the n-th time it passes the point, e.g. between two write requests of a unit, or
after the target acknowledged a unit but before the journal recorded it. n is drawn from a seeded RNG
(printed in the test id), so a failure reproduces.

The source is read through the sandbox's M3 Coordinator gateway ([start, end) reads); migrations of the
session's history start 1 ms after a sample and so end on one (its windows' first milliseconds hold
samples), the replication source's samples lie 1 ms before each minute (on every window's last
millisecond and time split). Expectations are read from the Prometheus behind the gateway.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from cli_helpers import cli_env, step_argv

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from sandbox.compare import diff_target, read_all, with_label
from sandbox.history import HistorySpec, append_minutely, start_source
from sandbox.m3gateway import READ_PATH, GatewayNamespace, M3Gateway

pytestmark = [pytest.mark.servers, pytest.mark.prefect]
HOUR_MS = 3_600_000
MINUTE_MS = 60_000

# (point, range of n, target out-of-order window): ~100 units of 3 batches x 2-day range in 60-min windows
CRASHES = [
    ("unit.read", (5, 120), None),
    ("unit.write", (5, 120), None),
    ("unit.write", (5, 40), "30d"),
    ("unit.done", (5, 120), None),
    ("unit.done", (5, 40), "30d"),
    ("segment.done", (1, 6), None),
]


def _crash_cases() -> list:
    rng = random.Random(20261126)
    return [
        pytest.param(point, rng.randint(*span), ooo, id=f"{point}:{n}-{'ooo' if ooo else 'in-order'}")
        for point, span, ooo in CRASHES
        for n in [rng.randint(*span)]
    ]


def _argv(step: str, m3_url: str, target_url: str, state_dir: Path, *extra: str) -> list[str]:
    """step_argv with the source at the M3 gateway's remote-read path."""
    argv = step_argv(step, m3_url, target_url, state_dir, *extra)
    argv[argv.index("--source-read-url") + 1] = m3_url + READ_PATH
    return argv


def _env(prefect_api: str, failpoint: str | None) -> dict[str, str]:
    env = cli_env(PREFECT_API_URL=prefect_api)
    env.pop("M3MIGRATE_FAILPOINT", None)
    if failpoint:
        env["M3MIGRATE_FAILPOINT"] = failpoint
    return env


def _killed_then_rerun(cmd: list[str], prefect_api: str, failpoint: str) -> None:
    crashed = subprocess.run(cmd, env=_env(prefect_api, failpoint), capture_output=True, text=True, timeout=600)
    assert crashed.returncode == -9, f"the run did not reach {failpoint}: {crashed.stderr[-2000:]}"
    rerun = subprocess.run(cmd, env=_env(prefect_api, None), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]


@pytest.mark.parametrize("point,nth,ooo_window", _crash_cases())
def test_migrate_killed_at_a_point_then_rerun_is_exact(
    prefect_api, source_history, prometheus_target, tmp_path, point, nth, ooo_window
):
    target = prometheus_target(ooo_window=ooo_window)
    start = source_history.stats.start_ms + 1
    end = start + 48 * HOUR_MS - 1
    mode = ["--write-mode", "out_of_order", "--window-minutes", "120"] if ooo_window else ["--window-minutes", "60"]
    cmd = _argv(
        "migrate",
        source_history.m3.url,
        target.url,
        tmp_path / "state",
        "--migration-id",
        "crash",
        "--start",
        iso_ms(start),
        "--end",
        iso_ms(end),
        "--batch-max-series",
        "70",
        "--skip-validation",
        *mode,
    )
    _killed_then_rerun(cmd, prefect_api, f"{point}:{nth}")
    expected = with_label(read_all(source_history.server.url, start, end), "_source", "m3db")
    assert diff_target(expected, target.url, start, end, restart=target) == []


@pytest.mark.parametrize("point", ["unit.write:3", "unit.done:5", "replicate.finish:1"])
def test_replication_pass_killed_then_rerun_is_exact(prefect_api, prometheus_target, tmp_path, point):
    # samples 1 ms before each minute: on the last millisecond of every window and of every time split
    spec = HistorySpec(series=60, span_s=4 * 3600, interval_s=60)
    spec = HistorySpec(series=60, span_s=4 * 3600, interval_s=60, end_ms=spec.last_ms - 1)
    source = start_source(spec, tmp_path, tail_minutes=None)
    try:
        target = prometheus_target()
        src = source.server.url
        with M3Gateway({"default": GatewayNamespace(src, retention="30d")}) as m3:
            start, end = source.stats.start_ms, source.stats.end_ms
            spec = MigrationSpec(migration_id="crash", start=iso_ms(start), end=iso_ms(end), window_minutes=10)
            migrate(
                M3Source(read_url=m3.read_url, query_url=m3.url),
                ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
                spec,
                state_dir=str(tmp_path / "state"),
                skip_validation=True,
            )
            until = end + 50 * MINUTE_MS  # 5 windows of 10 min: unit.done:5 is reached
            append_minutely(src, sorted(read_all(src, end - MINUTE_MS, end)), end, until)
            cmd = _argv(
                "replicate",
                m3.url,
                target.url,
                tmp_path / "state",
                "--migration-id",
                "crash",
                "--start",
                iso_ms(start),
                "--end",
                iso_ms(end),
                "--window-minutes",
                "10",
                "--until",
                datetime.fromtimestamp(until / 1000, UTC).isoformat(),
            )
            _killed_then_rerun(cmd, prefect_api, point)
            expected = with_label(read_all(src, start, until), "_source", "m3db")
            assert diff_target(expected, target.url, start, until, restart=target) == []
    finally:
        source.stop()


def _kill_after_done_units(cmd: list[str], env: dict[str, str], journal_glob: Path, units: int) -> None:
    """SIGKILL the run once its journal records ``units`` done units: wherever the front then is (units in
    flight, requests half-sent), not at a failpoint."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            done = sum(p.read_text().count('"event":"done"') for p in journal_glob.parent.glob(journal_glob.name))
            if done >= units:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9, f"the run ended before {units} units were done: {proc.stderr.read()[-2000:]}"


def test_resume_after_kills_at_random_moments_passes_validation_and_ends_exact(
    prefect_api, source_history, prometheus_target, tmp_path
):
    """Killed twice at random moments of the front, then rerun as the README says (validation on): the
    reruns are probed where their journal goes on, not at the saved front that lags it, and end exact."""
    target = prometheus_target()
    start = source_history.stats.start_ms + 1
    end = start + 24 * HOUR_MS - 1
    state = tmp_path / "state"
    cmd = _argv(
        "migrate",
        source_history.m3.url,
        target.url,
        state,
        "--migration-id",
        "kill",
        "--start",
        iso_ms(start),
        "--end",
        iso_ms(end),
        "--batch-max-series",
        "70",
        "--window-minutes",
        "60",
    )
    rng = random.Random(20261127)
    first, second = sorted(rng.sample(range(4, 60), 2))  # ~75 units: 3 batches x 24 windows
    journal = state / "kill" / "journal-migrate-*.jsonl"
    for units in (first, second):
        _kill_after_done_units(cmd, _env(prefect_api, None), journal, units)
    rerun = subprocess.run(cmd, env=_env(prefect_api, None), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "FAIL" not in rerun.stdout
    expected = with_label(read_all(source_history.server.url, start, end), "_source", "m3db")
    assert diff_target(expected, target.url, start, end, restart=target) == []
    held = httpx.get(f"{target.url}/api/v1/series", params={"match[]": '{__name__=~".+"}', "start": "0"}).json()
    assert {tuple(sorted(s.items())) for s in held["data"]} == set(expected), "nothing outside the migrated data"
