"""Verification against real servers: a clean migration verifies equal; an altered target (one sample
changed, one series missing, one extra) is reported exactly, by the engine, the flow and the CLI.

Sources are read through the sandbox's M3 Coordinator gateway ([start, end) reads), with samples on the
last millisecond of windows and at the end (and, for the strays, on every window's first millisecond);
expectations come from the Prometheus behind it or from the data as written."""

from __future__ import annotations

import gc
import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from m3migrate import collector
from m3migrate.checks.verify import (
    CANONICAL_NAN_BITS,
    SeriesData,
    VerificationFailed,
    canonical_bits,
    first_difference,
    sampled,
    series_text,
)
from m3migrate.plan.batches import make_windows
from m3migrate.timefmt import iso_ms as _iso
from m3migrate.wire.codec import STALE_NAN_BITS
from sandbox.m3gateway import READ_PATH

ROOT = Path(__file__).parents[2]
HOUR_MS = 3_600_000


def _float(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


# ---------------------------------------------------------------------------------------------------
# units (no servers)


def test_canonical_bits_folds_nans_and_signed_zero_only():
    values = np.array([1.5, _float(0x7FF8000000000000), _float(0x7FF8000000000123), -0.0, 0.0, math.inf])
    bits = canonical_bits(values)
    assert bits[1] == bits[2] == CANONICAL_NAN_BITS
    assert bits[3] == bits[4] == 0
    assert bits[0] == struct.unpack("<Q", struct.pack("<d", 1.5))[0]
    assert bits[5] != bits[0]


def test_first_difference_value_missing_and_extra_sample():
    a = SeriesData.build([1, 2, 3], [1.0, 2.0, 3.0])
    assert first_difference(a, SeriesData.build([1, 2, 3], [1.0, 2.0, 3.0])) is None
    assert first_difference(a, SeriesData.build([1, 2, 3], [1.0, 2.5, 3.0])) == (2, 2.0, 2.5)
    assert first_difference(a, SeriesData.build([1, 3], [1.0, 3.0])) == (2, 2.0, None)
    assert first_difference(a, SeriesData.build([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0])) == (4, None, 4.0)
    assert first_difference(a, SeriesData.build([0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0])) == (0, None, 0.0)
    nan = SeriesData.build([1], [math.nan])
    assert first_difference(nan, SeriesData.build([1], [_float(0x7FF8000000000001)])) is None
    assert nan.digest() == SeriesData.build([1], [-math.nan]).digest()


def test_sampling_is_deterministic_and_close_to_the_fraction():
    series = [(("__name__", "m"), ("i", str(i))) for i in range(4000)]
    chosen = [s for s in series if sampled(s, 0.1)]
    assert chosen == [s for s in series if sampled(s, 0.1)]
    assert 300 < len(chosen) < 500
    assert [s for s in series if sampled(s, 0.1, seed=1)] != chosen
    assert all(sampled(s, 1.0) for s in series[:10])


def test_series_text_escapes_like_promql():
    assert series_text([("b", 'x"y\\z'), ("__name__", "up"), ("a", "1")]) == 'up{a="1",b="x\\"y\\\\z"}'


# ---------------------------------------------------------------------------------------------------
# against real servers


@dataclass
class Migrated:
    source_url: str  # the M3 gateway in front of the source
    target_url: str  # clean copy
    altered_url: str  # one sample altered, one series dropped, one extra series
    start_ms: int
    end_ms: int
    state_dir: Path
    source_samples: int  # non-stale samples of the source in the range
    stale_markers: int
    source_series: int
    altered: tuple[int, float, float]  # (timestamp, source value, target value)
    altered_series: tuple[tuple[str, str], ...]
    dropped_series: tuple[tuple[str, str], ...]
    extra_series: tuple[tuple[str, str], ...]

    def blocks(self, target_url: str):
        from blocks import M3Source, ThanosTarget

        return (
            M3Source(read_url=f"{self.source_url}{READ_PATH}", query_url=self.source_url),
            ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url),
        )

    def spec(self, **kw):
        from m3migrate.settings.spec import MigrationSpec

        return MigrationSpec(start=_iso(self.start_ms), end=_iso(self.end_ms), **kw)


def _copy_altered(data: dict, url: str, migrated_labels: list) -> tuple:
    """Write data into the target at url, altering one sample, dropping one series, adding one."""
    from m3migrate.clients.remote_write import RemoteWriteClient
    from m3migrate.prompb import TimeSeries
    from m3migrate.settings.endpoints import TargetSettings
    from m3migrate.wire.codec import encode_labels, frame_series, single_request

    plain = [k for k in migrated_labels if len(data[k]) > 60 and all(b >> 52 & 0x7FF != 0x7FF for _, b in data[k])]
    altered_key, dropped_key, template_key = plain[3], plain[7], plain[11]
    ts_alt, bits_alt = data[altered_key][50]
    source_value = _float(bits_alt)
    target_value = source_value + 1.0
    extra_key = tuple(sorted({**dict(template_key), "instance": "verify-extra:9100"}.items()))
    assert extra_key not in data
    out = {k: v for k, v in data.items() if k != dropped_key}
    out[altered_key] = [
        (t, struct.unpack("<Q", struct.pack("<d", target_value))[0]) if t == ts_alt else (t, b)
        for t, b in data[altered_key]
    ]
    out[extra_key] = data[template_key][:30]
    with RemoteWriteClient(TargetSettings(write_url=f"{url}/api/v1/write")) as writer:
        for labels, samples in out.items():
            ts = TimeSeries()
            for t, b in samples:
                ts.samples.add(timestamp=t, value=_float(b))
            writer.write(single_request(frame_series(encode_labels(labels), ts.SerializeToString()), len(samples)))
    return (ts_alt, source_value, target_value), altered_key, dropped_key, extra_key


@pytest.fixture(scope="module")
def migrated(prefect_api, source_history, tmp_path_factory) -> Iterator[Migrated]:
    """The last 2 h of the source (history + live tail with stale markers and a NaN) migrated into a
    fresh Prometheus (clean), and a copy of it with three deliberate differences (altered)."""
    from flows.migrate import migrate
    from sandbox.compare import read_all
    from sandbox.servers import start_prometheus

    work = tmp_path_factory.mktemp("verify")
    end_ms = source_history.stats.end_ms
    start_ms = end_ms - 2 * HOUR_MS + 1
    clean = start_prometheus(work, name="clean", remote_write_receiver=True)
    altered = None
    try:
        altered = start_prometheus(work, name="altered", remote_write_receiver=True, ooo_window="30d")
        m = Migrated(
            source_history.m3.url,
            clean.url,
            altered.url,
            start_ms,
            end_ms,
            work / "state",
            0,
            0,
            0,
            (0, 0.0, 0.0),
            (),
            (),
            (),
        )
        summary = migrate(*m.blocks(clean.url), m.spec(), state_dir=str(m.state_dir))
        source = read_all(source_history.server.url, start_ms, end_ms)
        assert summary["samples"] == sum(len(s) for s in source.values())
        m.stale_markers = sum(b == STALE_NAN_BITS for s in source.values() for _, b in s)
        assert m.stale_markers >= 1, "the range must include the live tail's stale markers"
        m.source_samples = sum(len(s) for s in source.values()) - m.stale_markers
        m.source_series = len(source)
        data = read_all(clean.url, start_ms, end_ms)
        m.altered, m.altered_series, m.dropped_series, m.extra_series = _copy_altered(data, altered.url, sorted(data))
        yield m
    finally:
        clean.stop()
        if altered is not None:
            altered.stop()


def _settings(m: Migrated, target_url: str):
    source, target = m.blocks(target_url)
    return source.settings(), target.settings()


@pytest.mark.servers
@pytest.mark.prefect
def test_clean_migration_verifies_equal(migrated):
    from m3migrate.checks.verify import verify
    from m3migrate.state import MigrationState

    src, tgt = _settings(migrated, migrated.target_url)
    spec = migrated.spec()
    plan = MigrationState(migrated.state_dir, spec.resolved_id(src.read_url, tgt.write_url)).load_plan()
    assert plan is not None
    report = verify(src, tgt, spec, plan, concurrency=3)
    assert report.ok, report.to_markdown()
    t = report.totals
    assert t["samples_source"] == t["samples_target"] == migrated.source_samples
    assert t["stale_markers_skipped"] == migrated.stale_markers
    assert t["series_checked"] == t["series_total"] == migrated.source_series
    assert (t["mismatches"], t["missing"], t["extra"]) == (0, 0, 0)
    assert report.problems.empty
    assert len(report.windows) == len(make_windows(migrated.start_ms, migrated.end_ms, spec.window_ms))
    assert (report.windows["source_samples"] == report.windows["target_samples"]).all()
    assert t["evidence"].startswith("figures")

    # the figures alone agree for every series × window (NaN, ±Inf and full-precision values included:
    # the target's Kahan sum is reproduced bit for bit), but where a sample lies on a window's last
    # millisecond (the next window's edge, counted by Prometheus 2 only): those go sample by sample
    by_figures = verify(src, tgt, spec, plan, concurrency=3, samples_fraction=0.0)
    b = by_figures.totals
    assert by_figures.ok, by_figures.to_markdown()
    assert b["checked_by_figures"] + b["checked_by_samples"] == int(report.windows["series"].sum())
    assert b["checked_by_samples"] == b["figures_differed"] < b["checked_by_figures"] / 10
    by_samples = verify(src, tgt, spec, plan, concurrency=3, evidence="samples")
    assert by_samples.ok and by_samples.totals["checked_by_figures"] == 0
    assert by_samples.totals["checked_by_samples"] == int(report.windows["series"].sum())


@pytest.mark.servers
@pytest.mark.prefect
@pytest.mark.parametrize("evidence", ["figures", "samples"])
def test_altered_target_is_reported_exactly(migrated, tmp_path, evidence):
    from m3migrate.checks.verify import verify

    src, tgt = _settings(migrated, migrated.altered_url)
    spec = migrated.spec()
    # no saved plan: discovers the series; no sampled share: the figures alone must find the mismatch
    report = verify(src, tgt, spec, None, concurrency=4, evidence=evidence, samples_fraction=0.0)
    assert not report.ok
    t = report.totals
    if evidence == "figures":
        assert t["figures_differed"] >= 1 and t["checked_by_samples"] == t["figures_differed"]
    assert (t["mismatches"], t["mismatched_series"], t["missing"], t["extra"]) == (1, 1, 1, 1)
    p = report.problems
    mismatch = p[p["kind"] == "mismatch"].iloc[0]
    ts, source_value, target_value = migrated.altered
    window = next(w for w in make_windows(spec.start_ms, spec.end_ms, spec.window_ms) if w.start_ms <= ts <= w.end_ms)
    assert mismatch["series"] == series_text(migrated.altered_series)
    assert mismatch["window"] == window.index
    assert mismatch["first_diff_ts"] == ts
    assert (mismatch["source_value"], mismatch["target_value"]) == (source_value, target_value)
    assert mismatch["source_count"] == mismatch["target_count"]
    missing = p[p["kind"] == "missing"].iloc[0]
    assert missing["series"] == series_text(migrated.dropped_series)
    assert missing["target_count"] == 0 and missing["source_count"] > 0
    extra = p[p["kind"] == "extra"].iloc[0]
    assert extra["series"] == series_text(migrated.extra_series)
    assert extra["source_count"] == 0 and extra["target_count"] == 30
    assert t["samples_target"] == t["samples_source"] - missing["source_count"] + 30

    paths = report.write(tmp_path / "report")
    assert pd.read_parquet(paths["problems_parquet"])["kind"].tolist() == ["missing", "extra", "mismatch"]
    assert len(pd.read_csv(paths["problems_csv"])) == 3
    assert paths["chart_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = report.to_markdown()
    for key in (migrated.altered_series, migrated.dropped_series, migrated.extra_series):
        assert series_text(key) in md


@pytest.mark.servers
@pytest.mark.prefect
def test_sampling_mode_checks_a_deterministic_fraction(migrated):
    from m3migrate.checks.verify import verify

    src, tgt = _settings(migrated, migrated.altered_url)
    spec = migrated.spec()
    first = verify(src, tgt, spec, None, sample_fraction=0.25, seed=7)
    again = verify(src, tgt, spec, None, sample_fraction=0.25, seed=7)
    n = first.totals["series_checked"]
    assert n == again.totals["series_checked"]
    assert 0.12 * migrated.source_series < n < 0.4 * migrated.source_series
    assert first.problems.equals(again.problems)
    # Every sampled problem is a real one; the extra series is found whichever series are sampled.
    assert set(first.problems["kind"]) <= {"missing", "extra", "mismatch"}
    assert first.totals["extra"] == 1


@pytest.mark.servers
@pytest.mark.prefect
def test_flow_clean_and_failed_with_artifacts(migrated, tmp_path, default_gc_thresholds):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.verify import artifact_key, verify_flow

    spec = migrated.spec()
    ok = verify_flow(
        *migrated.blocks(migrated.target_url),
        spec,
        state_dir=str(migrated.state_dir),
        report_dir=str(tmp_path / "clean"),
    )
    assert ok["ok"] and ok["samples_target"] == migrated.source_samples
    assert gc.get_threshold() == collector.BULK_THRESHOLDS, "the verify flow collects as a data-holding process"

    source, target = migrated.blocks(migrated.altered_url)
    state = verify_flow(
        source, target, spec, state_dir=str(migrated.state_dir), report_dir=str(tmp_path / "bad"), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(VerificationFailed, match="1 missing and 1 extra"):
        state.result()
    mid = spec.resolved_id(source.read_url, target.write_url)
    with get_client(sync_client=True) as client:
        keys = [artifact_key(mid, what) for what in ("problems", "summary", "files")]
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    by_key = {a.key: a for a in found}
    assert set(by_key) == set(keys)
    assert by_key[artifact_key(mid, "problems")].type == "table"
    table = by_key[artifact_key(mid, "problems")].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert [(r["kind"], r["series"]) for r in rows] == [
        ("missing", series_text(migrated.dropped_series)),
        ("extra", series_text(migrated.extra_series)),
        ("mismatch", series_text(migrated.altered_series)),
    ]
    assert "DIFFERENT" in by_key[artifact_key(mid, "summary")].data
    assert "samples_per_window.png" in by_key[artifact_key(mid, "files")].data
    assert (tmp_path / "bad" / "problems.parquet").exists()


def _cli(m: Migrated, target_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "cli", "verify",
        "--source-read-url", f"{m.source_url}{READ_PATH}", "--source-query-url", m.source_url,
        "--target-write-url", f"{target_url}/api/v1/write",
        "--start", _iso(m.start_ms), "--end", _iso(m.end_ms), *extra,
    ]  # fmt: skip


@pytest.mark.servers
@pytest.mark.prefect
@pytest.mark.parametrize(
    ("evidence", "shown"),
    [((), "figures: count, sum and last value"), (("--evidence", "samples"), "samples: every series × window")],
)
def test_cli_prints_the_three_series_and_exits_1(migrated, prefect_api, tmp_path, evidence, shown):
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}
    cmd = _cli(
        migrated,
        migrated.altered_url,
        "--target-query-url",
        migrated.altered_url,
        "--report-dir",
        str(tmp_path / "r"),
        "--state-dir",
        str(tmp_path / "s"),
        "--show",
        "5",
        *evidence,
    )
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    for key in (migrated.altered_series, migrated.dropped_series, migrated.extra_series):
        assert series_text(key) in run.stdout, run.stdout
    assert "value differs" in run.stdout
    assert shown in " ".join(run.stdout.split()), run.stdout
    assert (tmp_path / "r" / "samples_per_window.png").exists()

    no_query = subprocess.run(
        _cli(migrated, migrated.altered_url), env=env, capture_output=True, text=True, timeout=120
    )
    assert no_query.returncode == 2
    assert "target query URL" in no_query.stderr


@pytest.mark.servers
def test_figures_are_the_target_engines_own(tmp_path):
    """count, sum, last and the edge as Prometheus 2.42 computes them: a range [T-R, T] closed on the left
    (promql/engine.go matrixIterSlice keeps t >= maxt - range), stale markers not counted, sum_over_time
    the Kahan-Neumaier sum (functions.go kahanSumInc) that aggregates.kahan_sum reproduces bit for bit,
    and two metric names with otherwise equal labels kept apart by the `or`s."""
    from m3migrate.checks.aggregates import Figures, figures_expression, parse_figures
    from m3migrate.clients.promql import PromQLClient
    from m3migrate.settings.endpoints import TargetSettings
    from sandbox.servers import start_prometheus

    server = start_prometheus(tmp_path, name="figures", remote_write_receiver=True)
    try:
        a = (int(pd.Timestamp.now(tz="UTC").timestamp() * 1000) - 30 * MINUTE_MS) // MINUTE_MS * MINUTE_MS
        b = a + 10 * MINUTE_MS - 1
        kahan = [1e16, 1.0, -1e16, 3.5, 0.1, 0.2, 1e-300]
        assert sum(kahan) != 4.8  # a plain sum loses the 1.0
        stale = _float(STALE_NAN_BITS)
        _write(
            server.url,
            {
                (("__name__", "k"), ("case", "kahan")): [(a + i * 1000, v) for i, v in enumerate(kahan)],
                (("__name__", "m"), ("case", "kahan")): [(a + i * 1000, -v) for i, v in enumerate(kahan)],
                (("__name__", "k"), ("case", "edge")): [(a - 1, 1.0), (a, 2.0), (b, 3.0), (b + 1, 4.0)],
                (("__name__", "k"), ("case", "stale")): [(a, 1.0), (a + 1000, stale), (a + 2000, math.nan)],
            },
        )
        settings = TargetSettings(write_url=f"{server.url}/api/v1/write", query_url=server.url)
        with PromQLClient(server.url, settings) as query:
            expr = figures_expression({"k": '{__name__="k"}', "m": '{__name__="m"}'}, b - a + 1, b)
            figures = parse_figures(query.query(expr, b).result, endpoint=server.url)
    finally:
        server.stop()
    k = figures[(("__name__", "k"), ("case", "kahan"))]
    assert k.figures() == Figures.of(np.array(kahan)) and k.total == 4.8 and k.edge_ms is None
    assert figures[(("__name__", "m"), ("case", "kahan"))].figures() == Figures.of(-np.array(kahan))
    edge = figures[(("__name__", "k"), ("case", "edge"))]
    assert (edge.count, edge.total, edge.last, edge.edge_ms) == (3, 6.0, 3.0, a - 1)  # a - 1 is in [T-R, T]
    gone = figures[(("__name__", "k"), ("case", "stale"))]
    assert gone.count == 2 and math.isnan(gone.total) and math.isnan(gone.last)
    assert gone.figures().matches(Figures.of(np.array([1.0, math.nan])))


# ---------------------------------------------------------------------------------------------------
# extras anywhere under the added label; ignored labels only where the target added them

MINUTE_MS = 60_000
APP = "app_requests_total"
STRAY = (("__name__", "verify_unplanned_total"), ("_source", "m3db"), ("job", "stray"))  # no batch selects it
OTHER = (("__name__", APP), ("_source", "m3db"), ("instance", "c"), ("job", "other"))  # outside --match


def _write(url: str, series: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]) -> None:
    from m3migrate.clients.remote_write import RemoteWriteClient
    from m3migrate.prompb import TimeSeries
    from m3migrate.settings.endpoints import TargetSettings
    from m3migrate.wire.codec import encode_labels, frame_series, single_request

    with RemoteWriteClient(TargetSettings(write_url=f"{url}/api/v1/write")) as writer:
        for labels, samples in series.items():
            ts = TimeSeries()
            for t, v in samples:
                ts.samples.add(timestamp=t, value=v)
            writer.write(single_request(frame_series(encode_labels(labels), ts.SerializeToString()), len(samples)))


@dataclass
class Strays:
    source_url: str  # the M3 gateway in front of the source
    copy_url: str  # the migration done right, plus stray series carrying _source="m3db"
    replica_url: str  # the migration with one sample changed in the replica="r2" series only
    start_ms: int
    end_ms: int
    changed: tuple[int, float, float]  # (timestamp, source value, target value) in the r2 series
    samples_per_series: int = 0

    def settings(self, target_url: str):
        from m3migrate.settings.endpoints import SourceSettings, TargetSettings

        return (
            SourceSettings(read_url=f"{self.source_url}{READ_PATH}", query_url=self.source_url),
            TargetSettings(write_url=f"{target_url}/api/v1/write", query_url=target_url),
        )

    def spec(self, **kw):
        from m3migrate.settings.spec import MigrationSpec

        return MigrationSpec(
            start=_iso(self.start_ms), end=_iso(self.end_ms), match=['{job="app"}'], window_minutes=15, **kw
        )

    def at(self, i: int) -> int:
        return self.start_ms + 30_000 + i * MINUTE_MS


@pytest.fixture(scope="module")
def strays(tmp_path_factory) -> Iterator[Strays]:
    """A source with two series differing only in ``replica`` (and one without it), 45 min at 60 s;
    a target holding their exact copy plus stray ``_source="m3db"`` series, and one where only the
    ``replica="r2"`` series differs. Each series also has a sample on the first and last millisecond of
    every 15 min window; the source is read through the M3 gateway."""
    from sandbox.m3gateway import GatewayNamespace, M3Gateway
    from sandbox.servers import start_prometheus

    work = tmp_path_factory.mktemp("strays")
    quarter = 15 * MINUTE_MS  # windows are aligned to multiples of the window: start on one
    start = (int(pd.Timestamp.now(tz="UTC").timestamp() * 1000) - 50 * MINUTE_MS) // quarter * quarter
    servers = []
    try:
        for name in ("src", "copy", "replica"):
            servers.append(start_prometheus(work, name=name, remote_write_receiver=True))
        src, copy, replica = servers
        m3 = M3Gateway({"default": GatewayNamespace(src.url, retention="30d")})
        servers.append(m3)
        m3.__enter__()
        m = Strays(m3.url, copy.url, replica.url, start, start + 45 * MINUTE_MS - 1, (0, 0.0, 0.0))
        edges = sorted({start + k * quarter + d for k in range(4) for d in (-1, 0)} - {start - 1})
        samples = sorted([(m.at(i), float(i)) for i in range(45)] + [(t, 100.0 + j) for j, t in enumerate(edges)])
        m.samples_per_series = sum(t <= m.end_ms for t, _ in samples)  # one more lies 1 ms after the end
        app = {"__name__": APP, "job": "app"}
        source = {
            tuple(sorted({**app, "instance": "a", "replica": "r1"}.items())): samples,
            tuple(sorted({**app, "instance": "a", "replica": "r2"}.items())): samples,  # same samples
            tuple(sorted({**app, "instance": "b"}.items())): samples,
        }
        _write(src.url, source)
        migrated = {tuple(sorted((*k, ("_source", "m3db")))): v for k, v in source.items()}
        copied = dict(migrated)
        # the target added its own replica label to the series that has none: still the same series
        b = tuple(sorted((*app.items(), ("instance", "b"), ("_source", "m3db"))))
        copied[tuple(sorted((*b, ("replica", "t0"))))] = copied.pop(b)
        copied[STRAY] = [(m.at(i), 1.0) for i in range(20, 40)]  # windows 1 and 2
        copied[OTHER] = [(m.at(i), 2.0) for i in range(16, 21)]  # window 1
        copied[(("__name__", "verify_unplanned_total"), ("job", "live"))] = samples  # no _source: not ours
        copied[(("__name__", "m3migrate_probe"), ("_source", "m3db"), ("migration_id", "x"))] = [(m.at(0), 0.0)]
        _write(copy.url, copied)
        r2 = tuple(sorted({**app, "instance": "a", "replica": "r2", "_source": "m3db"}.items()))
        m.changed = (m.at(22), 22.0, 22.5)
        _write(replica.url, {**migrated, r2: [(t, 22.5 if t == m.at(22) else v) for t, v in samples]})
        yield m
    finally:
        for server in servers:
            if isinstance(server, M3Gateway):
                server.__exit__(None, None, None)
            else:
                server.stop()


@pytest.mark.servers
def test_extras_anywhere_under_the_source_label_are_reported_per_window(strays, tmp_path):
    from m3migrate.checks.verify import verify

    spec = strays.spec()
    report = verify(*strays.settings(strays.copy_url), spec, None, concurrency=2)
    t = report.totals
    assert not report.ok
    assert (t["mismatches"], t["missing"], t["extra"]) == (0, 0, 2), report.to_markdown()
    assert t["series_checked"] == t["series_total"] == 3
    assert t["samples_target"] == t["samples_source"] + 20 + 5
    assert t["extras_searched"] == 'every target series with {_source="m3db"}'
    extra = report.of_kind("extra").set_index("series")
    assert sorted(extra.index) == sorted([series_text(STRAY), series_text(OTHER)])
    assert (extra.loc[series_text(STRAY), "windows"], extra.loc[series_text(STRAY), "target_count"]) == (2, 20)
    assert extra.loc[series_text(STRAY), "target_first_ts"] == strays.at(20)
    assert (extra.loc[series_text(OTHER), "windows"], extra.loc[series_text(OTHER), "target_count"]) == (1, 5)
    assert report.windows["extra"].tolist() == [0, 2, 1]
    paths = report.write(tmp_path / "r")
    csv = pd.read_csv(paths["problems_csv"])
    assert sorted(csv[csv["kind"] == "extra"]["series"]) == sorted([series_text(STRAY), series_text(OTHER)])
    assert pd.read_parquet(paths["windows_parquet"])["extra"].tolist() == [0, 2, 1]
    assert series_text(STRAY) in report.to_markdown()

    # sampling mode still scans the whole target for extras
    assert verify(*strays.settings(strays.copy_url), spec, None, sample_fraction=0.3, seed=3).totals["extra"] == 2

    # without an added label no whole-target scan is possible, and the report says so
    bare = verify(*strays.settings(strays.copy_url), strays.spec(source_label_value=""), None)
    assert "no whole-target scan" in bare.totals["extras_searched"]


@pytest.mark.servers
def test_series_differing_only_in_replica_are_compared_as_two(strays):
    from m3migrate.checks.verify import verify

    report = verify(*strays.settings(strays.replica_url), strays.spec(), None)
    t = report.totals
    assert (t["mismatches"], t["missing"], t["extra"]) == (1, 0, 0), report.to_markdown()
    row = report.of_kind("mismatch").iloc[0]
    assert row["series"] == f'{APP}{{_source="m3db",instance="a",job="app",replica="r2"}}'
    ts, source_value, target_value = strays.changed
    assert (row["first_diff_ts"], row["source_value"], row["target_value"]) == (ts, source_value, target_value)
    assert row["window"] == 1
    assert t["series_checked"] == 3
    assert t["samples_source"] == t["samples_target"] == 3 * strays.samples_per_series  # r1, r2 both counted

    clean = verify(*strays.settings(strays.copy_url), strays.spec(), None)  # target-added replica="t0" ignored
    assert clean.totals["series_checked"] == 3
    assert clean.of_kind("mismatch").empty and clean.of_kind("missing").empty
