"""FAKE M3 Coordinator for tests: canned namespace documents, placements, /ready states and limit answers
(sandbox.m3gateway models the data path in front of real TSDBs; this fake, what no data shows).

It serves the namespace API (jsonpb, int64 as JSON strings), /ready, /health, the placement, and the
M3 remote-read path. Data comes from a real Prometheus when ``upstream_read_url`` /
``upstream_query_url`` are given (the fake then only adds M3's path layout, its limit behaviour and
header recording); it invents no samples of its own.

    with FakeM3Coordinator(namespaces={"default": fake_namespace("48h")}) as m3:
        M3AdminClient(m3.url, EndpointSettings()).namespaces()
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import snappy

from m3migrate.prompb import prompb_pb2
from sandbox.m3gateway import (
    LIMITED_VALUE,
    LocalService,
    ServiceHandler,
    forward,
    go_duration,
    namespace_spec,
)

NS_PER_S = 1_000_000_000
LIMIT_ERROR = "query exceeded limit: require_exhaustive=true, series_limit=1, series_matched=2, docs_limit=0"
M3_PROMQL_PATHS = ("/api/v1/series", "/api/v1/labels", "/api/v1/label/", "/api/v1/query")
__all__ = ["LIMITED_VALUE", "FakeM3Coordinator", "fake_namespace"]

fake_namespace = namespace_spec  # a namespace as M3's GET /api/v1/services/m3db/namespace shows it


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received; header names are lower-cased."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeM3Coordinator(LocalService):
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
        super().__init__()
        self.namespaces = namespaces if namespaces is not None else {"default": fake_namespace("48h")}
        self.ready_status = ready_status or {}
        self.limited = limited
        self.limit_error = limit_error
        self.upstream_read_url = upstream_read_url
        self.upstream_query_url = upstream_query_url.rstrip("/") if upstream_query_url else None
        self.placement = placement
        self.requests: list[RecordedRequest] = []

    thread_name = "fake-m3"

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.split("?")[0] == path]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(_Handler):
            coordinator = fake

        return Handler

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
                        "retention": go_duration(ret_ns),
                        "resolution": go_duration(res_ns),
                    },
                }
                ok = self.ready_status.get(name, True)
                doc.setdefault("readyReads" if ok else "notReadyReads", []).append(entry)
                doc.setdefault("readyWrites" if ok else "notReadyWrites", []).append(entry)
        return (500 if "notReadyReads" in doc else 200), doc


class _Handler(ServiceHandler):
    coordinator: FakeM3Coordinator

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
            status, payload, _ = forward(
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
        status, payload, ctype = forward(
            fake.upstream_query_url + self.path, body if self.command == "POST" else None, headers
        )
        self._send(status, payload, ctype, extra)
