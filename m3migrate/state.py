"""A migration's durable state, kept in one directory: plan, generation, progress, and a run lock.

Completion of each batch × window is recorded by the orchestrator (Prefect's task cache, stored under
``results/`` here) only after the target acknowledged it; this module keeps what the cache cannot:
the plan that makes reruns resume the same work, the time front (watermark) that replication continues
from, and a lock so two runs of one migration never write at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m3migrate.errors import M3MigrateError
from m3migrate.plan import Plan


class MigrationLocked(M3MigrateError):
    """Another run of the same migration holds its lock."""


@dataclass
class Progress:
    """The time front: every batch of every window up to front_window is in the target."""

    plan_id: str = ""
    generation: int = 0
    windows_total: int = 0
    windows_done: int = 0
    front_end_ms: int | None = None  # watermark: end of the last fully written window
    samples: int = 0
    series: int = 0
    updated_at: float = field(default_factory=time.time)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


class MigrationState:
    """Files under <state_dir>/<migration_id>/."""

    def __init__(self, root: Path, migration_id: str) -> None:
        self.migration_id = migration_id
        self.dir = Path(root) / migration_id
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def plan_path(self) -> Path:
        return self.dir / "plan.json"

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    @property
    def generation(self) -> int:
        meta = self._read("meta.json")
        return int(meta.get("generation", 0))

    def start_over(self) -> int:
        """Forget plan, progress and completion records; returns the new generation."""
        generation = self.generation + 1
        for name in ("plan.json", "progress.json"):
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.results_dir, ignore_errors=True)
        _write_json_atomic(self.dir / "meta.json", {"generation": generation})
        return generation

    def load_plan(self) -> Plan | None:
        return Plan.load(self.plan_path) if self.plan_path.exists() else None

    def save_plan(self, plan: Plan) -> None:
        plan.save(self.plan_path)

    def load_progress(self) -> Progress:
        data = self._read("progress.json")
        return Progress(**data) if data else Progress()

    def save_progress(self, progress: Progress) -> None:
        progress.updated_at = time.time()
        _write_json_atomic(self.dir / "progress.json", asdict(progress))

    def _read(self, name: str) -> dict:
        path = self.dir / name
        if not path.exists():
            return {}
        return json.loads(path.read_text())

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive, non-blocking: a second run fails fast instead of writing the same series."""
        path = self.dir / "run.lock"
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise MigrationLocked(
                    f"migration {self.migration_id!r} is already running ({holder})",
                    hint="wait for that run to finish, or cancel it; the lock frees itself when it exits",
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
