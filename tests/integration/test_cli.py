"""The command line: exit codes, config files, and secrets that never show."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cli_helpers import OFFLINE_MIGRATE as BASE
from cli_helpers import run_cli

from sandbox.servers import bcrypt_hash, start_prometheus

SECRET = "s3cr3t-Pa55word-do-not-print"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--match", "up{"], "does not parse"),
        (["--match", "rate(up[5m])"], "not a plain series selector"),
        (["--write-mode", "sideways"], "write_mode"),
    ],
)
def test_bad_options_exit_2_with_the_reason(extra, message):
    result = run_cli(*BASE, *extra)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_end_before_start_and_future_end_are_refused():
    swapped = run_cli(*[a.replace("2026-01-02", "2025-12-30") for a in BASE])
    assert swapped.returncode == 2 and "is not after start" in swapped.stderr
    future = run_cli(*[a.replace("2026-01-02T00:00:00Z", "2099-01-01T00:00:00Z") for a in BASE])
    assert future.returncode == 2 and "in the future" in future.stderr


def test_config_file_with_unknown_keys_is_refused(tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("source:\n  read_url: http://127.0.0.1:9/api/v1/read\n  raed_url: typo\n")
    result = run_cli(*BASE, "--config", str(cfg))
    assert result.returncode == 2
    assert "raed_url" in result.stderr
    cfg.write_text("sources: {}\n")
    result = run_cli(*BASE, "--config", str(cfg))
    assert result.returncode == 2 and "unknown sections" in result.stderr


def test_toml_config_supplies_what_flags_leave_out(tmp_path):
    cfg = tmp_path / "m.toml"
    cfg.write_text('[migration]\nmatch = ["up{"]\n')
    result = run_cli(*BASE, "--config", str(cfg))
    assert result.returncode == 2 and "does not parse" in result.stderr


@pytest.mark.servers
@pytest.mark.prefect
def test_wrong_credentials_fail_clearly_without_showing_the_secret(prefect_api, tmp_path):
    """A real Prometheus with basic auth (bcrypt) as the source: 401 is named, the password never shown."""
    began = datetime.now(UTC) - timedelta(seconds=1)
    source = start_prometheus(
        tmp_path,
        name="authsource",
        web_config={"basic_auth_users": {"migrator": bcrypt_hash("right-password")}},
        ready_auth=("migrator", "right-password"),
    )
    try:
        result = run_cli(
            "migrate",
            "--source-read-url",
            f"{source.url}/api/v1/read",
            "--source-query-url",
            source.url,
            "--target-write-url",
            "http://127.0.0.1:9/api/v1/write",
            "--start",
            "2026-01-01T00:00:00Z",
            "--end",
            "2026-01-01T01:00:00Z",
            "--source-user",
            "migrator",
            "--state-dir",
            str(tmp_path / "state"),
            env={"PREFECT_API_URL": prefect_api, "M3MIGRATE_SOURCE_PASSWORD": SECRET},
        )
    finally:
        source.stop()
    assert result.returncode == 1, result.stderr[-2000:]
    assert "credentials missing or wrong" in result.stderr
    assert "HTTP 401" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    for path in (tmp_path / "state").rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime

    # This test's runs only: an unfiltered read stops at the server's default page of 200 runs.
    with get_client(sync_client=True) as client:
        mine = FlowRunFilter(start_time=FlowRunFilterStartTime(after_=began))
        runs = [r for r in client.read_flow_runs(flow_run_filter=mine) if r.name and r.parameters.get("source")]
    assert runs, "the CLI run must be recorded in the Prefect API"
    assert all(SECRET not in repr(r.parameters) for r in runs)
    assert any(r.parameters["source"]["read_url"].startswith(source.url) for r in runs)
