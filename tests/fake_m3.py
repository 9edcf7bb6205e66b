"""FAKE M3 Coordinator for tests: only the M3-specific behaviour no real server here can show.

It serves the namespace API (jsonpb, int64 as JSON strings), /ready, /health, the placement, and the
M3 remote-read path. Data comes from a real Prometheus when ``upstream_read_url`` /
``upstream_query_url`` are given (the fake then only adds M3's path layout, its limit behaviour and
header recording); it invents no samples of its own.

    with FakeM3Coordinator(namespaces={"default": fake_namespace("48h")}) as m3:
        M3AdminClient(m3.url, EndpointSettings()).namespaces()
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import snappy

from m3migrate.prompb import prompb_pb2

NS_PER_S = 1_000_000_000
LIMIT_ERROR = "query exceeded limit: require_exhaustive=true, series_limit=1, series_matched=2, docs_limit=0"
LIMITED_VALUE = "max_fetch_series_limit_applied"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an env proxy
M3_PROMQL_PATHS = ("/api/v1/series", "/api/v1/labels", "/api/v1/label/", "/api/v1/query")


def _seconds(text: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(text[:-1]) * units[text[-1]]


def fake_namespace(
    retention: str,
    *,
    resolution: str | None = None,
    block_size: str = "2h",
    buffer_past: str = "10m",
    buffer_future: str = "2m",
    status: str | None = "READY",
    downsample_all: bool | None = True,
) -> dict[str, Any]:
    """A namespace as M3's GET /api/v1/services/m3db/namespace shows it (durations like "40d", "1m").

    ``resolution`` set means aggregated. ``status=None`` omits stagingState (M3 before 1.0).
    """
    aggregation: dict[str, Any] = {"aggregated": False, "attributes": None}
    if resolution is not None:
        attributes: dict[str, Any] = {"resolutionNanos": str(_seconds(resolution) * NS_PER_S)}
        attributes["downsampleOptions"] = None if downsample_all is None else {"all": downsample_all}
        aggregation = {"aggregated": True, "attributes": attributes}
    spec: dict[str, Any] = {
        "bootstrapEnabled": True,
        "flushEnabled": True,
        "retentionOptions": {
            "retentionPeriodNanos": str(_seconds(retention) * NS_PER_S),
            "blockSizeNanos": str(_seconds(block_size) * NS_PER_S),
            "bufferFutureNanos": str(_seconds(buffer_future) * NS_PER_S),
            "bufferPastNanos": str(_seconds(buffer_past) * NS_PER_S),
            "blockDataExpiry": True,
            "blockDataExpiryAfterNotAccessPeriodNanos": "300000000000",
            "futureRetentionPeriodNanos": "0",
        },
        "indexOptions": {"enabled": True, "blockSizeNanos": str(_seconds(block_size) * NS_PER_S)},
        "coldWritesEnabled": False,
        "aggregationOptions": {"aggregations": [aggregation]},
    }
    if status is not None:
        spec["stagingState"] = {"status": status}
    return spec


def _go_duration(ns: int) -> str:
    """Go's time.Duration.String() for whole seconds, as /ready prints retention and resolution."""
    total = ns // NS_PER_S
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeM3Coordinator:
    """A FAKE M3 Coordinator on 127.0.0.1 (random port), run in a thread while used as a context manager.

    - ``namespaces``: name -> spec as built by :func:`fake_namespace`.
    - ``ready_status``: name -> ready; /ready answers 500 (with its JSON) if any is False.
    - ``limited``: remote read and PromQL answers carry ``M3-Results-Limited``.
    - ``limit_error``: remote read and PromQL answer 400 "query exceeded limit".
    - ``upstream_read_url``: a real Prometheus /api/v1/read to serve remote reads from (as M3 does,
      the query hints and accepted_response_types are dropped, so the answer is always SAMPLES).
    - ``upstream_query_url``: a real Prometheus base URL serving the PromQL paths.
    """

    def __init__(
        self,
        namespaces: dict[str, dict[str, Any]] | None = None,
        ready_status: dict[str, bool] | None = None,
        *,
        limited: bool = False,
        limit_error: bool = False,
        upstream_read_url: str | None = None,
        upstream_query_url: str | None = None,
        placement: dict[str, Any] | None = None,
    ) -> None:
        self.namespaces = namespaces if namespaces is not None else {"default": fake_namespace("48h")}
        self.ready_status = ready_status or {}
        self.limited = limited
        self.limit_error = limit_error
        self.upstream_read_url = upstream_read_url
        self.upstream_query_url = upstream_query_url.rstrip("/") if upstream_query_url else None
        self.placement = placement
        self.requests: list[RecordedRequest] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "use FakeM3Coordinator as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def read_url(self) -> str:
        return self.url + "/api/v1/prom/remote/read"

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.split("?")[0] == path]

    def __enter__(self) -> Self:
        fake = self

        class Handler(_Handler):
            coordinator = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-m3", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- answers -----------------------------------------------------------------------------------

    def ready_document(self) -> tuple[int, dict[str, Any]]:
        doc: dict[str, list[dict[str, Any]]] = {}
        for name, spec in sorted(self.namespaces.items()):
            aggs = spec.get("aggregationOptions", {}).get("aggregations") or [{"aggregated": False}]
            ret_ns = int(spec["retentionOptions"]["retentionPeriodNanos"])
            for agg in aggs:
                res_ns = int(agg["attributes"]["resolutionNanos"]) if agg.get("aggregated") else 0
                entry = {
                    "id": name,
                    "attributes": {
                        "metricsType": "aggregated" if agg.get("aggregated") else "unaggregated",
                        "retention": _go_duration(ret_ns),
                        "resolution": _go_duration(res_ns),
                    },
                }
                ok = self.ready_status.get(name, True)
                doc.setdefault("readyReads" if ok else "notReadyReads", []).append(entry)
                doc.setdefault("readyWrites" if ok else "notReadyWrites", []).append(entry)
        return (500 if "notReadyReads" in doc else 200), doc


class _Handler(BaseHTTPRequestHandler):
    coordinator: FakeM3Coordinator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        pass  # keep test output clean

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        fake = self.coordinator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fake.requests.append(
            RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        path = self.path.split("?")[0]
        if path == "/api/v1/services/m3db/namespace" and self.command == "GET":
            registry = {"registry": {"namespaces": fake.namespaces}}
            return self._send(200, json.dumps(registry).encode(), "application/json")
        if path == "/api/v1/services/m3db/placement" and self.command == "GET":
            if fake.placement is None:
                return self._json(404, {"status": "error", "error": "placement not found"})
            return self._json(200, {"placement": fake.placement, "version": 3})
        if path == "/ready":
            status, doc = fake.ready_document()
            return self._send(status, json.dumps(doc).encode(), None)  # M3 sets no type on the 500
        if path == "/health":
            return self._json(200, {"uptime": "1h2m3.5s", "now": "2024-01-01T00:00:00Z"})
        if path == "/api/v1/prom/remote/read":
            return self._remote_read(body)
        if path.startswith(M3_PROMQL_PATHS):
            return self._promql(body)
        self._json(404, {"status": "error", "error": "not found"})  # includes /api/v1/status/buildinfo

    def _remote_read(self, body: bytes) -> None:
        fake = self.coordinator
        if fake.limit_error:
            return self._json(400, {"status": "error", "error": LIMIT_ERROR})
        request = prompb_pb2.ReadRequest()
        request.ParseFromString(snappy.decompress(body))
        if fake.upstream_read_url:
            del request.accepted_response_types[:]  # M3 ignores them and always answers SAMPLES
            for query in request.queries:
                query.ClearField("hints")  # M3's Query has no hints
            status, payload, _ = _forward(
                fake.upstream_read_url,
                snappy.compress(request.SerializeToString()),
                {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"},
            )
            if status != 200:
                return self._send(status, payload, "text/plain")
        else:
            response = prompb_pb2.ReadResponse(results=[prompb_pb2.QueryResult() for _ in request.queries])
            payload = snappy.compress(response.SerializeToString())
        extra = {"Content-Encoding": "snappy"}
        if fake.limited:
            extra["M3-Results-Limited"] = LIMITED_VALUE
        self._send(200, payload, "application/x-protobuf", extra)

    def _promql(self, body: bytes) -> None:
        fake = self.coordinator
        if fake.limit_error:
            return self._json(400, {"status": "error", "error": LIMIT_ERROR})
        extra = {"M3-Results-Limited": LIMITED_VALUE} if fake.limited else {}
        if fake.upstream_query_url is None:
            empty: Any = [] if not self.path.startswith("/api/v1/query") else {"resultType": "vector", "result": []}
            return self._send(200, json.dumps({"status": "success", "data": empty}).encode(), "application/json", extra)
        headers = {"Content-Type": self.headers.get("Content-Type", "application/x-www-form-urlencoded")}
        status, payload, ctype = _forward(
            fake.upstream_query_url + self.path, body if self.command == "POST" else None, headers
        )
        self._send(status, payload, ctype, extra)

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _send(self, status: int, payload: bytes, ctype: str | None, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _forward(url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, str]:
    """Pass a request to the real upstream and return (status, body, content type)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with _OPENER.open(request, timeout=30) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")
