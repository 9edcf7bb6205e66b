"""After its first migrate, every later step of a migration needs only `--migration-id` (issue 16, item 3).

Through the real CLI against real servers: migrate with options that matter later (no source label, the
target's query URL, a source header, the window), then replicate, verify and close with only the id (and
the header's value, which is never saved); a differing option is refused naming it, an unknown id is a
clear error, and the saved file holds no secret.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_helpers import cli_env, run_cli, step_argv

from m3migrate.timefmt import iso_ms as _iso
from sandbox.compare import diff_target, read_all
from sandbox.history import HistorySpec, append_minutely, start_source
from sandbox.servers import start_prometheus

pytestmark = [pytest.mark.servers, pytest.mark.prefect]
SECRET = "by-id-Pa55word-never-saved"
HEADER_VALUE = "acme-org-header-value"
MINUTE = 60_000


def _paused_close_run(migration_id: str, proc: subprocess.Popen, timeout: float = 240):
    """The close run of this migration once it waits at the cutover gate with its form saved."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            newest = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["close"])), sort=FlowRunSort.START_TIME_DESC, limit=20
            )
            for run in newest:
                spec = run.parameters.get("spec") or {}
                mine = spec.get("migration_id") == migration_id and run.state and run.state.is_paused()
                if mine and read_flow_run_input(keyset_from_paused_state(run.state)["schema"], flow_run_id=run.id):
                    return run.id
            time.sleep(0.5)
    raise AssertionError("close did not pause for the cutover decision")


def test_replicate_verify_and_close_need_only_the_migration_id(prefect_api, tmp_path):
    from prefect.flow_runs import resume_flow_run

    source = start_source(HistorySpec(series=60, span_s=3 * 3600, interval_s=60), tmp_path, tail_minutes=None)
    target = start_prometheus(tmp_path, name="byid-target", remote_write_receiver=True)
    try:
        src, end = source.server.url, source.stats.end_ms
        start = end - 2 * 3_600_000 + 1
        state_dir = tmp_path / "state"
        env = {"PREFECT_API_URL": prefect_api, "M3MIGRATE_SOURCE_USER": "migrator"}
        env["M3MIGRATE_SOURCE_PASSWORD"] = SECRET

        def step(name: str, *extra: str, mid: str = "byid") -> subprocess.CompletedProcess:
            return run_cli(name, "--state-dir", str(state_dir), "--migration-id", mid, *extra, env=env)

        endpoints = step_argv("migrate", src, target.url, state_dir)[4:]  # the URLs, as a first migrate needs
        first = step(
            "migrate",
            *endpoints,
            *("--start", _iso(start), "--end", _iso(end), "--window-minutes", "30", "--no-source-label"),
            *("--skip-validation", "--source-header", f"X-Org={HEADER_VALUE}"),
        )
        assert first.returncode == 0, first.stderr[-3000:]
        saved = (state_dir / "byid" / "spec.json").read_text()
        assert SECRET not in saved and HEADER_VALUE not in saved, "no secret and no header value is saved"
        doc = json.loads(saved)
        assert doc["version"] == 1 and doc["spec"]["source_label_value"] == "" and doc["spec"]["window_minutes"] == 30
        assert doc["source"]["header_names"] == ["X-Org"] and doc["target"]["query_url"] == target.url

        # the header's value is not saved: without it the step is refused before any request
        headerless = step("replicate", "--until", _iso(end + 20 * MINUTE))
        assert headerless.returncode == 2, headerless.stderr[-2000:]
        assert "X-Org" in headerless.stderr and "--source-header" in headerless.stderr

        # new samples reach the source; one pass with only the id copies them as the migration did
        some = sorted(read_all(src, end - MINUTE, end))[:4]
        append_minutely(src, some, end, end + 20 * MINUTE)
        header = ("--source-header", f"X-Org={HEADER_VALUE}")
        replicated = step("replicate", *header, "--until", _iso(end + 20 * MINUTE))
        assert replicated.returncode == 0, replicated.stderr[-3000:]
        expected = read_all(src, start, end + 20 * MINUTE)  # no _source label: the saved spec said so
        assert diff_target(expected, target.url, start, end + 20 * MINUTE) == []

        # verify reads the target through the saved query URL and expects no source label
        verified = step("verify", *header, "--report-dir", str(tmp_path / "report"))
        assert verified.returncode == 0, verified.stderr[-3000:]

        # an option equal to the saved one is fine; a differing one is refused, naming it and both values
        same = step("verify", *header, "--window-minutes", "30", "--end", _iso(end), "--report-dir", str(tmp_path))
        assert same.returncode == 0, same.stderr[-3000:]
        other_end = _iso(end - 3_600_000)
        refused = step("verify", *header, "--end", other_end, "--window-minutes", "30")
        assert refused.returncode == 2, refused.stderr[-2000:]
        message = " ".join(refused.stderr.split())
        assert "end: saved '" + _iso(end)[:16] in message and "given '" + other_end[:16] in message, message
        assert "window_minutes" not in message and "start:" not in message, message

        unknown = step("verify", mid="never-migrated")
        assert unknown.returncode == 2
        assert "migration 'never-migrated' has no saved spec" in " ".join(unknown.stderr.split())

        # close: final catch-up, verification, then the gate, with only the id; decided from the API
        closing = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "close",
                "--state-dir",
                str(state_dir),
                "--migration-id",
                "byid",
                *header,
                "--replicate-deployment",
                "replicate/not-deployed",
            ],
            env=cli_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            resume_flow_run(
                _paused_close_run("byid", closing), run_input={"decision": "keep_replicating", "approver": "t"}
            )
            out, err = closing.communicate(timeout=240)
        finally:
            if closing.poll() is None:
                closing.kill()
        assert closing.returncode == 0, err[-3000:]
        assert "decision keep_replicating" in out
        for path in state_dir.rglob("*"):
            if path.is_file():
                assert SECRET not in path.read_text(errors="replace"), path
    finally:
        target.stop()
        source.stop()


def test_a_migration_without_a_saved_spec_still_takes_the_whole_spec(tmp_path):
    """--migration-id of a migration never migrated, without --start/--end: a clear error, exit 2."""
    result = run_cli("replicate", "--migration-id", "nothing-here", "--state-dir", str(tmp_path))
    assert result.returncode == 2, result.stderr
    text = " ".join(result.stderr.split())
    assert "migration 'nothing-here' has no saved spec" in text and "run migrate first" in text
    assert not (Path(tmp_path) / "nothing-here").exists()
