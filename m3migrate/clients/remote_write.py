"""Remote-write client for Thanos Receive (or any Prometheus remote-write receiver).

Every answer is classified: 2xx ok; Thanos' 409 is a partial commit (the valid samples were stored);
400 names why samples were refused (out of bounds / out of order / duplicate / invalid labels);
Prometheus 2.42 answers 500 for "too old sample", which is permanent despite the status; other 5xx,
429 (honouring Retry-After) and connection errors are retried with bounded exponential backoff.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Unpack

from m3migrate import __version__
from m3migrate.clients.http import (
    ClientOptions,
    EndpointClient,
    body_excerpt,
    raise_for_common_status,
    retry_transient,
    unexpected,
)
from m3migrate.errors import MalformedResponse, RejectReason, TransientError, WriteRejected
from m3migrate.settings.endpoints import TargetSettings
from m3migrate.wire.codec import WriteBody

log = logging.getLogger("m3migrate.clients.remote_write")

# Substrings of the receivers' error texts (Prometheus tsdb/storage errors, Thanos receive) -> reason.
REASON_MARKERS: tuple[tuple[str, RejectReason], ...] = (
    ("out of bounds", RejectReason.OUT_OF_BOUNDS),
    ("out of order sample", RejectReason.OUT_OF_ORDER),
    ("out-of-order", RejectReason.OUT_OF_ORDER),
    ("duplicate sample", RejectReason.DUPLICATE),
    ("too old sample", RejectReason.TOO_OLD),
    ("label", RejectReason.INVALID_LABELS),
)

REASON_HINTS = {
    RejectReason.OUT_OF_BOUNDS: "the target only accepts samples within ~1h of its newest sample: enable an "
    "out-of-order window (Thanos: --tsdb.out-of-order.time-window), write into a fresh tenant, or narrow the range",
    RejectReason.TOO_OLD: "the samples are older than the target's out-of-order window: widen it or narrow the range",
    RejectReason.INVALID_LABELS: "check the relabel rules: labels must be sorted, unique and non-empty",
    RejectReason.TOO_LARGE: "lower max_request_bytes / max_samples_per_request of the target",
}


def classify_reasons(text: str) -> frozenset[RejectReason]:
    lowered = text.lower()
    found = {reason for marker, reason in REASON_MARKERS if marker in lowered}
    return frozenset(found) or frozenset({RejectReason.BAD_REQUEST})


@dataclass
class WriteStats:
    requests: int = 0
    samples: int = 0
    compressed_bytes: int = 0
    retries: int = 0
    partial_commits: int = 0
    landed_unacknowledged: int = 0  # requests stored by an attempt whose answer was lost


class RemoteWriteClient(EndpointClient):
    """Sends snappy WriteRequests (remote write 1.0) and raises typed errors for every refusal."""

    def __init__(self, settings: TargetSettings, **options: Unpack[ClientOptions]) -> None:
        super().__init__(settings, url=settings.write_url, **options)
        self.stats = WriteStats()
        self.headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "snappy",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            "User-Agent": f"m3migrate/{__version__}",
        }
        if settings.tenant:
            self.headers[settings.tenant_header] = settings.tenant

    def write(self, request: WriteBody, *, trust_lost_answer: bool = True) -> None:
        """Send one request; retries transient failures, raises WriteRejected on refusals.

        An attempt whose outcome is unknown (reset or timed out after sending, a 5xx) may have been
        stored: when the resend is then refused only as "out of order", the target already holds these
        samples from that attempt, and the write counts as done instead of failing the run. With
        ``trust_lost_answer=False`` the refusal is raised instead, flagged ``after_lost_answer``, for a
        caller that checks what the target holds (the transfer does).
        """
        outcome_unknown = False
        for attempt in self.retry.context(retry_transient):
            with attempt:
                if attempt.num > 1:
                    self.stats.retries += 1
                try:
                    self._write_once(request.body, request.samples)
                except TransientError as exc:
                    outcome_unknown = outcome_unknown or (exc.sent and exc.status != 429)
                    raise
                except WriteRejected as exc:
                    exc.after_lost_answer = outcome_unknown
                    if not (trust_lost_answer and outcome_unknown and exc.reasons <= {RejectReason.OUT_OF_ORDER}):
                        raise
                    self.stats.landed_unacknowledged += 1
                    log.info(
                        "remote write: an earlier attempt of this request was stored although its answer was "
                        "lost; the resend was refused as out of order (%s)",
                        exc.body[:80],
                    )
        self.stats.requests += 1
        self.stats.samples += request.samples
        self.stats.compressed_bytes += len(request.body)

    def _write_once(self, body: bytes, samples: int = 0) -> None:
        request = self._client.build_request("POST", self.url, content=body, headers=self.headers)
        response = self.exchange(request, what="remote write", samples=samples)
        status = response.status_code
        if 200 <= status < 300:
            if "text/html" in response.headers.get("Content-Type", "").lower():
                # A login page or a UI behind a proxy answers 200 HTML: nothing was stored.
                raise MalformedResponse(
                    "remote write: the target answered an HTML page, not a remote-write acknowledgement",
                    endpoint=self.endpoint,
                    status=status,
                    body=body_excerpt(response),
                    hint="check write_url (Thanos: /api/v1/receive, Prometheus: /api/v1/write) and any "
                    "authenticating proxy in front of the receiver",
                )
            return
        text = body_excerpt(response)
        lowered = text.lower()

        def rejected(
            message: str, reasons: frozenset[RejectReason], *, partial: bool = False, hint: str | None = None
        ) -> WriteRejected:
            return WriteRejected(
                f"remote write: {message}",
                reasons=reasons,
                partial=partial,
                endpoint=self.endpoint,
                status=status,
                body=text,
                hint=_hint(reasons) if hint is None else hint,
            )

        if status == 409:
            self.stats.partial_commits += 1
            raise rejected(
                "the target stored the valid samples and refused others (partial commit)",
                classify_reasons(text),
                partial=True,
            )
        if status == 413:
            raise rejected("request too large for the target", frozenset({RejectReason.TOO_LARGE}))
        if status == 500 and "too old sample" in lowered:  # Prometheus < 2.50: 500 for a permanent refusal
            raise rejected("samples older than the target's out-of-order window", frozenset({RejectReason.TOO_OLD}))
        if status == 400 and "http request to an https server" in lowered:
            raise rejected(
                "plain HTTP sent to an HTTPS port",
                frozenset({RejectReason.BAD_REQUEST}),
                hint="use https:// in write_url",
            )
        raise_for_common_status(response, what="remote write")
        if 400 <= status < 500:
            reasons = classify_reasons(text)
            raise rejected(f"the target refused the request ({', '.join(sorted(reasons))})", reasons)
        raise unexpected(response, what="remote write")


def _hint(reasons: frozenset[RejectReason]) -> str:
    return "; ".join(REASON_HINTS[r] for r in sorted(reasons) if r in REASON_HINTS)


__all__ = ["RemoteWriteClient", "WriteStats", "classify_reasons"]
