"""A GATEWAY that answers like an M3 Coordinator, in front of real Prometheus TSDBs (one per namespace).

M3 cannot be installed here; what a migration meets at an M3 Coordinator is modelled in front of real
servers, which hold and serve every sample. Modelled M3 behaviour, each from the m3db/m3 file named:

- Remote read at ``/api/v1/prom/remote/read`` reads ``[start, end)``: the query's ``end_timestamp_ms``
  becomes the exclusive end of the index and data query (src/query/storage/index.go,
  ``FetchOptionsToM3Options``: ``EndExclusive``), so the upstream Prometheus is asked for ``end - 1``.
  Hints and ``accepted_response_types`` are ignored: M3 answers SAMPLES only
  (src/query/api/v1/handler/prometheus/remote/read.go). Series without samples are left out.
- Namespace routing (src/query/storage/m3/cluster_resolver.go): ``M3-Metrics-Type`` /
  ``M3-Storage-Policy`` pin a namespace, ``M3-Restrict-By-Storage-Policies`` pins the first one named
  (src/x/headers/headers.go); unpinned, the unaggregated namespace answers when its retention covers the
  query's start, else the finest aggregated namespace whose retention does, else the one with the
  longest retention (simplified: M3 may also fan out and stitch; the gateway picks one).
- Limits (src/dbnode/storage/index.go, src/query/storage/index.go ``convertStartEndWithRangeLimit``):
  a series limit (``M3-Limit-Max-Series`` or the gateway's own) and a range limit (``M3-Limit-Max-Range``
  as a Go duration, or the gateway's). With ``M3-Limit-Require-Exhaustive: true`` an exceeded limit is
  HTTP 400 ``query exceeded limit: require_exhaustive=true, ...``; without, the series are truncated and
  the reply carries ``M3-Results-Limited`` (src/query/api/v1/handler/prometheus/handleroptions), and
  the range is silently cut to its last ``limit``.
- The namespace admin API ``/api/v1/services/m3db/namespace`` (jsonpb, int64 as strings), ``/ready``
  and ``/health``, as src/query/api/v1/handler/namespace and src/query/api/v1/handler/ready.go answer.
- The PromQL API paths (``/api/v1/series``, ``/labels``, ``/label/<name>/values``, ``/query``,
  ``/query_range``) are served by the namespace that the same routing picks.

    with M3Gateway({"default": GatewayNamespace(prometheus.url, retention="48h")}) as m3:
        m3.read_url  # http://127.0.0.1:PORT/api/v1/prom/remote/read
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

import snappy

from m3migrate.prompb import prompb_pb2
from m3migrate.wire.codec import uvarint
from m3migrate.wire.walk import _samples_start, series_spans

NS_PER_S = 1_000_000_000
LIMITED_VALUE = "max_fetch_series_limit_applied"
READ_PATH = "/api/v1/prom/remote/read"  # the M3 Coordinator's remote-read endpoint
PROMQL_PATHS = ("/api/v1/series", "/api/v1/labels", "/api/v1/label/", "/api/v1/query")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an env proxy
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_GO_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
_SHORT_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def parse_seconds(text: str) -> float:
    """Seconds of an M3 duration: a Go duration (``1h30m``, ``90s``) or M3's short form (``40d``, ``1y``)."""
    text = text.strip()
    if text and text[-1] in "dwy" and text[:-1].isdigit():
        return int(text[:-1]) * _SHORT_UNITS_S[text[-1]]
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _GO_UNITS_S[u] for n, u in parts)


def go_duration(ns: int) -> str:
    """Go's time.Duration.String() for whole seconds, as M3's /ready prints retention and resolution."""
    total = ns // NS_PER_S
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m{s}s"
    return f"{m}m{s}s" if m else f"{s}s"


def namespace_spec(
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

    def nanos(text: str) -> str:
        return str(int(parse_seconds(text)) * NS_PER_S)

    aggregation: dict[str, Any] = {"aggregated": False, "attributes": None}
    if resolution is not None:
        attributes: dict[str, Any] = {"resolutionNanos": nanos(resolution)}
        attributes["downsampleOptions"] = None if downsample_all is None else {"all": downsample_all}
        aggregation = {"aggregated": True, "attributes": attributes}
    spec: dict[str, Any] = {
        "bootstrapEnabled": True,
        "flushEnabled": True,
        "retentionOptions": {
            "retentionPeriodNanos": nanos(retention),
            "blockSizeNanos": nanos(block_size),
            "bufferFutureNanos": nanos(buffer_future),
            "bufferPastNanos": nanos(buffer_past),
            "blockDataExpiry": True,
            "blockDataExpiryAfterNotAccessPeriodNanos": "300000000000",
            "futureRetentionPeriodNanos": "0",
        },
        "indexOptions": {"enabled": True, "blockSizeNanos": nanos(block_size)},
        "coldWritesEnabled": False,
        "aggregationOptions": {"aggregations": [aggregation]},
    }
    if status is not None:
        spec["stagingState"] = {"status": status}
    return spec


@dataclass(frozen=True)
class GatewayNamespace:
    """One M3 namespace, its data held by a real Prometheus at ``upstream`` (base URL)."""

    upstream: str
    retention: str = "48h"
    resolution: str | None = None  # None: unaggregated

    @property
    def retention_ms(self) -> int:
        return int(parse_seconds(self.retention) * 1000)

    @property
    def resolution_ms(self) -> int:
        return int(parse_seconds(self.resolution) * 1000) if self.resolution else 0

    @property
    def storage_policy(self) -> str:
        return f"{self.resolution}:{self.retention}" if self.resolution else "unaggregated"


class LocalService:
    """An HTTP service on 127.0.0.1 (random port), served from a thread while used as a context manager
    (the gateway here, and the tests' fake coordinator)."""

    thread_name = "local-service"
    bind_port = 0  # 0: the OS picks a free port

    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class, bound to this service."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._server is not None, f"use {type(self).__name__} as a context manager"
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address: (host text, port)
        return f"http://{host}:{port}"

    @property
    def read_url(self) -> str:
        return self.url + READ_PATH

    def __enter__(self) -> Self:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.bind_port), self.handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class ServiceHandler(BaseHTTPRequestHandler):
    """GET and POST go to ``_dispatch``; answers are sent whole with a Content-Length (keep-alive)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        pass  # keep test and demo output clean

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        raise NotImplementedError

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


class RoutingError(ValueError):
    """Headers that pin no namespace the gateway has (M3 answers 400)."""


class M3Gateway(LocalService):
    """The gateway on 127.0.0.1 (random port), served from a thread while used as a context manager.

    - ``namespaces``: name -> :class:`GatewayNamespace`; exactly one unaggregated.
    - ``max_series`` / ``max_range``: the coordinator's own per-query limits (None: unlimited).
    - ``now_ms``: the clock the default routing measures retention from (None: the wall clock).
    - ``raw_label_values``: label value -> bytes of the same length (e.g. not UTF-8) that remote read
      answers instead: M3 keeps tags as raw bytes (src/query/generated/proto/prompb/types.proto: Label
      name/value are ``bytes``), so it can send what a Prometheus source cannot be asked to serve.
    """

    thread_name = "m3-gateway"

    def __init__(
        self,
        namespaces: dict[str, GatewayNamespace],
        *,
        max_series: int | None = None,
        max_range: str | None = None,
        now_ms: int | None = None,
        raw_label_values: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__()
        raw_label_values = raw_label_values or {}
        if any(len(k) != len(v) or len(k) >= 0x80 for k, v in raw_label_values.items()):
            raise ValueError("raw_label_values: each replacement must be as long as its value (< 128 bytes)")
        self.raw_label_values = {
            b"\x12" + bytes((len(k),)) + k: b"\x12" + bytes((len(v),)) + v for k, v in raw_label_values.items()
        }
        unaggregated = [n for n, ns in namespaces.items() if ns.resolution is None]
        if len(unaggregated) != 1:
            raise ValueError(f"an M3 cluster has exactly one unaggregated namespace, got {unaggregated}")
        self.namespaces = namespaces
        self.unaggregated = unaggregated[0]
        self.max_series = max_series
        self.max_range_ms = int(parse_seconds(max_range) * 1000) if max_range else None
        self.now_ms = now_ms
        self.reads: list[tuple[str, int, int]] = []  # (namespace, start, exclusive end) of each remote read
        self._lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(_Handler):
            m3 = gateway

        return Handler

    # -- routing (cluster_resolver.go) --------------------------------------------------------------

    def route(self, headers: dict[str, str], start_ms: int) -> str:
        """The namespace that answers a query starting at start_ms, given its (lower-cased) headers."""
        metrics_type = headers.get("m3-metrics-type", "").strip().lower()
        policy = headers.get("m3-storage-policy", "").strip()
        restrict = headers.get("m3-restrict-by-storage-policies", "").strip()
        if restrict and not metrics_type:
            metrics_type, policy = "aggregated", restrict.split(";")[0].strip()
        if metrics_type == "unaggregated":
            return self.unaggregated
        if metrics_type == "aggregated":
            for name, ns in self.namespaces.items():
                if ns.resolution and _same_policy(ns, policy):
                    return name
            raise RoutingError(f"no aggregated namespace with storage policy {policy!r}")
        if metrics_type:
            raise RoutingError(f"invalid M3-Metrics-Type {metrics_type!r}")
        now = self.now_ms if self.now_ms is not None else int(time.time() * 1000)
        if start_ms >= now - self.namespaces[self.unaggregated].retention_ms:
            return self.unaggregated
        aggregated = [(n, ns) for n, ns in self.namespaces.items() if ns.resolution]
        covering = [(ns.resolution_ms, n) for n, ns in aggregated if start_ms >= now - ns.retention_ms]
        if covering:
            return min(covering)[1]
        longest = max(self.namespaces.items(), key=lambda item: (item[1].retention_ms, item[1].resolution is None))
        return longest[0]

    def ready_document(self) -> dict[str, Any]:
        entries = []
        for name, ns in sorted(self.namespaces.items()):
            entries.append(
                {
                    "id": name,
                    "attributes": {
                        "metricsType": "aggregated" if ns.resolution else "unaggregated",
                        "retention": go_duration(ns.retention_ms // 1000 * NS_PER_S),
                        "resolution": go_duration(ns.resolution_ms // 1000 * NS_PER_S),
                    },
                }
            )
        return {"readyReads": entries, "readyWrites": entries}

    def namespace_registry(self) -> dict[str, Any]:
        return {
            "registry": {
                "namespaces": {
                    name: namespace_spec(ns.retention, resolution=ns.resolution) for name, ns in self.namespaces.items()
                }
            }
        }


def _same_policy(ns: GatewayNamespace, policy: str) -> bool:
    resolution, _, retention = policy.partition(":")
    try:
        return parse_seconds(resolution) == parse_seconds(ns.resolution or "0s") and parse_seconds(
            retention
        ) == parse_seconds(ns.retention)
    except ValueError:
        return False


class _Handler(ServiceHandler):
    m3: M3Gateway

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path = self.path.split("?")[0]
        try:
            if path == "/api/v1/services/m3db/namespace" and self.command == "GET":
                return self._json(200, self.m3.namespace_registry())
            if path == "/ready":
                return self._json(200, self.m3.ready_document())
            if path == "/health":
                return self._json(200, {"uptime": "1h0m0s", "now": time.strftime("%Y-%m-%dT%H:%M:%SZ")})
            if path == READ_PATH and self.command == "POST":
                return self._remote_read(headers, body)
            if path.startswith(PROMQL_PATHS):
                return self._promql(headers, body)
        except RoutingError as exc:
            return self._json(400, {"status": "error", "error": str(exc)})
        self._json(404, {"status": "error", "error": "not found"})  # includes /api/v1/status/buildinfo

    def _remote_read(self, headers: dict[str, str], body: bytes) -> None:
        """Only the (small) request is decoded and rewritten (end - 1); each upstream answer passes
        through as its bytes, walked per series at the wire level (no sample is decoded): series without
        samples are left out and the series limit is applied by keeping the first spans. When nothing
        changes, the upstream's compressed body is sent on as it is."""
        m3 = self.m3
        request = prompb_pb2.ReadRequest()
        try:
            request.ParseFromString(snappy.decompress(body))
        except Exception as exc:  # M3 answers a body it cannot read with 400, as any remote-read handler
            return self._json(400, {"status": "error", "error": f"invalid remote read request: {exc}"})
        exhaustive = headers.get("m3-limit-require-exhaustive", "").strip().lower() == "true"
        max_series = _int_header(headers, "m3-limit-max-series", m3.max_series)
        max_range = headers.get("m3-limit-max-range")
        max_range_ms = int(parse_seconds(max_range) * 1000) if max_range else m3.max_range_ms
        results: list[bytes] = []  # each query's QueryResult as ReadResponse field 1, decompressed
        passed: bytes | None = None  # the upstream's compressed body, while it can be sent unchanged
        limited = False
        for query in request.queries:
            start, end = query.start_timestamp_ms, query.end_timestamp_ms  # [start, end)
            if max_range_ms and end - start > max_range_ms:
                if exhaustive:
                    return self._json(400, {"status": "error", "error": _range_error(max_range_ms, end - start)})
                start = end - max_range_ms
            name = m3.route(headers, start)
            with m3._lock:
                m3.reads.append((name, start, end))
            upstream = prompb_pb2.ReadRequest()
            q = upstream.queries.add()
            q.start_timestamp_ms, q.end_timestamp_ms = start, end - 1  # Prometheus reads [start, end]
            q.matchers.extend(query.matchers)
            status, payload, _ = forward(
                m3.namespaces[name].upstream.rstrip("/") + "/api/v1/read",
                snappy.compress(upstream.SerializeToString()),
                {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"},
            )
            if status != 200:
                return self._send(status, payload, "text/plain")
            raw = snappy.decompress(payload)
            walked = _nonempty_series(raw)
            if walked is None:  # not the canonical one-result shape: decoded (rare; says what is wrong)
                raw, spans, unchanged = *_nonempty_series_decoded(raw), False
            else:
                spans, unchanged = walked
            if max_series is not None and len(spans) > max_series:
                if exhaustive:
                    return self._json(400, {"status": "error", "error": _series_error(max_series, len(spans))})
                spans, limited, unchanged = spans[:max_series], True, False
            results.append(raw if unchanged else _query_result(raw, spans))
            passed = payload if unchanged and len(request.queries) == 1 else None
        extra = {"Content-Encoding": "snappy"}
        if limited:
            extra["M3-Results-Limited"] = LIMITED_VALUE
        if passed is not None and not m3.raw_label_values:
            return self._send(200, passed, "application/x-protobuf", extra)
        answer_bytes = b"".join(results)
        for value, raw_value in m3.raw_label_values.items():  # same lengths: the framing is unchanged
            answer_bytes = answer_bytes.replace(value, raw_value)
        self._send(200, snappy.compress(answer_bytes), "application/x-protobuf", extra)

    def _promql(self, headers: dict[str, str], body: bytes) -> None:
        query = urllib.parse.urlsplit(self.path).query
        form = urllib.parse.parse_qs(query + ("&" + body.decode() if body else ""))
        start = _promql_time_ms(form.get("start", form.get("time", [""]))[0])
        name = self.m3.route(headers, start if start is not None else 0)
        upstream = self.m3.namespaces[name].upstream.rstrip("/")
        ctype = headers.get("content-type", "application/x-www-form-urlencoded")
        status, payload, answer_type = forward(
            upstream + self.path, body if self.command == "POST" else None, {"Content-Type": ctype}
        )
        self._send(status, payload, answer_type)


def _nonempty_series(raw: bytes) -> tuple[list[tuple[int, int]], bool] | None:
    """([start, end) of each series of a one-result ReadResponse that holds samples, whether that is
    every series); None if the body is not in that shape or a series is not labels-then-samples.

    M3 leaves series without samples out of a read (it fetches data per series it found in the index),
    while Prometheus 2.42's ToQueryResult (storage/remote/codec.go) appends every series its querier
    yields, and tsdb's blockBaseSeriesSet yields one whose chunk merely overlaps the range (a gap in
    the range, or samples only outside it), with no sample in it: such series are dropped here."""
    spans = series_spans(raw)
    if spans is None:
        return None
    kept = []
    for a, b in spans:
        p = _samples_start(raw, a, b)
        if p < 0:
            return None
        if p != b:
            kept.append((a, b))
    return kept, len(kept) == len(spans)


def _nonempty_series_decoded(raw: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """The same for a body in another shape: decoded, its first result's series with samples re-encoded
    one after the other; (those bytes as a one-result response, the series' spans in them)."""
    answer = prompb_pb2.ReadResponse.FromString(raw)
    series = [ts.SerializeToString() for ts in answer.results[0].timeseries if ts.samples] if answer.results else []
    framed = [b"".join((b"\x0a", uvarint(len(ts)), ts)) for ts in series]
    body = b"".join(framed)
    head = b"\x0a" + uvarint(len(body))
    spans, p = [], len(head)
    for ts, frame in zip(series, framed, strict=True):
        start = p + len(frame) - len(ts)
        spans.append((start, start + len(ts)))
        p += len(frame)
    return head + body, spans


def _query_result(raw: bytes, spans: list[tuple[int, int]]) -> bytes:
    """ReadResponse field 1 holding only the series at ``spans`` of ``raw``, framed anew."""
    body = b"".join(b"".join((b"\x0a", uvarint(b - a), raw[a:b])) for a, b in spans)
    return b"".join((b"\x0a", uvarint(len(body)), body))


def _int_header(headers: dict[str, str], name: str, default: int | None) -> int | None:
    value = headers.get(name, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def _series_error(limit: int, matched: int) -> str:
    return (
        f"query exceeded limit: require_exhaustive=true, series_limit={limit}, series_matched={matched}, "
        "docs_limit=0, docs_matched=0"
    )


def _range_error(limit_ms: int, matched_ms: int) -> str:
    def go(ms: int) -> str:
        return go_duration(ms // 1000 * NS_PER_S) if ms % 1000 == 0 else f"{ms / 1000}s"

    return f"query exceeded limit: require_exhaustive=true, range_limit={go(limit_ms)}, range_matched={go(matched_ms)}"


def _promql_time_ms(text: str) -> int | None:
    """A PromQL API time parameter (Unix seconds, possibly fractional, or RFC 3339) in ms; None if absent."""
    if not text:
        return None
    try:
        return int(float(text) * 1000)
    except ValueError:
        from datetime import datetime

        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def forward(url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes, str]:
    """Pass a request to the real upstream and return (status, body, content type)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body is not None else "GET")
    try:
        with _OPENER.open(request, timeout=60) as answer:
            return answer.status, answer.read(), answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def downsample(
    data: dict[tuple[tuple[str, str], ...], list[tuple[int, int]]], resolution_ms: int
) -> dict[tuple[tuple[str, str], ...], list[tuple[int, int]]]:
    """What an M3 aggregated namespace holds of raw (timestamp, value bits) series: the last value of each
    resolution window [ws, ws + resolution), stamped at the window's end ws + resolution (m3
    src/aggregator/aggregator/list.go standardMetricTimestampNanos; ``Last`` is the default aggregation
    of M3's downsampler). Prometheus stale markers are not data points and are left out."""
    import numpy as np

    from m3migrate.wire.codec import STALE_NAN_BITS

    out = {}
    for labels, samples in data.items():
        if not samples:
            continue
        t = np.fromiter((s[0] for s in samples), dtype=np.int64, count=len(samples))
        bits = np.fromiter((s[1] for s in samples), dtype=np.uint64, count=len(samples))
        keep = bits != np.uint64(STALE_NAN_BITS)
        t, bits = t[keep], bits[keep]
        if not len(t):
            continue
        window_end = (t // resolution_ms + 1) * resolution_ms
        last = np.flatnonzero(np.append(window_end[1:] != window_end[:-1], True))  # last sample of each window
        out[labels] = [(int(a), int(b)) for a, b in zip(window_end[last], bits[last], strict=True)]
    return out


def main(argv: list[str] | None = None) -> int:
    """Serve a gateway in a process of its own until SIGTERM, so its CPU can be measured apart
    (bench/) and it is a separate server, as an M3 Coordinator is (servers.start_m3_gateway).

    ``--namespaces`` is JSON: {name: {"upstream": URL, "retention": "48h", "resolution": null}}."""
    import argparse
    import signal

    ap = argparse.ArgumentParser(prog="python -m sandbox.m3gateway")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--namespaces", required=True, help="JSON: {name: {upstream, retention, resolution}}")
    ap.add_argument("--max-series", type=int)
    ap.add_argument("--max-range")
    a = ap.parse_args(argv)
    namespaces = {name: GatewayNamespace(**doc) for name, doc in json.loads(a.namespaces).items()}
    gateway = M3Gateway(namespaces, max_series=a.max_series, max_range=a.max_range)
    gateway.bind_port = a.port
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with gateway:
        print(f"m3 gateway on {gateway.url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
