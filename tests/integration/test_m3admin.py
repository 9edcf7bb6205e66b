"""M3AdminClient and the M3-only PromQL behaviour, against the FAKE M3 Coordinator and a real Prometheus."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import snappy
from fake_m3 import LIMITED_VALUE, FakeM3Coordinator, fake_namespace
from test_promql import (
    FAST_RETRY,
    HTML_PAGE,
    fake_canned_server_local,
    free_port_local,
    remote_write_local,
    run_prometheus_local,
)

from m3migrate.clients.m3admin import (
    M3AdminClient,
    M3Namespace,
    format_m3_duration,
    parse_m3_duration,
    parse_storage_policy,
)
from m3migrate.clients.promql import PromQLClient
from m3migrate.errors import AuthError, ConfigError, SourceLimitExceeded, TransientError
from m3migrate.prompb import prompb_pb2
from m3migrate.settings.endpoints import EndpointSettings

S = 1_000
H = 3_600 * S
D = 24 * H

NAMESPACES = {
    "default": fake_namespace("48h"),
    "agg_1m_40d": fake_namespace("40d", resolution="1m", block_size="24h", downsample_all=False),
    "agg_5m_1y": fake_namespace("365d", resolution="5m", block_size="24h", downsample_all=None),
    "agg_new": fake_namespace("14d", resolution="10s", status="INITIALIZING"),
    "legacy": fake_namespace("24h", status=None),
}


class PrometheusAdminLocal:
    def __init__(self, url: str, base_ms: int) -> None:
        self.url = url
        self.base_ms = base_ms


@pytest.fixture(scope="module")
def prometheus_admin_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusAdminLocal]:
    base_ms = (int(time.time()) - 300) * 1000 + 7
    with run_prometheus_local(tmp_path_factory.mktemp("prometheus_admin")) as url:
        remote_write_local(
            url,
            [
                (
                    {"__name__": "m3m_admin", "job": "m3", "shard": "1"},
                    [(base_ms, 1.0), (base_ms + 10 * S, 2.0)],
                ),
                ({"__name__": "m3m_admin", "job": "m3", "shard": "2"}, [(base_ms, float("nan"))]),
            ],
        )
        yield PrometheusAdminLocal(url, base_ms)


@pytest.fixture()
def m3_local() -> Iterator[FakeM3Coordinator]:
    with FakeM3Coordinator(namespaces=NAMESPACES) as fake:
        yield fake


def _admin(url: str) -> M3AdminClient:
    return M3AdminClient(url, EndpointSettings(), retry=FAST_RETRY)


# -- durations and storage policies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1m", 60 * S),
        ("40d", 40 * D),
        ("960h", 40 * D),
        ("2w", 14 * D),
        ("1y35d", 400 * D),
        ("48h0m0s", 48 * H),
        ("10s", 10 * S),
        ("1min", 60 * S),
        ("1mon", 30 * D),
        ("500ms", 500),
    ],
)
def test_parse_m3_duration(text: str, ms: int) -> None:
    assert parse_m3_duration(text) == ms * 1_000_000


@pytest.mark.parametrize("text", ["", "10", "1.5h", "5x", "h", "1m-2s"])
def test_parse_m3_duration_rejects_what_m3_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_m3_duration(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(60 * S, "1m"), (40 * D, "40d"), (400 * D, "1y35d"), (90 * S, "1m30s"), (0, "0s"), (14 * D, "14d")],
)
def test_format_m3_duration_is_short_and_round_trips(ms: int, text: str) -> None:
    assert format_m3_duration(ms * 1_000_000) == text
    assert parse_m3_duration(text) == ms * 1_000_000


def test_parse_storage_policy() -> None:
    assert parse_storage_policy("1m:40d") == (60 * S * 1_000_000, 40 * D * 1_000_000)
    assert parse_storage_policy("1m@1s:40d") == parse_storage_policy("60s:960h")
    for bad in ("1m", "1m:40d:1y", "1m:forty"):
        with pytest.raises(ConfigError, match="storage policy"):
            parse_storage_policy(bad)


# -- namespaces ------------------------------------------------------------------------------------


def test_namespaces_parsed_from_int64_strings(m3_local: FakeM3Coordinator) -> None:
    with _admin(m3_local.url) as admin:
        namespaces = admin.namespaces()
    assert namespaces is not None
    by_name = {ns.name: ns for ns in namespaces}
    assert [ns.name for ns in namespaces] == sorted(NAMESPACES)
    assert by_name["default"] == M3Namespace(
        name="default",
        aggregated=False,
        resolution_ms=None,
        retention_ms=48 * H,
        block_size_ms=2 * H,
        buffer_past_ms=10 * 60 * S,
        buffer_future_ms=2 * 60 * S,
        ready=True,
        downsample_all=None,
        staging_status="READY",
    )
    agg = by_name["agg_1m_40d"]
    assert (agg.aggregated, agg.resolution_ms, agg.retention_ms, agg.block_size_ms) == (
        True,
        60 * S,
        40 * D,
        24 * H,
    )
    assert agg.downsample_all is False
    assert by_name["agg_5m_1y"].downsample_all is True  # M3's default when downsampleOptions is absent
    assert (by_name["agg_new"].ready, by_name["agg_new"].staging_status) == (False, "INITIALIZING")
    assert (by_name["legacy"].ready, by_name["legacy"].staging_status) == (True, None)


def test_storage_policy_formatting_and_matching(m3_local: FakeM3Coordinator) -> None:
    with _admin(m3_local.url) as admin:
        by_name = {ns.name: ns for ns in admin.namespaces() or []}
    agg = by_name["agg_1m_40d"]
    assert agg.storage_policy == "1m:40d"
    assert by_name["agg_5m_1y"].storage_policy == "5m:1y"
    assert by_name["agg_new"].storage_policy == "10s:14d"
    assert agg.matches_policy("1m:40d") and agg.matches_policy("60s:960h") and agg.matches_policy("1m@1s:40d")
    assert not agg.matches_policy("1m:41d") and not agg.matches_policy("5m:40d")
    assert by_name["default"].storage_policy is None
    assert not by_name["default"].matches_policy("0s:48h")
    with pytest.raises(ConfigError):
        agg.matches_policy("1m/40d")


def test_empty_registry_is_an_empty_list() -> None:
    with FakeM3Coordinator(namespaces={}) as fake, _admin(fake.url) as admin:
        assert admin.namespaces() == []
        assert admin.detect() == "m3"


# -- readiness, health, placement ------------------------------------------------------------------


def test_ready_all_ready(m3_local: FakeM3Coordinator) -> None:
    with _admin(m3_local.url) as admin:
        ready = admin.ready()
    assert ready is not None and ready.ready
    assert {ns.id for ns in ready.ready_reads} == set(NAMESPACES)
    default = next(ns for ns in ready.ready_reads if ns.id == "default")
    assert (default.metrics_type, default.retention, default.resolution) == ("unaggregated", "48h0m0s", "0s")


def test_ready_names_the_namespace_that_is_not_ready() -> None:
    with FakeM3Coordinator(namespaces=NAMESPACES, ready_status={"agg_1m_40d": False}) as fake:
        with _admin(fake.url) as admin:
            ready = admin.ready()
        assert fake.requests_to("/ready")[-1].method == "GET"
    assert ready is not None and not ready.ready  # parsed from M3's 500 answer, not raised
    assert ready.not_ready == {"agg_1m_40d"}
    [not_ready] = ready.not_ready_reads
    assert (not_ready.metrics_type, not_ready.resolution, not_ready.retention) == (
        "aggregated",
        "1m0s",
        "960h0m0s",
    )


def test_health_and_placement(m3_local: FakeM3Coordinator) -> None:
    with _admin(m3_local.url) as admin:
        assert admin.health() == {"uptime": "1h2m3.5s", "now": "2024-01-01T00:00:00Z"}
        assert admin.placement() is None  # M3 answers 404 when there is no placement
    placement = {
        "instances": {"m3db0": {"id": "m3db0"}},
        "replicaFactor": 1,
        "numShards": 64,
        "isSharded": True,
    }
    with FakeM3Coordinator(placement=placement) as fake, _admin(fake.url) as admin:
        assert admin.placement() == {"placement": placement, "version": 3}


# -- detection --------------------------------------------------------------------------------------


def test_detect_m3(m3_local: FakeM3Coordinator) -> None:
    with _admin(m3_local.url + "/api/v1") as admin:
        assert admin.detect() == "m3"


@pytest.mark.servers
def test_detect_prometheus_and_no_m3_api_on_prometheus(prometheus_admin_local: PrometheusAdminLocal) -> None:
    with _admin(prometheus_admin_local.url) as admin:
        assert admin.detect() == "prometheus"
        assert admin.namespaces() is None
        assert admin.ready() is None
        assert admin.health() is None
        assert admin.placement() is None


def test_detect_unknown_on_html() -> None:
    with fake_canned_server_local(200, HTML_PAGE, "text/html") as url, _admin(url) as admin:
        assert admin.namespaces() is None
        assert admin.detect() == "unknown"


# -- M3 limits on the PromQL API --------------------------------------------------------------------


@pytest.mark.servers
def test_results_limited_header_raises(prometheus_admin_local: PrometheusAdminLocal) -> None:
    base = prometheus_admin_local.base_ms
    with (
        FakeM3Coordinator(limited=True, upstream_query_url=prometheus_admin_local.url) as fake,
        PromQLClient(fake.url, EndpointSettings(), retry=FAST_RETRY) as client,
    ):
        with pytest.raises(SourceLimitExceeded, match=LIMITED_VALUE):
            client.series(["m3m_admin"], base, base + 1)
        with pytest.raises(SourceLimitExceeded):
            client.query("m3m_admin")
        assert len(fake.requests_to("/api/v1/series")) == 1  # a limit is not retried


def test_limit_error_raises() -> None:
    with (
        FakeM3Coordinator(limit_error=True) as fake,
        PromQLClient(fake.url, EndpointSettings(), retry=FAST_RETRY) as client,
        pytest.raises(SourceLimitExceeded) as caught,
    ):
        client.series(["{job=~'.+'}"], 0, 1000)
    assert caught.value.status == 400
    assert "query exceeded limit" in caught.value.body


@pytest.mark.servers
def test_promql_through_m3_paths_sends_params_and_headers(
    prometheus_admin_local: PrometheusAdminLocal,
) -> None:
    base = prometheus_admin_local.base_ms
    headers = {"M3-Metrics-Type": "unaggregated", "M3-Limit-Require-Exhaustive": "true"}
    with FakeM3Coordinator(upstream_query_url=prometheus_admin_local.url) as fake:
        with PromQLClient(
            fake.url,
            EndpointSettings(),
            retry=FAST_RETRY,
            extra_params={"dedup": "false"},
            extra_headers=headers,
        ) as client:
            series = client.series(['m3m_admin{job="m3"}'], base, base + 10 * S, limit=5)
            raw = client.raw_samples('m3m_admin{shard="1"}', base + 10 * S, 10 * S)
            values = client.label_values("shard", ["m3m_admin"])
        [series_request] = fake.requests_to("/api/v1/series")
    assert sorted(s["shard"] for s in series) == ["1", "2"]
    assert list(raw.values()) == [[(base, 1.0), (base + 10 * S, 2.0)]]
    assert values == ["1", "2"]
    assert series_request.headers["m3-metrics-type"] == "unaggregated"
    assert series_request.headers["m3-limit-require-exhaustive"] == "true"
    form = httpx.QueryParams(series_request.body.decode())
    assert form.get_list("match[]") == ['m3m_admin{job="m3"}']
    assert (form["limit"], form["dedup"]) == ("5", "false")
    assert form["start"] == f"{base // 1000}.{base % 1000:03d}"


# -- the fake's remote read (for the remote-read client's tests) -----------------------------------


def _read(url: str, start_ms: int, end_ms: int, headers: dict[str, str]) -> httpx.Response:
    request = prompb_pb2.ReadRequest(
        queries=[
            prompb_pb2.Query(
                start_timestamp_ms=start_ms,
                end_timestamp_ms=end_ms,
                matchers=[prompb_pb2.LabelMatcher(type=prompb_pb2.LabelMatcher.EQ, name="__name__", value="m3m_admin")],
            )
        ],
        accepted_response_types=[prompb_pb2.ReadRequest.STREAMED_XOR_CHUNKS],
    )
    return httpx.post(
        url,
        content=snappy.compress(request.SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy", **headers},
    )


@pytest.mark.servers
def test_fake_remote_read_forwards_as_samples_and_records_headers(
    prometheus_admin_local: PrometheusAdminLocal,
) -> None:
    base = prometheus_admin_local.base_ms
    m3_headers = {
        "M3-Metrics-Type": "aggregated",
        "M3-Storage-Policy": "1m:40d",
        "M3-Limit-Require-Exhaustive": "true",
    }
    with FakeM3Coordinator(upstream_read_url=prometheus_admin_local.url + "/api/v1/read") as fake:
        answer = _read(fake.read_url, base, base + 10 * S, m3_headers)
        [recorded] = fake.requests_to("/api/v1/prom/remote/read")
    assert answer.status_code == 200 and "M3-Results-Limited" not in answer.headers
    response = prompb_pb2.ReadResponse()
    response.ParseFromString(snappy.decompress(answer.content))  # SAMPLES although chunks were asked for
    series = {tuple((lb.name, lb.value) for lb in ts.labels): list(ts.samples) for ts in response.results[0].timeseries}
    assert len(series) == 2
    assert [(s.timestamp, s.value) for s in series[(("__name__", "m3m_admin"), ("job", "m3"), ("shard", "1"))]] == [
        (base, 1.0),
        (base + 10 * S, 2.0),
    ]
    for name, value in m3_headers.items():
        assert recorded.headers[name.lower()] == value


def test_fake_remote_read_limits() -> None:
    with FakeM3Coordinator(limited=True) as fake:
        answer = _read(fake.read_url, 0, 1000, {})
        assert answer.headers["M3-Results-Limited"] == LIMITED_VALUE
        response = prompb_pb2.ReadResponse()
        response.ParseFromString(snappy.decompress(answer.content))
        assert len(response.results) == 1
    with FakeM3Coordinator(limit_error=True) as fake:
        answer = _read(fake.read_url, 0, 1000, {})
        assert answer.status_code == 400
        assert json.loads(answer.content)["error"].startswith("query exceeded limit")


def test_detect_raises_when_nothing_answers() -> None:
    with _admin(f"http://127.0.0.1:{free_port_local()}") as admin, pytest.raises(TransientError):
        admin.detect()


def test_detect_raises_on_auth_failure() -> None:
    with (
        fake_canned_server_local(401, b"denied", "text/plain") as url,
        _admin(url) as admin,
        pytest.raises(AuthError),
    ):
        admin.detect()
