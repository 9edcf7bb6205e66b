"""Crash points for the crash-safety tests: ``M3MIGRATE_FAILPOINT=<name>:<n>`` kills the process with
SIGKILL the n-th time execution passes ``<name>`` (like etcd's gofail). Unset, as in production, a
failpoint costs one comparison.

Points: ``unit.read`` (a unit has read its window, nothing written), ``unit.write`` (between two write
requests of a unit), ``unit.done`` (the target acknowledged a unit, the journal does not know yet),
``segment.done`` (a segment finished, the orchestrator has not recorded it), ``replicate.finish`` (a
replication pass wrote everything, its watermark is not saved yet).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "M3MIGRATE_FAILPOINT"
_name, _, _nth = (os.environ.get(ENV) or "").partition(":")
_remaining = int(_nth or 1) if _name else 0
_lock = threading.Lock()


def failpoint(name: str) -> None:
    """Die here (SIGKILL, no cleanup) if the environment armed this point and its count is reached."""
    global _remaining
    if name != _name:
        return
    with _lock:
        _remaining -= 1
        if _remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
