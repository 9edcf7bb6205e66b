"""One place that turns endpoint settings into an httpx client, and HTTP answers into typed errors."""

from __future__ import annotations

import datetime
import email.utils
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TypedDict

import httpx
import stamina

from m3migrate import __version__
from m3migrate.clients.limits import EndpointLimits, limits_for
from m3migrate.errors import AuthError, EndpointError, EndpointNotFound, TlsError, TransientError
from m3migrate.settings.endpoints import EndpointSettings, SourceSettings, TargetSettings, origin, redact_url

USER_AGENT = f"m3migrate/{__version__}"
BODY_EXCERPT = 300


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter: a dead endpoint fails in bounded time."""

    attempts: int = 8
    timeout_seconds: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0

    def context(self, on: Callable[[Exception], bool | float]) -> stamina._core._RetryContextIterator:
        return stamina.retry_context(
            on=on,
            attempts=self.attempts,
            timeout=self.timeout_seconds,
            wait_initial=self.wait_initial,
            wait_max=self.wait_max,
            wait_jitter=self.wait_jitter,
        )


DEFAULT_RETRY = RetryPolicy()

OVERLOAD_STATUSES = (429, 503)  # "too much": the adaptive limit goes down


def retry_policy(settings: EndpointSettings) -> RetryPolicy:
    """The endpoint's own retry bounds (attempts, total time, longest wait)."""
    return RetryPolicy(
        attempts=settings.retry_attempts,
        timeout_seconds=settings.retry_timeout_seconds,
        wait_initial=min(DEFAULT_RETRY.wait_initial, settings.retry_wait_max_seconds),
        wait_max=settings.retry_wait_max_seconds,
        wait_jitter=min(DEFAULT_RETRY.wait_jitter, settings.retry_wait_max_seconds),
    )


def endpoint_side(settings: EndpointSettings) -> tuple[str, str]:
    """("source", "read"), ("target", "write") or ("endpoint", "request"): names for log lines."""
    if isinstance(settings, SourceSettings):
        return "source", "read"
    if isinstance(settings, TargetSettings):
        return "target", "write"
    return "endpoint", "request"


def retry_transient(exc: Exception) -> bool | float:
    """stamina backoff hook: resend on a transient error (errors.py), honouring the server's Retry-After."""
    if isinstance(exc, TransientError):
        return exc.retry_after if exc.retry_after is not None else True
    return False


class ClientOptions(TypedDict, total=False):
    """What a protocol client passes on to EndpointClient unchanged."""

    retry: RetryPolicy | None
    client: httpx.Client | None
    max_connections: int


class EndpointClient:
    """Base of the protocol clients: owns (or borrows) an httpx client and its retry policy.

    A borrowed client is never closed here, so several protocol clients can share one pool. Every
    request goes through :meth:`exchange`, which enforces the endpoint's concurrency cap and rate limits
    (shared by all clients of that endpoint in the process) and adapts the in-flight limit.
    """

    def __init__(
        self,
        settings: EndpointSettings,
        *,
        url: str = "",
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
        max_connections: int = 16,
    ) -> None:
        self.settings = settings
        self.url = url  # the protocol's one URL (remote read/write); the PromQL and admin clients build theirs
        self.endpoint = redact_url(url)
        self.retry = retry or retry_policy(settings)
        self._client = client if client is not None else build_client(settings, max_connections=max_connections)
        self._owns_client = client is None
        self.side, self.op = endpoint_side(settings)
        self.limits: EndpointLimits | None = None

    def _limits_for(self, url: httpx.URL) -> EndpointLimits:
        if self.limits is None:
            s = self.settings
            self.limits = limits_for(
                origin(str(url)),
                side=self.side,
                op=self.op,
                max_concurrency=s.max_concurrency,
                adaptive=s.adaptive_concurrency,
                requests_per_second=s.max_requests_per_second,
                samples_per_second=s.max_samples_per_second,
            )
        return self.limits

    def exchange(self, request: httpx.Request, *, what: str, samples: int = 0) -> httpx.Response:
        """Send once within the endpoint's caps; 429/503 and timeouts lower its in-flight limit.

        ``samples`` (writes) is charged to the samples/s budget before sending; reads charge theirs
        afterwards with :meth:`charge_samples`, once they know how many came back.
        """
        limits = self._limits_for(request.url)
        with limits.concurrency.slot() as generation:
            limits.rate.request()
            limits.rate.take_samples(samples)
            try:
                response = send(self._client, request, what=what)
            except TransientError as exc:
                if "timed out" in str(exc):
                    limits.concurrency.overloaded(generation, "timed out")
                raise
        if response.status_code in OVERLOAD_STATUSES:
            limits.concurrency.overloaded(generation, f"answered {response.status_code}")
        elif response.status_code < 300:
            limits.concurrency.succeeded()
        return response

    def charge_samples(self, samples: int) -> None:
        """Count samples that arrived against the samples/s budget (waits when over it)."""
        if self.limits is not None:
            self.limits.rate.take_samples(samples)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_client:
            self._client.close()


def build_client(settings: EndpointSettings, *, max_connections: int = 16) -> httpx.Client:
    """An httpx client with the endpoint's auth, TLS, headers and timeout."""
    auth: httpx.Auth | None = None
    headers = {"User-Agent": USER_AGENT, **settings.headers}
    if settings.auth.username:
        password = settings.auth.password.get_secret_value() if settings.auth.password else ""
        auth = httpx.BasicAuth(settings.auth.username, password)
    elif settings.auth.bearer_token:
        headers["Authorization"] = f"Bearer {settings.auth.bearer_token.get_secret_value()}"
    return httpx.Client(
        auth=auth,
        headers=headers,
        verify=_ssl_context(settings),
        timeout=httpx.Timeout(settings.timeout_seconds, connect=min(10.0, settings.timeout_seconds)),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        follow_redirects=False,
        trust_env=False,
    )


def _ssl_context(settings: EndpointSettings) -> ssl.SSLContext:
    """The TLS context of an endpoint's client.

    Building one loads the system CA store (~30 ms and tens of thousands of allocations), and a run builds
    a client per task and check, so the two contexts that read no file of the user's are made once per
    process and shared (an SSLContext is safe to share between threads and clients, and nothing here
    changes it once made). A context with a CA file or client certificate is built per client, so a
    rotated file is picked up by the next task.
    """
    tls = settings.tls
    ca_file = None if tls.insecure_skip_verify else tls.ca_file  # nothing is verified against it
    if not (ca_file or (tls.cert_file and tls.key_file)):
        return _shared_context(verify=not tls.insecure_skip_verify)
    ctx = ssl.create_default_context(cafile=ca_file)
    if tls.insecure_skip_verify:
        _skip_verification(ctx)
    if tls.cert_file and tls.key_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    return ctx


_SHARED_CONTEXTS: dict[bool, ssl.SSLContext] = {}
_SHARED_CONTEXTS_LOCK = threading.Lock()


def _shared_context(*, verify: bool) -> ssl.SSLContext:
    """One context per process for each verify setting; the lock keeps a run's first checks, which
    start at once, from each building one."""
    with _SHARED_CONTEXTS_LOCK:
        ctx = _SHARED_CONTEXTS.get(verify)
        if ctx is None:
            ctx = _SHARED_CONTEXTS[verify] = ssl.create_default_context()
            if not verify:
                _skip_verification(ctx)
        return ctx


def _skip_verification(ctx: ssl.SSLContext) -> None:
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110 10.2.3: delay-seconds or an HTTP-date, as
    Prometheus' remote-write client reads it), capped at 300 s; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None  # neither form: our own backoff
        if when.tzinfo is None:  # RFC 9110: an HTTP-date is GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = (when - datetime.datetime.now(datetime.UTC)).total_seconds()
    return max(0.0, min(seconds, 300.0))


def body_excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except Exception:  # undecodable body
        return f"<{len(response.content)} bytes>"
    text = " ".join(text.split())
    return text[:BODY_EXCERPT]


def raise_for_common_status(response: httpx.Response, *, what: str) -> None:
    """Map the statuses every endpoint shares to typed errors; 2xx and other 4xx pass through."""
    status = response.status_code
    if status < 300:
        return
    endpoint = redact_url(str(response.request.url))
    body = body_excerpt(response)
    if status in (401, 403):
        raise AuthError(
            f"{what}: credentials {'missing or wrong' if status == 401 else 'not allowed'}",
            endpoint=endpoint,
            status=status,
            body=body,
            hint="check the username/password or bearer token of this endpoint",
        )
    if status == 404:
        raise EndpointNotFound(
            f"{what}: no such endpoint",
            endpoint=endpoint,
            status=status,
            body=body,
            hint="check the URL path (M3: /api/v1/prom/remote/read, Thanos: /api/v1/receive, "
            "Prometheus: /api/v1/read and /api/v1/write with --web.enable-remote-write-receiver)",
        )
    if status == 429 or (status >= 500 and status not in (501, 505)):
        raise TransientError(
            f"{what}: server busy or failing",
            endpoint=endpoint,
            status=status,
            body=body,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )


def send(client: httpx.Client, request: httpx.Request, *, what: str) -> httpx.Response:
    """Send once; connection problems become TransientError naming the endpoint."""
    try:
        return client.send(request)
    except httpx.TimeoutException as exc:
        raise TransientError(
            f"{what}: timed out ({type(exc).__name__})",
            endpoint=redact_url(str(request.url)),
            sent=not isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout),
        ) from None
    except httpx.TransportError as exc:
        tls = _tls_failure(exc)
        if not tls and isinstance(exc, _RESET_ERRORS) and request.url.scheme == "http" and _speaks_tls(request.url):
            tls = "plain HTTP sent to a TLS port: use https://"
        if tls:
            raise TlsError(
                f"{what}: TLS handshake failed ({tls})",
                endpoint=redact_url(str(request.url)),
                hint="check the URL scheme (http vs https) and the CA file / client certificate settings",
            ) from None
        raise TransientError(
            f"{what}: connection failed ({type(exc).__name__}: {exc})",
            endpoint=redact_url(str(request.url)),
            sent=not isinstance(exc, httpx.ConnectError),
        ) from None


def unexpected(response: httpx.Response, *, what: str) -> EndpointError:
    return EndpointError(
        f"{what}: unexpected answer",
        endpoint=redact_url(str(response.request.url)),
        status=response.status_code,
        body=body_excerpt(response),
    )


# A Go TLS port answers plain HTTP with a 400 and closes; with request bytes still unread the client sees
# a connection reset instead, which would be retried as transient.
_RESET_ERRORS = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


def _speaks_tls(url: httpx.URL, timeout: float = 3.0) -> bool:
    """True when the port of a plain-HTTP URL completes a TLS handshake (the URL should be https)."""
    ctx = _shared_context(verify=False)
    try:
        with (
            socket.create_connection((url.host, url.port or 80), timeout=timeout) as sock,
            ctx.wrap_socket(sock, server_hostname=url.host),
        ):
            return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def _tls_failure(exc: BaseException) -> str | None:
    """The SSL error behind a transport error, if any: those are configuration errors, not transient."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen.reason or str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "SSL" in text or "CERTIFICATE" in text else None
