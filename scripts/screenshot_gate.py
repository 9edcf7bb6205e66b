"""Screenshot of the cutover form on a paused close run, in the Prefect UI.

Usage: .venv/bin/python scripts/screenshot_gate.py [OUT.png] [--keep-page PAGE.png]

The script starts `prefect server start` with the UI on a free port and a temporary PREFECT_HOME,
plus a small source and target (sandbox Prometheus servers). It migrates, applies the replicate
deployment and runs `close` in a thread until the run pauses. Then headless Chromium (Debian's
`chromium` package, `apt-get install chromium`) opens the flow run page. The script clicks the
run's menu and "Resume" through the DevTools protocol, waits for the "Resume Flow Run" dialog and
takes the screenshot. Finally it resumes the run with keep_replicating and stops everything.
The exit code is 0 when the PNG exists and the dialog showed the form.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sandbox.browser import FIND, Chromium  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _wait_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


async def _open_resume_dialog(browser: Chromium, url: str, out: Path, page_png: Path | None) -> str:
    await browser.call("Page.enable")
    await browser.call("Runtime.enable")
    await browser.call("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
    await browser.call("Page.navigate", url=url)
    await browser.wait_js("document.body && document.body.innerText.includes('Paused')", timeout=60)
    await asyncio.sleep(1.5)
    if page_png:
        await browser.screenshot(page_png)
    # The V1 UI has a Resume button in the run's header. The V2 UI has a Resume item in the run's
    # action menu, a Radix dropdown that opens on pointer events, hence real mouse events.
    resume = "e.innerText.trim() === 'Resume'"
    target = await browser.js(FIND.format(selector="'button'", predicate=resume))
    if target is None:
        menu = await browser.wait_js(FIND.format(selector="'button[aria-haspopup=\"menu\"]'", predicate="true"))
        await browser.click(*menu)
        target = await browser.wait_js(FIND.format(selector="'[role=\"menuitem\"]'", predicate=resume), timeout=10)
    await browser.click(*target)
    await browser.wait_js(
        "document.body.innerText.toLowerCase().includes('approver')"
        " && document.body.innerText.toLowerCase().includes('verification')",
        timeout=30,
    )
    await asyncio.sleep(1.0)
    await browser.screenshot(out)
    return await browser.js("document.body.innerText")


def main(argv: list[str]) -> int:
    default = Path(tempfile.gettempdir()) / "m3migrate-cutover-form.png"
    out = Path(argv[0]) if argv and not argv[0].startswith("--") else default
    page_png = Path(argv[argv.index("--keep-page") + 1]) if "--keep-page" in argv else None
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="m3migrate-screenshot-"))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_UI_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    }
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL")})
    prefect_bin = Path(sys.executable).with_name("prefect")
    server = subprocess.Popen(
        [str(prefect_bin), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(work / "prefect-server.log", "wb"),  # noqa: SIM115 - lives as long as the server
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    started: list[Any] = []
    browser: Chromium | None = None
    close_thread: threading.Thread | None = None
    run_id = None
    try:
        _wait_http(f"{api}/health", 180)

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.flow_runs import resume_flow_run

        from blocks import M3Source, ThanosTarget
        from flows.close import close
        from flows.migrate import migrate
        from flows.replicate import replicate
        from m3migrate.settings.spec import MigrationSpec
        from sandbox.history import HistorySpec, start_source
        from sandbox.servers import start_prometheus

        src = start_source(HistorySpec(series=60, span_s=2 * 3600, interval_s=60), work, tail_minutes=None)
        started.append(src)
        tgt = start_prometheus(work, name="target", remote_write_receiver=True)
        started.append(tgt)
        source = M3Source(read_url=f"{src.server.url}/api/v1/read", query_url=src.server.url)
        target = ThanosTarget(write_url=f"{tgt.url}/api/v1/write", query_url=tgt.url)
        end = src.stats.end_ms
        spec = MigrationSpec(migration_id="screenshot", start=_iso(end - 3_600_000 + 1), end=_iso(end))
        state_dir = str(work / "state")
        migrate(source, target, spec, state_dir=state_dir, skip_validation=True)
        replicate.to_deployment("replicate", interval=300, enforce_parameter_schema=False, paused=False).apply()

        def run_close() -> None:
            close(source, target, spec, state_dir=state_dir, poll_interval_seconds=1, approval_timeout_hours=1)

        close_thread = threading.Thread(target=run_close, daemon=True)
        close_thread.start()
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 180
            while run_id is None:
                runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["close"])))
                paused = [r for r in runs if r.state and r.state.is_paused()]
                if paused:
                    run_id = paused[0].id
                elif time.monotonic() > deadline or not close_thread.is_alive():
                    raise RuntimeError("close did not pause")
                else:
                    time.sleep(0.5)
        time.sleep(2)  # the form's schema is saved right after the pause
        browser = Chromium(work)

        async def shoot() -> str:
            await browser.connect()
            try:
                return await _open_resume_dialog(
                    browser, f"http://127.0.0.1:{port}/runs/flow-run/{run_id}", out, page_png
                )
            finally:
                await browser.ws.close()

        dialog_text = asyncio.run(shoot())
        ok = out.exists() and out.stat().st_size > 10_000 and "approver" in dialog_text
        print(f"screenshot: {out} ({out.stat().st_size if out.exists() else 0} bytes); form shown: {ok}")
        resume_flow_run(run_id, run_input={"decision": "keep_replicating", "approver": "screenshot"})
        close_thread.join(120)
        return 0 if ok else 1
    finally:
        if browser is not None:
            browser.stop()
        for thing in started:
            thing.stop()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
