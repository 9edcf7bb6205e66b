"""A whole migration on this machine, the way a data engineer runs it from the Prefect UI.

    make demo                 # waits at the cutover form in the Prefect UI; Ctrl-C tears down
    make demo ARGS=--yes      # approves the cutover itself and prints the verification summary

It starts, all on 127.0.0.1: a source with M3-style history and live writes continuing (Debian's
Prometheus behind the sandbox's M3 Coordinator gateway, sandbox.m3gateway, which reads
[start, end) and serves M3's namespace and limit API), a fresh target (a Prometheus remote-write
receiver, the TSDB inside Thanos Receive), and a Prefect server with its UI. It registers and saves the
blocks, serves the wizard's deployments, runs the end-to-end deployment (validate → migrate → replicate
→ close) and prints the address of the paused cutover form. Everything it started is stopped at the end
(also on Ctrl-C), unless --keep.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx
import yaml

from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import TargetSettings
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import encode_labels, frame_series, single_request
from sandbox.history import HistorySpec, start_source
from sandbox.m3gateway import GatewayNamespace, M3Gateway
from sandbox.servers import free_port, start_prometheus

LIVE_SERIES = [
    (("__name__", "demo_live_requests_total"), ("instance", f"web-{i}:8080"), ("job", "web")) for i in range(3)
]


def say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


class LiveWriter(threading.Thread):
    """Keeps writing into the source, as live traffic keeps reaching M3 during a migration."""

    def __init__(self, source_url: str, first_ms: int, step_ms: int = 15_000) -> None:
        super().__init__(daemon=True, name="demo-live-writes")
        self.writer = RemoteWriteClient(TargetSettings(write_url=f"{source_url}/api/v1/write"))
        self.next_ms = first_ms
        self.step_ms = step_ms
        self.stop_event = threading.Event()
        self.samples = 0

    def _write_until(self, until_ms: int) -> None:
        for labels in LIVE_SERIES:
            series = TimeSeries()
            for t in range(self.next_ms, until_ms + 1, self.step_ms):
                series.samples.add(timestamp=t, value=float(t // self.step_ms % 100_000))
            if series.samples:
                framed = frame_series(encode_labels(labels), series.SerializeToString())
                self.writer.write(single_request(framed, len(series.samples)))
                self.samples += len(series.samples)
        self.next_ms += ((until_ms - self.next_ms) // self.step_ms + 1) * self.step_ms

    def run(self) -> None:
        while not self.stop_event.is_set():
            now_ms = int(time.time() * 1000)
            if now_ms >= self.next_ms:
                with suppress(Exception):  # the demo goes on if one live write fails
                    self._write_until(now_ms)
            self.stop_event.wait(self.step_ms / 1000)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        self.writer.close()


@dataclass(frozen=True)
class RunningPrefect:
    """A Prefect server started by :func:`prefect_server`: its UI address and process id."""

    url: str
    pid: int

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


@contextmanager
def prefect_server(workdir: Path) -> Iterator[RunningPrefect]:
    """A Prefect server with its UI, in its own PREFECT_HOME (workdir/prefect-home), stopped on exit.

    The UI asks the server's /ui-settings where the API is; without PREFECT_UI_API_URL that is
    127.0.0.1:4200 whatever --port says, and every page of the UI stays empty.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(workdir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
        "PREFECT_UI_URL": url,
        "PREFECT_API_URL": f"{url}/api",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    log = open(workdir / "prefect-server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            with suppress(httpx.HTTPError):
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not start; see {workdir / 'prefect-server.log'}")
            time.sleep(0.5)
        yield RunningPrefect(url, proc.pid)
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for_deployment(name: str, timeout: float = 180) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"deployment {name} did not appear") from None
                time.sleep(1)


def _wait_for_gate(parent_id, timeout: float = 1800):
    """The paused close subflow of the end-to-end run (or the parent's final state if it ended first)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            parent = client.read_flow_run(parent_id)
            if parent.state and parent.state.is_final():
                return None, parent
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["close"])))
            for run in runs:
                if run.state and run.state.is_paused():
                    return run, parent
            time.sleep(2)
    raise RuntimeError("the end-to-end run neither paused at the cutover gate nor ended in time")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--interval", type=int, default=15, help="seconds between samples")
    ap.add_argument("--yes", action="store_true", help="approve the cutover (stop replication) without asking")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--keep", action="store_true", help="leave everything running at the end")
    a = ap.parse_args(argv)

    # Ctrl-C, and a plain `kill`, tear everything down (the finally below), even where a shell started
    # the demo in the background with SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="m3migrate-demo-"))
    spec = HistorySpec(series=a.series, span_s=int(a.days * 86400), interval_s=a.interval)
    stack: list = []
    try:
        say(f"building the source: {spec.series} series x {a.days:g} d x {spec.interval_s} s of M3-style history")
        source = start_source(spec, workdir)
        stack.append(source.server.stop)
        live = LiveWriter(source.server.url, first_ms=source.stats.end_ms + 15_000)
        live.start()
        stack.append(live.stop)
        # the source answers as an M3 Coordinator does: [start, end) reads, its namespace and limit API
        retention = f"{math.ceil(a.days) + 2}d"
        m3 = M3Gateway({"default": GatewayNamespace(source.server.url, retention=retention)}).__enter__()
        stack.append(lambda: m3.__exit__(None, None, None))
        target = start_prometheus(workdir, name="target", remote_write_receiver=True)
        stack.append(target.stop)
        say(f"source (M3 gateway)      remote read   {m3.read_url}  (a Prometheus behind it; live writes continue)")
        say(f"target (Thanos stand-in) remote write  {target.url}/api/v1/write")
        with prefect_server(workdir) as server:
            ui = server.url
            os.environ["PREFECT_API_URL"] = server.api_url
            say(f"Prefect UI                             {ui}")
            return _run_wizard(a, workdir, source, m3, target, ui, stack)
    except KeyboardInterrupt:
        say("interrupted: tearing down")
        return 130
    finally:
        if not a.keep:
            for stop in reversed(stack):
                with suppress(Exception):
                    stop()
            if a.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            say("stopped everything the demo started")


def serve_wizard(
    workdir: Path, read_url: str, source_query_url: str, target_url: str, start_ms: int, end_ms: int, stack: list
) -> None:
    """Save the blocks demo-source / demo-target and run `m3migrate serve` (stopped through ``stack``).

    The spec defaults to migration "demo" over [start_ms, end_ms]; returns once the deployments exist.
    """
    from blocks import M3Source, ThanosTarget

    M3Source.register_type_and_schema()
    ThanosTarget.register_type_and_schema()
    M3Source(read_url=read_url, query_url=source_query_url).save("demo-source", overwrite=True)
    ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url).save("demo-target", overwrite=True)
    say("saved the blocks demo-source and demo-target")
    config = workdir / "migration.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "migration": {
                    "migration_id": "demo",
                    "start": iso_ms(start_ms),
                    "end": iso_ms(end_ms),
                    "merge_prometheus_prefix": False,
                }
            }
        )
    )
    env = {**os.environ, "M3MIGRATE_STATE_DIR": str(workdir / "state")}
    serve_log = open(workdir / "serve.log", "wb")  # noqa: SIM115 - closed with the stack
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--source-block",
            "demo-source",
            "--target-block",
            "demo-target",
            "--config",
            str(config),
        ],
        env=env,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.append(serve_log.close)
    stack.append(lambda: _stop_group(serve))
    for name in ("migrate/migrate", "replicate/replicate", "verify/verify", "close/close", "end-to-end/end-to-end"):
        _wait_for_deployment(name)


def _run_wizard(a, workdir: Path, source, m3: M3Gateway, target, ui: str, stack: list) -> int:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.flow_runs import resume_flow_run

    serve_wizard(workdir, m3.read_url, m3.url, target.url, source.stats.start_ms, source.stats.end_ms, stack)
    say("serving the deployments end-to-end, migrate, replicate, verify, close")
    run = cast("FlowRun", run_deployment("end-to-end/end-to-end", timeout=0))  # sync call: not a coroutine
    say(f"started end-to-end (validate -> migrate -> replicate -> close): {ui}/runs/flow-run/{run.id}")
    gate, parent = _wait_for_gate(run.id)
    if gate is None:
        say(f"the run ended before the cutover gate: {parent.state.name} ({parent.state.message})")
        return 1
    say("migrated and verified; open in the Prefect UI:")
    say(f"  the deployments (run any step from its form)   {ui}/deployments")
    say(f"  this run: its graph, subflows and logs         {ui}/runs/flow-run/{run.id}")
    say(f"  artifacts: progress, summary, verification     {ui}/artifacts")
    say(f"  the cutover form (Resume on the paused close)  {ui}/runs/flow-run/{gate.id}")
    say(f"the cutover form waits in the Prefect UI: {ui}/runs/flow-run/{gate.id}")
    say(f"or approve from the command line: m3migrate approve --flow-run {gate.id} --decision stop --approver you")
    if not a.yes:
        say("waiting for the decision (Ctrl-C tears everything down)")
    else:
        resume_flow_run(
            gate.id,
            run_input={"decision": "stop_replication", "approver": "demo --yes", "comment": "approved by the demo"},
        )
        say("approved: stop replication")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while (state := client.read_flow_run(run.id).state) is None or not state.is_final():
            time.sleep(2)
    if not state.is_completed():
        say(f"the end-to-end run ended {state.name}: {state.message}")
        return 1
    result = state.result()
    verification = result["close"].get("verification", {})
    say(
        f"migrated {result['migration']['series']} series, {result['migration']['samples']:,} samples; "
        f"replication watermark {result['replication'].get('watermark', '-')}"
    )
    say(
        "verification: "
        + ", ".join(
            f"{k}={verification[k]}"
            for k in ("ok", "series_checked", "samples_source", "samples_target", "missing", "extra", "mismatches")
            if k in verification
        )
    )
    say(f"cutover decision: {result['close']['decision']} by {result['close'].get('approver')}")
    return 0 if verification.get("ok") and result["close"]["decision"] != "undecided" else 1


if __name__ == "__main__":
    sys.exit(main())
