"""The engine stays free of Prefect: fast to import and test, reusable outside the flows."""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import m3migrate

# Every module of the engine package, found by walking it (a new module is covered without editing this
# list). The CLI (package cli/, above flows) only imports flows inside its commands, so importing it must
# not pull Prefect in either: `m3migrate --help` stays fast.
ENGINE = [m.name.removeprefix("m3migrate.") for m in pkgutil.walk_packages(m3migrate.__path__, "m3migrate.")]


def test_engine_modules_do_not_import_prefect():
    assert {"wire.codec", "transfer.front", "transfer.unit", "tsdb.block", "backfill.windows", "model"} <= set(ENGINE)
    code = (
        "import sys\n"
        + "".join(f"import m3migrate.{name}\n" for name in ENGINE)
        + "import cli.main\n"
        + "leaked = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        + "print(','.join(leaked))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"engine modules pulled in Prefect: {done.stdout.strip()[:300]}"


def test_engine_import_leaves_the_environment_alone():
    """A library that sets environment variables on import changes the programs that embed it; Prefect's
    telemetry switch belongs to the flows package, which every flow run imports."""
    code = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        + "".join(f"import m3migrate.{name}\n" for name in ENGINE)
        + "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "import flows\n"
        "print(json.dumps([changed, os.environ.get('PREFECT_SERVER_ANALYTICS_ENABLED')]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    changed, analytics = json.loads(done.stdout)
    assert changed == [], f"importing the engine changed {changed}"
    assert analytics == "false"
