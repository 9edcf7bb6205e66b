"""What a migrate or replicate run imports and builds before its first write (issue 18: fixed costs).

Each Prefect flow builds its parameters' JSON schema when it is made (~0.1 s with block parameters), so
a run builds only the flows it runs; the queries commands' PromQL parser and YAML load only for them.
Checked in a fresh interpreter, as the CLI starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _fresh(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cli_does_not_load_the_queries_commands_on_start():
    got = _fresh("import sys, json, cli.main\nprint(json.dumps(sorted(m for m in sys.modules if 'queries' in m)))")
    assert "m3migrate.checks.queries" not in got


def test_migrate_and_replicate_build_only_the_flows_they_run():
    code = (
        "import sys, json\n"
        "import flows.migrate, flows.replicate\n"
        "from prefect import Flow\n"
        "built = sorted({v.name for m in list(sys.modules.values()) if (getattr(m, '__name__', '') or '')"
        ".startswith('flows.') for v in vars(m).values() if isinstance(v, Flow)})\n"
        "print(json.dumps({'built': built, 'modules': sorted(m for m in sys.modules if m.startswith('flows.'))}))\n"
    )
    got = _fresh(code)
    assert got["built"] == ["migrate", "replicate"]  # validate, backfill-blocks, transfer-windows: on first use
    assert "flows.backfill" not in got["modules"]
    assert "flows.validate" not in got["modules"]


def test_the_dask_subflow_is_the_transfer_windows_flow():
    code = (
        "import json\nfrom flows.transfer import transfer_windows, transfer_windows_flow\n"
        "f = transfer_windows_flow()\n"
        "print(json.dumps([f.name, f.fn is transfer_windows, transfer_windows_flow() is f]))\n"
    )
    assert _fresh(code) == ["transfer-windows", True, True]


def test_startup_imports_run_without_the_cyclic_gc_and_turn_it_back_on():
    import gc

    import pytest

    from cli.options import startup_imports

    assert gc.isenabled()
    with pytest.raises(RuntimeError), startup_imports():
        assert not gc.isenabled()
        raise RuntimeError("an import failed")
    assert gc.isenabled()  # a test's CliRunner (the process is not the CLI's): nothing frozen either
    assert gc.get_freeze_count() == 0
