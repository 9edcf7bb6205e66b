"""Read-only view of an M3 Coordinator's admin API: namespaces, readiness, health and placement.

The migrator needs the namespaces to know what a remote read will return: M3 serves a range from the
unaggregated namespace only while its retention covers it, and from a downsampled (aggregated) one
otherwise, unless the read pins a namespace with M3-Metrics-Type / M3-Storage-Policy. Every method
answers None when the server is not an M3 Coordinator, so callers can probe any source URL.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from m3migrate.clients.http import (
    EndpointClient,
    RetryPolicy,
    raise_for_common_status,
    retry_transient,
    unexpected,
)
from m3migrate.clients.promql import PromQLClient
from m3migrate.errors import (
    AuthError,
    ConfigError,
    EndpointError,
    MalformedResponse,
    TlsError,
    TransientError,
)
from m3migrate.settings.endpoints import EndpointSettings, api_base, redact_url

__all__ = [
    "M3AdminClient",
    "M3Namespace",
    "M3Ready",
    "M3ReadyNamespace",
    "SourceKind",
    "format_m3_duration",
    "parse_m3_duration",
    "parse_storage_policy",
]

SourceKind = Literal["m3", "prometheus", "unknown"]
_FATAL = (TransientError, AuthError, TlsError)  # say nothing about what kind of server answers

NAMESPACE_PATH = "/api/v1/services/m3db/namespace"
PLACEMENT_PATH = "/api/v1/services/m3db/placement"

_NS = 1
_MS = 1_000_000
_DAY = 86_400 * 1_000_000_000
# Units of M3's extended duration parser (src/x/time/duration.go): integers only, no decimals.
_PARSE_UNITS = {
    "ns": 1,
    "us": 1_000,
    "ms": _MS,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "min": 60 * 1_000_000_000,
    "h": 3_600 * 1_000_000_000,
    "d": _DAY,
    "w": 7 * _DAY,
    "mon": 30 * _DAY,
    "y": 365 * _DAY,
}
# Units M3 itself prints policies with, largest first (no weeks or months: "14d", "1y35d").
_FORMAT_UNITS = (
    ("y", 365 * _DAY),
    ("d", _DAY),
    ("h", 3_600 * 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("s", 1_000_000_000),
    ("ms", _MS),
    ("us", 1_000),
    ("ns", _NS),
)


def parse_m3_duration(text: str) -> int:
    """Nanoseconds of a duration in M3's extended syntax ("40d", "1m", "1y35d", "2w", "48h0m0s")."""
    s = text.strip()
    negative = s.startswith("-")
    if negative:
        s = s[1:]
    if not s:
        raise ValueError(f"empty duration {text!r}")
    total, i = 0, 0
    while i < len(s):
        start = i
        while i < len(s) and s[i].isdigit():
            i += 1
        if i == start:
            raise ValueError(f"invalid duration {text!r}: a number must precede each unit")
        number = int(s[start:i])
        unit_start = i
        while i < len(s) and not s[i].isdigit():
            i += 1
        unit = s[unit_start:i]
        if unit not in _PARSE_UNITS:
            raise ValueError(f"invalid duration {text!r}: unknown unit {unit!r}" if unit else f"no unit in {text!r}")
        total += number * _PARSE_UNITS[unit]
    return -total if negative else total


def format_m3_duration(ns: int) -> str:
    """Nanoseconds the way M3 prints them in storage policies: largest units first ("40d", "1m", "1y35d")."""
    if ns == 0:
        return "0s"
    parts = ["-"] if ns < 0 else []
    rest = abs(ns)
    for unit, size in _FORMAT_UNITS:
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


def parse_storage_policy(policy: str) -> tuple[int, int]:
    """(resolution_ns, retention_ns) of an M3 storage policy "resolution[@precision]:retention".

    Raises ConfigError: policies come from user configuration.
    """
    parts = policy.strip().split(":")
    try:
        if len(parts) != 2:
            raise ValueError("expected exactly one ':'")
        resolution = parts[0].split("@", 1)[0]  # "1m@1s": the precision does not select a namespace
        return parse_m3_duration(resolution), parse_m3_duration(parts[1])
    except ValueError as exc:
        raise ConfigError(
            f"invalid M3 storage policy {policy!r}: {exc}",
            hint="write it as resolution:retention, e.g. 1m:40d (units s, m, h, d, w, y)",
        ) from None


@dataclass(frozen=True)
class M3Namespace:
    """One namespace as the coordinator reads it (durations in milliseconds).

    A namespace whose aggregationOptions list both an unaggregated and an aggregated entry appears
    twice, once per entry, as it does in the coordinator.
    """

    name: str
    aggregated: bool
    resolution_ms: int | None
    retention_ms: int
    block_size_ms: int
    buffer_past_ms: int
    buffer_future_ms: int
    ready: bool
    downsample_all: bool | None
    staging_status: str | None = None

    @property
    def storage_policy(self) -> str | None:
        """M3-Storage-Policy "resolution:retention" as M3 prints it ("1m:40d"); None if unaggregated."""
        if not self.aggregated or self.resolution_ms is None:
            return None
        return f"{format_m3_duration(self.resolution_ms * _MS)}:{format_m3_duration(self.retention_ms * _MS)}"

    def matches_policy(self, policy: str) -> bool:
        """True if ``policy`` names this aggregated namespace ("1m:40d" == "60s:960h"), as M3 compares."""
        resolution_ns, retention_ns = parse_storage_policy(policy)
        if not self.aggregated or self.resolution_ms is None:
            return False
        return resolution_ns == self.resolution_ms * _MS and retention_ns == self.retention_ms * _MS


@dataclass(frozen=True)
class M3ReadyNamespace:
    """A namespace as /ready lists it; retention and resolution are Go duration strings ("48h0m0s")."""

    id: str
    metrics_type: str
    retention: str
    resolution: str


@dataclass(frozen=True)
class M3Ready:
    """The answer of GET /ready: the coordinator's effective namespaces and their availability."""

    ready_reads: tuple[M3ReadyNamespace, ...]
    not_ready_reads: tuple[M3ReadyNamespace, ...]
    ready_writes: tuple[M3ReadyNamespace, ...]
    not_ready_writes: tuple[M3ReadyNamespace, ...]

    @property
    def ready(self) -> bool:
        return not self.not_ready_reads and not self.not_ready_writes

    @property
    def not_ready(self) -> frozenset[str]:
        """Ids of the namespaces not ready for reads or for writes."""
        return frozenset(ns.id for ns in (*self.not_ready_reads, *self.not_ready_writes))


def _nanos(value: Any) -> int:
    """An int64 from jsonpb: a JSON string ("172800000000000"), a number, or missing (0)."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise TypeError("boolean where an int64 was expected")
    return int(value)


def _parse_namespace(name: str, spec: dict[str, Any]) -> list[M3Namespace]:
    retention = spec.get("retentionOptions") or {}
    if "stagingState" not in spec:
        status, ready = None, True  # M3 before staging states (< 1.0) used every namespace
    else:
        status = str((spec.get("stagingState") or {}).get("status") or "UNKNOWN")
        ready = status == "READY"  # M3 >= 1.0 serves only READY namespaces
    common: dict[str, Any] = {
        "name": name,
        "retention_ms": _nanos(retention.get("retentionPeriodNanos")) // _MS,
        "block_size_ms": _nanos(retention.get("blockSizeNanos")) // _MS,
        "buffer_past_ms": _nanos(retention.get("bufferPastNanos")) // _MS,
        "buffer_future_ms": _nanos(retention.get("bufferFutureNanos")) // _MS,
        "ready": ready,
        "staging_status": status,
    }
    aggregations = (spec.get("aggregationOptions") or {}).get("aggregations") or []
    if not aggregations:  # no aggregationOptions: M3 treats the namespace as unaggregated
        return [M3Namespace(aggregated=False, resolution_ms=None, downsample_all=None, **common)]
    out = []
    for agg in aggregations:
        if agg.get("aggregated"):
            attributes = agg.get("attributes") or {}
            downsample = attributes.get("downsampleOptions")
            out.append(
                M3Namespace(
                    aggregated=True,
                    resolution_ms=_nanos(attributes.get("resolutionNanos")) // _MS,
                    downsample_all=True if downsample is None else bool(downsample.get("all")),
                    **common,
                )
            )
        else:
            out.append(M3Namespace(aggregated=False, resolution_ms=None, downsample_all=None, **common))
    return out


def _ready_list(items: Any) -> tuple[M3ReadyNamespace, ...]:
    out = []
    for item in items or []:
        attributes = item.get("attributes") or {}
        out.append(
            M3ReadyNamespace(
                id=str(item.get("id", "")),
                metrics_type=str(attributes.get("metricsType", "")),
                retention=str(attributes.get("retention", "")),
                resolution=str(attributes.get("resolution", "")),
            )
        )
    return tuple(out)


_READY_KEYS = ("readyReads", "notReadyReads", "readyWrites", "notReadyWrites")


def _is_ready_document(status: int, body: Any) -> bool:
    """M3's /ready JSON: 200, or 500 when a namespace is not ready; {} when there are no namespaces."""
    if status not in (200, 500) or not isinstance(body, dict):
        return False
    return any(k in body for k in _READY_KEYS) or (status == 200 and not body)


class M3AdminClient(EndpointClient):
    """Read-only client of the M3 Coordinator admin endpoints (default port 7201).

    ``base_url`` is the coordinator's origin (a trailing ``/api/v1`` is stripped). Pass ``client`` to
    share connections; it is then not closed by :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        settings: EndpointSettings,
        *,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(settings, retry=retry, client=client)
        self._base = api_base(base_url)

    def __repr__(self) -> str:
        return f"M3AdminClient({redact_url(self._base)!r})"

    def namespaces(self) -> list[M3Namespace] | None:
        """The namespace registry, sorted by name; None if the server has no M3 namespace API."""
        what = "M3 namespaces"
        body = self._get_json(NAMESPACE_PATH, what=what)
        if not isinstance(body, dict) or not isinstance(body.get("registry"), dict):
            return None
        specs = body["registry"].get("namespaces") or {}
        try:
            out = [ns for name in sorted(specs) for ns in _parse_namespace(name, specs[name])]
        except (TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(
                f"{what}: cannot read the namespace registry ({type(exc).__name__}: {exc})",
                endpoint=redact_url(self._base + NAMESPACE_PATH),
            ) from None
        return out

    def ready(self) -> M3Ready | None:
        """GET /ready; M3 answers 500 with the same JSON when a namespace is not ready, which parses too."""
        url = self._base + "/ready"
        what = "M3 ready"
        for attempt in self.retry.context(retry_transient):
            with attempt:
                response = self.exchange(self._client.build_request("GET", url), what=what)
                body = _json_or_none(response)
                if _is_ready_document(response.status_code, body):
                    return M3Ready(*(_ready_list(body.get(k)) for k in _READY_KEYS))
                if response.status_code == 404:
                    return None
                raise_for_common_status(response, what=what)
                if response.is_success:
                    return None  # 2xx but not M3's readiness document: not an M3 coordinator
                raise unexpected(response, what=what)
        raise AssertionError("unreachable")  # pragma: no cover

    def health(self) -> dict[str, Any] | None:
        """GET /health ({"uptime", "now"}); None if absent or not JSON."""
        body = self._get_json("/health", what="M3 health")
        return body if isinstance(body, dict) else None

    def placement(self) -> dict[str, Any] | None:
        """GET the M3DB placement ({"placement": {...}, "version": N}); None if there is none."""
        body = self._get_json(PLACEMENT_PATH, what="M3 placement")
        return body if isinstance(body, dict) else None

    def detect(self) -> SourceKind:
        """What serves ``base_url``: "m3" (namespace API), "prometheus" (buildinfo: Prometheus, Thanos).

        Answers that only show the server speaks neither give "unknown"; connection, TLS and auth
        failures raise, since they say nothing about the kind of server.
        """
        try:
            if self.namespaces() is not None:
                return "m3"
        except _FATAL:
            raise
        except EndpointError:
            pass  # e.g. a 400 or a malformed registry: not an M3 coordinator we can use
        promql = PromQLClient(self._base, self.settings, retry=self.retry, client=self._client)
        try:
            info = promql.build_info()
        except _FATAL:
            raise
        except EndpointError:
            return "unknown"
        if isinstance(info, dict) and info.get("version"):
            return "prometheus"
        return "unknown"

    def _get_json(self, path: str, *, what: str) -> Any:
        """GET path with retries: the parsed JSON, or None on 404/405 or a body that is not JSON."""
        url = self._base + path
        for attempt in self.retry.context(retry_transient):
            with attempt:
                response = self.exchange(self._client.build_request("GET", url), what=what)
                if response.status_code in (404, 405):
                    return None
                raise_for_common_status(response, what=what)
                if not response.is_success:
                    raise unexpected(response, what=what)
                return _json_or_none(response)
        raise AssertionError("unreachable")  # pragma: no cover


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
