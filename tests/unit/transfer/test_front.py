"""The time front's ordering guarantees, and resume from its journal.

The scheduling is checked with a recording stand-in for Transfer (no server can show interleavings on
demand); tests/integration/test_migrate_flow.py runs the same Front against real servers.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from m3migrate.plan.batches import Batch, Plan, make_windows
from m3migrate.state import UnitJournal
from m3migrate.transfer.front import Front, Segment, plan_segments
from m3migrate.transfer.unit import TransferResult
from m3migrate.wire.codec import Matcher


class Boom(Exception):
    pass


class RecordingTransfer:
    """Stands in for Transfer: sleeps a little in each half and records when each half ran."""

    def __init__(
        self, fail_at: set[tuple[str, int]] | None = None, seed: int = 1, slow: dict[str, float] | None = None
    ) -> None:
        self.fail_at = fail_at or set()
        self.slow = slow or {}  # batch id -> extra seconds per write
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.fetches: list[tuple[str, int, float, float]] = []
        self.stores: list[tuple[str, int, float, float, bool]] = []

    def _pause(self) -> None:
        with self.lock:
            delay = self.rng.uniform(0.0005, 0.004)
        time.sleep(delay)

    def fetch(self, batch, window):
        t0 = time.monotonic()
        self._pause()
        with self.lock:
            self.fetches.append((batch.id, window.index, t0, time.monotonic()))
        return ["part"], TransferResult(batch_id=batch.id, window=window.index)

    def store(self, packed, result, *, resumed=False):
        t0 = time.monotonic()
        self._pause()
        time.sleep(self.slow.get(result.batch_id, 0.0))
        if (result.batch_id, result.window) in self.fail_at:
            raise Boom(f"{result.batch_id} w{result.window}")
        result.samples, result.series = 10, 1
        with self.lock:
            self.stores.append((result.batch_id, result.window, t0, time.monotonic(), resumed))


def _plan(batches: int, windows: int) -> Plan:
    made = [Batch(id=f"b{i}", matchers=(Matcher("__name__", "=", f"m{i}"),), series=()) for i in range(batches)]
    return Plan(migration_id="t", start_ms=0, end_ms=windows * 1000 - 1, window_ms=1000, batches=made)


def _front(transfer, plan, journal, *, depth=2, concurrency=4, on_window=None) -> Front:
    return Front(
        transfer, plan.batches, plan.windows, journal, depth=depth, concurrency=concurrency, on_window=on_window
    )


@pytest.mark.parametrize("slow", [{}, {"b0": 0.02}, {"b3": 0.01, "b4": 0.01}])
def test_units_are_written_once_in_window_order_per_batch_and_within_the_depth(tmp_path, slow):
    """A slow batch holds the others back (depth); a slow write holds back its batch's next window."""
    plan = _plan(batches=5, windows=12)
    transfer = RecordingTransfer(slow=slow)
    seen_windows: list[int] = []
    totals = _front(
        transfer, plan, UnitJournal(tmp_path / "j.jsonl"), depth=2, on_window=lambda d, t: seen_windows.append(d.index)
    ).run()

    assert sorted((b, w) for b, w, *_ in transfer.stores) == [(b.id, w) for b in plan.batches for w in range(12)]
    assert totals.units == 60 and totals.samples_moved_now == 600 and totals.units_skipped == 0
    assert seen_windows == list(range(12))
    for batch in plan.batches:
        mine = sorted((s for s in transfer.stores if s[0] == batch.id), key=lambda s: s[2])
        assert [s[1] for s in mine] == list(range(12)), "one batch's windows are written in order"
        for earlier, later in itertools.pairwise(mine):
            assert earlier[3] <= later[2], "two writes of one batch (the same series) overlapped"
    finished = {(b, w): end for b, w, _, end, _ in transfer.stores}
    for b, w, start, _, _ in transfer.stores:
        behind = [finished[(other.id, w - 2)] for other in plan.batches if w >= 2]
        assert all(end <= start for end in behind), f"{b} w{w} started before every batch finished w{w - 2}"


@pytest.mark.parametrize("depth", [1, 20])
def test_the_next_window_of_a_batch_is_read_while_the_previous_one_is_written(tmp_path, depth):
    """Even when only one window may be written at a time (depth 1), the next one is read meanwhile."""
    plan = _plan(batches=1, windows=20)
    transfer = RecordingTransfer()
    _front(transfer, plan, UnitJournal(tmp_path / "j.jsonl"), depth=depth, concurrency=4).run()
    stores = {w: (start, end) for _, w, start, end, _ in transfer.stores}
    overlapped = sum(1 for _, w, start, _ in transfer.fetches if w > 0 and start < stores[w - 1][1] and w - 1 in stores)
    assert overlapped > 0, "reads never ran ahead of writes"


def test_a_failure_stops_the_front_and_a_rerun_resumes_from_the_journal(tmp_path):
    plan = _plan(batches=3, windows=8)
    journal_path = tmp_path / "j.jsonl"
    failing = RecordingTransfer(fail_at={("b1", 3)})
    with pytest.raises(Boom):
        _front(failing, plan, UnitJournal(journal_path)).run()
    done_before = {(b, w) for b, w, *_ in failing.stores}
    assert ("b1", 3) not in done_before and ("b1", 4) not in done_before, "a batch never skips a failed window"
    assert all(("b0", w) in done_before for w in range(2)), "units finished before the failure are kept"

    rerun = RecordingTransfer()
    totals = _front(rerun, plan, UnitJournal(journal_path)).run()
    rewritten = {(b, w): resumed for b, w, _, _, resumed in rerun.stores}
    assert set(rewritten).isdisjoint(done_before), "a unit the target acknowledged is never written again"
    assert done_before | set(rewritten) == {(b.id, w) for b in plan.batches for w in range(8)}
    assert rewritten[("b1", 3)] is True, "the unit that failed mid-write is reconciled as resumed"
    assert not any(resumed for key, resumed in rewritten.items() if key != ("b1", 3))
    assert totals.units == 24 and totals.units_skipped == len(done_before)
    assert {(b, w) for b, w, *_ in rerun.fetches}.isdisjoint(done_before), "done units are not even read"


def test_a_torn_journal_line_is_ignored(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = UnitJournal(path)
    journal.mark_started("b0:0")
    journal.mark_done("b0:0", {"samples": 5})
    with open(path, "a") as fh:
        fh.write('{"event":"done","unit":"b0:1","res')  # kill -9 mid-line
    again = UnitJournal(path)
    assert again.done("b0:0") == {"samples": 5} and again.done("b0:1") is None and again.started("b0:0")


def test_a_segments_journal_holds_only_its_own_windows(tmp_path):
    """A long migration has millions of units; a segment keeps only its windows' entries in memory."""
    path = tmp_path / "j.jsonl"
    journal = UnitJournal(path)
    for w in range(10):
        journal.mark_started(f"b0:{w}")
        journal.mark_done(f"b0:{w}", {"samples": w})
    segment = UnitJournal(path, windows=range(4, 7))
    assert [segment.done(f"b0:{w}") for w in range(10)] == [None] * 4 + [{"samples": w} for w in (4, 5, 6)] + [None] * 3
    assert segment.started("b0:5") and not segment.started("b0:3")


@pytest.mark.parametrize("windows,depth,groups", [(338, 2, 1), (7, 4, 1), (29, 4, 3), (1, 1, 2), (100, 1, 1)])
def test_segments_cover_every_window_once_and_groups_stay_within_the_depth(windows, depth, groups):
    runs = plan_segments(windows, depth, groups)
    covered = [w for run in runs for w in range(run[0].first_window, run[0].last_window + 1)]
    assert covered == list(range(windows))
    for run in runs:
        assert [s.group for s in run] == list(range(groups))
        assert len({(s.first_window, s.last_window) for s in run}) == 1
        if groups > 1:
            assert run[0].last_window - run[0].first_window + 1 <= depth
    if groups == 1:
        assert len(runs) <= 8 or runs[0][0].last_window - runs[0][0].first_window + 1 == depth


def test_segment_groups_partition_the_batches():
    plan = _plan(batches=7, windows=3)
    parts = [Segment(0, 2, g, 3).batches(plan) for g in range(3)]
    assert sorted(b.id for part in parts for b in part) == sorted(b.id for b in plan.batches)
    assert make_windows(0, 2999, 1000) == Segment(0, 2).windows(plan)
