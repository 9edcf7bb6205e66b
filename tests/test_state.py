"""The unit journal survives torn lines and short writes: no record is glued onto a broken one or cut short."""

from __future__ import annotations

import errno
import os

import pytest

from m3migrate.state import JournalError, UnitJournal


def test_a_record_appended_after_a_torn_last_line_survives_a_reload(tmp_path):
    """kill -9 mid-append leaves a line without its newline; the next run's first record must not join it."""
    path = tmp_path / "j.jsonl"
    UnitJournal(path).mark_done("b0:0", {"samples": 5})
    with open(path, "a") as fh:
        fh.write('{"event":"start","unit":"b0:1"')  # torn: no closing brace, no newline
    rerun = UnitJournal(path)
    rerun.mark_started("b0:2")
    rerun.mark_done("b0:3", {"samples": 7})
    again = UnitJournal(path)
    assert again.done("b0:0") == {"samples": 5}
    assert again.started("b0:2"), "the record written right after the torn line was lost"
    assert again.done("b0:3") == {"samples": 7}
    assert not again.started("b0:1")
    assert path.read_text().splitlines()[1:3] == ['{"event":"start","unit":"b0:1"', '{"event":"start","unit":"b0:2"}']


def test_a_short_write_still_ends_with_the_whole_record(tmp_path, monkeypatch):
    """os.write may write fewer bytes than asked (a nearly full disk): the rest must follow."""
    path = tmp_path / "j.jsonl"
    real_write = os.write
    calls: list[int] = []

    def half_write(fd: int, data) -> int:
        calls.append(len(data))
        return real_write(fd, bytes(data[: max(1, len(data) // 2)]))

    monkeypatch.setattr(os, "write", half_write)
    journal = UnitJournal(path)
    journal.mark_started("b7:3")
    journal.mark_done("b7:3", {"samples": 123, "series": 4})
    monkeypatch.undo()
    assert len(calls) > 2, "the stand-in did write short"
    again = UnitJournal(path)
    assert again.started("b7:3") and again.done("b7:3") == {"samples": 123, "series": 4}


@pytest.mark.parametrize("failure", ["zero", "enospc"])
def test_a_full_disk_is_a_clear_error_and_the_next_record_starts_on_its_own_line(tmp_path, monkeypatch, failure):
    path = tmp_path / "j.jsonl"
    journal = UnitJournal(path)
    journal.mark_done("b0:0", {"samples": 1})
    real_write = os.write
    state = {"n": 0}

    def filling_write(fd: int, data) -> int:
        state["n"] += 1
        if state["n"] == 1:
            return real_write(fd, bytes(data[:10]))  # the disk takes ten more bytes, then is full
        if failure == "zero":
            return 0
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", filling_write)
    with pytest.raises(JournalError) as caught:
        journal.mark_started("b0:1")
    monkeypatch.undo()
    assert str(path) in str(caught.value) and ("disk full" in str(caught.value) or "No space" in str(caught.value))
    journal.mark_started("b0:2")  # space freed: the run goes on
    again = UnitJournal(path)
    assert again.done("b0:0") == {"samples": 1} and again.started("b0:2") and not again.started("b0:1")
