"""The README's first command, non-interactively: a whole verified migration, nothing left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).parents[2]


def _processes_mentioning(text: str) -> list[str]:
    """Processes whose command line or environment names the text (the Prefect server's PREFECT_HOME does)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline or text in environ:
            found.append(f"{pid}: {cmdline[:200]}")
    return found


def _demo(workdir: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    """A small demo's command line and environment (it starts its own Prefect server with the UI)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "sandbox.demo", *extra, "--series", "60", "--days", "0.25",
           "--interval", "60", "--workdir", str(workdir)]  # fmt: skip
    return cmd, env


@pytest.mark.servers
def test_demo_with_yes_ends_verified_and_leaves_no_process(tmp_path):
    workdir = tmp_path / "demo"
    cmd, env = _demo(workdir, "--yes")
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        cwd=ROOT,
    )
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "Prefect UI" in out and "the cutover form waits in the Prefect UI" in out
    assert "verification: ok=True" in out and "missing=0, extra=0, mismatches=0" in out
    assert "cutover decision: stop_replication" in out
    migrated = int(re.search(r"migrated \d+ series, ([\d,]+) samples", out).group(1).replace(",", ""))
    verified = int(re.search(r"samples_source=(\d+)", out).group(1))
    assert verified > migrated, "the close step verifies what replication copied from the live writes too"
    assert _processes_mentioning(str(workdir)) == []


@pytest.mark.servers
def test_demo_interrupted_at_the_gate_tears_everything_down(tmp_path):
    """Without --yes the demo waits at the cutover form; SIGTERM, handled like Ctrl-C, stops all it started."""
    import signal
    import time

    workdir = tmp_path / "demo"
    cmd, env = _demo(workdir)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 600
    try:
        for line in proc.stdout:
            lines.append(line)
            if "waiting for the decision" in line or time.monotonic() > deadline:
                break
        assert any("waiting for the decision" in line for line in lines), "".join(lines)[-3000:]
        printed = "".join(lines)
        ui = re.search(r"Prefect UI\s+(http://\S+)", printed).group(1)
        # the UI calls the API of the server it came from (not the default :4200), and the pages to open
        # are printed: deployments, the run, artifacts, the cutover form
        assert httpx.get(f"{ui}/ui-settings", timeout=10).json()["api_url"] == f"{ui}/api"
        for page in ("/deployments", "/artifacts"):
            assert f"{ui}{page}\n" in printed, printed[-2000:]
        assert len(set(re.findall(rf"{re.escape(ui)}/runs/flow-run/[0-9a-f-]{{36}}", printed))) == 2
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "stopped everything the demo started" in rest
    assert _processes_mentioning(str(workdir)) == []
