"""A small client for the Prometheus HTTP API, as served by M3 Coordinator, Prometheus and Thanos Query.

The migrator uses it to discover series before reading them (M3's remote read cannot list series) and
to read data back from the target to verify it. Both uses must never accept partial data silently:
M3's ``M3-Results-Limited`` header, limit errors and (for the list-returning methods) warnings all
raise typed errors instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from m3migrate import bulkjson
from m3migrate.clients.http import (
    EndpointClient,
    RetryPolicy,
    body_excerpt,
    raise_for_common_status,
    retry_transient,
    unexpected,
)
from m3migrate.errors import EndpointError, EndpointNotFound, MalformedResponse, SourceLimitExceeded
from m3migrate.model import SeriesKey
from m3migrate.settings.endpoints import EndpointSettings, api_base, redact_url

__all__ = [
    "BadQuery",
    "PartialResponse",
    "PromQLClient",
    "QueryResult",
    "SeriesKey",
    "format_seconds",
    "parse_sample_value",
]

RESULTS_LIMITED_HEADER = "M3-Results-Limited"

# Limit errors of M3 ("query exceeded limit: ...", "query aborted due to limit: ..."), Prometheus
# ("query processing would load too many samples into memory", "exceeded sample limit") and Thanos.
_LIMIT_TEXT = re.compile(
    r"exceed\w*\b.*\blimit|\blimit\w*\b.*\bexceed|aborted due to (forced )?limit|too many samples",
    re.IGNORECASE,
)
_QUERY_EXCERPT = 200


class BadQuery(EndpointError):
    """The server refused the query itself (PromQL syntax, bad matcher, bad time range): fix the input.

    Lives here until errors.py grows an equivalent; it is an EndpointError, so generic handlers catch it.
    """


class PartialResponse(EndpointError):
    """The server answered with warnings (e.g. Thanos partial response): the result may lack data."""


@dataclass(frozen=True)
class QueryResult:
    """The ``data`` of a query answer plus the server's warnings.

    ``result`` is what the API returns for ``result_type``: a list of ``{"metric", "value"}`` for
    "vector", of ``{"metric", "values"}`` for "matrix", or ``[time, "value"]`` for "scalar"/"string".
    """

    result_type: str
    result: Any
    warnings: tuple[str, ...] = field(default=())


def format_seconds(ms: int) -> str:
    """Milliseconds as the seconds string the API accepts, exact to the millisecond ("1700000000.123")."""
    sign = "-" if ms < 0 else ""
    whole, frac = divmod(abs(int(ms)), 1000)
    return f"{sign}{whole}.{frac:03d}"


def parse_sample_value(text: str | float) -> float:
    """A sample value as the API encodes it ("1.5", "NaN", "+Inf", "-Inf", "1e+06") as a float."""
    return float(text)  # Python's float() reads every form Go's strconv.FormatFloat writes


def _seconds_to_ms(value: float | str) -> int:
    # JSON gives times as floats with ms precision; round() undoes the binary fraction error.
    return round(float(value) * 1000)


def _step(step_s: float) -> str:
    return str(int(step_s)) if float(step_s).is_integer() else repr(float(step_s))


def _excerpt(text: str, limit: int = _QUERY_EXCERPT) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class PromQLClient(EndpointClient):
    """Prometheus HTTP API client (``/api/v1/...``) with retries and typed errors.

    ``base_url`` is the part before ``/api/v1`` (``/api/v1`` itself is accepted and stripped). Pass
    ``client`` to share connections; it is then not closed by :meth:`close`. ``extra_params`` are added to
    every request (e.g. ``{"partial_response": "false"}`` for Thanos Query), ``extra_headers`` likewise
    (e.g. ``M3-Metrics-Type`` to pin an M3 namespace).
    """

    def __init__(
        self,
        base_url: str,
        settings: EndpointSettings,
        *,
        retry: RetryPolicy | None = None,
        client: httpx.Client | None = None,
        extra_params: dict[str, str] | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(settings, retry=retry, client=client)
        self._base = api_base(base_url)
        self._params = dict(extra_params or {})
        self._headers = dict(extra_headers or {})

    def __repr__(self) -> str:
        return f"PromQLClient({redact_url(self._base)!r})"

    # -- discovery -------------------------------------------------------------------------------

    def series(
        self, matchers: Sequence[str], start_ms: int, end_ms: int, *, limit: int | None = None
    ) -> list[dict[str, str]]:
        """Label sets of the series matching any of ``matchers`` with samples in [start_ms, end_ms].

        ``limit`` is sent as the ``limit`` parameter (M3: per-query series limit); servers that do not
        know it ignore it. A truncated answer raises SourceLimitExceeded, never returns short.
        """
        if isinstance(matchers, str):
            raise TypeError("matchers must be a sequence of selectors, not one string")
        if not matchers:
            raise ValueError("series() needs a non-empty sequence of series selectors")
        form: dict[str, Any] = {
            "match[]": list(matchers),
            "start": format_seconds(start_ms),
            "end": format_seconds(end_ms),
        }
        if limit is not None:
            form["limit"] = str(limit)
        data = self._call("POST", "/api/v1/series", form, what="PromQL series", strict=True).result
        if not isinstance(data, list) or not all(
            isinstance(s, dict) and all(isinstance(v, str) for v in s.values()) for s in data
        ):
            raise self._malformed("PromQL series", "data is not a list of label sets")
        return data  # JSON's keys are str and the values were checked: no second copy of every label set

    def label_names(
        self, matchers: Sequence[str] = (), start_ms: int | None = None, end_ms: int | None = None
    ) -> list[str]:
        """Label names, optionally restricted to series matching ``matchers`` and a time range."""
        form = self._metadata_params(matchers, start_ms, end_ms)
        data = self._call("POST", "/api/v1/labels", form, what="PromQL labels", strict=True).result
        return self._string_list(data, "PromQL labels")

    def label_values(
        self,
        name: str,
        matchers: Sequence[str] = (),
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> list[str]:
        """Values of label ``name`` (GET: M3 serves this path for GET only)."""
        params = self._metadata_params(matchers, start_ms, end_ms)
        path = f"/api/v1/label/{quote(name, safe='')}/values"
        data = self._call("GET", path, params, what="PromQL label values", strict=True).result
        return self._string_list(data, "PromQL label values")

    # -- queries ---------------------------------------------------------------------------------

    def query(self, expr: str, time_ms: int | None = None) -> QueryResult:
        """Instant query; warnings come back on the result."""
        form = {"query": expr}
        if time_ms is not None:
            form["time"] = format_seconds(time_ms)
        return self._call("POST", "/api/v1/query", form, what="PromQL query", expr=expr)

    def query_range(self, expr: str, start_ms: int, end_ms: int, step_s: float) -> QueryResult:
        """Range query evaluated every ``step_s`` seconds; warnings come back on the result."""
        form = {
            "query": expr,
            "start": format_seconds(start_ms),
            "end": format_seconds(end_ms),
            "step": _step(step_s),
        }
        return self._call("POST", "/api/v1/query_range", form, what="PromQL query_range", expr=expr)

    def raw_samples(self, selector: str, end_ms: int, range_ms: int) -> dict[SeriesKey, list[tuple[int, float]]]:
        """The stored samples of ``selector`` in the ``range_ms`` before ``end_ms``, unmodified.

        Evaluates ``selector[<range_ms>ms]`` at ``end_ms``: a range vector holds raw samples (no
        lookback, no step alignment). The window is [end-range, end] on Prometheus 2.x and
        (end-range, end] on 3.x. Staleness markers are never returned by PromQL. Warnings raise
        PartialResponse: a verification must not compare against partial data.
        """
        if range_ms <= 0:
            raise ValueError("range_ms must be positive")
        expr = f"{selector}[{int(range_ms)}ms]"
        form = {"query": expr, "time": format_seconds(end_ms)}
        answer = self._call("POST", "/api/v1/query", form, what="PromQL raw samples", expr=expr, strict=True)
        if answer.result_type != "matrix" or not isinstance(answer.result, list):
            raise self._malformed("PromQL raw samples", f"expected a matrix, got {answer.result_type!r}")
        out: dict[SeriesKey, list[tuple[int, float]]] = {}
        try:
            for item in answer.result:
                key: SeriesKey = frozenset((str(k), str(v)) for k, v in item["metric"].items())
                out[key] = [(_seconds_to_ms(t), parse_sample_value(v)) for t, v in item.get("values", [])]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise self._malformed("PromQL raw samples", f"bad matrix entry ({type(exc).__name__})") from None
        return out

    def build_info(self) -> dict[str, Any] | None:
        """``/api/v1/status/buildinfo`` (Prometheus, Thanos), or None where it does not exist (M3)."""
        try:
            answer = self._call("GET", "/api/v1/status/buildinfo", {}, what="PromQL buildinfo")
        except EndpointNotFound:
            return None
        if not isinstance(answer.result, dict):
            raise self._malformed("PromQL buildinfo", "data is not an object")
        return answer.result

    # -- plumbing --------------------------------------------------------------------------------

    def _metadata_params(self, matchers: Sequence[str], start_ms: int | None, end_ms: int | None) -> dict[str, Any]:
        if isinstance(matchers, str):
            raise TypeError("matchers must be a sequence of selectors, not one string")
        params: dict[str, Any] = {}
        if matchers:
            params["match[]"] = list(matchers)
        if start_ms is not None:
            params["start"] = format_seconds(start_ms)
        if end_ms is not None:
            params["end"] = format_seconds(end_ms)
        return params

    def _call(
        self,
        method: str,
        path: str,
        fields: Mapping[str, Any],
        *,
        what: str,
        expr: str | None = None,
        strict: bool = False,
    ) -> QueryResult:
        """One API call with retries; ``strict`` turns warnings into PartialResponse."""
        url = self._base + path
        merged = {**self._params, **fields}
        headers = self._headers or None
        answer: QueryResult | None = None
        for attempt in self.retry.context(retry_transient):
            with attempt:
                if method == "GET":
                    request = self._client.build_request("GET", url, params=merged, headers=headers)
                else:
                    request = self._client.build_request(method, url, data=merged, headers=headers)
                response = self.exchange(request, what=what)
                answer = self._handle(response, what=what, expr=expr)
        assert answer is not None  # the retry loop either succeeded or raised
        if strict and answer.warnings:
            raise PartialResponse(
                f"{what}: the server answered with warnings, the result may be incomplete",
                endpoint=redact_url(url),
                status=200,
                body="; ".join(answer.warnings)[:300],
                hint="Thanos: send partial_response=false and check the health of its stores",
            )
        return answer

    def _handle(self, response: httpx.Response, *, what: str, expr: str | None = None) -> QueryResult:
        """Turn one HTTP answer into a QueryResult or the typed error it stands for."""
        endpoint = redact_url(str(response.request.url))
        limited = response.headers.get(RESULTS_LIMITED_HEADER)
        if limited:
            raise SourceLimitExceeded(
                f"{what}: M3 truncated or degraded the result ({RESULTS_LIMITED_HEADER}: {limited})",
                endpoint=endpoint,
                status=response.status_code,
                hint="query fewer series or a shorter range; do not lower M3-Limit-Require-Exhaustive",
            )
        raise_for_common_status(response, what=what)
        try:
            envelope = bulkjson.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            if response.is_success:
                raise self._malformed(what, "the body is not JSON", response=response) from None
            raise unexpected(response, what=what) from None
        if not isinstance(envelope, dict) or envelope.get("status") not in ("success", "error"):
            raise self._malformed(what, "not a Prometheus API envelope", response=response)

        if envelope["status"] == "error" or not response.is_success:
            error_type = str(envelope.get("errorType") or "")
            error = str(envelope.get("error") or "")
            query_note = f" for {_excerpt(expr)!r}" if expr else ""
            if _LIMIT_TEXT.search(error):
                raise SourceLimitExceeded(
                    f"{what}: the source refused the query{query_note} because of a limit",
                    endpoint=endpoint,
                    status=response.status_code,
                    body=error[:300],
                    hint="query fewer series or a shorter range",
                )
            if response.status_code in (400, 422) or error_type == "bad_data":
                raise BadQuery(
                    f"{what}: the server refused the query{query_note} ({error_type or 'error'})",
                    endpoint=endpoint,
                    status=response.status_code,
                    body=error[:300],
                    hint="check the PromQL expression / series selector and the time range",
                )
            raise EndpointError(
                f"{what}: the server answered an error ({error_type or 'error'})",
                endpoint=endpoint,
                status=response.status_code,
                body=error[:300] or body_excerpt(response),
            )

        warnings = envelope.get("warnings") or []
        data = envelope.get("data")
        if isinstance(data, dict) and "resultType" in data:
            return QueryResult(str(data["resultType"]), data.get("result"), tuple(map(str, warnings)))
        return QueryResult("", data, tuple(map(str, warnings)))

    def _string_list(self, data: Any, what: str) -> list[str]:
        if data is None:
            return []  # Prometheus answers null for "no labels" on some versions
        if not isinstance(data, list):
            raise self._malformed(what, "data is not a list")
        return [str(v) for v in data]

    def _malformed(self, what: str, why: str, *, response: httpx.Response | None = None) -> MalformedResponse:
        if response is not None:
            return MalformedResponse(
                f"{what}: {why}",
                endpoint=redact_url(str(response.request.url)),
                status=response.status_code,
                body=body_excerpt(response),
                hint="check that the URL points at the Prometheus API (M3 Coordinator, Prometheus or "
                "Thanos Query), not at a UI or a proxy login page",
            )
        return MalformedResponse(f"{what}: {why}", endpoint=redact_url(self._base))
