"""PromQLClient against a real Prometheus 2.42 (started here), plus tiny fakes for answers it never gives."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import snappy

from m3migrate.clients.http import RetryPolicy
from m3migrate.clients.promql import BadQuery, PartialResponse, PromQLClient, format_seconds, parse_sample_value
from m3migrate.errors import AuthError, EndpointNotFound, MalformedResponse, TransientError
from m3migrate.prompb import prompb_pb2
from m3migrate.settings.endpoints import EndpointSettings

FAST_RETRY = RetryPolicy(attempts=2, timeout_seconds=5, wait_initial=0.01, wait_max=0.01, wait_jitter=0)
STEP_MS = 15_000
VALUES_A = [1.5, math.nan, math.inf, -math.inf, 1e6, 0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0]
CITY = "Zürich ☃"

# -- a real Prometheus, shared with test_m3admin.py ------------------------------------------------


def free_port_local() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_prometheus_local(workdir: Path) -> Iterator[str]:
    """Start /usr/bin/prometheus with the remote-write receiver; yield its base URL; stop it."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus binary not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "p.yml").write_text("scrape_configs: []\n")
    port = free_port_local()
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'p.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-remote-write-receiver",
            "--storage.remote.read-concurrent-limit=64",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (workdir / "prometheus.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"prometheus did not start:\n{tail}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def remote_write_local(url: str, series: list[tuple[dict[str, str], list[tuple[int, float]]]]) -> None:
    """Write samples through Prometheus' remote-write receiver (RW 1.0 wire format)."""
    request = prompb_pb2.WriteRequest()
    for labels, samples in series:
        ts = request.timeseries.add()
        for name in sorted(labels):
            ts.labels.add(name=name, value=labels[name])
        for t, v in samples:
            ts.samples.add(timestamp=t, value=v)
    answer = httpx.post(
        url + "/api/v1/write",
        content=snappy.compress(request.SerializeToString()),
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": "m3migrate-tests",
        },
    )
    assert answer.status_code == 204, answer.text


def seed_series_local(base_ms: int) -> list[tuple[dict[str, str], list[tuple[int, float]]]]:
    """The test data: exact floats, special values and a unicode label value."""
    return [
        (
            {"__name__": "m3m_values", "job": "promql_test", "instance": "a"},
            [(base_ms + i * STEP_MS, v) for i, v in enumerate(VALUES_A)],
        ),
        (
            {"__name__": "m3m_values", "job": "promql_test", "instance": "b", "city": CITY},
            [(base_ms + i * STEP_MS, float(i + 1)) for i in range(3)],
        ),
        ({"__name__": "m3m_other", "job": "other"}, [(base_ms, 42.0)]),
    ]


class PrometheusLocal:
    """A running Prometheus and the timestamps of the data written into it."""

    def __init__(self, url: str, base_ms: int) -> None:
        self.url = url
        self.base_ms = base_ms
        self.end_ms = base_ms + (len(VALUES_A) - 1) * STEP_MS


@pytest.fixture(scope="module")
def prometheus_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusLocal]:
    base_ms = (int(time.time()) - 600) * 1000 + 123  # odd milliseconds: times must keep them
    with run_prometheus_local(tmp_path_factory.mktemp("prometheus")) as url:
        remote_write_local(url, seed_series_local(base_ms))
        yield PrometheusLocal(url, base_ms)


@pytest.fixture()
def promql_local(prometheus_local: PrometheusLocal) -> Iterator[PromQLClient]:
    with PromQLClient(prometheus_local.url, EndpointSettings(), retry=FAST_RETRY) as client:
        yield client


# -- tiny fakes for answers a real Prometheus does not give -----------------------------------------


@contextlib.contextmanager
def fake_canned_server_local(status: int, body: bytes, content_type: str) -> Iterator[str]:
    """A FAKE HTTP server answering every request with the same body (e.g. a proxy's HTML page)."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Sign in</h1></body></html>"


# -- helpers ---------------------------------------------------------------------------------------


def test_format_seconds_keeps_milliseconds() -> None:
    assert format_seconds(1_700_000_000_123) == "1700000000.123"
    assert format_seconds(5) == "0.005"
    assert format_seconds(0) == "0.000"
    assert format_seconds(-1) == "-0.001"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.5", 1.5), ("+Inf", math.inf), ("-Inf", -math.inf), ("1e+06", 1e6), ("5e-324", 5e-324)],
)
def test_parse_sample_value(text: str, expected: float) -> None:
    assert parse_sample_value(text) == expected


def test_parse_sample_value_nan() -> None:
    assert math.isnan(parse_sample_value("NaN"))


# -- discovery on a real Prometheus ---------------------------------------------------------------


@pytest.mark.servers
def test_series_discovery(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    found = promql_local.series(['{job="promql_test"}'], prometheus_local.base_ms, prometheus_local.end_ms)
    assert sorted(found, key=lambda s: s["instance"]) == [
        {"__name__": "m3m_values", "job": "promql_test", "instance": "a"},
        {"__name__": "m3m_values", "job": "promql_test", "instance": "b", "city": CITY},
    ]


@pytest.mark.servers
def test_series_several_matchers_are_a_union(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    found = promql_local.series(
        ['m3m_values{instance="a"}', "m3m_other"], prometheus_local.base_ms, prometheus_local.end_ms, limit=10
    )
    assert sorted(s["__name__"] for s in found) == ["m3m_other", "m3m_values"]


@pytest.mark.servers
def test_series_outside_the_range_is_empty(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    before = prometheus_local.base_ms - 3_600_000
    assert promql_local.series(["m3m_values"], before, before + 60_000) == []


@pytest.mark.servers
def test_series_needs_a_matcher(promql_local: PromQLClient) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        promql_local.series([], 0, 1)
    with pytest.raises(TypeError):
        promql_local.series("m3m_values", 0, 1)


@pytest.mark.servers
def test_label_names_and_values(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    assert promql_local.label_names(["m3m_values"]) == ["__name__", "city", "instance", "job"]
    names = promql_local.label_names(start_ms=prometheus_local.base_ms, end_ms=prometheus_local.end_ms)
    assert {"__name__", "city", "instance", "job"} <= set(names)
    assert promql_local.label_values("city") == [CITY]
    assert promql_local.label_values("job", ["m3m_other"]) == ["other"]
    assert promql_local.label_values("__name__", start_ms=prometheus_local.base_ms) == [
        "m3m_other",
        "m3m_values",
    ]
    assert promql_local.label_values("no_such_label") == []


# -- queries on a real Prometheus -----------------------------------------------------------------


def _bits(value: float) -> bytes:
    return struct.pack(">d", value)


@pytest.mark.servers
def test_raw_samples_are_exact(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    base, end = prometheus_local.base_ms, prometheus_local.end_ms
    got = promql_local.raw_samples('m3m_values{job="promql_test"}', end, end - base)
    key_a = frozenset({("__name__", "m3m_values"), ("job", "promql_test"), ("instance", "a")})
    key_b = frozenset({("__name__", "m3m_values"), ("job", "promql_test"), ("instance", "b"), ("city", CITY)})
    assert set(got) == {key_a, key_b}
    assert [t for t, _ in got[key_a]] == [base + i * STEP_MS for i in range(len(VALUES_A))]
    for (_, value), expected in zip(got[key_a], VALUES_A, strict=True):
        if math.isnan(expected):
            assert math.isnan(value)
        else:
            assert _bits(value) == _bits(expected), (value, expected)  # exact, sign of zero included
    assert got[key_b] == [(base, 1.0), (base + STEP_MS, 2.0), (base + 2 * STEP_MS, 3.0)]


@pytest.mark.servers
def test_raw_samples_window_ends_at_end_ms(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    base = prometheus_local.base_ms
    got = promql_local.raw_samples('m3m_values{instance="b"}', base + STEP_MS, STEP_MS - 1)
    assert [s for samples in got.values() for s in samples] == [(base + STEP_MS, 2.0)]
    assert promql_local.raw_samples("m3m_values", base - 1, 60_000) == {}


@pytest.mark.servers
def test_query_and_query_range(promql_local: PromQLClient, prometheus_local: PrometheusLocal) -> None:
    base = prometheus_local.base_ms
    instant = promql_local.query("m3m_other", base + 1000)
    assert instant.result_type == "vector"
    assert instant.warnings == ()
    assert instant.result[0]["metric"] == {"__name__": "m3m_other", "job": "other"}
    assert parse_sample_value(instant.result[0]["value"][1]) == 42.0

    ranged = promql_local.query_range('m3m_values{instance="b"}', base, base + 2 * STEP_MS, 15)
    assert ranged.result_type == "matrix"
    assert [parse_sample_value(v) for _, v in ranged.result[0]["values"]] == [1.0, 2.0, 3.0]

    scalar = promql_local.query("1 + 1")
    assert (scalar.result_type, scalar.result[1]) == ("scalar", "2")


@pytest.mark.servers
def test_promql_syntax_error_is_a_bad_query(promql_local: PromQLClient) -> None:
    with pytest.raises(BadQuery) as caught:
        promql_local.query("sum(")
    assert caught.value.status == 400
    assert "parse error" in caught.value.body  # the server's own message
    assert "sum(" in str(caught.value)


@pytest.mark.servers
def test_bad_selector_in_series_is_a_bad_query(promql_local: PromQLClient) -> None:
    with pytest.raises(BadQuery, match="parse error"):
        promql_local.series(["{"], 0, 1000)


@pytest.mark.servers
def test_build_info(promql_local: PromQLClient) -> None:
    info = promql_local.build_info()
    assert info is not None and info["version"].startswith("2.42")


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.servers
def test_wrong_base_path_is_endpoint_not_found(prometheus_local: PrometheusLocal) -> None:
    with (
        PromQLClient(prometheus_local.url + "/nope", EndpointSettings(), retry=FAST_RETRY) as client,
        pytest.raises(EndpointNotFound) as caught,
    ):
        client.series(["m3m_values"], 0, 1000)
    assert caught.value.status == 404
    assert "/nope/api/v1/series" in caught.value.endpoint


def test_connection_refused_is_transient_after_bounded_retries() -> None:
    port = free_port_local()  # closed again: nothing listens there
    sent: list[httpx.Request] = []
    http_client = httpx.Client(event_hooks={"request": [sent.append]})
    started = time.monotonic()
    with (
        PromQLClient(f"http://127.0.0.1:{port}", EndpointSettings(), retry=FAST_RETRY, client=http_client) as c,
        pytest.raises(TransientError, match="connection failed") as caught,
    ):
        c.query("up")
    assert len(sent) == FAST_RETRY.attempts
    assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in caught.value.endpoint
    assert not http_client.is_closed  # a client passed in is the caller's to close
    http_client.close()


def test_html_answer_is_malformed() -> None:
    with (
        fake_canned_server_local(200, HTML_PAGE, "text/html") as url,
        PromQLClient(url, EndpointSettings(), retry=FAST_RETRY) as client,
        pytest.raises(MalformedResponse) as caught,
    ):
        client.label_names()
    assert url.removeprefix("http://") in str(caught.value)
    assert "<!DOCTYPE html>" in caught.value.body


@pytest.mark.parametrize("value", [5, None, ["x"]])
def test_series_with_a_label_value_that_is_no_string_is_malformed(value) -> None:
    """The series API answers label values as JSON strings (Prometheus' labels.Labels): anything else is
    refused, never turned into a string that names another series."""
    body = json.dumps({"status": "success", "data": [{"__name__": "up", "job": value}]}).encode()
    with (
        fake_canned_server_local(200, body, "application/json") as url,
        PromQLClient(url, EndpointSettings(), retry=FAST_RETRY) as client,
        pytest.raises(MalformedResponse, match="not a list of label sets"),
    ):
        client.series(["up"], 0, 1000)


def test_warnings_are_returned_on_queries_and_refused_by_discovery() -> None:
    body = json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": []}, "warnings": ["store b down"]}
    ).encode()
    with (
        fake_canned_server_local(200, body, "application/json") as url,
        PromQLClient(url, EndpointSettings(), retry=FAST_RETRY) as client,
    ):
        assert client.query("up").warnings == ("store b down",)
        with pytest.raises(PartialResponse, match="store b down"):
            client.raw_samples("up", 1_000_000, 60_000)
        with pytest.raises(PartialResponse):
            client.label_names()


def test_server_error_is_retried_then_transient() -> None:
    body = json.dumps({"status": "error", "errorType": "internal", "error": "boom"}).encode()
    with (
        fake_canned_server_local(503, body, "application/json") as url,
        PromQLClient(url, EndpointSettings(), retry=FAST_RETRY) as client,
        pytest.raises(TransientError) as caught,
    ):
        client.query("up")
    assert caught.value.status == 503


def test_repr_has_no_credentials() -> None:
    client = PromQLClient("http://127.0.0.1:9/api/v1", EndpointSettings(auth={"bearer_token": "s3cr3t"}))
    try:
        assert "s3cr3t" not in repr(client)
        assert repr(client) == "PromQLClient('http://127.0.0.1:9')"
    finally:
        client.close()


def test_auth_failure_is_typed_and_hides_the_token() -> None:
    settings = EndpointSettings(auth={"bearer_token": "tok-s3cr3t"})
    body = b'{"status":"error","error":"unauthorized"}'
    with (
        fake_canned_server_local(401, body, "application/json") as url,
        PromQLClient(url, settings, retry=FAST_RETRY) as client,
        pytest.raises(AuthError) as caught,
    ):
        client.series(["up"], 0, 1000)
    assert "tok-s3cr3t" not in str(caught.value)
    assert "tok-s3cr3t" not in repr(client)
