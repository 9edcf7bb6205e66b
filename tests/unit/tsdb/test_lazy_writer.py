"""Reading a block's meta.json (the bucket client, on every CLI start) must not load the compiled
writer: numba's import alone costs ~0.2-0.4 s of CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[3]


def _modules_after(code: str) -> set[str]:
    probe = code + "\nimport sys\nprint(','.join(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.strip().split(","))


def test_meta_readers_do_not_load_numba() -> None:
    loaded = _modules_after("import m3migrate.clients.bucket\nfrom m3migrate.tsdb import BlockMeta, TsdbError")
    assert "numba" not in loaded
    assert "m3migrate.tsdb.block" not in loaded


def test_the_writer_loads_on_first_use() -> None:
    loaded = _modules_after("from m3migrate.tsdb import BlockWriter, encode_xor_chunks\nassert BlockWriter.__name__")
    assert {"m3migrate.tsdb.block", "m3migrate.tsdb.xor", "numba"} <= loaded
