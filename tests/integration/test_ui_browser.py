"""The Prefect UI as a data engineer uses it, in headless Chromium (Debian's `chromium`).

One sandbox for the module, started as `make demo` starts it (sandbox.demo): a source behind
the M3 gateway, a target, a Prefect server with its UI and `m3migrate serve`'s deployments. Each step
asserts what the page shows and writes a screenshot under the module's tmp dir for a person to look at.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandbox.browser import FIND, Chromium, chromium_binary, click_text, open_page, start_page, wait_text

pytestmark = [
    pytest.mark.servers,
    pytest.mark.prefect,
    pytest.mark.skipif(chromium_binary() is None, reason="needs chromium: apt-get install chromium"),
]

DEPLOYMENTS = ("end-to-end", "migrate", "replicate", "verify", "close")


@dataclass
class UI:
    url: str
    shots: Path
    browser: Chromium
    loop: asyncio.AbstractEventLoop
    source: tuple[str, str, int, int] = ("", "", 0, 0)  # the M3 gateway's base URL, the target's, the history's range
    workdir: Path = Path()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def shot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.run(self.browser.screenshot(path))
        assert path.stat().st_size > 10_000, f"{path} is blank"
        return path


@pytest.fixture(scope="module")
def ui(tmp_path_factory) -> Iterator[UI]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sandbox.demo import prefect_server, serve_wizard
    from sandbox.history import HistorySpec, start_source
    from sandbox.m3gateway import GatewayNamespace, M3Gateway
    from sandbox.servers import start_prometheus

    workdir = tmp_path_factory.mktemp("ui")
    shots = workdir / "screenshots"
    shots.mkdir()
    stack: list = []
    saved = os.environ.get("PREFECT_API_URL")
    loop = asyncio.new_event_loop()
    try:
        source = start_source(HistorySpec(series=60, span_s=6 * 3600, interval_s=60), workdir)
        stack.append(source.server.stop)
        m3 = M3Gateway({"default": GatewayNamespace(source.server.url, retention="3d")})
        m3.__enter__()
        stack.append(lambda: m3.__exit__(None, None, None))
        target = start_prometheus(workdir, name="target", remote_write_receiver=True)
        stack.append(target.stop)
        server_cm = prefect_server(workdir)
        server = server_cm.__enter__()
        stack.append(lambda: server_cm.__exit__(None, None, None))
        os.environ["PREFECT_API_URL"] = server.api_url  # for `m3migrate serve` and the flows it runs
        # and in this process, over the session's test harness (a settings context, which the env cannot beat)
        settings_cm = temporary_settings(updates={PREFECT_API_URL: server.api_url})
        settings_cm.__enter__()
        stack.append(lambda: settings_cm.__exit__(None, None, None))
        serve_wizard(workdir, m3.read_url, m3.url, target.url, source.stats.start_ms, source.stats.end_ms, stack)
        browser = Chromium(workdir)
        stack.append(browser.stop)
        loop.run_until_complete(start_page(browser))
        yield UI(
            server.url, shots, browser, loop, (m3.url, target.url, source.stats.start_ms, source.stats.end_ms), workdir
        )
    finally:
        for stop in reversed(stack):
            with suppress(Exception):
                stop()
        loop.close()
        if saved is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = saved


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _wait_final(flow_run_id, timeout: float = 180):
    with _client() as client:
        deadline = time.monotonic() + timeout
        while not (run := client.read_flow_run(flow_run_id)).state.is_final():
            assert time.monotonic() < deadline, f"run {flow_run_id} still {run.state.name}"
            time.sleep(1)
        return run


def test_the_ui_talks_to_its_own_server_and_lists_the_deployments(ui):
    import httpx

    settings = httpx.get(f"{ui.url}/ui-settings", timeout=10).json()
    assert settings["api_url"] == f"{ui.url}/api", "the UI must call the server it was served from"
    text = ui.run(open_page(ui.browser, f"{ui.url}/deployments", "Deployments", *DEPLOYMENTS))
    assert "Can't connect" not in text
    ui.shot("01-deployments")


def test_a_custom_run_of_migrate_from_its_form_uses_the_saved_blocks(ui):
    with _client() as client:
        deployment = client.read_deployment_by_name("migrate/migrate")
    b = ui.browser
    ui.run(open_page(b, f"{ui.url}/deployments/deployment/{deployment.id}/run", "Parameters", "Migration Id"))
    time.sleep(1.5)
    selected = ui.run(b.js("[...document.querySelectorAll('select')].map(s => s.options[s.selectedIndex]?.text || '')"))
    assert "demo-source" in selected and "demo-target" in selected, selected
    ui.shot("02-custom-run-form")
    # one spec field changed: the migration id (a fresh migration, so the run really copies)
    box = ui.run(
        b.wait_js(
            "(() => { const t = [...document.querySelectorAll('textarea')].find(e => e.value === 'demo');"
            " if (!t) return null; t.scrollIntoView({block: 'center'}); const r = t.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
    )
    ui.run(b.click(*box))
    ui.run(b.call("Input.dispatchKeyEvent", type="keyDown", key="a", code="KeyA", modifiers=2, commands=["selectAll"]))
    ui.run(b.call("Input.dispatchKeyEvent", type="keyUp", key="a", code="KeyA", modifiers=2))
    ui.run(b.call("Input.insertText", text="from-the-form"))
    time.sleep(0.5)
    ui.shot("03-custom-run-form-changed")
    ui.run(click_text(b, "Submit"))
    # the UI goes back to the deployment's page, where the new run shows
    ui.run(wait_text(b, "Runs", "Parameters", "Configuration"))
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client() as client:
        deadline = time.monotonic() + 60
        while not (
            runs := client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
        ):
            assert time.monotonic() < deadline, "the form's Submit started no run"
            time.sleep(0.5)
    assert len(runs) == 1
    flow_run_id = runs[0].id
    run = _wait_final(flow_run_id)
    assert run.state.is_completed(), run.state
    assert run.parameters["spec"]["migration_id"] == "from-the-form"
    assert set(run.parameters["source"]["$ref"]) == {"block_document_id"}
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    assert [a.data for a in artifacts if a.type == "progress"] == [100.0], [(a.type, a.key) for a in artifacts]
    ui.run(open_page(b, f"{ui.url}/runs/flow-run/{flow_run_id}", "Completed"))
    ui.shot("04-migrate-run-completed")
    # its progress artifact, as the run page's Artifacts tab shows it
    tab = ui.run(
        b.wait_js(
            "(() => { const t = [...document.querySelectorAll('[role=tab], button, li, a')]"
            ".filter(e => (e.innerText || '').trim().startsWith('Artifacts')); if (!t.length) return null;"
            " t[t.length - 1].click(); return t[t.length - 1].innerText; })()"
        )
    )
    assert tab
    ui.run(wait_text(b, "from-the-form-migrate-progress", "from-the-form-summary"))
    ui.shot("05-migrate-artifacts")


WINDOWS = r"(\d+)/(\d+) windows"


def _shown_percent(ui: UI, key: str) -> tuple[float, str]:
    """Reload the artifact's page and read the progress it shows (its description in the DOM: the key's
    page shows the description, "12/79 windows · ...", not the bare number), with the page text."""
    text = ui.run(open_page(ui.browser, f"{ui.url}/artifacts/key/{key}", key, "windows", timeout=15))
    found = re.search(WINDOWS, text)
    assert found, text[-1500:]
    return 100.0 * int(found.group(1)) / int(found.group(2)), text


def test_a_running_migrations_progress_artifact_advances_in_the_ui(ui, prometheus_target):
    """A migration slowed by latency in front of its source (every read waits 0.6 s, ~80 windows): its
    artifact page, reloaded, shows a larger percentage the second time, while the run is still going.
    Into a target of its own: the sandbox's target already holds this range (the form's run), and a
    receiver refuses history more than ~1 h behind its head."""
    from blocks import M3Source, ThanosTarget
    from flows.migrate import migrate
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.timefmt import iso_ms
    from sandbox.faultproxy import FaultProxy

    m3_url, _, start, end = ui.source
    target_url = prometheus_target().url
    key = "watched-migrate-progress"
    outcome: dict = {}
    with FaultProxy(m3_url, latency_seconds=0.6) as slow:
        source = M3Source(read_url=f"{slow.url}/api/v1/prom/remote/read", query_url=slow.url)
        target = ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url)
        spec = MigrationSpec(migration_id="watched", start=iso_ms(start), end=iso_ms(end), window_minutes=5)

        def run() -> None:
            try:
                outcome["summary"] = migrate(
                    source, target, spec, state_dir=str(ui.workdir / "watched"), skip_validation=True
                )
            except BaseException as exc:
                outcome["error"] = exc

        # the flow talks to the UI's server: this thread's Prefect settings go with it
        runner = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        runner.start()
        try:
            readings: list[tuple[float, str]] = []
            seen = ""
            deadline = time.monotonic() + 120
            while runner.is_alive() and time.monotonic() < deadline:
                try:
                    shown = _shown_percent(ui, key)
                except TimeoutError as exc:  # not created yet
                    seen = str(exc)
                    continue
                if shown[0] == 100:
                    break
                if shown[0] > 0 and (not readings or shown[0] > readings[-1][0]):
                    readings.append(shown)
                    ui.shot(f"10-progress-{len(readings)}")
                    if len(readings) == 2:
                        break
                time.sleep(1)
            still_running = runner.is_alive()
        finally:
            runner.join(timeout=180)
    assert "error" not in outcome, outcome.get("error")
    assert len(readings) == 2 and still_running, ([r[0] for r in readings], seen[-1500:])
    first, second = readings
    assert 0 < first[0] < second[0] < 100
    windows = outcome["summary"]["windows"]
    assert f"/{windows} windows" in second[1] and "samples/s" in second[1] and "ETA" in second[1], second[1][-1500:]
    final, text = _shown_percent(ui, key)
    assert final == 100 and f"{windows}/{windows} windows" in text
    ui.shot("11-progress-done")


def test_the_paused_close_run_form_submits_a_decision_and_pauses_replication(ui):
    from prefect.deployments import run_deployment

    with _client() as client:
        replicate = client.read_deployment_by_name("replicate/replicate")
        client.resume_deployment(replicate.id)  # as after a finished migration: replication on schedule
    # closes the migration the form's run made (the test before): its id is all close needs (the saved spec)
    run = run_deployment(
        "close/close", parameters={"migration_id": "from-the-form", "poll_interval_seconds": 1}, timeout=0
    )
    with _client() as client:
        deadline = time.monotonic() + 180
        while not (state := client.read_flow_run(run.id).state).is_paused():
            assert not state.is_final() and time.monotonic() < deadline, state
            time.sleep(1)
    time.sleep(2)  # the form's schema is saved right after the pause
    b = ui.browser
    ui.run(open_page(b, f"{ui.url}/runs/flow-run/{run.id}", "Paused"))
    ui.shot("06-close-paused")
    resume = "e.innerText.trim() === 'Resume'"
    where = ui.run(b.js(FIND.format(selector="'button'", predicate=resume)))
    if where is None:
        ui.run(b.click(*ui.run(b.wait_js(FIND.format(selector="'button[aria-haspopup=\"menu\"]'", predicate="true")))))
        where = ui.run(b.wait_js(FIND.format(selector="'[role=\"menuitem\"]'", predicate=resume), timeout=10))
    ui.run(b.click(*where))
    text = ui.run(wait_text(b, "Approver", "Decision"))
    ui.shot("07-cutover-form")
    assert "keep_replicating" in text or "stop_replication" in text, text[-2000:]
    # choose stop_replication, name the approver, submit
    ui.run(
        b.js(
            "(() => { const s = [...document.querySelectorAll('select')].find(s => [...s.options]"
            ".some(o => o.value.includes('stop_replication'))); if (!s) return false;"
            " const o = [...s.options].find(o => o.value.includes('stop_replication')); s.value = o.value;"
            " s.dispatchEvent(new Event('change', {bubbles: true})); return true; })()"
        )
    )
    approver = ui.run(
        b.wait_js(
            "(() => { const labels = [...document.querySelectorAll('[role=dialog] *')]"
            ".filter(e => e.children.length === 0 && e.innerText && e.innerText.trim() === 'Approver');"
            " for (const l of labels) { let n = l; for (let i = 0; i < 6 && n; i++, n = n.parentElement) {"
            " const f = n.querySelector('textarea, input[type=text], input:not([type])'); if (f) {"
            " f.scrollIntoView({block: 'center'}); const r = f.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; } } } return null; })()",
            timeout=10,
        )
    )
    ui.run(b.click(*approver))
    ui.run(b.call("Input.insertText", text="browser-test"))
    time.sleep(0.5)
    ui.shot("08-cutover-form-filled")
    dialog_submit = ui.run(
        b.wait_js(FIND.format(selector="'[role=dialog] button'", predicate="e.innerText.trim() === 'Submit'"))
    )
    ui.run(b.click(*dialog_submit))
    done = _wait_final(run.id)
    assert done.state.is_completed(), done.state
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client() as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    recorded = " ".join(str(a.data) for a in artifacts if a.type == "markdown")
    assert "stop_replication" in recorded and "browser-test" in recorded, recorded[-1500:]
    with _client() as client:
        assert client.read_deployment_by_name("replicate/replicate").paused is True
    ui.run(open_page(ui.browser, f"{ui.url}/deployments/deployment/{replicate.id}", "replicate", "Paused"))
    ui.shot("09-replicate-paused")
