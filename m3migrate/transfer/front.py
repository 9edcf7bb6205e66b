"""The time front: batch × window units in parallel, in an order every receiver accepts.

Thanos Receive (and Prometheus) accept a sample only within ~1 h of the newest one they hold, unless an
out-of-order window is set, so every batch of window k is written before any sample newer than window
k + depth. One batch's windows are written strictly in order (a series is never written by two requests
at once: Prometheus 2.42 may acknowledge such a race and drop samples), but the next window of a batch is
read while the previous one is still being written, so neither server idles.

Each unit is recorded in the migration's :class:`~m3migrate.state.UnitJournal`: started before its first
write, done after the target acknowledged everything. A rerun skips done units and reconciles started
ones, at the granularity of one batch × window, whatever the orchestrator does around it.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from m3migrate.failpoints import failpoint
from m3migrate.plan.batches import Batch, Plan, Window
from m3migrate.report import TransferSummary
from m3migrate.state import UnitJournal
from m3migrate.transfer.unit import Transfer, TransferResult

log = logging.getLogger("m3migrate.transfer.front")

PER_BATCH_IN_FLIGHT = 2  # one unit writing + the next window of the same batch reading ahead
READ_AHEAD_WINDOWS = 1  # reads may run this many windows past the depth; only writes are held to it
SEGMENTS_PER_RUN = 8  # orchestrator tasks per run on one process: resume points and visible progress
SKIPPED_EXAMPLES = 20  # series the summary names when some could not be migrated


_NAMED = ("new_series", "non_utf8_series", "skipped_series")  # lists of names, not figures
UNIT_FIELDS = (
    "series",
    "samples",
    "requests",
    "bytes_read",
    "bytes_written",
    "read_retries",
    "write_retries",
    "splits",
    "reconciled_series",
)


@dataclass
class FrontTotals:
    """What a front moved (and what earlier runs had already moved, from the journal)."""

    series: int = 0
    samples: int = 0
    requests: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    read_retries: int = 0
    write_retries: int = 0
    splits: int = 0
    reconciled_series: int = 0
    units: int = 0
    units_skipped: int = 0  # done by an earlier run (journal)
    samples_moved_now: int = 0
    new_series: list[str] = field(default_factory=list)  # ids of series found after discovery (distinct)
    non_utf8_series: list[str] = field(default_factory=list)  # written with label bytes not UTF-8 (distinct)
    skipped_series: list[str] = field(default_factory=list)  # "labels: reason" of series not migrated (distinct)

    def add(self, result: dict, *, skipped: bool) -> None:
        """Count one unit's TransferResult (as a dict: journal entries are dicts too)."""
        for name in UNIT_FIELDS:
            setattr(self, name, getattr(self, name) + int(result.get(name, 0)))
        self._add_new(result.get("new_series"))
        self._add_named(result)
        self.units += 1
        if skipped:
            self.units_skipped += 1
        else:
            self.samples_moved_now += int(result.get("samples", 0))

    @classmethod
    def of(cls, value: FrontTotals | Mapping[str, Any]) -> FrontTotals:
        """A segment's totals; a mapping is a segment result cached by an earlier version (a dict)."""
        if isinstance(value, FrontTotals):
            return value
        return cls(**{f.name: value[f.name] for f in fields(cls) if f.name in value})

    def merge(self, other: FrontTotals | Mapping[str, Any], *, cached: bool = False) -> None:
        """Add another segment's totals; ``cached``: an earlier run did its work, none moved now."""
        other = FrontTotals.of(other)
        for f in fields(self):
            if f.name not in _NAMED and not (cached and f.name == "samples_moved_now"):
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self._add_new(other.new_series)
        self._add_named(asdict(other))

    def _add_named(self, result: dict) -> None:
        """Series named in every window's result (label bytes not UTF-8, set aside): each counted once."""
        for name in ("non_utf8_series", "skipped_series"):
            if result.get(name):
                setattr(self, name, sorted({*getattr(self, name), *result[name]}))

    def _add_new(self, ids: list[str] | None) -> None:
        """A series new since discovery is in every window's result: count it once."""
        if ids:
            self.new_series = sorted({*self.new_series, *ids})

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self, *, windows: int, batches: int, tasks: int, tasks_cached: int, seconds: float) -> TransferSummary:
        """A stage run's figures: these totals, the run's shape and its speed."""
        return TransferSummary(
            **{f: getattr(self, f) for f in UNIT_FIELDS},
            windows=windows,
            batches=batches,
            tasks=tasks,
            tasks_cached=tasks_cached,
            units=self.units,
            units_skipped=self.units_skipped,
            samples_moved_now=self.samples_moved_now,
            new_series_after_discovery=len(self.new_series),
            non_utf8_series=len(self.non_utf8_series),
            skipped_series=len(self.skipped_series),
            skipped_series_examples=self.skipped_series[:SKIPPED_EXAMPLES],
            seconds=round(seconds, 3),
            samples_per_second=round(self.samples_moved_now / seconds) if seconds else 0,
        )


@dataclass(frozen=True)
class WindowDone:
    """Every batch of this front has window ``index`` in the target."""

    index: int
    start_ms: int
    end_ms: int
    samples: int
    series: int


@dataclass(frozen=True)
class Segment:
    """One orchestrator task: a group of the plan's batches over a contiguous run of windows."""

    first_window: int
    last_window: int  # inclusive
    group: int = 0
    groups: int = 1

    def batches(self, plan: Plan) -> list[Batch]:
        return plan.batches[self.group :: self.groups]

    def windows(self, plan: Plan) -> list[Window]:
        return plan.windows[self.first_window : self.last_window + 1]

    @property
    def label(self) -> str:
        group = f", batch group {self.group + 1}/{self.groups}" if self.groups > 1 else ""
        return f"windows {self.first_window}-{self.last_window}{group}"


def plan_segments(windows: int, depth: int, groups: int = 1) -> list[list[Segment]]:
    """Segments in run order; the segments of one inner list run at once (one per batch group).

    On one process the front spans whole segments, so a few long segments suffice. Groups on separate
    workers only meet at segment ends, so a segment may not be longer than the front's depth: then no
    group is ever more than ``depth`` windows ahead of another.
    """
    size = depth if groups > 1 else max(depth, -(-windows // SEGMENTS_PER_RUN))
    out: list[list[Segment]] = []
    for first in range(0, windows, size):
        last = min(first + size, windows) - 1
        out.append([Segment(first, last, g, groups) for g in range(groups)])
    return out


class _Aborted(Exception):
    """An earlier window of the same batch failed: this unit does not write."""


@dataclass
class _Unit:
    batch: int
    window: int
    previous_written: threading.Event | None
    written: threading.Event = field(default_factory=threading.Event)


class Front:
    """Runs ``batches`` × ``windows`` through a :class:`Transfer` along the time front."""

    def __init__(
        self,
        transfer: Transfer,
        batches: Sequence[Batch],
        windows: Sequence[Window],
        journal: UnitJournal,
        *,
        depth: int,
        concurrency: int,
        on_window: Callable[[WindowDone, FrontTotals], None] | None = None,
    ) -> None:
        if depth < 1 or concurrency < 1:
            raise ValueError("depth and concurrency must be at least 1")
        self.transfer = transfer
        self.batches = list(batches)
        self.windows = list(windows)
        self.journal = journal
        self.depth = depth
        self.concurrency = concurrency
        self.on_window = on_window
        self._failed = threading.Event()
        self._front = threading.Condition()
        self._low = 0  # lowest window some batch has not finished: writes stay below _low + depth

    def run(self) -> FrontTotals:
        """Transfer every unit not yet done; raises the first failure after in-flight units settle."""
        totals = FrontTotals()
        nw = len(self.windows)
        remaining = [0] * nw
        window_samples = [0] * nw
        window_series = [0] * nw
        pending: list[list[int]] = []  # per batch: window positions still to do, in order
        for batch in self.batches:
            todo = []
            for w, window in enumerate(self.windows):
                done = self.journal.done(UnitJournal.key(batch.id, window.index))
                if done is None:
                    todo.append(w)
                    remaining[w] += 1
                else:
                    totals.add(done, skipped=True)
                    window_samples[w] += int(done.get("samples", 0))
                    window_series[w] += int(done.get("series", 0))
            pending.append(todo[::-1])  # pop() takes the earliest
        low = 0

        def advance() -> None:
            nonlocal low
            while low < nw and remaining[low] == 0:
                if self.on_window is not None:
                    w = self.windows[low]
                    done = WindowDone(w.index, w.start_ms, w.end_ms, window_samples[low], window_series[low])
                    self.on_window(done, totals)
                low += 1
            with self._front:
                self._low = low
                self._front.notify_all()

        advance()
        ready = [(todo[-1], b) for b, todo in enumerate(pending) if todo]
        heapq.heapify(ready)
        in_heap = {b for _, b in ready}
        per_batch = [0] * len(self.batches)
        last_written: list[threading.Event | None] = [None] * len(self.batches)
        inflight: dict[Future, _Unit] = {}
        errors: list[BaseException] = []
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="m3migrate-front") as pool:
            while True:
                reach = low + self.depth + READ_AHEAD_WINDOWS
                while not errors and ready and len(inflight) < self.concurrency and ready[0][0] < reach:
                    w, b = heapq.heappop(ready)
                    in_heap.discard(b)
                    pending[b].pop()
                    unit = _Unit(b, w, last_written[b])
                    last_written[b] = unit.written
                    per_batch[b] += 1
                    inflight[pool.submit(self._run_unit, unit)] = unit
                    if pending[b] and per_batch[b] < PER_BATCH_IN_FLIGHT:
                        heapq.heappush(ready, (pending[b][-1], b))
                        in_heap.add(b)
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in finished:
                    unit = inflight.pop(future)
                    per_batch[unit.batch] -= 1
                    if pending[unit.batch] and unit.batch not in in_heap:
                        heapq.heappush(ready, (pending[unit.batch][-1], unit.batch))
                        in_heap.add(unit.batch)
                    try:
                        result = future.result()
                    except _Aborted:
                        continue
                    except BaseException as exc:
                        errors.append(exc)
                        continue
                    totals.add(result.as_dict(), skipped=False)
                    remaining[unit.window] -= 1
                    window_samples[unit.window] += result.samples
                    window_series[unit.window] += result.series
                advance()
        if errors:
            raise errors[0]
        return totals

    def _run_unit(self, unit: _Unit) -> TransferResult:
        batch, window = self.batches[unit.batch], self.windows[unit.window]
        try:
            if self._failed.is_set():
                raise _Aborted
            packed, result = self.transfer.fetch(batch, window)
            failpoint("unit.read")
            if unit.previous_written is not None:
                unit.previous_written.wait()
            with self._front:  # a unit read ahead writes only once the front has reached its window
                self._front.wait_for(lambda: unit.window < self._low + self.depth or self._failed.is_set())
            if self._failed.is_set():
                raise _Aborted
            key = UnitJournal.key(batch.id, window.index)
            resumed = self.journal.started(key)
            if not resumed:
                self.journal.mark_started(key)
            self.transfer.store(packed, result, resumed=resumed)
            unit.written.set()  # acknowledged: the batch's next window may go while this one is journaled
            failpoint("unit.done")
            self.journal.mark_done(key, result.as_dict())
            return result
        except _Aborted:
            raise
        except BaseException:
            with self._front:
                self._failed.set()
                self._front.notify_all()
            raise
        finally:
            unit.written.set()
