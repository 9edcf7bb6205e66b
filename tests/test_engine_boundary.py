"""The engine stays free of Prefect: fast to import and test, reusable outside the flows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ENGINE = [
    "codec",
    "config",
    "errors",
    "http",
    "m3admin",
    "migration",
    "plan",
    "promql",
    "relabel",
    "remote_read",
    "remote_write",
    "replication",
    "selectors",
    "spec",
    "state",
    "timefmt",
    "transfer",
    "validate",
    "verify",
]


def test_engine_modules_do_not_import_prefect():
    code = (
        "import sys\n"
        + "".join(f"import m3migrate.{name}\n" for name in ENGINE)
        + "leaked = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        + "print(','.join(leaked))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"engine modules pulled in Prefect: {done.stdout.strip()[:300]}"
