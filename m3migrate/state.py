"""A migration's durable state, kept in one directory: plan, generation, progress, journal, run lock.

The unit journal records each batch × window as started (before its first write request) and done
(only after the target acknowledged every request), so a rerun after a crash skips what is done and
knows which units the target may already hold in part. Beside it: the plan that makes reruns resume the
same work, the time front (watermark) that replication continues from, and a lock so two runs of one
migration never write at once. The orchestrator's own records (Prefect's result cache under
``results/``) only speed up reruns; the journal is the source of truth.

The migration's spec and the endpoints' settings without their secrets (``spec.json``) are saved by its
first ``migrate``, so the later steps need only the migration id (:func:`resolve_spec`).

Every file carries a version, checked on load: a file written by another m3migrate is refused naming the
file and its version instead of being misread. JSON files hold a ``version`` key; a journal starts with a
header line (``{"journal": "m3migrate-units", "version": 1}``). Files written before versioning (no
version) have the layout of version 1 and are read as such.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

from pydantic import ValidationError

from m3migrate.errors import ConfigError, M3MigrateError
from m3migrate.plan.batches import PLAN_VERSION, Plan, read_plan_object
from m3migrate.settings.endpoints import SourceSettings, TargetSettings, saved_settings
from m3migrate.settings.spec import MigrationSpec, check_migration_id, check_same_spec, format_validation_error

STATE_VERSION = 1  # progress, replication, boundary, meta and spec files; the journal's header
JOURNAL_HEADER = {"journal": "m3migrate-units", "version": STATE_VERSION}
SPEC_FILE = "spec.json"  # the migration's spec and non-secret endpoint settings, saved by its first migrate


class MigrationLocked(M3MigrateError):
    """Another run of the same migration holds its lock."""


class StateError(M3MigrateError):
    """A state file this m3migrate cannot read: an unknown version or a broken file. Never guessed at."""

    terminal = True


def check_version(path: Path, data: object, known: tuple[int, ...] = (STATE_VERSION,)) -> dict:
    """``data`` without its ``version`` key, if that version is known (absent: written before versioning,
    the layout of version 1); else a StateError naming the file and the version."""
    if not isinstance(data, dict):
        raise StateError(f"state file {path} does not hold a JSON object", hint="restore it, or --start-over")
    data = dict(data)
    version = data.pop("version", None)
    if version is not None and (isinstance(version, bool) or version not in known):
        raise StateError(
            f"state file {path} has version {version!r}, which this m3migrate does not know "
            f"(it reads version{'s' if len(known) > 1 else ''} {', '.join(map(str, known))})",
            hint="run the m3migrate version that wrote it, or pass --start-over to forget the saved state",
        )
    return data


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
    """With the state version first; a temporary file renamed over the old one, so a kill leaves either."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": STATE_VERSION, **data}, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


Stage = Literal["migrate", "replicate", "backfill"]

# File names per stage: the bulk migration keeps the historic names; a replication pass in progress
# keeps its own plan and progress until it completes and advances the replication watermark; a hybrid
# migration's block backfill (the history before its boundary) has its own plan beside the tail's.
_PLAN_FILES: dict[Stage, str] = {
    "migrate": "plan.json",
    "replicate": "replication-pass.plan.json",
    "backfill": "backfill.plan.json",
}
_PROGRESS_FILES: dict[Stage, str] = {
    "migrate": "progress.json",
    "replicate": "replication-pass.progress.json",
    "backfill": "backfill.progress.json",
}
BOUNDARY_FILE = "hybrid-boundary.json"  # a hybrid migration's boundary, fixed at its first run


class UnitJournal:
    """Append-only JSON lines of started/done batch × window units of one plan and generation.

    Lines are small single ``write`` calls on an O_APPEND file, so worker processes sharing the state
    directory can append concurrently; a torn last line (kill -9 mid-write, a short write on a full
    disk) is ignored on reading, and the next record is written on a new line after it. The first record
    of a new file is preceded by the version header (two processes creating the file at once may both
    write one: a header is accepted anywhere); a journal without one predates versioning (version 1).
    """

    def __init__(self, path: Path, windows: range | None = None) -> None:
        self.path = path
        self.windows = windows  # only these windows' units are held in memory (a segment's), else all
        self._lock = threading.Lock()
        self._started: set[str] = set()
        # each done unit's result as compact JSON text (a quarter of the dict's memory), decoded on request
        self._done: dict[str, str] = {}
        self.reload()

    @staticmethod
    def key(batch_id: str, window: int) -> str:
        return f"{batch_id}:{window}"

    @staticmethod
    def window_of(key: str) -> int:
        """The window index of a :meth:`key`."""
        return int(key.rpartition(":")[2])

    def reload(self) -> None:
        """Read what every process recorded so far."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as lines:  # line by line: never the whole file
            for line in lines:
                self._read_line(line)

    def _read_line(self, line: str) -> None:
        """One journal line: a record, the header, or a line torn by a crash (skipped)."""
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return  # a line torn by a crash (the next record starts on a line of its own)
        if isinstance(entry, dict) and "journal" in entry:
            check_version(self.path, entry)  # the header: an unknown version is never misread
            return
        if not isinstance(entry, dict) or not isinstance(entry.get("unit"), str):
            return
        if self.windows is not None and self.window_of(entry["unit"]) not in self.windows:
            return  # another segment's unit: memory stays bounded by the segment, not the migration
        if entry.get("event") == "start":
            self._started.add(entry["unit"])
        elif entry.get("event") == "done":
            self._done[entry["unit"]] = _compact(entry.get("result", {}))

    def done(self, key: str) -> dict | None:
        """The recorded result of a finished unit, or None."""
        text = self._done.get(key)
        return None if text is None else json.loads(text)

    def done_units(self) -> dict[str, dict]:
        """Every finished unit held (see ``windows``) and its recorded result."""
        return {key: json.loads(text) for key, text in self._done.items()}

    def started(self, key: str) -> bool:
        return key in self._started

    def mark_started(self, key: str) -> None:
        """Durable before the unit's first write: a crash after it makes the rerun reconcile."""
        self._append({"event": "start", "unit": key}, sync=True)
        self._started.add(key)

    def mark_done(self, key: str, result: dict) -> None:
        self._append({"event": "done", "unit": key, "result": result}, sync=False)
        self._done[key] = _compact(result)

    def _append(self, entry: dict, *, sync: bool) -> None:
        """One whole line per record, in one write when the OS allows, and never glued onto a torn line:
        a record appended onto a line torn by a crash (or a short write) would be lost on reload."""
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            except OSError as exc:
                raise JournalError(f"cannot open the unit journal {self.path}: {exc.strerror}") from None
            try:
                size = os.fstat(fd).st_size
                if not size:
                    line = (json.dumps(JOURNAL_HEADER, separators=(",", ":")) + "\n").encode() + line
                elif os.pread(fd, 1, size - 1) != b"\n":
                    line = b"\n" + line  # end the torn line first (at worst an empty line, skipped on reading)
                _write_all(fd, line, self.path)
                if sync:
                    os.fsync(fd)
            except OSError as exc:
                raise JournalError(
                    f"cannot append to the unit journal {self.path}: {exc.strerror}",
                    hint="free space on the state directory's disk (or fix its permissions) and rerun",
                ) from None
            finally:
                os.close(fd)


def _compact(result: object) -> str:
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False)


class JournalError(M3MigrateError):
    """The unit journal cannot be written (disk full, permissions): progress would not be durable."""


def _write_all(fd: int, data: bytes, path: Path) -> None:
    """os.write until every byte is written: a write may be short (disk nearly full, a signal)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise JournalError(
                f"the unit journal {path} accepted no more bytes ({len(view)} of {len(data)} left): disk full?",
                hint="free space on the state directory's disk and rerun",
            )
        view = view[written:]


@dataclass
class ReplicationState:
    """Where replication stands: everything up to watermark_ms is in the target."""

    watermark_ms: int | None = None
    passes: int = 0
    last_lag_seconds: float | None = None
    namespaces: list[list[str]] | None = None  # [name, storage policy or "unaggregated"] seen by the last pass
    history: list[dict] = field(default_factory=list)
    # the last pass's windows within `lag` of its end, with the samples it copied from each
    # ({"start_ms", "end_ms", "samples"}): the next pass counts them again to find late writes
    late_check: list[dict] = field(default_factory=list)


@dataclass
class SavedSpec:
    """What ``spec.json`` holds: the spec and the endpoints' settings as saved (secrets never are)."""

    path: Path
    migration_id: str
    spec: MigrationSpec
    source: dict
    target: dict


def _load_json(path: Path, parse: Callable[[str], object] = json.loads, encoding: str | None = None) -> object:
    """A state file's JSON (``parse``: how its text becomes objects); a StateError saying how to recover
    when it cannot be read."""
    try:
        return parse(path.read_text(encoding=encoding))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"state file {path} cannot be read: {exc}", hint="restore it, or --start-over") from None


def load_saved_spec(root: Path, migration_id: str) -> SavedSpec | None:
    """The migration's saved spec, or None when it has none (never ran migrate, or ran it before specs
    were saved). Reads only: creates no directory."""
    path = Path(root) / check_migration_id(migration_id) / SPEC_FILE
    if not path.exists():
        return None
    data = check_version(path, _load_json(path))
    try:
        spec = MigrationSpec.model_validate(data["spec"])
    except (KeyError, ValidationError) as exc:
        detail = format_validation_error(exc, "saved spec") if isinstance(exc, ValidationError) else str(exc)
        raise StateError(f"state file {path} holds no valid spec: {detail}") from None
    return SavedSpec(path, migration_id, spec, data.get("source") or {}, data.get("target") or {})


def resolve_spec(
    root: Path, migration_id: str | None, spec: MigrationSpec | None, source_url: str, target_url: str
) -> MigrationSpec:
    """The spec a step (replicate, verify, close) runs with, its ``migration_id`` set.

    Given only the id: the migration's saved spec. Given a spec too (or only a spec): the saved one with the
    fields the caller set checked against it (a ConfigError names each difference; per-run tuning may
    differ); without a saved spec (a migration older than saved specs), the given spec as it is.
    """
    if spec is None and not migration_id:
        raise ConfigError(
            "give the migration id (the --migration-id of its migrate run), or its whole spec",
            hint="set the migration_id parameter (CLI: --migration-id ID)",
        )
    if migration_id and spec is not None and spec.migration_id not in (None, migration_id):
        raise ConfigError(f"migration_id {migration_id!r} differs from the spec's {spec.migration_id!r}")
    mid = check_migration_id(migration_id or spec.resolved_id(source_url, target_url))  # type: ignore[union-attr]
    saved = load_saved_spec(root, mid)
    if saved is None:
        if spec is None:
            raise ConfigError(
                f"migration {mid!r} has no saved spec ({Path(root) / mid / SPEC_FILE} does not exist)",
                hint="run migrate first (its first run saves the spec), check --state-dir / M3MIGRATE_STATE_DIR "
                "and the id, or give the whole spec (--start, --end, --match ... as for migrate)",
            )
        resolved = spec
    elif spec is None:
        resolved = saved.spec
    else:
        given = spec.model_dump(mode="json", include=set(spec.model_fields_set))
        resolved = check_same_spec(saved.spec, given, f"migration {mid!r}'s saved spec ({saved.path})")
    return resolved.model_copy(update={"migration_id": mid})


class MigrationState:
    """Files under <state_dir>/<migration_id>/."""

    def __init__(self, root: Path, migration_id: str) -> None:
        self.migration_id = migration_id
        self.dir = Path(root) / migration_id
        self.dir.mkdir(parents=True, exist_ok=True)

    def plan_path(self, stage: Stage = "migrate") -> Path:
        return self.dir / _PLAN_FILES[stage]

    def journal(self, stage: Stage, plan_id: str, windows: range | None = None) -> UnitJournal:
        """The unit journal of a stage's plan in the current generation (holding ``windows``' units)."""
        return UnitJournal(self.dir / f"journal-{stage}-{plan_id}-g{self.generation}.jsonl", windows)

    @property
    def results_dir(self) -> Path:
        return self.dir / "results"

    @property
    def generation(self) -> int:
        meta = self._read("meta.json")
        return int(meta.get("generation", 0))

    def start_over(self) -> int:
        """Forget plans, progress, replication and completion records; returns the new generation."""
        generation = self.generation + 1
        for name in (*_PLAN_FILES.values(), *_PROGRESS_FILES.values(), "replication.json", BOUNDARY_FILE):
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.results_dir, ignore_errors=True)
        for journal in self.dir.glob("journal-*.jsonl"):
            journal.unlink()
        _write_json_atomic(self.dir / "meta.json", {"generation": generation})
        return generation

    def load_plan(self, stage: Stage = "migrate") -> Plan | None:
        path = self.plan_path(stage)
        if not path.exists():
            return None
        # batch by batch: a plan of 10^6 series is never held as one tree of Python objects
        data = _load_json(path, read_plan_object, encoding="utf-8")  # Plan.save writes UTF-8
        check_version(path, data, known=tuple(range(1, PLAN_VERSION + 1)))
        return Plan.from_json(cast(dict, data))  # an object (check_version says so), with its version

    def save_plan(self, plan: Plan, stage: Stage = "migrate") -> None:
        plan.save(self.plan_path(stage))

    def clear_stage(self, stage: Stage) -> None:
        """Drop a finished stage's plan, progress and journal (a completed replication pass)."""
        for journal in self.dir.glob(f"journal-{stage}-*.jsonl"):
            journal.unlink()
        self.plan_path(stage).unlink(missing_ok=True)
        (self.dir / _PROGRESS_FILES[stage]).unlink(missing_ok=True)

    def load_progress(self, stage: Stage = "migrate") -> Progress:
        data = self._read(_PROGRESS_FILES[stage])
        return Progress(**data) if data else Progress()

    def save_progress(self, progress: Progress, stage: Stage = "migrate") -> None:
        progress.updated_at = time.time()
        _write_json_atomic(self.dir / _PROGRESS_FILES[stage], asdict(progress))

    def load_boundary(self) -> int | None:
        """A hybrid migration's saved boundary (None before its first run)."""
        value = self._read(BOUNDARY_FILE).get("boundary_ms")
        return int(value) if value is not None else None

    def save_boundary(self, boundary_ms: int) -> None:
        _write_json_atomic(self.dir / BOUNDARY_FILE, {"boundary_ms": boundary_ms, "saved_at": time.time()})

    def load_replication(self) -> ReplicationState:
        data = self._read("replication.json")
        return ReplicationState(**data) if data else ReplicationState()

    def save_replication(self, replication: ReplicationState) -> None:
        _write_json_atomic(self.dir / "replication.json", asdict(replication))

    def _read(self, name: str) -> dict:
        """A JSON state file's content without its version ({} when absent); an unknown version raises."""
        path = self.dir / name
        if not path.exists():
            return {}
        return check_version(path, _load_json(path))

    def save_spec(
        self, spec: MigrationSpec, source: SourceSettings, target: TargetSettings, *, replace: bool = False
    ) -> bool:
        """Save the spec and the endpoints' settings without secrets, so later steps need only the id.

        Written at the migration's first run and kept: once a plan exists, the saved spec is the one it was
        planned with (``replace``: start over, a new plan follows). Returns whether it was written.
        """
        path = self.dir / SPEC_FILE
        planned = any(self.plan_path(stage).exists() for stage in _PLAN_FILES)
        if path.exists() and planned and not replace:
            return False
        _write_json_atomic(
            path,
            {
                "migration_id": self.migration_id,
                "spec": spec.model_dump(mode="json"),
                "source": saved_settings(source),
                "target": saved_settings(target),
                "saved_at": time.time(),
            },
        )
        return True

    @contextmanager
    def lock(self, wait_seconds: float = 0.0) -> Iterator[None]:
        """Exclusive: a second run (migrate or replicate) waits up to wait_seconds, then fails fast
        instead of writing the same series. The OS frees the lock when the holder dies, even by kill -9."""
        path = self.dir / "run.lock"
        deadline = time.monotonic() + wait_seconds
        with open(path, "a+") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() < deadline:
                        time.sleep(0.5)
                        continue
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
