"""HTTP answers and transport failures as typed errors (m3migrate/clients/http.py), and the client it builds.

Expectations from Prometheus' remote-write client (storage/remote/client.go): a 5xx answer and a 429
are recoverable and carry the server's Retry-After (``retryAfterDuration``: an HTTP-date or a number of
seconds, anything else meaning no server-given wait), a network error from ``Client.Do`` is recoverable,
any other 4xx is not; and from RFC 9110 section 10.2.3 (``Retry-After = HTTP-date / delay-seconds``).
Our deviations are documented: 501 and 505 are permanent (TransientError's docstring), a Retry-After
wait is bounded. Classification through the retry conditions of tasks is in tests/unit/test_errors.py; the
answers of real servers in tests/integration/test_remote_write.py and tests/integration/test_remote_read.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from m3migrate import __version__
from m3migrate.clients.http import (
    BODY_EXCERPT,
    body_excerpt,
    build_client,
    parse_retry_after,
    raise_for_common_status,
    retry_transient,
    send,
    unexpected,
)
from m3migrate.errors import AuthError, EndpointError, EndpointNotFound, TransientError
from m3migrate.settings.endpoints import AuthSettings, EndpointSettings

# A URL whose user info and query string must never show: both may carry credentials.
URL = "http://avnadmin:PWsecret@m3:7201/api/v1/prom/remote/read?access_token=TKsecret"
SHOWN = "http://m3:7201/api/v1/prom/remote/read"


def _answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None, url: str = URL) -> httpx.Response:
    return httpx.Response(status, headers=headers, content=body, request=httpx.Request("POST", url))


def _raised(response: httpx.Response) -> EndpointError:
    with pytest.raises(EndpointError) as caught:
        raise_for_common_status(response, what="remote read")
    return caught.value


# -- statuses ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 204, 400, 409, 422])
def test_success_and_request_specific_4xx_are_left_to_the_protocol_client(status: int) -> None:
    """400/409/422 mean different things to remote write (a refused sample) and PromQL (a bad query)."""
    assert raise_for_common_status(_answer(status), what="remote write") is None


@pytest.mark.parametrize("status", [500, 502, 503, 504, 507, 599, 429])
def test_5xx_and_429_are_transient(status: int) -> None:
    error = _raised(_answer(status, b"overloaded"))
    assert type(error) is TransientError and error.transient and not error.terminal
    assert error.status == status and error.body == "overloaded"


@pytest.mark.parametrize("status", [501, 505])
def test_not_implemented_and_http_version_are_not_retried(status: int) -> None:
    """Resending the same request to a server that does not implement it cannot succeed."""
    assert raise_for_common_status(_answer(status), what="remote read") is None
    error = unexpected(_answer(status), what="remote read")
    assert not error.transient and error.status == status


@pytest.mark.parametrize(
    ("status", "kind", "said"), [(401, AuthError, "missing or wrong"), (403, AuthError, "not allowed")]
)
def test_401_and_403_are_terminal_auth_errors(status: int, kind: type, said: str) -> None:
    error = _raised(_answer(status, b"unauthorized"))
    assert type(error) is kind and error.terminal and not error.transient
    assert said in str(error) and "bearer token" in error.hint


def test_404_names_the_paths_the_servers_serve() -> None:
    error = _raised(_answer(404, b"404 page not found"))
    assert type(error) is EndpointNotFound and error.terminal
    assert "/api/v1/prom/remote/read" in error.hint and "/api/v1/receive" in error.hint


@pytest.mark.parametrize("status", [401, 404, 429, 503])
def test_errors_name_the_endpoint_without_its_credentials(status: int) -> None:
    error = _raised(_answer(status))
    assert error.endpoint == SHOWN
    assert "PWsecret" not in str(error) and "TKsecret" not in str(error) and "avnadmin" not in str(error)
    assert f"HTTP {status}" in str(error)


# -- Retry-After -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_seconds_travel_with_the_error_into_the_backoff(status: int) -> None:
    error = _raised(_answer(status, headers={"Retry-After": "7"}))
    assert isinstance(error, TransientError) and error.retry_after == 7.0
    assert retry_transient(error) == 7.0, "stamina waits a returned number of seconds instead of its own backoff"
    without = _raised(_answer(status))
    assert isinstance(without, TransientError) and without.retry_after is None
    assert retry_transient(without) is True, "no header: our own backoff"


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("1", 1.0), ("120", 120.0), (" 5 ", 5.0)])
def test_retry_after_delay_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_a_retry_after_wait_is_bounded() -> None:
    """A dead or confused endpoint fails in bounded time (RetryPolicy), whatever it asks for."""
    assert parse_retry_after("86400") == 300.0
    assert parse_retry_after("-5") == 0.0, "never a negative wait"


@pytest.mark.parametrize("value", [None, "", "soon", "5s", "0x10"])
def test_a_retry_after_that_is_no_delay_means_our_own_backoff(value: str | None) -> None:
    """Prometheus: "In case of any errors, it returns the defaultBackoff as if the header was never supplied"."""
    assert parse_retry_after(value) is None


def test_retry_after_http_date_is_the_wait_until_then() -> None:
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)  # IMF-fixdate
    wait = parse_retry_after(in_a_minute)
    assert wait is not None and 55.0 <= wait <= 60.0
    assert parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT") == 0.0, "a date in the past: resend at once"


# -- body excerpt ------------------------------------------------------------------------------------------


def test_the_body_excerpt_is_one_short_line() -> None:
    page = b"<html>\n  <head><title>502 Bad Gateway</title></head>\n\t<body>" + b"x" * 2000 + b"</body></html>\n"
    excerpt = body_excerpt(_answer(502, page))
    assert excerpt.startswith("<html> <head><title>502 Bad Gateway</title></head> <body>xxx")
    assert len(excerpt) == BODY_EXCERPT and "\n" not in excerpt and "\t" not in excerpt
    assert _raised(_answer(502, page)).body == excerpt


def test_a_binary_body_still_gives_an_excerpt() -> None:
    """A snappy frame or protobuf where text was expected must not turn into an encoding error."""
    excerpt = body_excerpt(_answer(500, bytes(range(256)) * 4, headers={"Content-Type": "application/x-protobuf"}))
    assert isinstance(excerpt, str) and 0 < len(excerpt) <= BODY_EXCERPT
    assert body_excerpt(_answer(500)) == ""


# -- transport failures ---------------------------------------------------------------------------------


def _failing(exc: Exception) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    ("exc", "sent", "said"),
    [
        (httpx.ConnectError("connection refused"), False, "connection failed (ConnectError"),
        (httpx.ConnectTimeout("connect"), False, "timed out (ConnectTimeout)"),
        (httpx.PoolTimeout("pool"), False, "timed out (PoolTimeout)"),
        (httpx.ReadTimeout("read"), True, "timed out (ReadTimeout)"),
        (httpx.WriteTimeout("write"), True, "timed out (WriteTimeout)"),
        (httpx.RemoteProtocolError("server disconnected"), True, "connection failed (RemoteProtocolError"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_network_errors_are_transient_and_say_whether_the_request_may_have_arrived(
    exc: Exception, sent: bool, said: str
) -> None:
    """``sent`` False: the server surely never saw the request (a write can be resent without a duplicate)."""
    # https: a reset on plain http would first be probed for a TLS port (tests/integration/test_remote_write.py)
    request = httpx.Request("POST", URL.replace("http://", "https://"))
    with _failing(exc) as client, pytest.raises(TransientError) as caught:
        send(client, request, what="remote write")
    error = caught.value
    assert error.transient and error.sent is sent and said in str(error)
    assert error.endpoint == SHOWN.replace("http://", "https://") and "secret" not in str(error)


# -- the client --------------------------------------------------------------------------------------------


@pytest.fixture
def echo_server() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """Answers 204 and records the headers of each request."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_the_client_sends_its_user_agent_headers_and_credentials(echo_server: tuple[str, list]) -> None:
    url, seen = echo_server
    basic = EndpointSettings(auth=AuthSettings(username="u", password="p"), headers={"X-Scope-OrgID": "team"})
    bearer = EndpointSettings(auth=AuthSettings(bearer_token="tok"))
    for settings in (basic, bearer, EndpointSettings()):
        with build_client(settings) as client:
            assert client.get(url).status_code == 204
    with_basic, with_bearer, plain = seen
    assert with_basic["User-Agent"] == f"m3migrate/{__version__}" and with_basic["X-Scope-OrgID"] == "team"
    assert with_basic["Authorization"] == "Basic dTpw"  # base64("u:p")
    assert with_bearer["Authorization"] == "Bearer tok"
    assert "Authorization" not in plain


def test_the_client_ignores_proxy_settings_of_the_environment(
    echo_server: tuple[str, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As Prometheus (proxy_from_environment defaults to false): credentials go only where configured."""
    url, seen = echo_server
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with build_client(EndpointSettings()) as client:
        assert client.get(url).status_code == 204
    assert len(seen) == 1
