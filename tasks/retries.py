"""The one retry policy of every task: whether a failed attempt is rerun is decided by its error.

The errors carry it (``terminal`` in m3migrate/errors.py); reruns are safe because every unit is
journaled and idempotent.
"""

from __future__ import annotations

from typing import Any

from prefect.states import State

from m3migrate.errors import is_terminal


def retry_unless_terminal(task, task_run, state: State) -> bool:
    """Every task's Prefect retry condition: rerun a failed attempt unless its error is terminal (errors.py)."""
    error = state.data if isinstance(state.data, BaseException) else None
    if error is None:
        try:
            state.result()
        except Exception as exc:
            error = exc
        else:
            return False
    return not is_terminal(error)


# Task-level retries on top of each request's own backoff: a rerun of a segment or block window is safe.
TASK_RETRIES: dict[str, Any] = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_jitter_factor": 0.5}
