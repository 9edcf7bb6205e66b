"""A loopback HTTP proxy that injects the failures production shows, in front of a real server.

Placed between m3migrate and a source or target, it forwards every request to the server and, at a
configurable rate with a seeded random choice, answers instead with one of:

- ``5xx``: 500/502/503 without forwarding (an overloaded or failing server)
- ``429``: Too Many Requests with ``Retry-After``
- ``reset``: the connection is reset, half the time *after* the server processed the request (so the
  client cannot know whether a write landed)
- ``truncate``: the server's answer with its full Content-Length but only half the body, then close
- ``stall``: the request is forwarded, then nothing comes back for ``stall_seconds`` (past the
  client's timeout), then the connection closes
- ``slow``: the server's answer, after ``slow_seconds``

``counters`` tells what it injected. ``rate``, ``kinds`` and ``latency_seconds`` (added to every
forwarded answer) can be changed while it runs.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import httpx

KINDS = ("5xx", "429", "reset", "truncate", "stall", "slow")
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
    "date",
    "server",
}


class FaultProxy:
    """Forwards http://127.0.0.1:<port>/... to ``upstream`` and injects faults; use as a context manager."""

    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: Sequence[str] = KINDS,
        seed: int = 0,
        retry_after: int = 1,
        stall_seconds: float = 5.0,
        slow_seconds: float = 0.5,
        latency_seconds: float = 0.0,
        paths: Sequence[str] = (),
        start_after: int = 0,
        upstream_verify: bool | str = True,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        self.upstream = upstream.rstrip("/")
        self.rate = rate
        self.kinds = tuple(kinds)
        self.retry_after = retry_after
        self.stall_seconds = stall_seconds
        self.slow_seconds = slow_seconds
        self.latency_seconds = latency_seconds
        self.paths = tuple(paths)  # only requests whose path starts with one of these get faults (empty: all)
        self.start_after = start_after  # the first this many requests are never faulted
        self.in_flight = 0
        self.peak_in_flight = 0  # most requests handled at once: what the server saw of the client's caps
        self.counters: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._upstream = httpx.Client(timeout=httpx.Timeout(600.0), verify=upstream_verify, trust_env=False)
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def injected(self) -> int:
        """How many faults were injected so far."""
        with self._lock:
            return sum(n for kind, n in self.counters.items() if kind in KINDS)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._upstream.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide(self, path: str) -> str | None:
        """The fault for the next request (None: forward it untouched); counts requests and faults."""
        with self._lock:
            self.counters["requests"] += 1
            if self.counters["requests"] <= self.start_after:
                return None
            if self.paths and not path.startswith(self.paths):
                return None
            if not self.kinds or self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.counters[kind] += 1
            return kind

    def coin(self) -> bool:
        with self._lock:
            return self._rng.random() < 0.5

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        request = self._upstream.build_request(method, self.upstream + path, headers=headers, content=body)
        response = self._upstream.send(request, stream=True)
        try:
            response._content = b"".join(response.iter_raw())  # still compressed: passed on as is
        finally:
            response.close()
        with self._lock:
            self.counters["forwarded"] += 1
        return response


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    proxy: FaultProxy

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # resets and stalls end connections abruptly on purpose


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def _proxy(self) -> None:
        proxy = self.server.proxy
        with proxy._lock:
            proxy.in_flight += 1
            proxy.peak_in_flight = max(proxy.peak_in_flight, proxy.in_flight)
        try:
            self._handle_one(proxy)
        finally:
            with proxy._lock:
                proxy.in_flight -= 1

    def _handle_one(self, proxy: FaultProxy) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fault = proxy.decide(self.path)
        if fault == "5xx":
            status = (500, 502, 503)[proxy.counters["5xx"] % 3]
            self._answer(status, {"Content-Type": "text/plain"}, f"fault proxy: injected {status}\n".encode())
            return
        if fault == "429":
            headers = {"Content-Type": "text/plain", "Retry-After": str(proxy.retry_after)}
            self._answer(429, headers, b"fault proxy: injected 429 too many requests\n")
            return
        if fault == "reset" and proxy.coin():
            self._reset()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        try:
            response = proxy.forward(self.command, self.path, headers, body)
        except httpx.HTTPError as exc:
            self._answer(502, {"Content-Type": "text/plain"}, f"fault proxy: upstream failed: {exc}\n".encode())
            return
        if fault == "reset":
            self._reset()  # after the server processed it: the client cannot know the outcome
            return
        if fault == "stall":
            proxy._stopping.wait(proxy.stall_seconds)
            self._reset()
            return
        delay = proxy.latency_seconds + (proxy.slow_seconds if fault == "slow" else 0.0)
        if delay:
            proxy._stopping.wait(delay)
        out = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        content = response.content
        if fault == "truncate":
            self._answer(response.status_code, out, content[: len(content) // 2], length=len(content))
            self._reset()
            return
        self._answer(response.status_code, out, content)

    def _answer(self, status: int, headers: dict[str, str], body: bytes, *, length: int | None = None) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _reset(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashed server or a load balancer dropping the flow does."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the connection was reset on purpose
            super().finish()
