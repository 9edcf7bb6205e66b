"""The sandbox itself: the source holds exactly what the stats say, bit-exact, and servers clean up."""

from __future__ import annotations

import itertools
import json
import math
import os
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import snappy

from m3migrate.prompb import prompb_pb2
from sandbox.history import (
    NAN_BITS,
    STALE_NAN_BITS,
    STATS_FILE,
    TRICKY_TARGET,
    HistorySpec,
    SourceSandbox,
    build_source_data,
    expected_series,
    float_bits,
    tail_series,
    write_live_tail,
    write_openmetrics,
)
from sandbox.servers import (
    Server,
    ServerNotInstalled,
    ServerStartError,
    bcrypt_hash,
    make_tls_files,
    start_prometheus,
    vm_force_flush,
)

READ_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Read-Version": "0.1.0",
}
WRITE_HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


def remote_read(
    server: Server, start_ms: int, end_ms: int, matchers: list[tuple[int, str, str]] | None = None
) -> list[prompb_pb2.TimeSeries]:
    """One SAMPLES query over [start_ms, end_ms] (inclusive at both ends)."""
    req = prompb_pb2.ReadRequest()
    query = req.queries.add(start_timestamp_ms=start_ms, end_timestamp_ms=end_ms)
    for mtype, name, value in matchers or [(prompb_pb2.LabelMatcher.RE, "__name__", ".+")]:
        query.matchers.add(type=mtype, name=name, value=value)
    req.accepted_response_types.append(prompb_pb2.ReadRequest.SAMPLES)
    with server.http_client(timeout=120) as client:
        resp = client.post("/api/v1/read", content=snappy.compress(req.SerializeToString()), headers=READ_HEADERS)
    assert resp.status_code == 200, resp.text[:500]
    parsed = prompb_pb2.ReadResponse()
    parsed.ParseFromString(snappy.decompress(resp.content))
    assert len(parsed.results) == 1
    return list(parsed.results[0].timeseries)


def labels_of(ts: prompb_pb2.TimeSeries) -> dict[str, str]:
    return {lb.name: lb.value for lb in ts.labels}


def by_labels(series: list[prompb_pb2.TimeSeries]) -> dict[frozenset[tuple[str, str]], prompb_pb2.TimeSeries]:
    return {frozenset(labels_of(ts).items()): ts for ts in series}


def key(labels: dict[str, str]) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def series_api(server: Server, match: str, start_ms: int, end_ms: int) -> list[dict[str, str]]:
    with server.http_client() as client:
        resp = client.get("/api/v1/series", params={"match[]": match, "start": start_ms / 1000, "end": end_ms / 1000})
    assert resp.status_code == 200, resp.text[:500]
    return list(resp.json()["data"])


# ---------------------------------------------------------------------------------------------
# generator (no servers)
# ---------------------------------------------------------------------------------------------
def test_spec_validation_and_defaults() -> None:
    with pytest.raises(ValueError):
        HistorySpec(series=59)
    spec = HistorySpec()
    assert spec.end_ms is not None and spec.end_ms % 60_000 == 0
    assert spec.end_ms <= time.time() * 1000 - 2 * 3600 * 1000
    assert spec.start_ms == spec.end_ms - (spec.points - 1) * 60_000
    assert spec.points == 10080


@pytest.mark.parametrize("series", [60, 61, 73, 86, 87, 137, 200, 999])
def test_exact_series_count(series: int, tmp_path: Path) -> None:
    spec = HistorySpec(series=series, span_s=300, interval_s=60, end_ms=1_700_000_040_000)
    stats = write_openmetrics(spec, tmp_path / "h.om")
    assert stats.series == series == len(expected_series(spec))
    assert stats.samples == series * 5
    assert len({key(s) for s in expected_series(spec)}) == series  # no duplicate label sets


def test_openmetrics_is_deterministic_and_well_formed(tmp_path: Path) -> None:
    spec = HistorySpec(series=60, span_s=3600, interval_s=60, end_ms=1_700_000_040_000, seed=3)
    a, b = tmp_path / "a.om", tmp_path / "b.om"
    write_openmetrics(spec, a)
    write_openmetrics(spec, b)
    assert a.read_bytes() == b.read_bytes()
    text = a.read_text(encoding="utf-8")
    assert text.endswith("# EOF\n")
    assert '\\"quoted\\" value \\\\ with backslash' in text
    for token in (" NaN ", " +Inf ", " -Inf ", " 0.30000000000000004 ", " 5e-324 ", " -0.0 "):
        assert token in text, token
    # timestamps are whole seconds here and increase within every series
    last: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _value, ts = line.rsplit(" ", 2)
        assert int(ts) > last.get(series, 0)
        last[series] = int(ts)


def test_millisecond_end_is_written_with_fractional_seconds(tmp_path: Path) -> None:
    spec = HistorySpec(series=60, span_s=120, interval_s=60, end_ms=1_700_000_000_250)
    write_openmetrics(spec, tmp_path / "h.om")
    first = next(ln for ln in (tmp_path / "h.om").read_text().splitlines() if not ln.startswith("#"))
    assert first.endswith(" 1699999940.250")


# ---------------------------------------------------------------------------------------------
# the session source (200 x 7 d x 60 s + live tail)
# ---------------------------------------------------------------------------------------------
@pytest.mark.servers
def test_series_api_has_exactly_the_spec_series(source_history: SourceSandbox) -> None:
    spec, stats = source_history.spec, source_history.stats
    data = series_api(source_history.server, '{__name__=~".+"}', stats.start_ms, stats.end_ms)
    assert len(data) == spec.series == stats.series
    assert {key(s) for s in data} == {key(s) for s in expected_series(spec)}
    assert sorted({s["__name__"] for s in data}) == stats.metric_names


@pytest.mark.servers
def test_remote_read_returns_every_sample_bit_exact(source_history: SourceSandbox) -> None:
    spec, stats, server = source_history.spec, source_history.stats, source_history.server
    series = remote_read(server, stats.start_ms, stats.end_ms)
    assert len(series) == spec.series
    assert sum(len(ts.samples) for ts in series) == stats.samples
    assert stats.samples == spec.samples + source_history.tail_stats.samples  # type: ignore[union-attr]
    found = by_labels(series)
    roles = tail_series(spec)

    stale_end = [s.value for s in found[key(roles["stale_end"])].samples]
    assert bits(stale_end[-1]) == struct.pack("<Q", STALE_NAN_BITS)  # the stale marker survived
    assert float_bits(stale_end[-2]) == float_bits(1.0)
    stale_mid = [float_bits(s.value) for s in found[key(roles["stale_mid"])].samples]
    assert stale_mid.count(STALE_NAN_BITS) == 1 and stale_mid[-1] != STALE_NAN_BITS
    nan_series = [float_bits(s.value) for s in found[key(roles["nan"])].samples]
    assert NAN_BITS in nan_series and STALE_NAN_BITS not in nan_series
    tenths = found[key(roles["float"])].samples
    assert [float_bits(s.value) for s in tenths] == [float_bits((k % 7) * 0.1 + 0.2) for k in range(len(tenths))]

    # special values from the blocks (OpenMetrics text -> promtool -> XOR chunks -> remote read)
    values = [s.value for ts in series if labels_of(ts)["__name__"] == "edge_probe_rtt_seconds" for s in ts.samples]
    assert any(math.isnan(v) for v in values) and math.inf in values and -math.inf in values
    cost = [float_bits(s.value) for ts in series if labels_of(ts).get("kind") == "random" for s in ts.samples]
    assert {float_bits(5e-324), float_bits(1.7976931348623157e308)} <= set(cost)
    # -0.0 is stored by the TSDB (PromQL answers "-0") but Prometheus' gogo-protobuf encoder omits a
    # double that compares equal to 0 (proto3 default), so remote read delivers it as +0.0.
    assert float_bits(-0.0) not in set(cost) and float_bits(0.0) in set(cost)


@pytest.mark.servers
def test_remote_read_range_is_inclusive_and_head_is_separate(source_history: SourceSandbox) -> None:
    spec, server = source_history.spec, source_history.server
    first = remote_read(server, spec.start_ms, spec.start_ms)
    assert sum(len(ts.samples) for ts in first) == spec.series  # every series starts at start_ms
    last_block = remote_read(server, spec.last_ms, spec.last_ms)
    assert sum(len(ts.samples) for ts in last_block) == spec.series
    tail = source_history.tail_stats
    assert tail is not None and tail.start_ms > spec.last_ms
    head = remote_read(server, tail.start_ms, tail.end_ms)
    assert len(head) == tail.series and sum(len(ts.samples) for ts in head) == tail.samples


@pytest.mark.servers
def test_histogram_is_consistent(source_history: SourceSandbox) -> None:
    spec, server = source_history.spec, source_history.server
    matcher = [(prompb_pb2.LabelMatcher.RE, "__name__", "http_request_duration_seconds_(bucket|count)")]
    series = remote_read(server, spec.last_ms - 3_600_000, spec.last_ms, matcher)
    groups: dict[str, dict[str, list[float]]] = {}
    for ts in series:
        lab = labels_of(ts)
        le = lab.get("le", "count")
        groups.setdefault(lab["instance"], {})[le] = [s.value for s in ts.samples]
    assert groups
    for buckets in groups.values():
        assert buckets["+Inf"] == buckets["count"]
        order = [*sorted((k for k in buckets if k not in ("+Inf", "count")), key=float), "+Inf"]
        for lo, hi in itertools.pairwise(order):
            assert all(a <= b for a, b in zip(buckets[lo], buckets[hi], strict=True))


@pytest.mark.servers
def test_unicode_labels_and_prometheus_self_metrics(source_history: SourceSandbox) -> None:
    server, stats = source_history.server, source_history.stats
    probes = series_api(server, "edge_probe_rtt_seconds", stats.start_ms, stats.end_ms)
    assert any(p["city"] == "東京" and p["region"] == "zürich" and p["target"] == TRICKY_TARGET for p in probes)
    assert any(p["city"] == "Αθήνα" for p in probes)
    with server.http_client() as client:
        names = client.get("/api/v1/label/__name__/values").json()["data"]
    assert "prometheus_http_requests_total" in names
    assert any(n.startswith("prometheus_") for n in stats.metric_names)


# ---------------------------------------------------------------------------------------------
# building, caching, the tail
# ---------------------------------------------------------------------------------------------
@pytest.mark.servers
def test_build_is_cached_per_spec(tmp_path: Path) -> None:
    spec = HistorySpec(series=60, span_s=2 * 3600, interval_s=60)
    data = tmp_path / "data"
    stats = build_source_data(spec, data, workdir=tmp_path / "work")
    stats_file = data / STATS_FILE
    mtime = stats_file.stat().st_mtime_ns
    assert build_source_data(spec, data, workdir=tmp_path / "work") == stats
    assert stats_file.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not list((tmp_path / "work").glob("*.om"))  # the intermediate was deleted
    other = HistorySpec(series=61, span_s=2 * 3600, interval_s=60, end_ms=spec.end_ms)
    assert build_source_data(other, data, workdir=tmp_path / "work").series == 61
    assert json.loads(stats_file.read_text())["spec"]["series"] == 61


@pytest.mark.servers
def test_live_tail_fails_loudly_without_receiver(prometheus_target: Callable[..., Server]) -> None:
    server = prometheus_target(remote_write_receiver=False)
    with pytest.raises(RuntimeError, match="HTTP 404"):
        write_live_tail(server.url, HistorySpec(series=60, span_s=3600))


# ---------------------------------------------------------------------------------------------
# auth, TLS, lifecycle
# ---------------------------------------------------------------------------------------------
@pytest.mark.servers
def test_basic_auth(prometheus_target: Callable[..., Server]) -> None:
    server = prometheus_target(
        web_config={"basic_auth_users": {"migrator": bcrypt_hash("s3cret-pw")}},
        ready_auth=("migrator", "s3cret-pw"),
    )
    assert "s3cret-pw" not in repr(server)
    with httpx.Client(trust_env=False) as client:
        assert client.get(f"{server.url}/-/ready").status_code == 401
        assert client.get(f"{server.url}/-/ready", auth=("migrator", "wrong")).status_code == 401
        assert client.get(f"{server.url}/-/ready", auth=("migrator", "s3cret-pw")).status_code == 200
    assert "s3cret-pw" not in (server.data_dir.parent / "web.yml").read_text()


@pytest.mark.servers
def test_tls_and_client_certificates(prometheus_target: Callable[..., Server], tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    server = prometheus_target(
        web_config={"tls_server_config": {"cert_file": tls.server_cert, "key_file": tls.server_key}},
        ready_verify=tls.ca_cert,
    )
    assert server.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    with httpx.Client(trust_env=False, verify=ctx) as client:
        assert client.get(f"{server.url}/-/ready").status_code == 200
    with httpx.Client(trust_env=False) as client, pytest.raises(httpx.ConnectError):
        client.get(f"{server.url}/-/ready")  # system CAs do not know the sandbox CA

    mtls = prometheus_target(
        web_config={
            "tls_server_config": {
                "cert_file": tls.server_cert,
                "key_file": tls.server_key,
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": tls.ca_cert,
            }
        },
        ready_verify=tls.ca_cert,
        ready_cert=(str(tls.client_cert), str(tls.client_key)),
    )
    with mtls.http_client() as client:
        assert client.get("/-/ready").status_code == 200
    with httpx.Client(trust_env=False, verify=ctx) as client, pytest.raises(httpx.HTTPError):
        client.get(f"{mtls.url}/-/ready")  # no client certificate


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.servers
def test_stop_kill_and_restart_leave_no_process(tmp_path: Path) -> None:
    with start_prometheus(tmp_path, name="lifecycle", remote_write_receiver=True) as server:
        now = (int(time.time()) // 60) * 60_000
        req = prompb_pb2.WriteRequest()
        ts = req.timeseries.add()
        ts.labels.add(name="__name__", value="restart_probe")
        ts.samples.add(timestamp=now, value=42.0)
        with server.http_client() as client:
            client.post(
                "/api/v1/write", content=snappy.compress(req.SerializeToString()), headers=WRITE_HEADERS
            ).raise_for_status()
        first_pid = server.pid
        server.kill()  # crash: the WAL must bring the sample back
        assert pid_gone(first_pid) and not server.alive()
        server.start()
        assert server.alive() and server.pid != first_pid
        assert [s.value for t in remote_read(server, now, now) for s in t.samples] == [42.0]
        pid = server.pid
    assert not server.alive() and pid_gone(pid)


@pytest.mark.servers
def test_failed_start_reports_log_and_leaves_no_process(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="no-such-flag") as err:
        start_prometheus(tmp_path, name="broken", extra_flags=["--no-such-flag"])
    assert "exited with code" in str(err.value)


def test_missing_binary_has_actionable_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServerNotInstalled, match=r"install_deps\.sh"):
        start_prometheus(tmp_path, name="nobin")


@pytest.mark.servers
def test_victoriametrics_target_accepts_remote_write(victoriametrics_target: Callable[..., Server]) -> None:
    vm = victoriametrics_target()
    old = (int(time.time()) // 60) * 60_000 - 40 * 86400_000  # older than VM's default 1-month retention
    req = prompb_pb2.WriteRequest()
    ts = req.timeseries.add()
    for name, value in sorted({"__name__": "vm_probe", "city": "東京"}.items()):
        ts.labels.add(name=name, value=value)
    for k in range(10):
        ts.samples.add(timestamp=old + k * 60_000, value=float(k))
    with vm.http_client() as client:
        client.post(
            "/api/v1/write", content=snappy.compress(req.SerializeToString()), headers=WRITE_HEADERS
        ).raise_for_status()
        vm_force_flush(vm)
        resp = client.get(
            "/api/v1/query",
            params={
                "query": 'count_over_time(vm_probe{city="東京"}[1h])',
                "time": (old + 9 * 60_000) / 1000 + 1,
            },
        )
    result = resp.json()["data"]["result"]
    assert [r["value"][1] for r in result] == ["10"]
    pid = vm.pid
    vm.stop()
    assert pid_gone(pid)
