"""RemoteWriteClient against REAL receivers (Prometheus 2.42, VictoriaMetrics) plus tiny named fakes for
answers no local server gives (Thanos' 409 partial commit, 413, 429, a flaky 503).

What Prometheus 2.42 answers (shared/realstack/lab.md section 3): 204 ok; 400 "out of bounds" /
"out of order sample" / "duplicate sample for timestamp"; 500 "too old sample" (permanent despite the
status); every request is all-or-nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import httpx
import pytest
import snappy

from m3migrate.clients.http import RetryPolicy, build_client
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import (
    AuthError,
    EndpointNotFound,
    RejectReason,
    TlsError,
    TransientError,
    WriteRejected,
)
from m3migrate.prompb import Sample, TimeSeries, WriteRequest
from m3migrate.settings.endpoints import AuthSettings, TargetSettings, TlsSettings
from m3migrate.wire.codec import Matcher, WriteBody, encode_labels, frame_series, pack_write_requests, single_request
from m3migrate.wire.codec import float_bits as bits
from sandbox.compare import read_all
from sandbox.servers import (
    Server,
    TlsFiles,
    bcrypt_hash,
    free_port,
    make_tls_files,
    start_prometheus,
    vm_force_flush,
)

pytestmark = pytest.mark.timeout(120)

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
FAST = RetryPolicy(attempts=3, timeout_seconds=20, wait_initial=0.01, wait_max=0.05, wait_jitter=0)

SeriesData = tuple[dict[str, str], Sequence[tuple[int, float]]]


def now_ms() -> int:
    return (int(time.time() * 1000) // MINUTE_MS) * MINUTE_MS


def write_body(*series: SeriesData) -> WriteBody:
    """One request carrying the given series, built the way the transfer builds them."""
    pairs = [
        (encode_labels(sorted(labels.items())), TimeSeries(samples=[Sample(timestamp=t, value=v) for t, v in samples]))
        for labels, samples in series
    ]
    if len(pairs) == 1:
        label_bytes, ts = pairs[0]
        return single_request(frame_series(label_bytes, ts.SerializeToString()), len(ts.samples))
    (chain,) = pack_write_requests(pairs, max_bytes=1 << 24, max_samples=1 << 24)
    (request,) = chain.requests
    return request


def settings_for(server: Server, **kw: Any) -> TargetSettings:
    return TargetSettings(write_url=f"{server.url}/api/v1/write", **kw)


@dataclass
class CountingWriter:
    """A RemoteWriteClient whose HTTP client counts the requests really sent (retries included)."""

    writer: RemoteWriteClient
    client: httpx.Client
    sent: list[httpx.Request] = field(default_factory=list)

    def close(self) -> None:
        self.writer.close()
        self.client.close()


@pytest.fixture
def counting_writer() -> Iterator[Callable[..., CountingWriter]]:
    made: list[CountingWriter] = []

    def make(settings: TargetSettings, retry: RetryPolicy = FAST) -> CountingWriter:
        client = build_client(settings)
        counted = CountingWriter(RemoteWriteClient(settings, retry=retry, client=client), client)
        client.event_hooks = {"request": [counted.sent.append], "response": []}
        made.append(counted)
        return counted

    yield make
    for counted in made:
        counted.close()


def stored(server: Server, name: str, start_ms: int, end_ms: int, **settings: Any) -> dict:
    return read_all(server.url, start_ms, end_ms, [Matcher("__name__", "=", name)], chunk_ms=40 * DAY_MS, **settings)


def expect_stored(samples: Sequence[tuple[int, float]]) -> list[tuple[int, int]]:
    return [(t, bits(v)) for t, v in samples]


# -- tiny named fakes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class ScriptedReceiver:
    """A FAKE remote-write receiver on 127.0.0.1 that plays `answers` in order (the last one repeats)
    and records every request (header names lower-cased)."""

    def __init__(self, answers: Sequence[Answer]) -> None:
        self.answers = list(answers)
        self.received: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def write_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v1/receive"

    def _next(self) -> Answer:
        index = min(len(self.received) - 1, len(self.answers) - 1)
        return self.answers[index]

    def __enter__(self) -> Self:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.received.append(Received(self.path, headers, body))
                answer = receiver._next()
                self.send_response(answer.status)
                for key, value in answer.headers:
                    self.send_header(key, value)
                if answer.body:
                    self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class FlakyReceiver(ScriptedReceiver):
    """FAKE receiver: 503 once (e.g. a Thanos ring not ready), then 204."""

    def __init__(self) -> None:
        super().__init__([Answer(503, b"service unavailable\n"), Answer(204)])


class FakeThanosReceiver(ScriptedReceiver):
    """FAKE Thanos Receive: the valid samples are committed, the rest refused with 409 and a body like
    pkg/receive/handler.go writes it."""

    def __init__(self, reason: str = "out of order sample", samples: int = 2) -> None:
        body = f"store locally for endpoint 127.0.0.1:10901: add {samples} samples: {reason}\n".encode()
        super().__init__([Answer(409, body)])


# -- module-scoped servers for auth and TLS --------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def auth_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_prometheus(
        tmp_path_factory.mktemp("auth"),
        name="auth",
        remote_write_receiver=True,
        web_config={"basic_auth_users": {"u": bcrypt_hash("p", rounds=4)}},
        ready_auth=("u", "p"),
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_target(tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles) -> Iterator[Server]:
    server = start_prometheus(
        tmp_path_factory.mktemp("tls"),
        name="tls",
        remote_write_receiver=True,
        web_config={"tls_server_config": {"cert_file": tls_files.server_cert, "key_file": tls_files.server_key}},
        ready_verify=tls_files.ca_cert,
    )
    try:
        yield server
    finally:
        server.stop()


# -- Prometheus 2.42 without an out-of-order window -------------------------------------------------


@pytest.mark.servers
def test_fresh_target_accepts_old_history_in_time_order(prometheus_target: Callable[..., Server]) -> None:
    """An empty head takes any first timestamp; then 30-minute windows across all series, oldest first."""
    target = prometheus_target()
    start = now_ms() - 7 * DAY_MS
    labels = [{"__name__": "m3m_history", "instance": f"i{k}", "job": "hist"} for k in range(3)]
    data = {k: [(start + m * MINUTE_MS, k * 1000.0 + m + 0.25) for m in range(180)] for k in range(3)}
    with RemoteWriteClient(settings_for(target), retry=FAST) as writer:
        for window in range(6):  # 6 x 30 min, each a request over all three series
            lo, hi = window * 30, (window + 1) * 30
            body = write_body(*[(labels[k], data[k][lo:hi]) for k in range(3)])
            writer.write(body)
        assert (writer.stats.requests, writer.stats.samples, writer.stats.retries) == (6, 540, 0)
    got = stored(target, "m3m_history", start, start + 3 * HOUR_MS)
    assert got == {tuple(sorted(labels[k].items())): expect_stored(data[k]) for k in range(3)}


@pytest.mark.servers
def test_old_samples_behind_a_recent_head_are_out_of_bounds(prometheus_target: Callable[..., Server]) -> None:
    target = prometheus_target()
    now = now_ms()
    recent = {"__name__": "m3m_oob", "kind": "recent"}
    old = {"__name__": "m3m_oob", "kind": "old"}
    with RemoteWriteClient(settings_for(target), retry=FAST) as writer:
        writer.write(write_body((recent, [(now - 2 * MINUTE_MS, 1.0), (now, 2.0)])))
        for labels in (old, recent):  # a new series and the existing one alike
            with pytest.raises(WriteRejected) as info:
                writer.write(write_body((labels, [(now - 7 * DAY_MS + k * MINUTE_MS, 5.0) for k in range(10)])))
            err = info.value
            assert err.reasons == frozenset({RejectReason.OUT_OF_BOUNDS})
            assert (err.partial, err.status, err.only_already_written) == (False, 400, False)
            assert "out of bounds" in err.body
            assert "out-of-order window" in str(err)  # the hint says what to do
        assert (writer.stats.requests, writer.stats.retries) == (1, 0)
    assert stored(target, "m3m_oob", now - 8 * DAY_MS, now) == {
        tuple(sorted(recent.items())): expect_stored([(now - 2 * MINUTE_MS, 1.0), (now, 2.0)])
    }


@pytest.mark.servers
def test_out_of_order_duplicate_and_all_or_nothing(prometheus_target: Callable[..., Server]) -> None:
    target = prometheus_target()
    now = now_ms()
    a = {"__name__": "m3m_order", "s": "a"}
    b = {"__name__": "m3m_order", "s": "b"}
    first = [(now - 10 * MINUTE_MS + k * MINUTE_MS, float(k)) for k in range(11)]  # ... up to now, value 10.0
    with RemoteWriteClient(settings_for(target), retry=FAST) as writer:
        writer.write(write_body((a, first)))

        with pytest.raises(WriteRejected) as info:  # 30 min behind the series' newest: within bounds, but older
            writer.write(write_body((a, [(now - 30 * MINUTE_MS, 1.0)])))
        assert info.value.reasons == frozenset({RejectReason.OUT_OF_ORDER})
        assert (info.value.status, info.value.partial) == (400, False)
        assert info.value.only_already_written

        with pytest.raises(WriteRejected) as info:  # same timestamp, different value
            writer.write(write_body((a, [(now, 99.0)])))
        assert info.value.reasons == frozenset({RejectReason.DUPLICATE})
        assert info.value.status == 400
        assert info.value.only_already_written

        writer.write(write_body((a, [(now, 10.0)])))  # an identical resend of the newest sample is a no-op

        good_b = [(now - 5 * MINUTE_MS + k * MINUTE_MS, 7.0 + k) for k in range(5)]
        with pytest.raises(WriteRejected) as info:  # 5 good samples of b + one duplicate of a: nothing stored
            writer.write(write_body((b, good_b), (a, [(now, 42.0)])))
        assert info.value.reasons == frozenset({RejectReason.DUPLICATE})
        assert (writer.stats.requests, writer.stats.retries) == (2, 0)

    got = stored(target, "m3m_order", now - HOUR_MS, now)
    assert got == {tuple(sorted(a.items())): expect_stored(first)}  # b: 0 of 5 (all-or-nothing), a unchanged


# -- Prometheus 2.42 with an out-of-order window -----------------------------------------------------


@pytest.mark.servers
def test_ooo_target_too_old_is_permanent_and_not_retried(
    prometheus_target: Callable[..., Server], counting_writer: Callable[..., CountingWriter]
) -> None:
    target = prometheus_target(ooo_window="1d")
    now = now_ms()
    series = {"__name__": "m3m_ooo", "s": "x"}
    slow_retry = RetryPolicy(attempts=3, timeout_seconds=30, wait_initial=2.0, wait_max=2.0, wait_jitter=0)
    counted = counting_writer(settings_for(target), retry=slow_retry)
    writer = counted.writer
    writer.write(write_body((series, [(now, 1.0)])))
    half_day_old = [(now - 12 * HOUR_MS + k * MINUTE_MS, 2.0 + k) for k in range(3)]
    writer.write(write_body((series, half_day_old)))  # within the 1d window: accepted out of order
    assert len(counted.sent) == 2

    began = time.monotonic()
    with pytest.raises(WriteRejected) as info:
        writer.write(write_body((series, [(now - 40 * DAY_MS + k * MINUTE_MS, 3.0) for k in range(3)])))
    elapsed = time.monotonic() - began
    err = info.value
    assert err.reasons == frozenset({RejectReason.TOO_OLD})
    assert (err.status, err.partial, err.only_already_written) == (500, False, False)
    assert "too old sample" in err.body
    assert len(counted.sent) == 3, "a 500 'too old sample' can never succeed and must not be retried"
    assert writer.stats.retries == 0
    assert elapsed < 2.0, f"took {elapsed:.2f}s: a retry wait (2 s) happened"
    assert writer.stats.requests == 2  # only successful requests count

    got = stored(target, "m3m_ooo", now - 41 * DAY_MS, now)
    assert got == {tuple(sorted(series.items())): expect_stored([*half_day_old, (now, 1.0)])}


# -- endpoint, auth and TLS errors -----------------------------------------------------------------


@pytest.mark.servers
def test_prometheus_without_receiver_is_endpoint_not_found(
    prometheus_target: Callable[..., Server], counting_writer: Callable[..., CountingWriter]
) -> None:
    target = prometheus_target(remote_write_receiver=False)
    counted = counting_writer(settings_for(target))
    with pytest.raises(EndpointNotFound) as info:
        counted.writer.write(write_body(({"__name__": "x"}, [(now_ms(), 1.0)])))
    assert info.value.status == 404
    assert "--web.enable-remote-write-receiver" in str(info.value)
    assert len(counted.sent) == 1


@pytest.mark.servers
@pytest.mark.parametrize(
    "auth", [None, AuthSettings(username="u", password="s3cret-but-wrong"), AuthSettings(username="x")]
)
def test_basic_auth_refused(
    auth_target: Server, counting_writer: Callable[..., CountingWriter], auth: AuthSettings | None
) -> None:
    settings = settings_for(auth_target, auth=auth) if auth else settings_for(auth_target)
    counted = counting_writer(settings)
    with pytest.raises(AuthError) as info:
        counted.writer.write(write_body(({"__name__": "m3m_auth"}, [(now_ms(), 1.0)])))
    assert info.value.status == 401
    assert "s3cret-but-wrong" not in str(info.value)  # the password never shows in the error
    assert len(counted.sent) == 1, "a 401 is not retried"


@pytest.mark.servers
def test_basic_auth_accepted(auth_target: Server) -> None:
    auth = AuthSettings(username="u", password="p")
    now = now_ms()
    with RemoteWriteClient(settings_for(auth_target, auth=auth), retry=FAST) as writer:
        writer.write(write_body(({"__name__": "m3m_auth", "ok": "1"}, [(now, 4.5)])))
    assert stored(auth_target, "m3m_auth", now, now, auth=auth) == {
        (("__name__", "m3m_auth"), ("ok", "1")): expect_stored([(now, 4.5)])
    }


@pytest.mark.servers
def test_tls_with_ca_file(tls_target: Server, tls_files: TlsFiles) -> None:
    assert tls_target.url.startswith("https://")
    tls = TlsSettings(ca_file=str(tls_files.ca_cert))
    now = now_ms()
    with RemoteWriteClient(settings_for(tls_target, tls=tls), retry=FAST) as writer:
        writer.write(write_body(({"__name__": "m3m_tls"}, [(now, 8.0)])))
    assert stored(tls_target, "m3m_tls", now, now, tls=tls) == {(("__name__", "m3m_tls"),): expect_stored([(now, 8.0)])}


@pytest.mark.servers
def test_tls_without_ca_is_tls_error(tls_target: Server, counting_writer: Callable[..., CountingWriter]) -> None:
    counted = counting_writer(settings_for(tls_target))  # system trust store: our throw-away CA is unknown
    with pytest.raises(TlsError) as info:
        counted.writer.write(write_body(({"__name__": "m3m_tls"}, [(now_ms(), 1.0)])))
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    assert len(counted.sent) == 1, "a TLS configuration error is not retried"


@pytest.mark.servers
def test_https_url_to_plain_http_port_is_tls_error(
    prometheus_target: Callable[..., Server], counting_writer: Callable[..., CountingWriter], tls_files: TlsFiles
) -> None:
    plain = prometheus_target()
    settings = TargetSettings(
        write_url=plain.url.replace("http://", "https://") + "/api/v1/write",
        tls=TlsSettings(ca_file=str(tls_files.ca_cert)),
    )
    counted = counting_writer(settings)
    with pytest.raises(TlsError) as info:
        counted.writer.write(write_body(({"__name__": "x"}, [(now_ms(), 1.0)])))
    assert "http vs https" in str(info.value)
    assert len(counted.sent) == 1


@pytest.mark.servers
@pytest.mark.parametrize("samples", [1, 5000])  # a big body makes the TLS port reset the connection
def test_http_url_to_tls_port_is_a_clear_error(
    tls_target: Server, counting_writer: Callable[..., CountingWriter], samples: int
) -> None:
    """Go answers '400 Client sent an HTTP request to an HTTPS server' and closes: either that 400 or the
    reset after it must become an error naming https, sent once, never retried as transient."""
    settings = TargetSettings(write_url=tls_target.url.replace("https://", "http://") + "/api/v1/write")
    counted = counting_writer(settings)
    now = now_ms()
    body = write_body(({"__name__": "m3m_scheme"}, [(now - k * 1000, float(k)) for k in range(samples)][::-1]))
    with pytest.raises((WriteRejected, TlsError)) as info:
        counted.writer.write(body)
    assert "https://" in str(info.value)
    if isinstance(info.value, WriteRejected):
        assert info.value.status == 400
    assert len(counted.sent) == 1
    assert counted.writer.stats.retries == 0


@pytest.mark.servers
def test_mutual_tls(prometheus_target: Callable[..., Server], tls_files: TlsFiles) -> None:
    server_config = {
        "cert_file": tls_files.server_cert,
        "key_file": tls_files.server_key,
        "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": tls_files.ca_cert,
    }
    target = prometheus_target(
        web_config={"tls_server_config": server_config},
        ready_verify=tls_files.ca_cert,
        ready_cert=(str(tls_files.client_cert), str(tls_files.client_key)),
    )
    with_cert = TlsSettings(
        ca_file=str(tls_files.ca_cert), cert_file=str(tls_files.client_cert), key_file=str(tls_files.client_key)
    )
    with RemoteWriteClient(settings_for(target, tls=with_cert), retry=FAST) as writer:
        writer.write(write_body(({"__name__": "m3m_mtls"}, [(now_ms(), 1.0)])))
        assert writer.stats.requests == 1
    with (
        RemoteWriteClient(settings_for(target, tls=TlsSettings(ca_file=str(tls_files.ca_cert))), retry=FAST) as writer,
        pytest.raises(TlsError),
    ):
        writer.write(write_body(({"__name__": "m3m_mtls"}, [(now_ms(), 1.0)])))


@pytest.mark.servers
def test_connection_refused_is_transient_after_bounded_attempts(
    counting_writer: Callable[..., CountingWriter],
) -> None:
    settings = TargetSettings(write_url=f"http://127.0.0.1:{free_port()}/api/v1/write")  # nothing listens
    counted = counting_writer(settings, retry=FAST)
    began = time.monotonic()
    with pytest.raises(TransientError) as info:
        counted.writer.write(write_body(({"__name__": "x"}, [(now_ms(), 1.0)])))
    assert time.monotonic() - began < 5
    assert len(counted.sent) == FAST.attempts == 3
    assert counted.writer.stats.retries == 2
    assert info.value.status is None
    assert "connection failed" in str(info.value)
    assert info.value.endpoint == settings.write_url


# -- answers from the fakes -------------------------------------------------------------------------


def test_flaky_503_then_204_succeeds_after_one_retry() -> None:
    body = write_body(({"__name__": "m3m_flaky"}, [(1_700_000_000_000, 1.0)]))
    with FlakyReceiver() as receiver, RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as w:
        w.write(body)
        assert (w.stats.retries, w.stats.requests, w.stats.samples) == (1, 1, 1)
        assert [r.body for r in receiver.received] == [body.body, body.body]  # the same request, resent


def test_429_retry_after_is_honoured() -> None:
    answers = [Answer(429, b"too many requests\n", (("Retry-After", "1"),)), Answer(204)]
    body = write_body(({"__name__": "m3m_busy"}, [(1_700_000_000_000, 1.0)]))
    with (
        ScriptedReceiver(answers) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as writer,
    ):
        began = time.monotonic()
        writer.write(body)
        elapsed = time.monotonic() - began
    assert elapsed >= 0.95, f"Retry-After: 1 ignored (waited {elapsed:.2f}s; own backoff is 0.01s)"
    assert elapsed < 5
    assert writer.stats.retries == 1
    assert len(receiver.received) == 2


def test_5xx_exhausting_attempts_is_transient() -> None:
    with (
        ScriptedReceiver([Answer(503, b"not ready\n")]) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as writer,
    ):
        with pytest.raises(TransientError) as info:
            writer.write(write_body(({"__name__": "x"}, [(1, 1.0)])))
        assert info.value.status == 503
        assert len(receiver.received) == FAST.attempts


@pytest.mark.parametrize(
    ("reason", "expected", "only_old"),
    [
        ("out of order sample", RejectReason.OUT_OF_ORDER, True),
        ("duplicate sample for timestamp", RejectReason.DUPLICATE, True),
        ("out of bounds", RejectReason.OUT_OF_BOUNDS, False),
        ("too old sample", RejectReason.TOO_OLD, False),
    ],
)
def test_thanos_409_is_a_partial_commit(reason: str, expected: RejectReason, only_old: bool) -> None:
    body = write_body(({"__name__": "m3m_thanos"}, [(1_700_000_000_000, 1.0), (1_700_000_060_000, 2.0)]))
    with (
        FakeThanosReceiver(reason) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as writer,
    ):
        with pytest.raises(WriteRejected) as info:
            writer.write(body)
        err = info.value
        assert err.partial is True
        assert err.status == 409
        assert err.reasons == frozenset({expected})
        assert err.only_already_written is only_old
        assert "store locally for endpoint" in err.body
        assert writer.stats.partial_commits == 1
        assert writer.stats.retries == 0
        assert len(receiver.received) == 1, "a 409 is never retried"


def test_thanos_409_for_invalid_labels() -> None:
    answer = Answer(409, b"store locally for endpoint 127.0.0.1:10901: add 1 series: out of order labels\n")
    with (
        ScriptedReceiver([answer]) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as writer,
        pytest.raises(WriteRejected) as info,
    ):
        writer.write(write_body(({"__name__": "x"}, [(1, 1.0)])))
    assert info.value.reasons == frozenset({RejectReason.INVALID_LABELS})
    assert info.value.partial
    assert not info.value.only_already_written  # refused for a reason resending the same labels cannot fix


def test_413_is_too_large_and_not_retried() -> None:
    with (
        ScriptedReceiver([Answer(413, b"request too large\n")]) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as writer,
        pytest.raises(WriteRejected) as info,
    ):
        writer.write(write_body(({"__name__": "x"}, [(1, 1.0)])))
    assert info.value.reasons == frozenset({RejectReason.TOO_LARGE})
    assert (info.value.status, info.value.partial) == (413, False)
    assert "max_request_bytes" in str(info.value)
    assert len(receiver.received) == 1


def test_other_4xx_is_bad_request_and_not_retried() -> None:
    with (
        ScriptedReceiver([Answer(400, b"snappy: corrupt input\n")]) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url), retry=FAST) as writer,
        pytest.raises(WriteRejected) as info,
    ):
        writer.write(write_body(({"__name__": "x"}, [(1, 1.0)])))
    assert info.value.reasons == frozenset({RejectReason.BAD_REQUEST})
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("settings_kw", "header", "value"),
    [
        ({"tenant": "team-a"}, "thanos-tenant", "team-a"),
        ({"tenant": "org-7", "tenant_header": "X-Scope-OrgID"}, "x-scope-orgid", "org-7"),
        ({}, "thanos-tenant", None),
    ],
)
def test_tenant_and_protocol_headers_are_sent(settings_kw: dict, header: str, value: str | None) -> None:
    body = write_body(
        ({"__name__": "m3m_tenant", "a": "1"}, [(1_700_000_000_000, 1.5)]),
        ({"__name__": "m3m_tenant", "a": "2"}, [(1_700_000_000_000, 2.5)]),
    )
    with (
        ScriptedReceiver([Answer(200)]) as receiver,
        RemoteWriteClient(TargetSettings(write_url=receiver.write_url, **settings_kw), retry=FAST) as writer,
    ):
        writer.write(body)  # Thanos answers 200, Prometheus 204: both are success
    (received,) = receiver.received
    assert received.headers.get(header) == value
    assert received.path == "/api/v1/receive"
    assert received.headers["content-encoding"] == "snappy"
    assert received.headers["content-type"] == "application/x-protobuf"
    assert received.headers["x-prometheus-remote-write-version"] == "0.1.0"
    assert received.headers["user-agent"].startswith("m3migrate/")
    parsed = WriteRequest.FromString(snappy.decompress(received.body))
    assert [[(label.name, label.value) for label in ts.labels] for ts in parsed.timeseries] == [
        [("__name__", "m3m_tenant"), ("a", "1")],
        [("__name__", "m3m_tenant"), ("a", "2")],
    ]


# -- VictoriaMetrics ---------------------------------------------------------------------------------


@pytest.mark.servers
def test_victoriametrics_accepts_a_write(victoriametrics_target: Callable[..., Server]) -> None:
    vm = victoriametrics_target()
    now = now_ms()
    series = {"__name__": "m3m_vm", "city": "Zürich", "job": "vm"}
    samples = [(now - 10 * MINUTE_MS + k * MINUTE_MS, 0.1 * k + 0.2) for k in range(10)]
    with RemoteWriteClient(TargetSettings(write_url=f"{vm.url}/api/v1/write"), retry=FAST) as writer:
        writer.write(write_body((series, samples)))
        assert (writer.stats.requests, writer.stats.samples) == (1, 10)
    vm_force_flush(vm)
    with vm.http_client() as client:
        answer = client.get("/api/v1/export", params={"match[]": '{__name__="m3m_vm"}'})
    answer.raise_for_status()
    lines = [json.loads(line) for line in answer.text.splitlines() if line.strip()]
    assert len(lines) == 1
    assert lines[0]["metric"] == series
    assert lines[0]["timestamps"] == [t for t, _ in samples]
    # VictoriaMetrics keeps values as decimals (about 12 significant digits, integers exact below 2^55),
    # not as IEEE-754 bits
    assert lines[0]["values"] == pytest.approx([v for _, v in samples], rel=1e-12)


def test_write_body_helper_matches_the_wire_format() -> None:
    """The request builder used above is the engine's: one series, one request, labels sorted."""
    body = write_body(({"job": "j", "__name__": "n"}, [(5, 1.0)]))
    parsed = WriteRequest.FromString(snappy.decompress(body.body))
    assert [(label.name, label.value) for label in parsed.timeseries[0].labels] == [("__name__", "n"), ("job", "j")]
    assert (body.series, body.samples) == (1, 1)
