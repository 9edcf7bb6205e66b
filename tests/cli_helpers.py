"""Running the m3migrate CLI as a subprocess, the way a user does (shared by the CLI-level tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]

# migrate against endpoints that do not exist: for what must fail before any connection
OFFLINE_MIGRATE = [
    "migrate",
    "--source-read-url",
    "http://127.0.0.1:9/api/v1/read",
    "--target-write-url",
    "http://127.0.0.1:9/api/v1/write",
    "--start",
    "2026-01-01T00:00:00Z",
    "--end",
    "2026-01-02T00:00:00Z",
]


def cli_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", **extra}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(**(env or {})),
        timeout=timeout,
    )


def step_argv(step: str, source_url: str, target_url: str, state_dir: Path, *extra: str) -> list[str]:
    """The full command line of a step against a source and a target Prometheus (base URLs)."""
    return [
        sys.executable,
        "-m",
        "cli",
        step,
        "--source-read-url",
        f"{source_url}/api/v1/read",
        "--source-query-url",
        source_url,
        "--target-write-url",
        f"{target_url}/api/v1/write",
        "--target-query-url",
        target_url,
        "--state-dir",
        str(state_dir),
        *extra,
    ]
