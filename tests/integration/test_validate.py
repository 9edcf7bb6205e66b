"""Validation checks pass and fail for their real causes, against real servers.

Prometheus 2.42 plays the plain source and the targets (with/without an out-of-order window, with basic
auth, with TLS), VictoriaMetrics a second kind of target; the FAKE M3 coordinator (tests/fake_m3.py) only
supplies what no real server here can show: the namespace API and M3's limit errors.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from fake_m3 import FakeM3Coordinator, fake_namespace

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from m3migrate.checks.validate import (
    CheckResult,
    ValidationInput,
    ValidationReport,
    check_clock_skew,
    check_naming,
    check_source_kind,
    check_source_limits,
    check_source_namespaces,
    check_source_promql,
    check_source_read,
    check_target_query,
    check_target_write,
    check_volume,
    run_all,
    shared_listings,
)
from m3migrate.clients.promql import format_seconds
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms as _iso
from m3migrate.wire.codec import STALE_NAN_BITS, encode_labels, frame_series, single_request
from sandbox.compare import diff_target, read_all, with_label
from sandbox.servers import bcrypt_hash, free_port, make_tls_files, start_prometheus

ROOT = Path(__file__).parents[2]
DAY_MS = 86_400_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _spec(start_ms: int | None = None, end_ms: int | None = None, **kw) -> MigrationSpec:
    end_ms = end_ms if end_ms is not None else _now_ms() - 60_000
    start_ms = start_ms if start_ms is not None else end_ms - 7 * DAY_MS
    return MigrationSpec(start=_iso(start_ms), end=_iso(end_ms), **kw)


def _inp(source: SourceSettings | None = None, target: TargetSettings | None = None, spec=None, **kw):
    closed = f"http://127.0.0.1:{free_port()}"
    return ValidationInput(
        source or SourceSettings(read_url=f"{closed}/api/v1/read"),
        target or TargetSettings(write_url=f"{closed}/api/v1/write"),
        spec or _spec(),
        **kw,
    )


def _write(url: str, name: str, ts_ms: int, tenant: str | None = None, **labels: str) -> None:
    series = TimeSeries()
    series.samples.add(timestamp=ts_ms, value=1.0)
    lbls = sorted({"__name__": name, **labels}.items())
    with RemoteWriteClient(TargetSettings(write_url=url, tenant=tenant)) as writer:
        writer.write(single_request(frame_series(encode_labels(lbls), series.SerializeToString()), 1))


# -- report ----------------------------------------------------------------------------------------


def test_report_json_and_markdown():
    report = ValidationReport(
        [CheckResult("a", "pass", "ok"), CheckResult("b", "warn", "x|y", "do z"), CheckResult("c", "fail", "no", "f")],
        migration_id="m-1",
    )
    assert report.failed
    data = json.loads(report.to_json())
    assert data["result"] == "fail" and data["counts"] == {"pass": 1, "warn": 1, "fail": 1}
    assert ValidationReport.from_dict(data).checks == report.checks
    md = report.to_markdown()
    assert "| status | check | observed | fix |" in md and "| WARN | b | x\\|y | do z |" in md
    assert not ValidationReport([CheckResult("a", "warn", "w")]).failed


# -- source ----------------------------------------------------------------------------------------


def test_unreachable_source_fails_as_transient_and_names_the_flag():
    result = check_source_read(_inp())
    assert result.status == "fail" and result.transient
    assert "unreachable" in result.observed and "--source-read-url" in result.fix


@pytest.mark.servers
def test_wrong_credentials_are_named_401(tmp_path):
    server = start_prometheus(
        tmp_path,
        name="auth",
        web_config={"basic_auth_users": {"migrator": bcrypt_hash("right")}},
        ready_auth=("migrator", "right"),
    )
    with server:
        wrong = SourceSettings(read_url=f"{server.url}/api/v1/read", auth={"username": "migrator", "password": "bad"})
        for check in (check_source_read, check_source_promql):
            result = check(_inp(wrong))
            assert result.status == "fail" and not result.transient
            assert "HTTP 401 Unauthorized" in result.observed
            assert "--source-user" in result.fix and "M3MIGRATE_SOURCE_PASSWORD" in result.fix
            assert "bad" not in result.observed + result.fix
        right = SourceSettings(read_url=f"{server.url}/api/v1/read", auth={"username": "migrator", "password": "right"})
        assert check_source_read(_inp(right)).status == "pass"


@pytest.mark.servers
def test_tls_failure_names_the_ca_flag(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    server = start_prometheus(
        tmp_path,
        name="tls",
        web_config={"tls_server_config": {"cert_file": tls.server_cert, "key_file": tls.server_key}},
        ready_verify=str(tls.ca_cert),
    )
    with server:
        untrusted = check_source_read(_inp(SourceSettings(read_url=f"{server.url}/api/v1/read")))
        assert untrusted.status == "fail" and "TLS handshake failed" in untrusted.observed
        assert "--source-ca-file" in untrusted.fix
        plain = server.url.replace("https://", "http://")
        wrong_scheme = check_source_read(_inp(SourceSettings(read_url=f"{plain}/api/v1/read")))
        assert wrong_scheme.status == "fail" and "https://" in wrong_scheme.fix
        trusted = SourceSettings(read_url=f"{server.url}/api/v1/read", tls={"ca_file": str(tls.ca_cert)})
        assert check_source_read(_inp(trusted)).status == "pass"


@pytest.fixture(scope="module")
def plain_prometheus(tmp_path_factory):
    server = start_prometheus(tmp_path_factory.mktemp("plain"), name="plain", remote_write_receiver=True)
    with server:
        yield server


@pytest.mark.servers
def test_wrong_read_path_is_404_and_names_the_paths(plain_prometheus):
    result = check_source_read(_inp(SourceSettings(read_url=f"{plain_prometheus.url}/api/v1/prom/remote/reed")))
    assert result.status == "fail" and "HTTP 404" in result.observed
    assert "/api/v1/prom/remote/read" in result.fix and "--source-read-url" in result.fix


@pytest.mark.servers
def test_prometheus_source_is_detected_and_answers(plain_prometheus):
    inp = _inp(SourceSettings(read_url=f"{plain_prometheus.url}/api/v1/read"))
    for check in (check_source_read, check_source_promql, check_source_namespaces, check_source_limits):
        assert check(inp).status == "pass", check(inp)
    kind = check_source_kind(inp)
    assert kind.status == "pass" and kind.details["kind"] == "prometheus" and "Prometheus" in kind.observed


M3_NAMESPACES = {
    "default": fake_namespace("48h"),
    "agg_1m_40d": fake_namespace("40d", resolution="1m"),
    "agg_5m_1y": fake_namespace("365d", resolution="5m", status="INITIALIZING"),
}


def test_fake_m3_is_detected_with_its_namespaces():
    with FakeM3Coordinator(namespaces=M3_NAMESPACES) as m3:
        inp = _inp(SourceSettings(read_url=m3.read_url))
        assert check_source_read(inp).status == "pass"
        kind = check_source_kind(inp)
    assert kind.details["kind"] == "m3"
    assert "M3 Coordinator" in kind.observed
    assert "default (unaggregated, retention 2d, ready)" in kind.observed
    assert "agg_1m_40d (aggregated 1m:40d, ready)" in kind.observed
    assert kind.status == "warn" and "agg_5m_1y" in kind.fix  # not READY


def test_m3_tiers_are_shown_with_the_namespace_of_each_range():
    """namespaces=auto (the default): the history older than the raw retention (2 d) comes from the READY
    1m:40d namespace, the rest raw; the not-READY 5m:1y one is never planned."""
    with FakeM3Coordinator(namespaces=M3_NAMESPACES) as m3:
        result = check_source_namespaces(_inp(SourceSettings(read_url=m3.read_url), spec=_spec(_now_ms() - 5 * DAY_MS)))
        recent = check_source_namespaces(_inp(SourceSettings(read_url=m3.read_url), spec=_spec(_now_ms() - DAY_MS)))
    assert result.status == "warn" and "downsampled" in result.observed
    assert [(t["namespace"], t["storage_policy"]) for t in result.details["tiers"]] == [
        ("agg_1m_40d", "1m:40d"),
        ("default", "unaggregated"),
    ]
    assert "agg_5m_1y" not in result.observed
    assert recent.status == "pass" and [t["namespace"] for t in recent.details["tiers"]] == ["default"]


def test_m3_unpinned_range_older_than_unaggregated_retention_warns_about_downsampling():
    with FakeM3Coordinator(namespaces=M3_NAMESPACES) as m3:
        source = SourceSettings(read_url=m3.read_url, namespaces="unpinned")
        result = check_source_namespaces(_inp(source))
        recent = check_source_namespaces(_inp(source, spec=_spec(_now_ms() - DAY_MS)))
    assert result.status == "warn" and "downsampled" in result.observed
    assert "--source-storage-policy" in result.fix and "1m:40d" in result.fix and "--start" in result.fix
    assert recent.status == "pass"


def test_m3_pinned_storage_policy_that_does_not_exist_fails():
    with FakeM3Coordinator(namespaces=M3_NAMESPACES) as m3:
        missing = SourceSettings(read_url=m3.read_url, metrics_type="aggregated", storage_policy="5m:90d")
        result = check_source_namespaces(_inp(missing))
        existing = SourceSettings(read_url=m3.read_url, metrics_type="aggregated", storage_policy="1m:40d")
        ok = check_source_namespaces(_inp(existing))
        too_old = check_source_namespaces(_inp(existing, spec=_spec(_now_ms() - 50 * DAY_MS)))
    assert result.status == "fail" and "5m:90d" in result.observed
    assert "--source-storage-policy" in result.fix and "1m:40d" in result.fix
    assert ok.status == "pass"
    assert too_old.status == "warn" and "empty" in too_old.observed


def test_m3_limit_too_small_fails_naming_the_header():
    with FakeM3Coordinator(limit_error=True) as m3:
        result = check_source_limits(_inp(SourceSettings(read_url=m3.read_url, limit_max_series=1)))
    assert result.status == "fail" and "query exceeded limit" in result.observed
    assert "M3-Limit-Max-Series" in result.fix


def test_batches_bigger_than_the_series_limit_fail():
    with FakeM3Coordinator() as m3:
        result = check_source_limits(_inp(SourceSettings(read_url=m3.read_url, limit_max_series=500)))
    assert result.status == "fail" and "2000" in result.observed and "M3-Limit-Max-Series" in result.fix


# -- target ----------------------------------------------------------------------------------------


STALE = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
MIN_MS = 60_000


@pytest.fixture(scope="module")
def probe_source(tmp_path_factory):
    """A source whose data starts 2.5 h after the probe specs' start (the first windows are empty): the
    first series (sorted) begins with a stale marker; a second series 3 days older for the TOO OLD case."""
    server = start_prometheus(tmp_path_factory.mktemp("probe-src"), name="probe-src", remote_write_receiver=True)
    with server:
        t0 = (_now_ms() - 6 * 3_600_000) // MIN_MS * MIN_MS
        series = {  # the oldest first: an empty head takes its first sample's time as its clock
            (("__name__", "old_metric"),): [(t0 - 3 * DAY_MS + i * MIN_MS, 2.0) for i in range(60)],
            (("__name__", "prometheus_up"), ("job", "x")): [(t0, STALE)]
            + [(t0 + i * MIN_MS, 1.0) for i in range(1, 180)],
            (("__name__", "zz_other"), ("job", "y")): [(t0 + i * MIN_MS, float(i)) for i in range(180)],
        }
        framed = []
        for labels, points in series.items():
            ts = TimeSeries()
            for t, v in points:
                ts.samples.add(timestamp=t, value=v)
            framed.append(frame_series(encode_labels(labels), ts.SerializeToString()))
        with RemoteWriteClient(TargetSettings(write_url=f"{server.url}/api/v1/write")) as writer:
            writer.write(single_request(b"".join(framed), sum(map(len, series.values()))))
        yield server, t0


def _probe_spec(t0: int, **kw) -> MigrationSpec:
    return MigrationSpec(start=_iso(t0 - 150 * MIN_MS), end=_iso(t0 + 3 * 3_600_000), **kw)


def _probe_inp(source, target, spec, **kw) -> ValidationInput:
    src = SourceSettings(read_url=f"{source.url}/api/v1/read", query_url=source.url)
    tgt = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    return ValidationInput(src, tgt, spec, **kw)


def _held(url: str) -> set:
    answer = httpx.get(f"{url}/api/v1/series", params={"match[]": '{__name__=~".+"}', "start": "0"}).json()
    return {tuple(sorted(s.items())) for s in answer["data"]}


@pytest.mark.servers
@pytest.mark.prefect
def test_probe_is_a_sample_of_the_migration_and_validate_plus_migrate_leaves_nothing_else(
    prefect_api, probe_source, prometheus_target, tmp_path
):
    source, t0 = probe_source
    target = prometheus_target()
    spec = _probe_spec(t0, merge_prometheus_prefix=True, migration_id="probe")
    result = check_target_write(_probe_inp(source, target, spec))
    assert result.status == "pass", result
    # The first sample of the first series, relabeled as the migration writes it, stale-marker bits and all.
    migrated = (("__name__", "up"), ("_source", "m3db"), ("job", "x"))
    assert result.details["probe_series"] == dict(migrated) and result.details["probe_timestamp_ms"] == t0
    assert _held(target.url) == {migrated}
    assert read_all(target.url, spec.start_ms, spec.end_ms) == {migrated: [(t0, STALE_NAN_BITS)]}
    assert check_target_write(_probe_inp(source, target, spec)).status == "pass"  # validate again: identical

    migrate(
        M3Source(read_url=f"{source.url}/api/v1/read", query_url=source.url),
        ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
        spec,
        state_dir=str(tmp_path / "state"),
    )
    renamed = {
        tuple(sorted((("__name__", "up"), *[kv for kv in k if kv[0] != "__name__"])))
        if ("__name__", "prometheus_up") in k
        else k: v
        for k, v in read_all(source.url, spec.start_ms, spec.end_ms).items()
    }
    expected = with_label(renamed, "_source", "m3db")
    assert diff_target(expected, target.url, spec.start_ms, spec.end_ms) == []
    assert _held(target.url) == set(expected), "the target holds the migrated series and nothing else"


@pytest.mark.servers
def test_a_source_without_samples_is_a_warning_and_writes_nothing(probe_source, prometheus_target):
    source, t0 = probe_source
    target = prometheus_target()
    empty = MigrationSpec(start=_iso(t0 - 10 * 3_600_000), end=_iso(t0 - 9 * 3_600_000))
    result = check_target_write(_probe_inp(source, target, empty))
    assert result.status == "warn" and "nothing to probe" in result.observed, result
    assert _held(target.url) == set()


@pytest.mark.servers
def test_target_without_ooo_holding_recent_data_fails_with_the_remedies(probe_source, prometheus_target):
    source, t0 = probe_source
    target = prometheus_target()
    _write(f"{target.url}/api/v1/write", "already_there", _now_ms())
    result = check_target_write(_probe_inp(source, target, _probe_spec(t0)))
    assert result.status == "fail" and "OUT OF BOUNDS" in result.observed
    assert "--tsdb.out-of-order.time-window=" in result.fix and "out_of_order_time_window" in result.fix
    assert "--target-tenant" in result.fix and "--write-mode out_of_order" in result.fix


@pytest.mark.servers
def test_ooo_window_shorter_than_the_range_fails_too_old(probe_source, prometheus_target):
    source, t0 = probe_source
    target = prometheus_target(ooo_window="1d")
    _write(f"{target.url}/api/v1/write", "already_there", _now_ms())
    old = MigrationSpec(start=_iso(t0 - 3 * DAY_MS - 10 * MIN_MS), end=_iso(t0 - 3 * DAY_MS + 3_600_000))
    result = check_target_write(_probe_inp(source, target, old))
    assert result.status == "fail" and "TOO OLD" in result.observed and "(1d)" in result.observed
    assert "--tsdb.out-of-order.time-window=4d" in result.fix and "--start" in result.fix
    assert check_target_write(_probe_inp(source, target, _probe_spec(t0))).status == "pass"


@pytest.mark.servers
def test_victoriametrics_target_accepts_the_probe(probe_source, victoriametrics_target):
    source, t0 = probe_source
    vm = victoriametrics_target()
    inp = _probe_inp(source, vm, _probe_spec(t0))
    assert check_target_write(inp).status == "pass"
    assert check_target_query(inp).status == "pass"


def test_target_unreachable_and_no_query_url():
    inp = _inp()
    write = check_target_write(inp)
    assert write.status == "fail" and write.transient and "--target-write-url" in write.fix
    query = check_target_query(inp)
    assert query.status == "warn" and "--target-query-url" in query.fix


# -- naming, volume, clock -------------------------------------------------------------------------


@pytest.mark.servers
def test_naming_clash_warns_with_the_merge_rule(source_history, prometheus_target):
    target = prometheus_target()
    _write(f"{target.url}/api/v1/write", "http_requests_total", _now_ms(), code="200")
    stats = source_history.stats
    source = SourceSettings(read_url=f"{source_history.server.url}/api/v1/read")
    tgt = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    spec = _spec(stats.start_ms, stats.end_ms, match=["prometheus_http_requests_total"])
    result = check_naming(ValidationInput(source, tgt, spec))
    assert result.status == "warn", result
    assert "prometheus_http_requests_total (source) vs http_requests_total (target)" in result.observed
    assert "--merge-prometheus-prefix" in result.fix and "prometheus_(.+)" in result.fix
    merged = _spec(stats.start_ms, stats.end_ms, match=["prometheus_http_requests_total"], merge_prometheus_prefix=True)
    assert check_naming(ValidationInput(source, tgt, merged)).status == "pass"
    bad_rule = _spec(
        stats.start_ms,
        stats.end_ms,
        match=["prometheus_http_requests_total"],
        relabel_rules=[{"action": "labelkeep", "regex": "__name__"}],
    )
    collide = check_naming(ValidationInput(source, tgt, bad_rule))
    assert collide.status == "fail" and "become one" in collide.observed


@pytest.mark.servers
def test_volume_estimate_and_whole_run_on_a_good_pair(source_history, prometheus_target):
    target = prometheus_target()
    stats = source_history.stats
    source = SourceSettings(read_url=f"{source_history.server.url}/api/v1/read")
    tgt = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    inp = ValidationInput(source, tgt, _spec(stats.start_ms, stats.end_ms))
    volume = check_volume(inp)
    assert volume.status == "pass", volume
    assert volume.details["series"] > 0 and volume.details["samples"] > 0 and volume.details["expected_seconds"] > 0
    report = run_all(inp)
    assert not report.failed, report.to_markdown()


def _last_hour_listings(m3: FakeM3Coordinator, spec: MigrationSpec) -> int:
    """How many /api/v1/series requests the fake saw for the last hour of the spec's range."""
    start = urlencode({"start": format_seconds(max(spec.start_ms, spec.end_ms - 3_600_000))}).encode()
    return sum(1 for r in m3.requests_to("/api/v1/series") if start in r.body.split(b"&"))


@pytest.mark.servers
def test_one_validation_run_lists_the_last_hour_once(source_history, prometheus_target):
    """limits, naming and volume all need the last hour's series: at 10^5 series each listing is ~100 MB
    and seconds of the source's time, so a run lists them once; separate check calls list each time."""
    target = prometheus_target()
    stats = source_history.stats
    upstream = source_history.server.url
    with FakeM3Coordinator(upstream_read_url=f"{upstream}/api/v1/read", upstream_query_url=upstream) as m3:
        source = SourceSettings(read_url=m3.read_url)
        tgt = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
        spec = _spec(stats.start_ms, stats.end_ms)
        inp = ValidationInput(source, tgt, spec)
        report = {c.name: c for c in run_all(inp).checks}
        assert _last_hour_listings(m3, spec) == 1
        assert report["source limits"].status == "pass", report["source limits"]
        assert report["naming"].status == "pass", report["naming"]
        listed = report["source limits"].details["series_last_hour"]
        assert listed == report["volume estimate"].details["series"] > 0
        check_source_limits(inp)
        check_volume(inp)
        assert _last_hour_listings(m3, spec) == 3  # outside a run: each check asks the source itself


def test_a_failed_listing_is_not_kept_for_the_retry():
    """A check's task retries a transient failure: the retry must ask the source again, not get the old error."""
    with FakeM3Coordinator(limit_error=True) as m3:
        inp = _inp(SourceSettings(read_url=m3.read_url))
        with shared_listings():
            assert check_source_limits(inp).status == "fail"
            m3.limit_error = False
            assert check_source_limits(inp).status == "pass"
            assert check_volume(inp).status == "pass"
        assert _last_hour_listings(m3, inp.spec) == 2


@pytest.mark.servers
def test_clock_skew_uses_the_servers_date_headers(plain_prometheus, victoriametrics_target):
    vm = victoriametrics_target()
    source = SourceSettings(read_url=f"{plain_prometheus.url}/api/v1/read")
    target = TargetSettings(write_url=f"{vm.url}/api/v1/write", query_url=vm.url)
    inp = ValidationInput(source, target, _spec())
    ok = check_clock_skew(inp)
    assert ok.status == "pass" and abs(ok.details["source_offset_s"]) < 3 and abs(ok.details["target_offset_s"]) < 3
    skewed = check_clock_skew(inp, now=lambda: time.time() - 600)  # this machine 10 min behind both servers
    assert skewed.status == "warn" and 590 < skewed.details["source_offset_s"] < 610
    assert "NTP" in skewed.fix


# -- flow and CLI ----------------------------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.prefect
def test_flow_makes_the_artifact_and_fails_when_a_check_fails(prefect_api, plain_prometheus, prometheus_target):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    from blocks import M3Source, ThanosTarget
    from flows.validate import artifact_key, validate
    from m3migrate.checks.validate import ValidationFailed

    target = prometheus_target()
    source = M3Source(read_url=f"{plain_prometheus.url}/api/v1/read")
    spec = _spec(migration_id="flow-ok")
    report = validate(source, ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url), spec)
    assert report["result"] == "pass" and len(report["checks"]) == 10

    bad = ThanosTarget(write_url=f"{target.url}/api/v1/nowrite", query_url=target.url)
    with pytest.raises(ValidationFailed) as failed:
        validate(source, bad, _spec(migration_id="flow-bad"), retry_delay_seconds=0)
    checks = {c["name"]: c for c in failed.value.report["checks"]}
    assert checks["target write probe"]["status"] == "fail" and "HTTP 404" in checks["target write probe"]["observed"]
    # Filtered by key: the session's API holds other tests' artifacts, past the server's default page of 200.
    with get_client(sync_client=True) as client:
        for mid in ("flow-ok", "flow-bad"):
            found = client.read_latest_artifacts(
                artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[artifact_key(mid)]))
            )
            assert found and "| status | check | observed | fix |" in found[0].data


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250", **env}
    return subprocess.run(
        [sys.executable, "-m", "cli", "validate", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )


@pytest.mark.servers
@pytest.mark.prefect
def test_cli_prints_the_table_writes_the_report_and_exits_by_status(prefect_api, plain_prometheus, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"
    spec = _spec()
    base = [
        "--start",
        _iso(spec.start_ms),
        "--end",
        _iso(spec.end_ms),
        "--source-read-url",
        f"{plain_prometheus.url}/api/v1/read",
    ]
    env = {"PREFECT_API_URL": prefect_api}
    report = tmp_path / "report.json"
    good = _run_cli(
        *base,
        "--target-write-url",
        f"{plain_prometheus.url}/api/v1/write",
        "--target-query-url",
        plain_prometheus.url,
        "--migration-id",
        "cli-ok",
        "--report",
        str(report),
        env=env,
    )
    assert good.returncode == 0, good.stdout + good.stderr[-3000:]
    assert "PASS" in good.stdout and "target write probe" in good.stdout
    assert json.loads(report.read_text())["result"] == "pass"

    bad = _run_cli(
        *base,
        "--target-write-url",
        f"{closed}/api/v1/write",
        "--migration-id",
        "cli-bad",
        "--report",
        str(report),
        env=env,
    )
    assert bad.returncode == 1, bad.stdout + bad.stderr[-3000:]
    assert "FAIL" in bad.stdout and "--target-write-url" in bad.stdout
    assert json.loads(report.read_text())["result"] == "fail"

    config = _run_cli(*base, "--target-write-url", "ftp://x", env=env)
    assert config.returncode == 2 and "write_url" in config.stderr


def test_only_transient_failures_are_retried():
    from prefect.states import Completed, Failed

    from m3migrate.errors import ConfigError
    from tasks.retries import retry_unless_terminal
    from tasks.validate import TransientCheck, result_of

    transient = CheckResult("x", "fail", "unreachable", "check host", {"transient": True}).to_dict()
    assert retry_unless_terminal(None, None, Failed(data=TransientCheck(transient)))
    assert not retry_unless_terminal(None, None, Failed(data=ConfigError("permanent")))
    assert result_of("x", Failed(data=TransientCheck(transient))).observed == "unreachable"
    crashed = result_of("y", Failed(data=RuntimeError("boom")))
    assert crashed.status == "fail" and "boom" in crashed.observed
    assert result_of("z", Completed(data=CheckResult("z", "warn", "w").to_dict())).status == "warn"
