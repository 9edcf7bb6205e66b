"""Millisecond timestamps as RFC 3339 text, the one way every report and log line shows instants."""

from __future__ import annotations

import time


def iso_ms(ms: int | None) -> str:
    """RFC 3339 in UTC with milliseconds (the protocols' resolution); '' for None."""
    if ms is None:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
