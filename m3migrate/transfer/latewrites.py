"""Writes that reach M3 later than the replication lag: found on the next pass, copied again if possible.

A pass copies up to ``now - lag``; a sample that reaches M3 after the pass with a timestamp before its
end (longer in flight than the lag, e.g. beyond M3's bufferPast) would never be copied. Each pass
therefore records how many samples it copied from each of its windows within ``lag`` of its end; the
next pass counts those windows on the source again, and where the source now holds more, sends the
windows again (a target with an out-of-order window takes the late samples and ignores the identical
rest) or, when the target refuses them, reports the window and the count.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from m3migrate.errors import WriteRejected
from m3migrate.plan.batches import Plan, Window
from m3migrate.plan.migration import build_plan
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, UnitJournal
from m3migrate.transfer.unit import Transfer


@dataclass
class LateWindow:
    """A window of the previous pass that holds more samples on the source than were copied."""

    start_ms: int
    end_ms: int
    copied: int
    source_now: int
    recopied: bool = False
    refused: str = ""  # the target's reason when it refused the resend

    @property
    def late(self) -> int:
        return self.source_now - self.copied


def record_late_check(state: MigrationState, plan: Plan, lag_ms: int) -> None:
    """Save the samples a finished pass copied per window, for its windows within ``lag_ms`` of its end.

    Called before the watermark moves, while the pass's journal (one entry per batch × window) exists.
    """
    tail = [w for w in plan.windows if w.end_ms > plan.end_ms - lag_ms]
    if not tail:
        return
    journal = state.journal("replicate", plan.id, range(tail[0].index, tail[-1].index + 1))
    copied: Counter[int] = Counter()
    for key, result in journal.done_units().items():
        copied[UnitJournal.window_of(key)] += int(result.get("samples", 0))
    replication = state.load_replication()
    replication.late_check = [{"start_ms": w.start_ms, "end_ms": w.end_ms, "samples": copied[w.index]} for w in tail]
    state.save_replication(replication)


def recheck_late_writes(
    source: SourceSettings, target: TargetSettings, spec: MigrationSpec, state: MigrationState
) -> list[LateWindow]:
    """Count the previous pass's recorded windows again; resend those that gained samples.

    The windows are planned afresh (series discovered in each window, so a series born late is found),
    read and counted with the copy's own code; only a window with more samples than were copied is
    read again and written. Done once per recorded pass: the record is cleared afterwards.
    """
    replication = state.load_replication()
    if not replication.late_check:
        return []
    found: list[LateWindow] = []
    with Transfer(source, target, spec.relabeler(), write_concurrency=spec.write_concurrency) as transfer:
        for entry in replication.late_check:
            window = Window(0, int(entry["start_ms"]), int(entry["end_ms"]))
            plan = build_plan(source, spec, state.migration_id, start_ms=window.start_ms, end_ms=window.end_ms)
            now = sum(transfer.fetch(batch, window)[1].samples for batch in plan.batches)
            if now <= int(entry["samples"]):
                continue
            late = LateWindow(window.start_ms, window.end_ms, int(entry["samples"]), now)
            try:
                for batch in plan.batches:
                    transfer.run(batch, window, resumed=False)
                late.recopied = True
            except WriteRejected as exc:
                late.refused = ", ".join(sorted(r.value for r in exc.reasons)) or "refused"
            found.append(late)
    replication = state.load_replication()
    replication.late_check = []
    state.save_replication(replication)
    return found
