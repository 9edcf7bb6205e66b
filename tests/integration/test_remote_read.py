"""RemoteReadClient against the REAL source Prometheus (session `source_history`: 200 series x 7 d x 60 s
in blocks plus a live tail with stale markers in the head), real Prometheus servers with auth/TLS and a
sample limit, the FakeM3Coordinator for M3-only headers and limits, and canned fakes for broken answers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import snappy
from fake_m3 import LIMITED_VALUE, FakeM3Coordinator

from m3migrate.clients.http import RetryPolicy
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import (
    AuthError,
    EndpointNotFound,
    MalformedResponse,
    SourceLimitExceeded,
    TlsError,
    TransientError,
)
from m3migrate.prompb import Label, QueryResult, ReadRequest, ReadResponse, Sample, TimeSeries
from m3migrate.settings.endpoints import AuthSettings, SourceSettings, TargetSettings, TlsSettings
from m3migrate.wire.codec import Matcher, encode_labels, frame_series, selector_string, single_request
from m3migrate.wire.codec import float_bits as bits
from sandbox.history import (
    NAN_BITS,
    STALE_NAN_BITS,
    TRICKY_TARGET,
    SourceSandbox,
    expected_series,
    tail_series,
)
from sandbox.servers import Server, TlsFiles, bcrypt_hash, make_tls_files, start_prometheus

pytestmark = pytest.mark.timeout(180)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
FAST = RetryPolicy(attempts=2, timeout_seconds=10, wait_initial=0.01, wait_max=0.01, wait_jitter=0)
ALL = [Matcher("__name__", "=~", ".+")]

Labels = tuple[tuple[str, str], ...]


def key(ts: TimeSeries) -> Labels:
    return tuple(sorted((label.name, label.value) for label in ts.labels))


def as_dict(result: QueryResult) -> dict[Labels, list[tuple[int, int]]]:
    out: dict[Labels, list[tuple[int, int]]] = {}
    for ts in result.timeseries:
        assert key(ts) not in out, f"series {key(ts)} twice in one result"
        out[key(ts)] = [(s.timestamp, bits(s.value)) for s in ts.samples]
    return out


def source_reader(source: SourceSandbox, **kw: Any) -> RemoteReadClient:
    return RemoteReadClient(SourceSettings(read_url=f"{source.server.url}/api/v1/read", **kw), retry=FAST)


def window(source: SourceSandbox) -> tuple[int, int]:
    """One hour inside the block range, both ends on sample timestamps."""
    end = source.spec.last_ms - 3 * HOUR_MS
    return end - HOUR_MS, end


def now_ms() -> int:
    return (int(time.time() * 1000) // 1000) * 1000


def write(settings: TargetSettings, labels: dict[str, str], samples: Sequence[tuple[int, float]]) -> None:
    ts = TimeSeries(samples=[Sample(timestamp=t, value=v) for t, v in samples])
    body = single_request(frame_series(encode_labels(sorted(labels.items())), ts.SerializeToString()), len(samples))
    with RemoteWriteClient(settings, retry=FAST) as writer:
        writer.write(body)


# -- the real source ---------------------------------------------------------------------------------


@pytest.mark.servers
def test_one_hour_window_is_exactly_the_expected_series_and_samples(source_history: SourceSandbox) -> None:
    start, end = window(source_history)
    with source_reader(source_history) as reader:
        got = as_dict(reader.read(ALL, start, end))
        assert (reader.stats.requests, reader.stats.retries) == (1, 0)
        assert reader.stats.compressed_bytes > 0
    expected_keys = {tuple(sorted(labels.items())) for labels in expected_series(source_history.spec)}
    assert len(expected_keys) == source_history.spec.series == 200
    assert set(got) == expected_keys
    timestamps = list(range(start, end + 1, source_history.spec.interval_ms))
    assert len(timestamps) == 61  # [start, end] inclusive at both ends
    for labels, samples in got.items():
        assert [t for t, _ in samples] == timestamps, f"{labels}: wrong timestamps"


@pytest.mark.servers
def test_window_counts_agree_with_promql(source_history: SourceSandbox) -> None:
    """Independent count: Prometheus' own count_over_time over the same (closed, in 2.42) hour."""
    start, end = window(source_history)
    with source_reader(source_history) as reader:
        got = as_dict(reader.read(ALL, start, end))
    per_name: dict[str, int] = {}
    for labels, samples in got.items():
        name = dict(labels)["__name__"]
        per_name[name] = per_name.get(name, 0) + len(samples)
    assert sorted(per_name) == source_history.stats.metric_names
    with source_history.server.http_client() as client:
        for name, count in per_name.items():
            query = f'sum(count_over_time({{__name__="{name}"}}[1h]))'
            answer = client.get("/api/v1/query", params={"query": query, "time": f"{end / 1000:.3f}"}).json()
            assert answer["status"] == "success", answer
            (result,) = answer["data"]["result"]
            assert int(result["value"][1]) == count, f"{name}: PromQL counts {result['value'][1]}, read {count}"


@pytest.mark.servers
def test_range_ends_are_inclusive(source_history: SourceSandbox) -> None:
    start, _ = window(source_history)
    with source_reader(source_history) as reader:
        single = as_dict(reader.read(ALL, start, start))
        assert len(single) == 200
        assert all([t for t, _ in samples] == [start] for samples in single.values())
        two = as_dict(reader.read(ALL, start, start + MINUTE_MS))
        assert all([t for t, _ in samples] == [start, start + MINUTE_MS] for samples in two.values())
        # between two samples: no samples at all (Prometheus still lists the series, with none)
        gap = reader.read(ALL, start + 1, start + MINUTE_MS - 1)
        assert sum(len(ts.samples) for ts in gap.timeseries) == 0


@pytest.mark.servers
def test_stale_markers_and_nan_bits_survive(source_history: SourceSandbox) -> None:
    tail = source_history.tail_stats
    assert tail is not None
    roles = tail_series(source_history.spec)
    n = (tail.end_ms - tail.start_ms) // source_history.spec.interval_ms + 1
    with source_reader(source_history) as reader:

        def read_role(role: str) -> list[tuple[int, int]]:
            matchers = [Matcher(name, "=", value) for name, value in sorted(roles[role].items())]
            (only,) = as_dict(reader.read(matchers, tail.start_ms, tail.end_ms)).values()
            assert len(only) == n
            return only

        stale_end = read_role("stale_end")
        assert stale_end[-1][1] == STALE_NAN_BITS
        assert {b for _, b in stale_end[:-1]} == {bits(1.0)}
        stale_mid = read_role("stale_mid")
        assert [b == STALE_NAN_BITS for _, b in stale_mid].count(True) == 1
        assert stale_mid[n // 2][1] == STALE_NAN_BITS
        nan = read_role("nan")
        assert nan[n // 2][1] == NAN_BITS  # an ordinary NaN stays ordinary: not turned into a stale marker
        assert STALE_NAN_BITS not in {b for _, b in nan}
        floats = read_role("float")
        assert [b for _, b in floats] == [bits((k % 7) * 0.1 + 0.2) for k in range(n)]


@pytest.mark.servers
@pytest.mark.parametrize(
    "matchers",
    [
        [Matcher("__name__", "=", "node_cpu_seconds_total"), Matcher("mode", "=", "idle")],
        [Matcher("__name__", "=", "node_cpu_seconds_total"), Matcher("mode", "!=", "idle")],
        [
            Matcher("__name__", "=~", "http_request_duration_seconds_(count|sum)"),
            Matcher("instance", "=~", "api-00[01]:8080"),
        ],
        [Matcher("__name__", "=", "http_requests_total"), Matcher("code", "!~", "2..")],
        [Matcher("__name__", "=~", "node_load")],  # anchored: matches nothing
        [Matcher("__name__", "=", "up"), Matcher("cpu", "=", "")],  # "" matches a missing label
        [Matcher("job", "=", "blackbox"), Matcher("city", "=", "東京")],
        [Matcher("target", "=", TRICKY_TARGET)],
        [Matcher("__name__", "=~", ".+"), Matcher("job", "!~", "node|api"), Matcher("le", "!=", "0.5")],
    ],
    ids=["eq", "neq", "re", "nre", "re-anchored", "eq-empty", "unicode", "quotes-backslash", "mixed"],
)
def test_matchers_select_as_prometheus_does(source_history: SourceSandbox, matchers: list[Matcher]) -> None:
    start, end = window(source_history)
    with source_reader(source_history) as reader:
        got = set(as_dict(reader.read(matchers, start, end)))
    with source_history.server.http_client() as client:
        answer = client.get(
            "/api/v1/series",
            params={"match[]": selector_string(matchers), "start": f"{start / 1000:.3f}", "end": f"{end / 1000:.3f}"},
        ).json()
    assert answer["status"] == "success", answer
    assert got == {tuple(sorted(series.items())) for series in answer["data"]}
    if matchers[0].value != "node_load":
        assert got, "the selector should match something"


@pytest.mark.servers
def test_bad_range_is_refused_before_sending(source_history: SourceSandbox) -> None:
    with source_reader(source_history) as reader:
        with pytest.raises(ValueError):
            reader.read(ALL, 2000, 1000)
        assert reader.stats.requests == 0


# -- auth, TLS and the sample limit on real Prometheus servers --------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_source(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[tuple[Server, int]]:
    """A Prometheus behind basic auth AND TLS, holding one series with 5 samples; yields (server, first ts)."""
    server = start_prometheus(
        tmp_path_factory.mktemp("secure"),
        name="secure",
        remote_write_receiver=True,
        web_config={
            "basic_auth_users": {"reader": bcrypt_hash("pw", rounds=4)},
            "tls_server_config": {"cert_file": tls_files.server_cert, "key_file": tls_files.server_key},
        },
        ready_auth=("reader", "pw"),
        ready_verify=tls_files.ca_cert,
    )
    try:
        first = now_ms() - 5 * MINUTE_MS
        settings = TargetSettings(
            write_url=f"{server.url}/api/v1/write",
            auth=AuthSettings(username="reader", password="pw"),
            tls=TlsSettings(ca_file=str(tls_files.ca_cert)),
        )
        write(settings, {"__name__": "m3m_secure", "job": "s"}, [(first + k * MINUTE_MS, k + 0.5) for k in range(5)])
        yield server, first
    finally:
        server.stop()


@pytest.mark.servers
def test_read_with_basic_auth_and_tls(secure_source: tuple[Server, int], tls_files: TlsFiles) -> None:
    server, first = secure_source
    settings = SourceSettings(
        read_url=f"{server.url}/api/v1/read",
        auth=AuthSettings(username="reader", password="pw"),
        tls=TlsSettings(ca_file=str(tls_files.ca_cert)),
    )
    with RemoteReadClient(settings, retry=FAST) as reader:
        got = as_dict(reader.read([Matcher("__name__", "=", "m3m_secure")], first, first + 4 * MINUTE_MS))
    assert got == {
        (("__name__", "m3m_secure"), ("job", "s")): [(first + k * MINUTE_MS, bits(k + 0.5)) for k in range(5)]
    }


@pytest.mark.servers
@pytest.mark.parametrize("auth", [None, AuthSettings(username="reader", password="not-the-pw")])
def test_read_401_is_auth_error(
    secure_source: tuple[Server, int], tls_files: TlsFiles, auth: AuthSettings | None
) -> None:
    server, first = secure_source
    kw: dict[str, Any] = {"auth": auth} if auth else {}
    settings = SourceSettings(
        read_url=f"{server.url}/api/v1/read", tls=TlsSettings(ca_file=str(tls_files.ca_cert)), **kw
    )
    with RemoteReadClient(settings, retry=FAST) as reader:
        with pytest.raises(AuthError) as info:
            reader.read([Matcher("__name__", "=", "m3m_secure")], first, first)
        assert info.value.status == 401
        assert "not-the-pw" not in str(info.value)
        assert (reader.stats.requests, reader.stats.retries) == (1, 0)


@pytest.mark.servers
def test_read_tls_without_ca_is_tls_error(secure_source: tuple[Server, int]) -> None:
    server, first = secure_source
    settings = SourceSettings(read_url=f"{server.url}/api/v1/read", auth=AuthSettings(username="reader", password="pw"))
    with RemoteReadClient(settings, retry=FAST) as reader:
        with pytest.raises(TlsError):
            reader.read([Matcher("__name__", "=", "m3m_secure")], first, first)
        assert reader.stats.retries == 0


@pytest.mark.servers
def test_skipping_verification_reads_and_leaves_other_clients_verifying(secure_source: tuple[Server, int]) -> None:
    """insecure_skip_verify reads from a server whose CA we lack; a client built after it still verifies."""
    server, first = secure_source
    auth = AuthSettings(username="reader", password="pw")
    url = f"{server.url}/api/v1/read"
    matchers = [Matcher("__name__", "=", "m3m_secure")]
    insecure = SourceSettings(read_url=url, auth=auth, tls=TlsSettings(insecure_skip_verify=True))
    with RemoteReadClient(insecure, retry=FAST) as reader:
        got = as_dict(reader.read(matchers, first, first + 4 * MINUTE_MS))
    assert list(got.values()) == [[(first + k * MINUTE_MS, bits(k + 0.5)) for k in range(5)]]
    for _ in range(2):  # built after an insecure client, and twice: none of them skips verification
        with RemoteReadClient(SourceSettings(read_url=url, auth=auth), retry=FAST) as reader, pytest.raises(TlsError):
            reader.read(matchers, first, first)


@pytest.mark.servers
def test_prometheus_sample_limit_is_source_limit_exceeded(prometheus_target: Any) -> None:
    server = prometheus_target(extra_flags=["--storage.remote.read-sample-limit=1000"])
    first = now_ms() - 1500 * 1000
    samples = [(first + k * 1000, float(k)) for k in range(1500)]
    write(TargetSettings(write_url=f"{server.url}/api/v1/write"), {"__name__": "m3m_many"}, samples)
    matchers = [Matcher("__name__", "=", "m3m_many")]
    with RemoteReadClient(SourceSettings(read_url=f"{server.url}/api/v1/read"), retry=FAST) as reader:
        with pytest.raises(SourceLimitExceeded) as info:
            reader.read(matchers, first, first + 1499 * 1000)
        assert info.value.status == 400
        assert "exceeded sample limit" in info.value.body
        assert (reader.stats.requests, reader.stats.retries) == (1, 0), "a limit is answered by splitting, not retrying"
        half = reader.read(matchers, first, first + 799 * 1000)  # 800 samples: under the limit
        assert [s.timestamp for s in half.timeseries[0].samples] == [t for t, _ in samples[:800]]


# -- the FAKE M3 coordinator -----------------------------------------------------------------------


def test_m3_headers_are_sent_as_configured() -> None:
    with FakeM3Coordinator() as m3:
        settings = SourceSettings(
            read_url=m3.read_url, metrics_type="aggregated", storage_policy="1m:40d", limit_max_series=5000
        )
        with RemoteReadClient(settings, retry=FAST) as reader:
            result = reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
        assert len(result.timeseries) == 0
        (request,) = m3.requests_to("/api/v1/prom/remote/read")
    headers = request.headers
    assert headers["m3-metrics-type"] == "aggregated"
    assert headers["m3-storage-policy"] == "1m:40d"
    assert headers["m3-limit-require-exhaustive"] == "true"
    assert headers["m3-limit-max-series"] == "5000"
    assert headers["content-encoding"] == "snappy"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["x-prometheus-remote-read-version"] == "0.1.0"
    read = ReadRequest.FromString(snappy.decompress(request.body))
    assert list(read.accepted_response_types) == [ReadRequest.SAMPLES]
    (query,) = read.queries
    # an inclusive [1000, 2000] is asked as [1000, 2001): M3 reads end-exclusive, what lies after 2000 is cut
    assert (query.start_timestamp_ms, query.end_timestamp_ms) == (1000, 2001)
    assert [(m.name, m.value) for m in query.matchers] == [("__name__", "up")]


def test_m3_optional_headers_are_absent_by_default() -> None:
    with FakeM3Coordinator() as m3:
        with RemoteReadClient(SourceSettings(read_url=m3.read_url), retry=FAST) as reader:
            reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
        (request,) = m3.requests_to("/api/v1/prom/remote/read")
    assert request.headers["m3-limit-require-exhaustive"] == "true"  # always: never accept silent truncation
    for name in ("m3-metrics-type", "m3-storage-policy", "m3-limit-max-series"):
        assert name not in request.headers


@pytest.mark.servers
def test_m3_path_serves_the_same_data(source_history: SourceSandbox) -> None:
    start, end = window(source_history)
    matchers = [Matcher("__name__", "=", "node_load1")]
    with source_reader(source_history) as reader:
        direct = as_dict(reader.read(matchers, start, end))
    with (
        FakeM3Coordinator(upstream_read_url=f"{source_history.server.url}/api/v1/read") as m3,
        RemoteReadClient(SourceSettings(read_url=m3.read_url), retry=FAST) as reader,
    ):
        via_m3 = as_dict(reader.read(matchers, start, end))
    assert via_m3 == direct
    assert len(direct) > 0


def test_m3_results_limited_header_is_source_limit_exceeded() -> None:
    with FakeM3Coordinator(limited=True) as m3:
        with RemoteReadClient(SourceSettings(read_url=m3.read_url), retry=FAST) as reader:
            with pytest.raises(SourceLimitExceeded) as info:
                reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
            assert LIMITED_VALUE in str(info.value)
            assert reader.stats.retries == 0
        assert len(m3.requests_to("/api/v1/prom/remote/read")) == 1


def test_m3_query_exceeded_limit_is_source_limit_exceeded() -> None:
    with FakeM3Coordinator(limit_error=True) as m3:
        with (
            RemoteReadClient(SourceSettings(read_url=m3.read_url), retry=FAST) as reader,
            pytest.raises(SourceLimitExceeded) as info,
        ):
            reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
        assert info.value.status == 400
        assert "query exceeded limit" in info.value.body
        assert len(m3.requests_to("/api/v1/prom/remote/read")) == 1


# -- canned fakes for broken answers ---------------------------------------------------------------


@contextlib.contextmanager
def canned_source(status: int, body: bytes, headers: dict[str, str]) -> Iterator[tuple[str, list[int]]]:
    """A FAKE remote-read endpoint answering every request the same way; yields (read URL, request log)."""
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hits.append(1)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/read", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def valid_response() -> bytes:
    ts = TimeSeries(labels=[Label(name="__name__", value="up")], samples=[Sample(timestamp=1000, value=1.0)])
    return snappy.compress(ReadResponse(results=[QueryResult(timeseries=[ts])]).SerializeToString())


PROTOBUF = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (
            b"\x10\x00\x00\x00\x00\x00\x00\x00",
            {"Content-Type": "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"},
        ),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", {"Content-Type": "text/html; charset=utf-8"}),
        (b'{"status":"success","data":[]}', {"Content-Type": "application/json"}),
        (snappy.compress(b"this is snappy, but not protobuf \xff\xff\xff"), PROTOBUF),
        (b"protobuf content type, body not snappy", PROTOBUF),
        (snappy.compress(ReadResponse().SerializeToString()), PROTOBUF),  # no query result
        (valid_response()[:-4], PROTOBUF),  # truncated
    ],
    ids=["streamed", "html", "json", "snappy-not-protobuf", "not-snappy", "no-result", "truncated"],
)
def test_broken_answers_are_malformed(body: bytes, headers: dict[str, str]) -> None:
    with canned_source(200, body, headers) as (url, hits):
        with (
            RemoteReadClient(SourceSettings(read_url=url), retry=FAST) as reader,
            pytest.raises(MalformedResponse) as info,
        ):
            reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
        assert info.value.endpoint == url
        assert len(hits) == 1, "a malformed answer is not retried"


def test_canned_valid_answer_is_read() -> None:
    """The canned server itself is fine: the same setup with a valid body reads the sample."""
    with (
        canned_source(200, valid_response(), PROTOBUF) as (url, _),
        RemoteReadClient(SourceSettings(read_url=url), retry=FAST) as reader,
    ):
        result = reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
    assert as_dict(result) == {(("__name__", "up"),): [(1000, bits(1.0))]}


def test_404_and_502() -> None:
    with canned_source(404, b"404 page not found\n", {"Content-Type": "text/plain"}) as (url, hits):
        with (
            RemoteReadClient(SourceSettings(read_url=url), retry=FAST) as reader,
            pytest.raises(EndpointNotFound),
        ):
            reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
        assert len(hits) == 1
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    with canned_source(502, html, {"Content-Type": "text/html"}) as (url, hits):
        with RemoteReadClient(SourceSettings(read_url=url), retry=FAST) as reader:
            with pytest.raises(TransientError) as info:
                reader.read([Matcher("__name__", "=", "up")], 1000, 2000)
            assert reader.stats.retries == FAST.attempts - 1
        assert info.value.status == 502
        assert len(hits) == FAST.attempts
