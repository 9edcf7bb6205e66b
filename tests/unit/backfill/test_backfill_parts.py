"""backfill_window on ReadResponse bytes as the source sends them: the batch's series only, unusual
answers repaired as Prometheus' remote-read client would see them (sorted, exact duplicates once, cut
to the window), a series with two values at one time refused. No servers: a local bucket."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from read_responses import read_response

from m3migrate.backfill.windows import BlockWindow, backfill_window, shared_relabeler
from m3migrate.clients.bucket import Bucket
from m3migrate.errors import MalformedResponse
from m3migrate.plan.batches import Batch
from m3migrate.relabel import Relabeler, RelabelRule
from m3migrate.tsdb.block import BlockWriter
from m3migrate.tsdb.reader import read_block
from m3migrate.wire.codec import Matcher

H = 7_200_000
T0 = 1_700_000_000_000 // H * H
WINDOW = BlockWindow(T0, T0 + H, T0 + 1000, T0 + H - 1000)


def _bits(v: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", v))[0]


def _run(tmp_path, parts, batch):
    bucket = Bucket(tmp_path / "bucket")
    result = backfill_window(
        [(batch, raw) for raw in parts],
        window=WINDOW,
        bucket=bucket,
        relabeler=Relabeler([], add_labels={"_source": "m3db"}),
        external_labels={"backfill": "test"},
        work_dir=tmp_path,
    )
    (block,) = [p for p in (tmp_path / "bucket").iterdir() if p.is_dir()]
    return result, read_block(block).samples()


def test_a_part_is_written_with_only_its_batch_series_repaired_and_cut(tmp_path):
    a, b = T0 + 1000, T0 + 2000
    batch = Batch(
        "b1",
        (Matcher("__name__", "=~", ".+"),),
        ((("__name__", "ok"),), (("__name__", "shuffled"),), (("__name__", "wide"),)),
    )
    parts = [
        read_response(
            {
                "ok": [(a, 1.0), (b, 2.0)],
                "other": [(a, 9.0)],  # another batch's series, matched by this batch's selector too
                "shuffled": [(b, 2.0), (a, 1.0), (b, 2.0)],  # out of order, an exact duplicate
                "wide": [(T0, 5.0), (a, 6.0), (T0 + H - 1, 7.0)],  # beyond the window's read range
            }
        ),
        read_response({"ok": [(T0 + 3000, 3.0)]}),  # the same series again, later (a split read)
    ]
    result, samples = _run(tmp_path, parts, batch)
    src = ("_source", "m3db")
    assert samples == {
        (("__name__", "ok"), src): [(a, _bits(1.0)), (b, _bits(2.0)), (T0 + 3000, _bits(3.0))],
        (("__name__", "shuffled"), src): [(a, _bits(1.0)), (b, _bits(2.0))],
        (("__name__", "wide"), src): [(a, _bits(6.0))],
    }
    assert result.foreign_series == 1 and result.samples == 6 and result.series == 3


def test_two_values_at_one_time_are_refused(tmp_path):
    batch = Batch("b1", (Matcher("__name__", "=", "x"),), ((("__name__", "x"),),))
    with pytest.raises(MalformedResponse, match="two different values"):
        _run(tmp_path, [read_response({"x": [(T0 + 2000, 1.0), (T0 + 2000, 2.0)]})], batch)


def test_windows_share_one_relabeler_per_relabeling():
    """Each flow task builds its own Relabeler; the windows of one relabeling share the first one (and its
    cache), a different relabeling gets its own."""
    first = shared_relabeler(Relabeler([], add_labels={"_source": "m3db"}))
    assert shared_relabeler(Relabeler([], add_labels={"_source": "m3db"})) is first
    other = Relabeler([], add_labels={"_source": "other"})
    assert shared_relabeler(other) is other


def test_a_read_error_after_some_parts_fails_the_window_and_uploads_nothing(tmp_path):
    """Parts are read ahead in a thread while the previous one is encoded: an error there is the window's
    error, raised as itself, and no block reaches the bucket."""
    batch = Batch("b1", (Matcher("__name__", "=", "x"),), ((("__name__", "x"),),))
    read = []

    def parts():
        yield batch, read_response({"x": [(T0 + 2000, 1.0)]})
        read.append(1)
        raise MalformedResponse("remote read: broken", endpoint="remote read")

    with pytest.raises(MalformedResponse, match="broken"):
        backfill_window(
            parts(),
            window=WINDOW,
            bucket=Bucket(tmp_path / "bucket"),
            relabeler=Relabeler([]),
            external_labels={"backfill": "test"},
            work_dir=tmp_path,
        )
    assert read == [1]
    assert not [p for p in (tmp_path / "bucket").rglob("*") if p.is_file()]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("m3migrate-block-")]


def test_relabeling_remembers_the_plans_own_label_tuples(tmp_path):
    """The relabeler's cache spans the windows: it keeps the plan's label tuples, not copies decoded from
    each read (at 100,000 series those copies were ~55 MB)."""
    planned = (("__name__", "x"),)
    batch = Batch("b1", (Matcher("__name__", "=", "x"),), (planned,))
    relabeler = shared_relabeler(Relabeler([], add_labels={"_source": "identity-test"}))
    backfill_window(
        [(batch, read_response({"x": [(T0 + 2000, 1.0)]}))],
        window=WINDOW,
        bucket=Bucket(tmp_path / "bucket"),
        relabeler=relabeler,
        external_labels={"backfill": "test"},
        work_dir=tmp_path,
    )
    (key,) = relabeler._cache
    assert key is planned


def _window(k: int) -> BlockWindow:
    return BlockWindow(T0 + k * H, T0 + (k + 1) * H, T0 + k * H, T0 + (k + 1) * H - 1)


def _backfill(tmp_path, batch, raw, relabeler, window):
    return backfill_window(
        [(batch, raw)],
        window=window,
        bucket=Bucket(tmp_path / "bucket"),
        relabeler=relabeler,
        external_labels={"backfill": "test"},
        work_dir=tmp_path,
    )


def test_later_windows_decode_no_labels_and_count_every_series_again(tmp_path, monkeypatch):
    """The second window of a batch recognises its series by their label bytes: no label set is decoded
    again, and each window's counts (foreign, dropped; a series without samples is no count) are its own."""
    from m3migrate.tsdb.samples import ScannedResponse

    decoded: list[int] = []
    labels = ScannedResponse.labels
    monkeypatch.setattr(
        ScannedResponse, "labels", lambda self, which=None: decoded.append(len(which)) or labels(self, which)
    )
    batch = Batch(
        "b1", (Matcher("__name__", "=~", ".+"),), tuple((("__name__", n),) for n in ("drop_me", "gone", "ok"))
    )
    relabeler = Relabeler(
        [RelabelRule(source_labels=["__name__"], regex="drop_.*", action="drop")], add_labels={"_source": "memo-test"}
    )
    results = []
    for k in range(3):
        t = T0 + k * H + 1000
        raw = read_response({"drop_me": [(t, 1.0)], "gone": [], "ok": [(t, 2.0)], "other": [(t, 3.0)]})
        results.append(_backfill(tmp_path, batch, raw, relabeler, _window(k)))
    assert decoded == [4, 1, 1], "after the first window only the series without samples is decoded again"
    for r in results:
        assert (r.series, r.samples, r.foreign_series, r.dropped_series) == (1, 1, 1, 1)


def test_what_is_remembered_is_the_plans_and_the_relabelings_own(tmp_path):
    """A batch of another plan (same id, other series) and another relabeling decide anew."""
    t = T0 + 1000
    raw = read_response({"x": [(t, 1.0)], "y": [(t, 2.0)]})
    matchers = (Matcher("__name__", "=~", ".+"),)
    lists_x = Batch("b1", matchers, ((("__name__", "x"),),))
    lists_y = Batch("b1", matchers, ((("__name__", "y"),),))
    blocks = []
    for k, (batch, source) in enumerate([(lists_x, "a"), (lists_y, "a"), (lists_y, "b")]):
        result = _backfill(tmp_path / str(k), batch, raw, Relabeler([], add_labels={"_source": source}), WINDOW)
        assert (result.series, result.foreign_series) == (1, 1)
        (block,) = [p for p in (tmp_path / str(k) / "bucket").iterdir() if p.is_dir()]
        blocks.append(sorted(read_block(block).samples()))
    assert blocks == [
        [(("__name__", "x"), ("_source", "a"))],
        [(("__name__", "y"), ("_source", "a"))],
        [(("__name__", "y"), ("_source", "b"))],
    ]


def test_a_staged_block_is_not_fsynced_and_a_written_one_is(tmp_path, monkeypatch):
    """The window's block is staged only to be uploaded (and deleted after): syncing it to disk first
    costs a flush per file and guards nothing. A BlockWriter otherwise syncs every file, as Prometheus."""
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    batch = Batch("b1", (Matcher("__name__", "=~", ".+"),), ((("__name__", "ok"),),))
    result, samples = _run(tmp_path, [read_response({"ok": [(T0 + 1000, 1.0)]})], batch)
    assert result.samples == 1 and samples
    assert synced == []

    with BlockWriter(tmp_path / "prom", min_time=T0, max_time=T0 + H, external_labels={"a": "b"}) as writer:
        writer.add((("__name__", "up"),), np.array([T0 + 1]), np.array([1.0]))
        writer.finish()
    assert len(synced) >= 3, "chunks, index and meta.json are synced before the block is renamed"
