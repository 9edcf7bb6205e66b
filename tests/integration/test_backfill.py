"""Block backfill against real tools: the source's whole history as blocks in a local Thanos-layout bucket,
accepted by promtool list/analyze/dump and served back by a Prometheus 2.42 bit for bit; reruns and a
kill -9 during upload leave exactly one block per window."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m3migrate.backfill.windows import BackfillResult, backfill_from_source, block_windows
from m3migrate.clients.bucket import MARKER_PREFIX, Bucket
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.errors import ConfigError
from m3migrate.plan.migration import build_plan
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.tsdb import BlockMeta
from m3migrate.tsdb.reader import read_block
from sandbox.compare import diff, read_all, with_label
from sandbox.servers import start_prometheus

pytestmark = [pytest.mark.servers]
HOUR_MS = 3_600_000
LABELS = {"backfill": "m3db", "cluster": "sandbox"}
ROOT = Path(__file__).parents[2]


def _source(source_history) -> SourceSettings:
    url = source_history.server.url
    return SourceSettings(read_url=f"{url}/api/v1/read", query_url=url)


def _run(source_history, bucket: Bucket, start: int, end: int, block_ms: int, work_dir: Path) -> list[BackfillResult]:
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(end), write_mode="out_of_order")
    source = _source(source_history)
    plan = build_plan(source, spec, "backfill-test", start_ms=start, end_ms=end)
    results = []
    with RemoteReadClient(source) as reader:
        for window in block_windows(start, end, block_ms):
            results.append(
                backfill_from_source(
                    reader,
                    plan.batches,
                    window=window,
                    bucket=bucket,
                    relabeler=spec.relabeler(),
                    external_labels=LABELS,
                    work_dir=work_dir,
                )
            )
    return results


def _promtool(*args: str) -> str:
    done = subprocess.run(["promtool", "tsdb", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"promtool tsdb {args[0]} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
    return done.stdout


def _block_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and len(p.name) == 26)


def _parse_dump(text: str) -> dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]:
    """promtool tsdb dump lines: `{a="b", ...} value timestamp`."""
    out: dict = {}
    for line in text.splitlines():
        labels_part, rest = line.rsplit("} ", 1)
        value, ts = rest.split(" ")
        pairs = []
        body = labels_part[1:]
        i = 0
        while i < len(body):
            eq = body.index("=", i)
            name = body[i:eq]
            j = eq + 2
            chars = []
            while body[j] != '"':
                if body[j] == "\\":
                    j += 1
                    chars.append({"n": "\n", "\\": "\\", '"': '"'}.get(body[j], body[j]))
                else:
                    chars.append(body[j])
                j += 1
            pairs.append((name, "".join(chars)))
            i = j + 3 if j + 1 < len(body) else j + 1
        out.setdefault(tuple(sorted(pairs)), []).append((int(ts), float(value)))
    return out


@pytest.fixture(scope="module")
def full_backfill(source_history, tmp_path_factory):
    """The whole history (7 d + live tail) as 2 h blocks in a local bucket."""
    root = tmp_path_factory.mktemp("backfill")
    bucket_dir = root / "bucket"
    bucket = Bucket(bucket_dir)
    stats = source_history.stats
    t0 = time.perf_counter()
    results = _run(source_history, bucket, stats.start_ms, stats.end_ms, 2 * HOUR_MS, root)
    seconds = time.perf_counter() - t0
    samples = sum(r.samples for r in results)
    print(f"backfill: {samples} samples in {seconds:.1f} s = {samples / seconds:,.0f} samples/s end to end")
    return bucket, bucket_dir, results, root


def test_one_block_per_window_with_thanos_meta(full_backfill, source_history):
    bucket, bucket_dir, results, _ = full_backfill
    stats = source_history.stats
    windows = block_windows(stats.start_ms, stats.end_ms)
    assert [r.min_time for r in results] == [w.min_time for w in windows]
    assert sum(r.samples for r in results) == stats.samples
    dirs = _block_dirs(bucket_dir)
    assert len(dirs) == len([r for r in results if r.ulid]) == len(windows)
    for d in dirs:
        doc = json.loads((d / "meta.json").read_text())
        assert doc["ulid"] == d.name and doc["version"] == 1
        assert doc["compaction"] == {"level": 1, "sources": [d.name]}
        assert doc["maxTime"] - doc["minTime"] == 2 * HOUR_MS and doc["minTime"] % (2 * HOUR_MS) == 0
        assert doc["thanos"]["labels"] == LABELS and doc["thanos"]["downsample"] == {"resolution": 0}
        assert doc["thanos"]["source"] == "m3migrate" and doc["thanos"]["segment_files"] == ["000001"]
        sizes = {f["rel_path"]: f.get("size_bytes") for f in doc["thanos"]["files"]}
        assert sizes["index"] == (d / "index").stat().st_size
        assert sizes["chunks/000001"] == (d / "chunks" / "000001").stat().st_size
        assert doc["stats"]["numSamples"] > 0 and doc["stats"]["numSeries"] > 0
    contents = read_block(dirs[0])  # strict reader: CRCs, ordering, postings layout
    assert all(("_source", "m3db") in labels for labels in contents.series)
    assert not bucket.list(MARKER_PREFIX)


def test_promtool_list_analyze_and_dump_accept_every_block(full_backfill, source_history):
    _, bucket_dir, results, root = full_backfill
    listed = _promtool("list", str(bucket_dir))
    for r in results:
        assert r.ulid in listed
    scratch = root / "promtool-scratch"
    shutil.copytree(bucket_dir, scratch, ignore=shutil.ignore_patterns("m3migrate"))
    (scratch / "wal").mkdir()
    for d in _block_dirs(scratch):
        out = _promtool("analyze", str(scratch), d.name)
        assert f"Block ID: {d.name}" in out
    stats = source_history.stats
    dumped = _parse_dump(_promtool("dump", str(scratch)))
    expected = with_label(read_all(source_history.server.url, stats.start_ms, stats.end_ms), "_source", "m3db")
    assert set(dumped) == set(expected)
    for labels, samples in expected.items():
        got = dumped[labels]
        assert [t for t, _ in got] == [t for t, _ in samples], dict(labels)
        for (_, value), (_, bits) in zip(got, samples, strict=True):
            want = _bits_to_float(bits)
            assert value == want or (math.isnan(value) and math.isnan(want)), dict(labels)


def _bits_to_float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def test_prometheus_serves_the_blocks_bit_for_bit(full_backfill, source_history, tmp_path):
    _, bucket_dir, _, _ = full_backfill
    data = tmp_path / "prom-data"
    shutil.copytree(bucket_dir, data, ignore=shutil.ignore_patterns("m3migrate"))
    stats = source_history.stats
    expected = with_label(read_all(source_history.server.url, stats.start_ms, stats.end_ms), "_source", "m3db")
    with start_prometheus(tmp_path, name="blocks", data_dir=data) as prom:
        got = read_all(prom.url, stats.start_ms, stats.end_ms)
    assert not diff(expected, got)
    assert got == expected  # timestamps and value bits, stale markers and NaNs included


def test_rerun_skips_every_window_and_writes_nothing(full_backfill, source_history):
    bucket, bucket_dir, _, root = full_backfill
    before = sorted(p.name for p in _block_dirs(bucket_dir))
    stats = source_history.stats
    again = _run(source_history, bucket, stats.start_ms, stats.end_ms, 2 * HOUR_MS, root)
    assert all(r.skipped and r.ulid is None and r.bytes_read == 0 for r in again)
    assert sorted(p.name for p in _block_dirs(bucket_dir)) == before


def test_8h_and_2d_blocks_are_aligned_and_accepted(source_history, tmp_path):
    stats = source_history.stats
    start, end = stats.start_ms + 3 * HOUR_MS, stats.start_ms + 3 * 86_400_000
    for hours in (8, 48):
        bucket_dir = tmp_path / f"bucket-{hours}h"
        results = _run(source_history, Bucket(bucket_dir), start, end, hours * HOUR_MS, tmp_path)
        metas = [BlockMeta.load(d / "meta.json") for d in _block_dirs(bucket_dir)]
        assert len(metas) == len(block_windows(start, end, hours * HOUR_MS)) == len(results)
        for m in metas:
            assert m.min_time % (hours * HOUR_MS) == 0 and m.max_time - m.min_time == hours * HOUR_MS
        _promtool("list", str(bucket_dir))
        expected = with_label(read_all(source_history.server.url, start, end), "_source", "m3db")
        assert sum(m.num_samples for m in metas) == sum(len(s) for s in expected.values())


def test_odd_block_duration_is_refused():
    with pytest.raises(ConfigError, match="2h, 8h or 2d"):
        block_windows(0, 10 * HOUR_MS, 3 * HOUR_MS)


KILL_SCRIPT = r"""
import sys, time
from pathlib import Path
from m3migrate.clients import bucket as bucket_mod
from m3migrate.backfill.windows import backfill_from_source, block_windows
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.plan.migration import build_plan
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms

url, bucket_dir, stall_after = sys.argv[1], sys.argv[2], sys.argv[6]
start, end, flag = int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
real_put = bucket_mod.Bucket.put_file

def put_file(self, key, path):
    real_put(self, key, path)
    if key.endswith(stall_after):
        flag.write_text(key)
        time.sleep(600)  # killed here, in the middle of the upload

bucket_mod.Bucket.put_file = put_file
spec = MigrationSpec(start=iso_ms(start), end=iso_ms(end), write_mode="out_of_order")
source = SourceSettings(read_url=url + "/api/v1/read", query_url=url)
plan = build_plan(source, spec, "kill-test", start_ms=start, end_ms=end)
bucket = bucket_mod.Bucket(bucket_dir)
with RemoteReadClient(source) as reader:
    for window in block_windows(start, end):
        backfill_from_source(reader, plan.batches, window=window, bucket=bucket, relabeler=spec.relabeler(),
                             external_labels={"backfill": "m3db"}, work_dir=Path(bucket_dir).parent)
"""


@pytest.mark.parametrize("stall_after", ["index", "meta.json"])
def test_kill_9_during_upload_then_rerun_leaves_one_block_per_window(source_history, tmp_path, stall_after):
    """Killed after the index (a partial block) or after meta.json (a finished block, marker left)."""
    stats = source_history.stats
    start, end = stats.start_ms, stats.start_ms + 6 * HOUR_MS
    bucket_dir = tmp_path / "bucket"
    flag = tmp_path / "stalled"
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [source_history.server.url, str(bucket_dir), str(start), str(end), str(flag), stall_after]
    proc = subprocess.Popen([sys.executable, str(script), *args], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert proc.poll() is None, "the backfill process ended before it stalled"
            assert time.monotonic() < deadline, "the backfill never reached the upload"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    bucket = Bucket(bucket_dir)
    assert len(bucket.list(MARKER_PREFIX)) == 1  # the killed upload's marker

    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(end), write_mode="out_of_order")
    source = _source(source_history)
    plan = build_plan(source, spec, "kill-test", start_ms=start, end_ms=end)
    with RemoteReadClient(source) as reader:
        results = [
            backfill_from_source(
                reader,
                plan.batches,
                window=w,
                bucket=bucket,
                relabeler=spec.relabeler(),
                external_labels={"backfill": "m3db"},
                work_dir=tmp_path,
            )
            for w in block_windows(start, end)
        ]
    dirs = _block_dirs(bucket_dir)
    windows = block_windows(start, end)
    assert len(dirs) == len(windows)
    assert sorted(BlockMeta.load(d / "meta.json").min_time for d in dirs) == [w.min_time for w in windows]
    assert not bucket.list(MARKER_PREFIX)
    if stall_after == "index":
        assert results[0].removed_partial and not results[0].skipped
    else:
        assert results[0].skipped  # the killed run had finished the block; only its marker was left
    _promtool("list", str(bucket_dir))
