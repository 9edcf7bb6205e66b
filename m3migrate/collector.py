"""Python's cyclic garbage collector, set for a process that holds a migration's data. A leaf module.

A process moving 10^5 series holds ~10^6 long-lived containers (the plan's label tuples, the relabeler's
cache, the blocks path's series memo, verify's figures) and allocates a container for nearly every
series it touches. With the default thresholds (a young collection every 700 allocations, a full one
every 100 of those when the tracked objects grew by a quarter) the collector rescans that data again
and again: at 10^5 series it cost 14-23 % of verify's CPU and ~5-10 % of the blocks CLI's, and made
``json.loads`` of a plan ~7x slower. The data is freed by reference counting as ever; the collector
only looks for cycles, which the data path does not make.

The blocks and verify flows raise the thresholds; remote write keeps the defaults: measured at 10^5
series it gained no CPU from them (271 against 275-308 ns/sample) and held ~65 MB more (cycles that
httpx and Prefect make wait longer), which its 500 MB budget does not have.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BULK_THRESHOLDS = (100_000, 20, 100)
"""A young collection every 10^5 allocations (not 700), an older one every 20, a full one every 100 of
those: verify at 10^5 series ran as fast as with no collector at all (1,060 against 1,067 ns/sample), at a
peak RSS of 648 MB against 614-619 with the defaults (826 with no collector)."""

_lock = threading.Lock()
_pauses = 0
_was_enabled = False


def tune_for_bulk_data() -> None:
    """Set :data:`BULK_THRESHOLDS` for this process (a blocks or verify flow run); never lowers a higher one."""
    current = gc.get_threshold()
    gc.set_threshold(*(max(now, bulk) for now, bulk in zip(current, BULK_THRESHOLDS, strict=True)))


@contextmanager
def paused() -> Iterator[None]:
    """The collector off for the ``with`` block (and any other thread's pause overlapping it): the last
    pause to end turns it back on, unless it was off before the first began."""
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()
