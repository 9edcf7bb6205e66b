"""Remote-read client for an M3 Coordinator (or any Prometheus-compatible remote-read endpoint).

M3 only serves SAMPLES responses. Silent truncation is the danger: with
`M3-Limit-Require-Exhaustive: true` M3 refuses an over-limit query with 400 "query exceeded limit";
otherwise it truncates and flags the reply with `M3-Results-Limited`. Both become SourceLimitExceeded,
which the planner answers by splitting the batch. Partial data is never returned as data.

Range ends: M3 reads [start, end), Prometheus [start, end]; reads ask for end + 1 and cut what lies after
end until a source proves itself end-inclusive, then ask for end (see :class:`EndSemantics`).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Unpack

import httpx

from m3migrate.clients.http import (
    ClientOptions,
    EndpointClient,
    body_excerpt,
    raise_for_common_status,
    retry_transient,
    unexpected,
)
from m3migrate.errors import MalformedResponse, SourceLimitExceeded
from m3migrate.prompb import QueryResult
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.wire.codec import Matcher, decode_read_response, decompress, encode_read_request, parse_read_response
from m3migrate.wire.walk import cut_after_edge

LIMIT_MARKERS = ("query exceeded limit", "exceeded sample limit", "exceeded limit", "too many series")


SourceEnd = Literal["unproven", "inclusive"]
ReadSource = tuple[str, tuple[tuple[str, str], ...]]  # (read URL, namespace-choosing M3 headers)


class EndSemantics:
    """Which sources this process has seen read end-inclusive, learnt from their answers.

    A read of [start, end] asks an unproven source for end + 1 and cuts what lies after end: exact on an
    end-exclusive source (M3: [start, end)) and an end-inclusive one (Prometheus: [start, end]), but on
    the latter every series of every window carries the sample at end + 1 and cutting it costs ~11 us
    per series and window. An end-exclusive source never answers a sample at its asked end, so one cut
    sample stamped end + 1 from a read that asked for end + 1 proves the source end-inclusive; from then
    on its reads ask for end itself (nothing to cut, the cheap guard still runs). Until proven, a source
    is asked for end + 1: M3 never is proven, so it is always read exactly.

    A source is the read URL plus the M3 headers that choose a namespace (a tier's pin, the settings'
    metrics type and storage policy; not the limits): a pinned read learns for its namespace only. The
    knowledge is process-wide (a module-level instance, like the endpoint limiters of
    m3migrate.clients.limits) because the tool builds a client per task and unit. The keys stay in
    memory, never logged or shown: ReadStats carries only the semantics a client's source showed.
    """

    def __init__(self) -> None:
        self._inclusive: set[ReadSource] = set()
        self._lock = threading.Lock()

    def of(self, key: ReadSource) -> SourceEnd:
        return "inclusive" if key in self._inclusive else "unproven"

    def prove_inclusive(self, key: ReadSource) -> None:
        with self._lock:
            self._inclusive.add(key)

    def forget(self) -> None:
        """Forget every source (tests; a new process starts unproven too)."""
        with self._lock:
            self._inclusive.clear()


END_SEMANTICS = EndSemantics()


def read_source(url: str, headers: Mapping[str, str]) -> ReadSource:
    """The read URL and the namespace-choosing M3 headers of a request (M3-*, but not M3-Limit-*)."""
    route = ((k.lower(), v) for k, v in headers.items() if k.lower().startswith("m3-"))
    return url, tuple(sorted((k, v) for k, v in route if not k.startswith("m3-limit-")))


@dataclass
class ReadStats:
    requests: int = 0
    compressed_bytes: int = 0
    retries: int = 0
    inclusive_end_reads: int = 0  # reads that asked for end itself (the source was proven end-inclusive)
    edge_proofs: int = 0  # answers that proved their source end-inclusive (a cut sample at the asked end)
    source_end: SourceEnd = "unproven"  # what this client's source showed last (unpinned or pinned)


class RemoteReadClient(EndpointClient):
    """Reads one matcher set over an inclusive millisecond range, exactly or not at all."""

    def __init__(self, settings: SourceSettings, **options: Unpack[ClientOptions]) -> None:
        super().__init__(settings, url=settings.read_url, **options)
        self.stats = ReadStats()
        self.headers = self.request_headers(settings)
        self.source = read_source(self.url, self.headers)

    @staticmethod
    def request_headers(settings: SourceSettings) -> dict[str, str]:
        return {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "Accept-Encoding": "snappy",
            "X-Prometheus-Remote-Read-Version": "0.1.0",
            **settings.m3_headers(),
        }

    def read_raw(
        self, matchers: Sequence[Matcher], start_ms: int, end_ms: int, *, pin: Mapping[str, str] | None = None
    ) -> bytes:
        """The decompressed ReadResponse bytes for [start_ms, end_ms] (both inclusive), exact on an
        end-exclusive source (M3 reads [start, end)) and an end-inclusive one (Prometheus) alike: an
        unproven source is asked for end_ms + 1 and what lies after end_ms is cut at the wire level; a
        source proven end-inclusive (:class:`EndSemantics`) is asked for end_ms. ``pin``: headers that
        pin the read to one M3 namespace (a tier's), over the settings' own."""
        if end_ms < start_ms:
            raise ValueError(f"end {end_ms} before start {start_ms}")
        headers = {**self.headers, **pin} if pin else self.headers
        source = read_source(self.url, headers) if pin else self.source
        inclusive = END_SEMANTICS.of(source) == "inclusive"
        body = encode_read_request(matchers, start_ms, end_ms if inclusive else end_ms + 1)
        for attempt in self.retry.context(retry_transient):
            with attempt:
                if attempt.num > 1:
                    self.stats.retries += 1
                raw = self._read_once(body, headers)
        raw, edge_cut = cut_after_edge(raw, end_ms)
        if inclusive:
            self.stats.inclusive_end_reads += 1
        elif edge_cut:  # asked for end_ms + 1 and answered a sample there: the source reads [start, end]
            END_SEMANTICS.prove_inclusive(source)
            self.stats.edge_proofs += 1
        self.stats.source_end = END_SEMANTICS.of(source)
        if self.settings.max_samples_per_second:
            self.charge_samples(count_samples(raw))
        return raw

    def read(self, matchers: Sequence[Matcher], start_ms: int, end_ms: int) -> QueryResult:
        """The parsed QueryResult for [start_ms, end_ms] (both inclusive)."""
        return decode_read_response(self.read_raw(matchers, start_ms, end_ms), endpoint=self.endpoint)

    def _read_once(self, body: bytes, headers: Mapping[str, str]) -> bytes:
        request = self._client.build_request("POST", self.url, content=body, headers=headers)
        response = self.exchange(request, what="remote read")
        self.stats.requests += 1
        limited = response.headers.get("M3-Results-Limited")
        if limited:
            raise SourceLimitExceeded(
                f"remote read: the source truncated the result ({limited})",
                endpoint=self.endpoint,
                status=response.status_code,
                hint="the batch is split automatically; raise M3-Limit-Max-Series or lower max_series_per_query",
            )
        if response.status_code in (400, 422) and any(m in response.text.lower() for m in LIMIT_MARKERS):
            raise SourceLimitExceeded(
                "remote read: the source refused the query as over a limit",
                endpoint=self.endpoint,
                status=response.status_code,
                body=body_excerpt(response),
                hint="the batch is split automatically; raise the source's limit to read bigger batches",
            )
        raise_for_common_status(response, what="remote read")
        if response.status_code != 200:
            raise unexpected(response, what="remote read")
        content_type = response.headers.get("Content-Type", "")
        if "x-streamed-protobuf" in content_type:
            raise MalformedResponse(
                "remote read: the source answered a streamed response although SAMPLES was asked",
                endpoint=self.endpoint,
                status=response.status_code,
            )
        if content_type and "protobuf" not in content_type and "octet-stream" not in content_type:
            raise MalformedResponse(
                f"remote read: expected snappy protobuf, got Content-Type {content_type!r}",
                endpoint=self.endpoint,
                status=response.status_code,
                body=body_excerpt(response),
                hint="check that read_url is the remote-read endpoint (M3: /api/v1/prom/remote/read)",
            )
        content = response.content
        self.stats.compressed_bytes += len(content)
        # httpx's response and its stream point at each other: without this the body waits for the cyclic GC
        response.stream = httpx.ByteStream(b"")
        return decompress(content, endpoint=self.endpoint, what="remote read")


def count_samples(raw: bytes) -> int:
    """Samples in a decompressed ReadResponse (0 if it does not parse: decoding reports that)."""
    try:
        response = parse_read_response(raw)  # label bytes that are not UTF-8 still count
    except Exception:
        return 0
    return sum(len(ts.samples) for result in response.results for ts in result.timeseries)
