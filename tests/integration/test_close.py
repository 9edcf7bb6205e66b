"""The cutover gate against a real Prefect API and real servers.

The close flow runs in a thread. A resumer waits until the run is paused with its form saved, then
resumes it from code or through `m3migrate approve`. The replicate deployment (active interval
schedule) must end paused or active, and the decision is recorded as an artifact.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from blocks import M3Source, ThanosTarget
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms as _iso
from sandbox.history import HistorySpec, start_source
from sandbox.servers import start_prometheus

pytestmark = [pytest.mark.servers, pytest.mark.prefect]
ROOT = Path(__file__).parents[2]
DEPLOYMENT = "replicate/replicate"


@dataclass
class Setup:
    source: M3Source
    clean: ThanosTarget  # a faithful copy
    broken: ThanosTarget  # the same copy with one series deleted
    spec: MigrationSpec
    broken_spec: MigrationSpec
    state_dir: str


@pytest.fixture(scope="module")
def setup(prefect_api, tmp_path_factory) -> Iterator[Setup]:
    from flows.migrate import migrate

    work = tmp_path_factory.mktemp("close")
    servers = []
    try:
        src = start_source(HistorySpec(series=60, span_s=3 * 3600, interval_s=60), work, tail_minutes=None)
        servers.append(src)
        clean = start_prometheus(work, name="clean", remote_write_receiver=True)
        servers.append(clean)
        broken = start_prometheus(work, name="broken", remote_write_receiver=True)
        servers.append(broken)
        src_url = src.server.url
        source = M3Source(read_url=f"{src_url}/api/v1/read", query_url=src_url)
        end = src.stats.end_ms
        start = end - 3_600_000 + 1  # the last hour: quick
        s = Setup(
            source,
            ThanosTarget(write_url=f"{clean.url}/api/v1/write", query_url=clean.url),
            ThanosTarget(write_url=f"{broken.url}/api/v1/write", query_url=broken.url),
            MigrationSpec(migration_id="close-clean", start=_iso(start), end=_iso(end)),
            MigrationSpec(migration_id="close-broken", start=_iso(start), end=_iso(end)),
            str(work / "state"),
        )
        migrate(source, s.clean, s.spec, state_dir=s.state_dir, skip_validation=True)
        migrate(source, s.broken, s.broken_spec, state_dir=s.state_dir, skip_validation=True)
        # one series goes missing on the broken target
        names = httpx.get(f"{broken.url}/api/v1/label/__name__/values", timeout=30).json()["data"]
        victim = sorted(n for n in names if not n.startswith("m3migrate"))[0]
        r = httpx.post(f"{broken.url}/api/v1/admin/tsdb/delete_series", params={"match[]": victim}, timeout=30)
        assert r.status_code == 204, r.text
        yield s
    finally:
        for server in servers:
            server.stop()


def _apply_replicate_deployment() -> UUID:
    """The replicate deployment with an ACTIVE interval schedule, as `serve --replicate-active` makes it."""
    from prefect.client.orchestration import get_client

    from flows.replicate import replicate

    deployment_id = replicate.to_deployment(
        "replicate", interval=300, parameters={"lag_minutes": 15}, enforce_parameter_schema=False, paused=False
    ).apply()
    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment_id)
        assert dep.paused is False
        schedules = client.read_deployment_schedules(deployment_id)
        assert [s.active for s in schedules] == [True]
    return deployment_id


def _schedule_state(deployment_id: UUID) -> tuple[bool, list[bool]]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment(deployment_id)
        return bool(dep.paused), [s.active for s in client.read_deployment_schedules(deployment_id)]


class CloseRun:
    """The close flow in a thread; its result (or exception) once it ends."""

    def __init__(self, **kwargs: Any) -> None:
        from flows.close import close

        self.result: Any = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                self.result = close(**kwargs, return_state=True)
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout: float = 120) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the close flow did not end"
        assert self.error is None, self.error
        return self.result


def wait_paused(run: CloseRun, pause_number: int, timeout: float = 120) -> tuple[UUID, str]:
    """Wait until the newest close run is paused for the pause_number-th time and has saved its form.

    Returns the run id and the form's description.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.input.actions import read_flow_run_input
    from prefect.input.run_input import keyset_from_paused_state

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert run.thread.is_alive(), f"close ended before pausing: {run.result or run.error}"
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["close"])), sort=FlowRunSort.START_TIME_DESC, limit=1
            )
            state = runs[0].state if runs else None
            if state is not None and state.is_paused() and state.state_details.pause_key == f"cutover-{pause_number}":
                keyset = keyset_from_paused_state(state)
                if read_flow_run_input(keyset["schema"], flow_run_id=runs[0].id) is not None:
                    return runs[0].id, read_flow_run_input(keyset["description"], flow_run_id=runs[0].id)
            time.sleep(0.3)
    raise AssertionError(f"close did not pause (pause {pause_number}) within {timeout} s")


def _cutover_artifact(flow_run_id: UUID) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n\n".join(a.data for a in found if a.key and a.key.endswith("-cutover") and isinstance(a.data, str))


def _close_args(s: Setup, target: ThanosTarget, spec: MigrationSpec, **kw: Any) -> dict[str, Any]:
    return {
        "source": s.source,
        "target": target,
        "spec": spec,
        "state_dir": s.state_dir,
        "poll_interval_seconds": 1,
        **kw,
    }


def test_stop_decision_pauses_the_replicate_schedule(setup):
    from prefect.flow_runs import resume_flow_run

    deployment_id = _apply_replicate_deployment()
    run = CloseRun(**_close_args(setup, setup.clean, setup.spec))
    run_id, description = wait_paused(run, 1)
    assert "verification passed" in description and "stop_replication" in description
    assert _schedule_state(deployment_id) == (False, [True]), "nothing changes before the decision"
    resume_flow_run(
        run_id, run_input={"decision": "stop_replication", "approver": "alice", "comment": "cutover CHG-42"}
    )
    state = run.join()
    assert state.is_completed(), state
    result = state.result()
    assert result["decision"] == "stop_replication" and result["approver"] == "alice" and result["verified"]
    assert _schedule_state(deployment_id) == (True, [False])
    proof = result["schedule"]
    assert proof["found"] and proof["deployment_paused"] and proof["scheduled_runs"] == 0
    artifact = _cutover_artifact(run_id)
    assert "stop_replication" in artifact and "alice" in artifact and "CHG-42" in artifact
    assert "Proof" in artifact


def test_keep_decision_through_the_cli_leaves_replication_on(setup, prefect_api):
    deployment_id = _apply_replicate_deployment()
    run = CloseRun(**_close_args(setup, setup.clean, setup.spec))
    run_id, _ = wait_paused(run, 1)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "cli", "approve", "--flow-run", str(run_id)]
    approved = subprocess.run(
        [*cli, "--decision", "keep", "--approver", "bob", "--comment", "not yet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert approved.returncode == 0, approved.stderr[-2000:]
    state = run.join()
    assert state.is_completed(), state
    result = state.result()
    assert (result["decision"], result["approver"], result["comment"]) == ("keep_replicating", "bob", "not yet")
    assert _schedule_state(deployment_id) == (False, [True])
    assert "keep_replicating" in _cutover_artifact(run_id)

    # the run is no longer paused, and an unknown id is reported as such: both exit 1
    again = subprocess.run(
        [*cli, "--decision", "stop", "--approver", "bob"], env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 1 and "not paused" in again.stderr, again.stderr
    unknown = subprocess.run(
        [*cli[:-1], "00000000-0000-0000-0000-000000000000", "--decision", "stop", "--approver", "bob"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 1 and "no flow run" in unknown.stderr, unknown.stderr
    bad = subprocess.run(
        [*cli, "--decision", "maybe", "--approver", "bob"], env=env, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "stop or keep" in bad.stderr


def test_failed_verification_refuses_approval_without_override(setup):
    from prefect.flow_runs import resume_flow_run

    deployment_id = _apply_replicate_deployment()
    run = CloseRun(**_close_args(setup, setup.broken, setup.broken_spec))
    run_id, description = wait_paused(run, 1)
    assert "verification FAILED" in description and "override_failed_verification" in description
    assert re.search(r"\| missing \| [1-9]", description), description

    resume_flow_run(run_id, run_input={"decision": "stop_replication", "approver": "carol"})
    _, description = wait_paused(run, 2)  # refused: it waits again, with a new key
    assert "was refused" in description
    assert _schedule_state(deployment_id) == (False, [True]), "a refused decision changes nothing"
    assert "refused" in _cutover_artifact(run_id)

    resume_flow_run(
        run_id,
        run_input={"decision": "stop_replication", "approver": "carol", "override_failed_verification": True},
    )
    state = run.join()
    assert state.is_completed(), state
    result = state.result()
    assert result["decision"] == "stop_replication" and result["refusals"] == 1
    assert result["verified"] is False and result["override_failed_verification"] is True
    assert _schedule_state(deployment_id) == (True, [False])


def test_timeout_leaves_everything_undecided(setup):
    from prefect.exceptions import NotPausedError
    from prefect.flow_runs import resume_flow_run

    deployment_id = _apply_replicate_deployment()
    run = CloseRun(**_close_args(setup, setup.clean, setup.spec, approval_timeout_hours=5 / 3600))
    run_id, _ = wait_paused(run, 1)
    state = run.join()
    assert state.is_completed(), state
    assert state.result()["decision"] == "undecided"
    assert _schedule_state(deployment_id) == (False, [True]), "nothing was stopped"
    assert "Nothing was stopped" in _cutover_artifact(run_id)
    with pytest.raises(NotPausedError):
        resume_flow_run(run_id, run_input={"decision": "stop_replication", "approver": "late"})


def test_stop_without_a_replicate_deployment_says_so(setup):
    from prefect.flow_runs import resume_flow_run

    run = CloseRun(**_close_args(setup, setup.clean, setup.spec, replicate_deployment="replicate/nowhere"))
    run_id, _ = wait_paused(run, 1)
    resume_flow_run(run_id, run_input={"decision": "stop_replication", "approver": "dave"})
    state = run.join()
    assert state.is_completed(), state
    assert state.result()["schedule"] == {
        "found": False,
        "deployment": "replicate/nowhere",
        "read_at": state.result()["schedule"]["read_at"],
    }
    assert "no deployment `replicate/nowhere`" in _cutover_artifact(run_id)


@pytest.mark.skipif(
    not os.environ.get("M3MIGRATE_SCREENSHOT"), reason="opt-in (about 100 s): set M3MIGRATE_SCREENSHOT=1"
)
def test_screenshot_of_the_paused_form(tmp_path):
    """scripts/screenshot_gate.py: prefect server with UI, a paused close run, headless Chromium."""
    out = tmp_path / "cutover-form.png"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_gate.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_cli_close_prints_how_to_approve_and_exits_1_when_undecided(setup, prefect_api):
    spec = setup.spec
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    cmd = [
        sys.executable, "-m", "cli", "close",
        "--source-read-url", setup.source.read_url, "--source-query-url", setup.source.query_url,
        "--target-write-url", setup.clean.write_url, "--target-query-url", setup.clean.query_url,
        "--migration-id", spec.migration_id, "--start", _iso(spec.start_ms), "--end", _iso(spec.end_ms),
        "--state-dir", setup.state_dir, "--approval-timeout-hours", "0.001",
    ]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "m3migrate approve --flow-run" in run.stderr
    assert "decision undecided" in run.stdout and "nothing was stopped" in run.stderr


def test_end_to_end_runs_every_step_and_waits_at_the_gate(setup):
    """The one-button wizard: validate and migrate (resumed: all cached), replicate, close; keep decided."""
    from prefect.flow_runs import resume_flow_run

    from flows.wizard import end_to_end

    result: dict[str, Any] = {}

    def run() -> None:
        result["state"] = end_to_end(
            source=setup.source,
            target=setup.clean,
            spec=setup.spec,
            state_dir=setup.state_dir,
            poll_interval_seconds=1,
            return_state=True,
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    holder = CloseRun.__new__(CloseRun)
    holder.thread, holder.result, holder.error = thread, None, None
    run_id, description = wait_paused(holder, 1)
    assert "verification passed" in description
    resume_flow_run(run_id, run_input={"decision": "keep_replicating", "approver": "bob"})
    thread.join(120)
    assert not thread.is_alive()
    state = result["state"]
    assert state.is_completed(), state
    out = state.result()
    assert out["migration"]["samples_moved_now"] == 0 and out["migration"]["tasks_cached"] > 0
    assert out["replication"]["status"] in ("replicated", "up-to-date")
    assert out["close"]["decision"] == "keep_replicating" and out["close"]["approver"] == "bob"
