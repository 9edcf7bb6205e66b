"""The progress figures every write mode reports the same way: Prefect artifact, log line and CLI bar.

One :class:`Progress` per report (a segment's or a block window's end, or every few seconds inside a
segment), never per sample. Remote write, the block backfill and a replication pass fill the same
fields, so the UI, the logs and the bar read alike whatever the mode; a replication pass adds its lag
(how far behind now the copied front is). Engine code: no Prefect here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

PHASES = {"migrate": "time front", "replicate": "replication pass", "backfill": "block windows"}


def lag_seconds(front_end_ms: int, now_ms: int | None = None) -> float:
    """How far behind now the copied front is (never negative: a front at now has no lag)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return max(0.0, (now_ms - front_end_ms) / 1000)


def duration(seconds: float) -> str:
    """A short human duration: 42 s, 3 min 5 s, 2 h 10 min."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


@dataclass(frozen=True)
class Progress:
    """Where a front or a backfill stands: windows done of total, samples, rate and what follows from them."""

    phase: str  # "time front", "block windows" or "replication pass"
    windows_done: int
    windows_total: int
    samples: int  # the stage's total so far (earlier runs' included)
    rate: float  # samples/s moved by this run
    elapsed: float  # seconds since this run started the stage
    blocks_uploaded: int | None = None  # block windows only
    lag_seconds: float | None = None  # replication passes only
    front_end_ms: int | None = None
    windows_before: int = 0  # windows done before ``elapsed`` started counting (the pace leaves them out)

    @property
    def percent(self) -> float:
        return 100.0 * self.windows_done / self.windows_total if self.windows_total else 100.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at this run's pace (None before the first window: no pace yet)."""
        if self.windows_done >= self.windows_total:
            return 0.0
        paced = self.windows_done - self.windows_before
        if paced <= 0:
            return None
        return self.elapsed / paced * (self.windows_total - self.windows_done)

    @property
    def detail(self) -> str:
        """What the bar shows after the samples: blocks uploaded, or a replication pass's lag."""
        parts = []
        if self.blocks_uploaded is not None:
            parts.append(f"{self.blocks_uploaded:,} blocks uploaded")
        if self.lag_seconds is not None:
            parts.append(f"lag {duration(self.lag_seconds)}")
        return ", ".join(parts)

    def description(self, name: str) -> str:
        """The progress artifact's description (markdown, shown next to its bar in the Prefect UI)."""
        eta = self.eta_seconds
        when = (
            f"done in {duration(self.elapsed)}"
            if eta == 0.0
            else f"ETA {duration(eta)}"
            if eta is not None
            else "ETA unknown"
        )
        figures = [
            f"**{self.windows_done:,}/{self.windows_total:,} windows**",
            f"{self.samples:,} samples",
            f"{self.rate:,.0f} samples/s",
            *([self.detail] if self.detail else []),
            when,
        ]
        return f"{name}: {self.phase}: " + " · ".join(figures)

    def log_line(self) -> str:
        eta = self.eta_seconds
        text = (
            f"{self.phase}: window {self.windows_done}/{self.windows_total}, {self.samples:,} samples so far, "
            f"{self.rate:,.0f} samples/s"
        )
        if self.detail:
            text += f", {self.detail}"
        if eta == 0.0:
            return text + f", done in {duration(self.elapsed)}"
        return text + (f", ETA {duration(eta)}" if eta is not None else "")

    def event(self) -> dict[str, Any]:
        """What in-process listeners (the CLI's bar) receive."""
        return {
            "phase": self.phase,
            "windows_done": self.windows_done,
            "windows_total": self.windows_total,
            "samples": self.samples,
            "rate": self.rate,
            "eta_seconds": self.eta_seconds,
            "blocks_uploaded": self.blocks_uploaded,
            "lag_seconds": self.lag_seconds,
            "front_end_ms": self.front_end_ms,
            "detail": self.detail,
        }
