"""Remote-read client for an M3 Coordinator (or any Prometheus-compatible remote-read endpoint).

M3 only serves SAMPLES responses. Silent truncation is the danger: with
`M3-Limit-Require-Exhaustive: true` M3 refuses an over-limit query with 400 "query exceeded limit";
otherwise it truncates and flags the reply with `M3-Results-Limited`. Both become SourceLimitExceeded,
which the planner answers by splitting the batch. Partial data is never returned as data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Unpack

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
from m3migrate.wire.walk import cut_after

LIMIT_MARKERS = ("query exceeded limit", "exceeded sample limit", "exceeded limit", "too many series")


@dataclass
class ReadStats:
    requests: int = 0
    compressed_bytes: int = 0
    retries: int = 0


class RemoteReadClient(EndpointClient):
    """Reads one matcher set over an inclusive millisecond range, exactly or not at all."""

    def __init__(self, settings: SourceSettings, **options: Unpack[ClientOptions]) -> None:
        super().__init__(settings, url=settings.read_url, **options)
        self.stats = ReadStats()
        self.headers = self.request_headers(settings)

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
        end-exclusive source (M3 reads [start, end)) and an end-inclusive one (Prometheus) alike: the
        query asks for end_ms + 1 and what lies after end_ms is cut at the wire level. ``pin``: headers
        that pin the read to one M3 namespace (a tier's), over the settings' own."""
        if end_ms < start_ms:
            raise ValueError(f"end {end_ms} before start {start_ms}")
        body = encode_read_request(matchers, start_ms, end_ms + 1)
        for attempt in self.retry.context(retry_transient):
            with attempt:
                if attempt.num > 1:
                    self.stats.retries += 1
                raw = self._read_once(body, {**self.headers, **pin} if pin else self.headers)
        raw = cut_after(raw, end_ms)
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
