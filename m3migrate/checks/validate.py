"""Pre-flight validation: check source, target and spec before any data moves.

Each check is a plain function ``check_xxx(inp: ValidationInput) -> CheckResult`` (no Prefect here, so
the engine is testable on its own); the flow in ``flows/validate.py`` runs each as a task. A check never
raises for a problem it is meant to find: it returns status ``fail`` (blocks the migration) or ``warn``
(does not), what it observed, and the exact flag, header or setting that fixes it. Problems that may go
away on their own (connection refused, 5xx, timeouts) are marked ``transient`` so the task retries them.

Validation writes nothing the migration does not write itself (docs/validation.md): the target write
probe sends an empty write request, then ONE real sample of the migration (:class:`ProbeSample`): the first
sample, in the first window the run writes, of one of its series, read and relabeled exactly as the
transfer reads and relabels it. The migration later writes that very sample again, which the target takes
as an identical duplicate, so after validate + migrate it holds the migrated data and nothing else. The
sample lies at the oldest instant the run writes (the start; hybrid: the boundary; a resumed run: where
its unit journal says it goes on), so it cannot move a fresh head's clock past the history. blocks writes
no sample by remote write (only the empty request). blocks and hybrid also write, read back and delete one
small object in the bucket.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from m3migrate.backfill.windows import block_windows
from m3migrate.clients.bucket import Bucket, BucketError, BucketSettings
from m3migrate.clients.http import RetryPolicy, build_client
from m3migrate.clients.m3admin import M3AdminClient, M3Namespace
from m3migrate.clients.promql import PromQLClient
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import (
    AuthError,
    ConfigError,
    EndpointError,
    EndpointNotFound,
    M3MigrateError,
    MalformedResponse,
    RejectReason,
    SourceLimitExceeded,
    TlsError,
    TransientError,
    WriteRejected,
)
from m3migrate.model import DAY_MS, HOUR_MS, PROBE_METRIC
from m3migrate.plan.batches import Batch, Labels, Window, make_windows
from m3migrate.plan.migration import source_tiers
from m3migrate.plan.tiers import Tier
from m3migrate.prompb import Sample, TimeSeries
from m3migrate.read import read_batch_window
from m3migrate.report import table
from m3migrate.settings.endpoints import SourceSettings, TargetSettings, origin, redact_url
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState, UnitJournal
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.unit import TransferResult
from m3migrate.wire.codec import STALE_NAN_BITS, Matcher, WriteBody, float_bits, frame_series, single_request
from m3migrate.wire.walk import LabelCache

__all__ = [
    "CHECKS",
    "M3_DEFAULT_SERIES_LIMIT",
    "PROBE_METRIC",
    "CheckResult",
    "ProbeSample",
    "ResumePoint",
    "Status",
    "ValidationFailed",
    "ValidationInput",
    "ValidationReport",
    "check_bucket",
    "check_bucket_retention",
    "check_clock_skew",
    "check_naming",
    "check_source_kind",
    "check_source_limits",
    "check_source_namespaces",
    "check_source_promql",
    "check_source_read",
    "check_target_query",
    "check_target_write",
    "check_volume",
    "checks_for",
    "find_probe_sample",
    "resume_point",
    "run_all",
    "shared_listings",
]

Status = Literal["pass", "warn", "fail"]
M3_DEFAULT_SERIES_LIMIT = 100_000
MIN_PROBE_MS = 60_000  # the volume probe shrinks to this under a source limit, like the transfer's time splits
# One attempt per call: the Prefect task retries transient failures, so a dead endpoint fails fast.
ONE_TRY = RetryPolicy(attempts=1, timeout_seconds=30)
STATUS_ORDER = {"fail": 0, "warn": 1, "pass": 2}


@dataclass
class CheckResult:
    """The outcome of one check: status, what was observed, and how to fix it."""

    name: str
    status: Status
    observed: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def transient(self) -> bool:
        return bool(self.details.get("transient"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "observed": self.observed,
            "fix": self.fix,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        return cls(data["name"], data["status"], data["observed"], data.get("fix", ""), dict(data.get("details", {})))


@dataclass
class ValidationReport:
    """All check results of one validation run."""

    checks: list[CheckResult]
    migration_id: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(c.status == s for c in self.checks) for s in ("pass", "warn", "fail")}

    def get(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "created": self.created,
            "result": "fail" if self.failed else "pass",
            "counts": self.counts,
            "checks": [c.to_dict() for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        return cls(
            [CheckResult.from_dict(c) for c in data["checks"]], data.get("migration_id", ""), data.get("created", "")
        )

    def to_markdown(self) -> str:
        c = self.counts
        lines = [
            f"# Validation of migration {self.migration_id}",
            "",
            f"**{'FAILED' if self.failed else 'PASSED'}**: {c['pass']} pass, {c['warn']} warn, {c['fail']} fail. "
            "Fix every fail (and read every warn), then rerun the validation.",
            "",
        ]
        rows = ((c.status.upper(), c.name, c.observed, c.fix or "-") for c in self.checks)
        lines += table(("status", "check", "observed", "fix"), rows, newline="<br>")
        return "\n".join(lines) + "\n"


class ValidationFailed(M3MigrateError):
    """At least one check failed; ``report`` is the JSON-able report (``ValidationReport.to_dict()``)."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint="fix the failed checks (see the report) and rerun")
        self.report = report or {}

    def __reduce__(self):  # picklable for Prefect's state storage
        return (type(self), (self.args[0], self.report))


@dataclass(frozen=True)
class ValidationInput:
    """What every check gets."""

    source: SourceSettings
    target: TargetSettings
    spec: MigrationSpec
    clock_skew_threshold_s: float = 30.0
    probe_at_ms: int | None = None  # hybrid: its saved boundary (else the one the clock gives now)
    bucket: BucketSettings | None = None  # write_mode blocks/hybrid: where the blocks go
    state_dir: str | None = None  # the migration's state root: a resumed run is probed where its journal goes on

    @property
    def migration_id(self) -> str:
        return self.spec.resolved_id(self.source.read_url, self.target.write_url)

    @property
    def remote_write_from_ms(self) -> int | None:
        """The oldest instant the migrate step writes by remote write; None when it writes only blocks.

        hybrid: the boundary (a resumed run: its saved boundary or front, else the one the clock gives now).
        """
        spec = self.spec
        if spec.write_mode == "blocks":
            return None
        at = self.probe_at_ms
        if at is None:
            at = spec.hybrid_boundary_ms(int(time.time() * 1000)) if spec.write_mode == "hybrid" else spec.start_ms
        return None if at > spec.end_ms else max(at, spec.start_ms)


# -- error -> result --------------------------------------------------------------------------------


def _flags(side: str) -> dict[str, str]:
    return {
        "user": f"--{side}-user and M3MIGRATE_{side.upper()}_PASSWORD (or --{side}-bearer-token / "
        f"M3MIGRATE_{side.upper()}_BEARER_TOKEN)",
        "tls": f"--{side}-ca-file (the CA that signed the server certificate), https:// vs http:// in the URL, "
        f"or --{side}-cert-file/--{side}-key-file for mutual TLS",
    }


def failure(name: str, exc: Exception, *, side: str, url_flag: str, what: str) -> CheckResult:
    """A fail result naming the cause of ``exc`` and the flag that fixes it."""
    flags = _flags(side)
    details: dict[str, Any] = {"error": type(exc).__name__}
    status = getattr(exc, "status", None)
    if status is not None:
        details["http_status"] = status
    endpoint = getattr(exc, "endpoint", "")
    where = f" ({endpoint})" if endpoint else ""
    if isinstance(exc, AuthError):
        if status == 403:
            observed = f"{what}: HTTP 403 Forbidden{where}: the credentials were accepted but are not allowed"
            fix = f"grant this user read{'/write' if side == 'target' else ''} access, or use other credentials via "
            fix += flags["user"]
        else:
            observed = f"{what}: HTTP 401 Unauthorized{where}: credentials missing or wrong"
            fix = f"set the right credentials: {flags['user']}"
    elif isinstance(exc, TlsError):
        observed = f"{what}: TLS handshake failed{where}: {exc.args[0] if exc.args else exc}"
        fix = f"check {flags['tls']}"
    elif isinstance(exc, EndpointNotFound):
        observed = f"{what}: HTTP 404 Not Found{where}"
        fix = (
            f"fix the path in {url_flag} (M3: /api/v1/prom/remote/read, Prometheus: /api/v1/read)"
            if side == "source"
            else f"fix the path in {url_flag} (Thanos Receive: /api/v1/receive; Prometheus: /api/v1/write "
            "with --web.enable-remote-write-receiver; VictoriaMetrics: /api/v1/write)"
        )
    elif isinstance(exc, TransientError):
        details["transient"] = True
        observed = f"{what}: unreachable or failing{where}: {exc.args[0] if exc.args else exc}"
        fix = f"check host and port in {url_flag}, that the server runs and that this machine can reach it"
    elif isinstance(exc, SourceLimitExceeded):
        observed = f"{what}: refused by a source limit{where}: {exc.body or exc.args[0]}"
        fix = _LIMIT_FIX
    elif isinstance(exc, MalformedResponse):
        observed = f"{what}: answer is not what the protocol promises{where}: {exc.args[0]}"
        fix = f"check that {url_flag} points at the API itself, not at a UI, proxy or login page"
    elif isinstance(exc, EndpointError) and "http request to an https server" in (exc.body or "").lower():
        observed = f"{what}: plain HTTP sent to an HTTPS port{where}"
        fix = f"use https:// in {url_flag} (and {flags['tls']})"
    elif isinstance(exc, EndpointError):
        observed = f"{what}: {exc}"
        fix = f"check {url_flag} and the server's log"
    elif isinstance(exc, ConfigError):
        observed = f"{what}: {exc}"
        fix = exc.hint or "fix the configuration"
    else:
        observed = f"{what}: {type(exc).__name__}: {exc}"
        fix = f"check {url_flag}"
    return CheckResult(name, "fail", observed, fix, details)


_LIMIT_FIX = (
    "raise the source's series limit: send header M3-Limit-Max-Series (config source.limit_max_series, or "
    "--source-header M3-Limit-Max-Series=N) or raise limits.perQuery.maxFetchedSeries in the M3 Coordinator "
    "config; or lower batch_max_series / source.max_series_per_query (Prometheus source: "
    "--storage.remote.read-sample-limit)"
)

_ERRORS = (EndpointError, ConfigError, httpx.HTTPError, OSError)


# -- source ------------------------------------------------------------------------------------------


def _probe_matchers(migration_id: str) -> list[Matcher]:
    return [Matcher("__name__", "=", PROBE_METRIC), Matcher("migration_id", "=", migration_id)]


def check_source_read(inp: ValidationInput) -> CheckResult:
    """Remote read answers a small probe query (matches nothing) with well-formed snappy protobuf."""
    name = "source remote read"
    src = inp.source
    start = inp.spec.start_ms
    try:
        with RemoteReadClient(src, retry=ONE_TRY) as reader:
            t0 = time.monotonic()
            result = reader.read(_probe_matchers(inp.migration_id), start, min(start + 60_000, inp.spec.end_ms))
            ms = (time.monotonic() - t0) * 1000
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-read-url", what="remote read probe")
    return CheckResult(
        name,
        "pass",
        f"{redact_url(src.read_url)} answered the probe with a well-formed snappy protobuf ReadResponse "
        f"({len(result.timeseries)} series) in {ms:.0f} ms; TLS and credentials accepted",
        details={"latency_ms": round(ms, 1)},
    )


def check_source_promql(inp: ValidationInput) -> CheckResult:
    """The PromQL API (series discovery) answers."""
    name = "source PromQL API"
    src = inp.source
    try:
        with PromQLClient(src.promql_base, src, retry=ONE_TRY, extra_headers=src.m3_headers()) as promql:
            answer = promql.query("vector(1)", inp.spec.end_ms)
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-query-url", what="PromQL query")
    return CheckResult(
        name, "pass", f"{redact_url(src.promql_base)}/api/v1/query answered ({answer.result_type or 'ok'})"
    )


def _admin(src: SourceSettings) -> M3AdminClient:
    return M3AdminClient(src.admin_base, src, retry=ONE_TRY)


def _ns_text(ns: M3Namespace) -> str:
    kind = f"aggregated {ns.storage_policy}" if ns.aggregated else f"unaggregated, retention {_dur(ns.retention_ms)}"
    state = "ready" if ns.ready else f"NOT READY ({ns.staging_status})"
    return f"{ns.name} ({kind}, {state})"


def _dur(ms: int) -> str:
    if ms % DAY_MS == 0:
        return f"{ms // DAY_MS}d"
    if ms % HOUR_MS == 0:
        return f"{ms // HOUR_MS}h"
    return f"{ms // 60_000}m" if ms % 60_000 == 0 else f"{ms / 1000:g}s"


def check_source_kind(inp: ValidationInput) -> CheckResult:
    """M3 Coordinator or a plain Prometheus-compatible store; for M3 the namespaces and their state."""
    name = "source kind"
    try:
        with _admin(inp.source) as admin:
            kind = admin.detect()
            namespaces = admin.namespaces() if kind == "m3" else None
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-query-url", what="source detection")
    if kind == "prometheus":
        return CheckResult(
            name,
            "pass",
            "a Prometheus-compatible store (buildinfo answered; no M3 namespace API)",
            details={"kind": kind},
        )
    if kind == "unknown":
        return CheckResult(
            name,
            "warn",
            "neither an M3 Coordinator (no namespace API) nor a Prometheus (no buildinfo)",
            "set --source-query-url to the coordinator's origin (https://HOST:7201) or the Prometheus base URL; "
            "namespace checks are skipped",
            {"kind": kind},
        )
    nss = namespaces or []
    listed = "; ".join(_ns_text(ns) for ns in nss) or "none"
    details = {
        "kind": kind,
        "namespaces": [
            {
                "name": ns.name,
                "aggregated": ns.aggregated,
                "resolution_ms": ns.resolution_ms,
                "retention_ms": ns.retention_ms,
                "ready": ns.ready,
                "storage_policy": ns.storage_policy,
            }
            for ns in nss
        ],
    }
    not_ready = [ns.name for ns in nss if not ns.ready]
    if not nss:
        return CheckResult(
            name,
            "fail",
            "an M3 Coordinator without namespaces: it holds no data",
            "point --source-query-url at the coordinator of the cluster that holds the data",
            details,
        )
    if not_ready:
        return CheckResult(
            name,
            "warn",
            f"an M3 Coordinator; namespaces: {listed}",
            f"namespaces {', '.join(not_ready)} are not READY and are not read: wait for them "
            "(GET /api/v1/services/m3db/namespace/ready) or ignore if they hold nothing needed",
            details,
        )
    return CheckResult(name, "pass", f"an M3 Coordinator; namespaces: {listed}", details=details)


def check_source_namespaces(inp: ValidationInput, *, now_ms: int | None = None) -> CheckResult:
    """Which namespace serves the range: downsampling, the pinned policy, and what retention makes empty."""
    name = "source namespaces"
    src, spec = inp.source, inp.spec
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    try:
        with _admin(src) as admin:
            namespaces = admin.namespaces()
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-query-url", what="M3 namespaces")
    if namespaces is None:
        return CheckResult(name, "pass", "not an M3 Coordinator: no namespaces, data is read as stored")
    if src.namespaces == "auto" and not src.metrics_type and not src.storage_policy:
        return _check_tiers(name, inp, namespaces, now_ms)
    ready = [ns for ns in namespaces if ns.ready]
    unagg = [ns for ns in ready if not ns.aggregated]
    agg = [ns for ns in ready if ns.aggregated]
    policies = ", ".join(ns.storage_policy or "" for ns in agg) or "none"
    if src.storage_policy:
        try:
            pinned = [ns for ns in agg if ns.matches_policy(src.storage_policy)]
        except ConfigError as exc:
            return CheckResult(name, "fail", str(exc), exc.hint)
        if not pinned:
            return CheckResult(
                name,
                "fail",
                f"the pinned storage policy {src.storage_policy} matches no READY aggregated namespace "
                f"(available: {policies}); M3 would answer 400 'could not find namespace for storage policy'",
                f"set --source-storage-policy to one of: {policies}, or drop it (and --source-metrics-type) "
                "to let M3 choose",
                {"available_policies": [ns.storage_policy for ns in agg]},
            )
        serving = pinned[0]
    elif src.metrics_type == "aggregated":
        return CheckResult(
            name,
            "fail",
            "M3-Metrics-Type aggregated without a storage policy",
            f"set --source-storage-policy to one of: {policies}",
        )
    elif src.metrics_type == "unaggregated" or unagg:
        if not unagg:
            return CheckResult(
                name,
                "fail",
                "no READY unaggregated namespace, but unaggregated reads are pinned",
                f"drop --source-metrics-type or pin an aggregated one: {policies}",
            )
        serving = unagg[0]
        cutoff = now_ms - serving.retention_ms
        if src.metrics_type is None and spec.start_ms < cutoff and agg:
            return CheckResult(
                name,
                "warn",
                f"the range starts {iso_ms(spec.start_ms)}, before the unaggregated retention "
                f"({_dur(serving.retention_ms)}, from {iso_ms(cutoff)}): M3 reads the WHOLE range from an "
                f"aggregated namespace ({policies}), i.e. downsampled data",
                f"to read raw data narrow --start to {iso_ms(cutoff)} or later and migrate older data in a second run "
                f"pinned with --source-metrics-type aggregated --source-storage-policy <one of {policies}>; or pin "
                "--source-metrics-type unaggregated (older part then comes back empty)",
                {"unaggregated_cutoff": iso_ms(cutoff)},
            )
    else:
        if not agg:
            return CheckResult(name, "fail", "no READY namespace", "wait for the namespaces to become READY")
        serving = max(agg, key=lambda ns: ns.retention_ms)
    cutoff = now_ms - serving.retention_ms
    what = _ns_text(serving)
    if spec.start_ms < cutoff:
        empty_to = min(cutoff, spec.end_ms)
        return CheckResult(
            name,
            "warn",
            f"reads come from {what}; its retention leaves {iso_ms(spec.start_ms)} .. {iso_ms(empty_to)} empty",
            f"narrow --start to {iso_ms(cutoff)} or later, or pin a namespace with a longer retention "
            f"(--source-metrics-type aggregated --source-storage-policy <one of {policies}>)",
            {"empty_until": iso_ms(empty_to)},
        )
    return CheckResult(name, "pass", f"the whole range is read from {what}")


def _check_tiers(name: str, inp: ValidationInput, namespaces: list[M3Namespace], now_ms: int) -> CheckResult:
    """The tier table a migration with namespaces=auto will plan: range, namespace, resolution and the
    most samples an aggregated tier can hold per series; a warning when history comes back downsampled."""
    from m3migrate.plan.migration import spec_tiers
    from m3migrate.plan.tiers import tier_table

    spec = inp.spec
    tiers = spec_tiers(namespaces, spec, spec.start_ms, spec.end_ms, now_ms=now_ms)
    if not tiers:
        return CheckResult(name, "fail", "no READY namespace", "wait for the namespaces to become READY")
    rows = tier_table(tiers)
    for row, tier in zip(rows, tiers, strict=True):
        span = tier.end_ms - tier.start_ms + 1
        row["samples_per_series"] = span // tier.resolution_ms if tier.aggregated else "as scraped"
    table = "; ".join(
        f"{r['from']} .. {r['to']} from {r['namespace']} ({r['storage_policy']}, "
        f"{r['samples_per_series']} samples/series)"
        for r in rows
    )
    details: dict[str, Any] = {"tiers": rows}
    aggregated = [t for t in tiers if t.aggregated]
    if not aggregated:
        return CheckResult(name, "pass", f"the whole range is read from one tier: {table}", details=details)
    coarse = [t.storage_policy for t in aggregated if t.resolution_ms >= 5 * 60_000]
    counters = (
        f"; with M3's storeMetricsType on, counters read from {', '.join(coarse)} come back as a reset-free "
        "running sum (rate() and increase() agree, raw counter values do not)"
        if coarse
        else ""
    )
    oldest_raw = next((t.start_ms for t in tiers if not t.aggregated), None)
    return CheckResult(
        name,
        "warn",
        f"tiers: {table}. History in aggregated tiers is downsampled (the last value per resolution window, "
        f"stamped at the window's end){counters}",
        "expected for history older than the unaggregated retention"
        + (f" (raw data from {iso_ms(oldest_raw)} on)" if oldest_raw is not None else "")
        + "; to read one namespace only pin it with --source-metrics-type/--source-storage-policy; "
        "raise tier_margin_hours if the migration takes longer than "
        f"{spec.tier_margin_hours:g} h (a tier's oldest data must not expire before it is read)",
        details,
    )


class _LastHourListings:
    """The last hour's series of the range, listed once per validation run.

    Three checks (limits, naming, volume) need them and run at once as the flow's tasks: at 100,000
    series each listing is ~100 MB of label sets and a few seconds of the source's time. Inside
    :meth:`shared` (the flow's and run_all's scope) the first check lists them and the others wait for that
    answer; a failed listing is not kept, so a retried check lists again. Outside a scope every call lists.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scopes = 0
        self._answers: dict[tuple, Future[list[Labels]]] = {}

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._lock:
            self._scopes += 1
        try:
            yield
        finally:
            with self._lock:
                self._scopes -= 1
                if not self._scopes:
                    self._answers.clear()

    def series(self, src: SourceSettings, spec: MigrationSpec) -> list[Labels]:
        """Sorted label sets of the series of the spec's selectors in the last hour of the range."""
        start = max(spec.start_ms, spec.end_ms - HOUR_MS)
        key = (src.promql_base, json.dumps(src.m3_headers(), sort_keys=True), tuple(spec.match), start, spec.end_ms)
        with self._lock:
            answer = self._answers.get(key) if self._scopes else None
            if owner := answer is None:
                answer = Future()
                if self._scopes:
                    self._answers[key] = answer
        if owner:
            try:
                with PromQLClient(src.promql_base, src, retry=ONE_TRY, extra_headers=src.m3_headers()) as promql:
                    listed: list[Any] = promql.series(list(spec.match), start, spec.end_ms)
                for i, labels in enumerate(listed):  # in place: one dict at a time becomes its tuple
                    listed[i] = tuple(sorted(labels.items()))
                answer.set_result(listed)
            except BaseException as exc:
                with self._lock:
                    if self._answers.get(key) is answer:
                        del self._answers[key]
                answer.set_exception(exc)
        return answer.result()


_last_hour = _LastHourListings()


def _a_metric_name(series: list[Labels]) -> str | None:
    """The metric name of the first series that has one (a read probe's selector)."""
    return next((v for labels in series for n, v in labels if n == "__name__" and v), None)


def check_source_limits(inp: ValidationInput) -> CheckResult:
    """Series per batch against the source's series limit; a limit that refuses the probe is a fail."""
    name = "source limits"
    src, spec = inp.source, inp.spec
    limit = src.limit_max_series or M3_DEFAULT_SERIES_LIMIT
    per_batch = min(spec.batch_max_series, src.max_series_per_query)
    try:
        series = _last_hour.series(src, spec)
        metric = _a_metric_name(series)
        with RemoteReadClient(src, retry=ONE_TRY) as reader:
            matchers = [Matcher("__name__", "=", metric)] if metric else _probe_matchers("x")
            reader.read(matchers, max(spec.start_ms, spec.end_ms - 5 * 60_000), spec.end_ms)
    except SourceLimitExceeded as exc:
        return CheckResult(
            name,
            "fail",
            f"the source refused a probe query as over its limit: {exc.body or exc.args[0]} "
            f"(limit header sent: {src.limit_max_series or 'none, M3 default 100000'})",
            _LIMIT_FIX,
            {"http_status": exc.status},
        )
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-query-url", what="series probe")
    details = {"series_last_hour": len(series), "series_per_batch": per_batch, "series_limit": limit}
    if per_batch > limit:
        return CheckResult(
            name,
            "fail",
            f"batches of up to {per_batch} series exceed the source's series limit {limit}",
            f"lower batch_max_series / source.max_series_per_query to {limit} or less, or raise the limit "
            f"with header M3-Limit-Max-Series (source.limit_max_series)",
            details,
        )
    return CheckResult(
        name,
        "pass",
        f"{len(series)} series in the last hour of the range; batches of at most {per_batch} series "
        f"stay under the series limit {limit}{'' if src.limit_max_series else ' (M3 default)'}",
        details=details,
    )


# -- target ------------------------------------------------------------------------------------------


def _prom_duration_ms(text: str) -> int | None:
    units = {"ms": 1, "s": 1000, "m": 60_000, "h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS, "y": 365 * DAY_MS}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    return sum(int(n) * units[u] for n, u in parts)


def _target_ooo_window_ms(target: TargetSettings) -> int | None:
    """The out-of-order window of a Prometheus target (from its config), None when unknown."""
    if not target.promql_base:
        return None
    try:
        with build_client(target) as client:
            response = client.get(target.promql_base + "/api/v1/status/config", headers=_tenant(target))
        yaml_text = response.json()["data"]["yaml"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    m = re.search(r"out_of_order_time_window:\s*(\S+)", yaml_text)
    return _prom_duration_ms(m.group(1)) if m else 0


def _tenant(target: TargetSettings) -> dict[str, str]:
    return {target.tenant_header: target.tenant} if target.tenant else {}


MAX_PROBE_CANDIDATES = 10  # series tried for a sample in the probe window before the probe gives up (a warn)


@dataclass(frozen=True)
class ProbeSample:
    """A real sample of the migration, labeled exactly as the migration writes it.

    Writing it now and again later (the migration's own write of it) leaves the target as the migration
    alone would: Prometheus' TSDB (which Thanos Receive embeds) takes a sample equal in timestamp and value
    bits to a series' newest one as a no-op (tsdb/head_append.go, memSeries.appendable)."""

    labels: Labels  # the target labels: relabeled, with the source label
    label_bytes: bytes  # as the transfer encodes them (wire.LabelCache)
    sample: bytes  # the source's Sample message, re-serialized: value bits kept (NaN, stale markers)
    timestamp_ms: int
    window: Window  # the first window the run writes, which holds this sample

    def body(self) -> WriteBody:
        series = TimeSeries()
        series.samples.add().ParseFromString(self.sample)
        return single_request(frame_series(self.label_bytes, series.SerializeToString()), 1)

    def describe(self) -> str:
        value = Sample.FromString(self.sample).value
        bits = float_bits(value)
        text = "stale marker" if bits == STALE_NAN_BITS else "NaN" if math.isnan(value) else repr(value)
        inner = ",".join(f'{n}="{v}"' for n, v in self.labels if n != "__name__")
        return f"{dict(self.labels).get('__name__', '')}{{{inner}}} = {text} @ {iso_ms(self.timestamp_ms)}"


@dataclass(frozen=True)
class ResumePoint:
    """What the migration's own state says about its remote writes.

    ``window``: the oldest window with a batch × window unit not done in the unit journal, where this run's
    writes go on. The saved front (progress.json) is recorded per segment and lags the units written after
    it, so a target that took those is already past the front's accept window (issue 20, item 10)."""

    window: Window
    started_to_ms: int | None  # end of the newest window with a unit started: the target took writes up to it
    series: tuple[Labels, ...]  # source series of the units not done in ``window`` (the first few)
    tiers: tuple[Tier, ...]  # the plan's M3 namespaces: the probe reads what the transfer reads
    all_done: bool = False  # every unit is done: this run writes nothing more by remote write


def resume_point(state_dir: str, migration_id: str, spec: MigrationSpec) -> ResumePoint | None:
    """The resume point of the saved remote-write plan of this spec; None without one (a first run)."""
    root = Path(state_dir)
    if spec.write_mode == "blocks" or not (root / migration_id).is_dir():
        return None
    state = MigrationState(root, migration_id)
    plan = state.load_plan("migrate")
    start = state.load_boundary() if spec.write_mode == "hybrid" else spec.start_ms
    if plan is None or (plan.start_ms, plan.end_ms, plan.window_ms) != (start, spec.end_ms, spec.window_ms):
        return None  # no plan, or one the migration refuses to resume anyway (a changed range)
    windows, tiers = plan.windows, tuple(plan.tiers)
    progress = state.load_progress()
    saved = progress.plan_id == plan.id and progress.generation == state.generation
    first = progress.windows_done if saved else 0
    if first >= len(windows):
        return ResumePoint(windows[-1], windows[-1].end_ms, (), tiers, all_done=True)
    journal = state.journal("migrate", plan.id, range(windows[first].index, windows[-1].index + 1))
    started_to = windows[first - 1].end_ms if first else None
    todo: tuple[Window, list[Batch]] | None = None
    for window in windows[first:]:
        keys = [UnitJournal.key(b.id, window.index) for b in plan.batches]
        if any(journal.started(k) or journal.done(k) is not None for k in keys):
            started_to = window.end_ms
        if todo is None and (left := [b for b, k in zip(plan.batches, keys, strict=True) if journal.done(k) is None]):
            todo = (window, left)
    if todo is None:
        return ResumePoint(windows[-1], started_to, (), tiers, all_done=True)
    series = tuple(itertools.islice((s for b in todo[1] for s in b.series), MAX_PROBE_CANDIDATES))
    return ResumePoint(todo[0], started_to, series, tiers)


def _first_window_with_series(promql: PromQLClient, spec: MigrationSpec, from_ms: int) -> tuple[Window, list]:
    """The first window (of the migration's grid) from ``from_ms`` in which the source has series, and
    those series; (None, []) when it has none in [from_ms, end]. Binary search over prefixes of the range:
    one query when the first window has data, a few when the history starts later."""
    windows = make_windows(from_ms, spec.end_ms, spec.window_ms)

    def series_to(k: int) -> list[dict[str, str]]:
        return promql.series(list(spec.match), from_ms, windows[k].end_ms)

    found = series_to(0)
    if found:
        return windows[0], found
    lo, hi, found = 1, len(windows) - 1, []
    while lo <= hi:  # the smallest k whose prefix [from, windows[k].end] holds series
        mid = (lo + hi) // 2
        if at_mid := series_to(mid):
            hi, found = mid - 1, at_mid
        else:
            lo = mid + 1
    if not found:
        return None, []  # type: ignore[return-value]
    return windows[lo], promql.series(list(spec.match), windows[lo].start_ms, windows[lo].end_ms)


def find_probe_sample(inp: ValidationInput, resume: ResumePoint | None = None) -> ProbeSample | None:
    """The first sample, in the first window this run writes, of one of the series it writes there.

    Read like the transfer reads it (remote read, the plan's namespaces) and labeled like the transfer
    labels it (the spec's Relabeler through wire.LabelCache), so the migration writes this very sample
    again as the first of its series. None when the source has no sample to probe with."""
    spec, src = inp.spec, inp.source
    from_ms = inp.remote_write_from_ms
    assert from_ms is not None
    with (
        RemoteReadClient(src, retry=ONE_TRY) as reader,
        PromQLClient(src.promql_base, src, retry=ONE_TRY, extra_headers=src.m3_headers()) as promql,
    ):
        cache = LabelCache(spec.relabeler(), endpoint=reader.endpoint)
        if resume is not None:
            window, tiers, candidates = resume.window, resume.tiers, list(resume.series)
        else:
            window, found = _first_window_with_series(promql, spec, from_ms)
            if window is None:
                return None
            tiers = tuple(source_tiers(src, spec, from_ms, spec.end_ms))
            candidates = [tuple(sorted(s.items())) for s in found]
        tally = TransferResult(batch_id="probe", window=window.index)
        for attempt in range(2):  # a resume's own series first, then any the source has in the window
            if attempt:
                candidates = [tuple(sorted(s.items())) for s in promql.series(list(spec.match), *_ms(window))]
            for key in sorted(candidates)[:MAX_PROBE_CANDIDATES]:
                label_bytes = cache.target(key)
                if not label_bytes:
                    continue  # relabeling drops it: the migration does not write it
                batch = Batch.create([Matcher(n, "=", v) for n, v in key], [key])
                for part in read_batch_window(reader, batch, window.start_ms, window.end_ms, tally, tiers):
                    for ts in part.timeseries:
                        if ts.samples and cache.key(tuple((lb.name, lb.value) for lb in ts.labels)) == key:
                            first = ts.samples[0]  # remote read answers each series' samples in time order
                            labels = spec.relabeler()(key) or ()
                            return ProbeSample(labels, label_bytes, first.SerializeToString(), first.timestamp, window)
            if resume is None:
                break
    return None


def _ms(window: Window) -> tuple[int, int]:
    return window.start_ms, window.end_ms


def _empty_write(target: TargetSettings) -> None:
    """A write request without series: the target's URL, credentials and tenant, and nothing written."""
    with RemoteWriteClient(target, retry=ONE_TRY) as writer:
        writer.write(single_request(b"", 0))


def check_target_write(inp: ValidationInput) -> CheckResult:
    """Does the target take what the migration writes by remote write, where it first writes it?

    Writes nothing the migration does not write itself: an empty request (reachable, credentials, tenant),
    then one real sample of the migration (:class:`ProbeSample`) at the oldest instant this run writes:
    its start (hybrid: the boundary; a resumed run: where its journal says it goes on)."""
    name = "target write probe"
    tgt, spec = inp.target, inp.spec
    tenant = f" into tenant {tgt.tenant!r} ({tgt.tenant_header})" if tgt.tenant else ""
    try:
        _empty_write(tgt)
    except WriteRejected as exc:
        return _refused(name, inp, exc, "an empty write request", {"http_status": exc.status})
    except _ERRORS as exc:
        return failure(name, exc, side="target", url_flag="--target-write-url", what="probe write")
    if inp.remote_write_from_ms is None:
        return _blocks_result(name, inp, tenant)
    if _is_victoriametrics(tgt):
        return CheckResult(
            name,
            "pass",
            f"the target accepted an empty write request{tenant}; it is VictoriaMetrics, which takes samples of "
            "any age inside its -retentionPeriod (no accept window to probe), and which keeps a sample written "
            "twice as two (unless -dedup.minScrapeInterval is set), so no sample was written",
            details={"target": "victoriametrics"},
        )
    try:
        resume = resume_point(inp.state_dir, inp.migration_id, spec) if inp.state_dir else None
    except (OSError, ValueError, KeyError) as exc:
        return CheckResult(
            name,
            "fail",
            f"the migration's saved state cannot be read: {type(exc).__name__}: {exc}",
            "fix the state directory (--state-dir), or rerun with --start-over",
        )
    resumed = resume is not None and resume.started_to_ms is not None
    details: dict[str, Any] = {"resumed_to_ms": resume.started_to_ms if resume else None}
    if resume is not None and resume.all_done:
        return CheckResult(
            name,
            "pass",
            f"the target accepted an empty write request{tenant}; the unit journal shows every batch × window "
            "written, so this run writes nothing more by remote write (and wrote nothing to probe)",
            details=details,
        )
    try:
        probe = find_probe_sample(inp, resume)
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-read-url", what="reading the probe sample")
    if probe is None:
        return CheckResult(
            name,
            "warn",
            f"the target accepted an empty write request{tenant}, but the source has no sample of the selected "
            f"series from {iso_ms(inp.remote_write_from_ms if resume is None else resume.window.start_ms)} in "
            "the first window it has series in: nothing to probe the accept window with (nothing was written)",
            "check --match and the range (--start/--end): the migration stops on a source without samples",
            details,
        )
    where = (
        f"where the journal says this run goes on (units were started up to {iso_ms(resume.started_to_ms)})"
        if resume is not None and resumed
        else "at the hybrid boundary, where the remote-write tail begins"
        if spec.write_mode == "hybrid"
        else "at the migration's start"
    )
    details.update(probe_series=dict(probe.labels), probe_timestamp_ms=probe.timestamp_ms)
    try:
        with RemoteWriteClient(tgt, retry=ONE_TRY) as writer:
            writer.write(probe.body())
    except WriteRejected as exc:
        details.update(reasons=sorted(exc.reasons), http_status=exc.status)
        if resume is not None and resumed and exc.reasons <= {RejectReason.OUT_OF_ORDER}:
            return CheckResult(
                name,
                "pass",
                f"the target already holds newer samples of {probe.describe()} ({exc.body}): the interrupted run "
                f"wrote them, as its journal says (units started up to {iso_ms(resume.started_to_ms)}); the rerun "
                "resends those units and reconciles what the target holds",
                details=details,
            )
        return _refused(name, inp, exc, f"the probe {probe.describe()} ({where})", details, resumed=resumed)
    except _ERRORS as exc:
        return failure(name, exc, side="target", url_flag="--target-write-url", what="probe write")
    return CheckResult(
        name,
        "pass",
        f"the target accepted {probe.describe()}{tenant} {where}: a sample of the migration itself, which it "
        "writes again as the first of its series (an identical sample, which the target keeps once), so "
        "nothing outside the migrated data is written",
        details=details,
    )


def _refused(
    name: str, inp: ValidationInput, exc: WriteRejected, what: str, details: dict[str, Any], *, resumed: bool = False
) -> CheckResult:
    """A refused probe (or empty request): the reason, and the setting that fixes it."""
    tgt, spec = inp.target, inp.spec
    details = {**details, "reasons": sorted(exc.reasons), "http_status": exc.status}
    at_ms = int(details.get("probe_timestamp_ms") or spec.start_ms)
    age_days = max(1, math.ceil((time.time() * 1000 - at_ms) / DAY_MS))
    refused = f"the target refused {what}"
    if exc.reasons & {RejectReason.OUT_OF_BOUNDS, RejectReason.TOO_OLD} and spec.write_mode == "hybrid":
        return CheckResult(
            name,
            "fail",
            f"{refused}: {exc.body}: the remote-write tail would be refused",
            f"lower accept_window_minutes ({spec.accept_window_minutes}) to what the target accepts (60 "
            "without an out-of-order window, else its window), or use --write-mode blocks",
            details,
        )
    if RejectReason.OUT_OF_BOUNDS in exc.reasons:
        since = "where this run goes on" if resumed else "the migration's start"
        return CheckResult(
            name,
            "fail",
            f"{refused} as OUT OF BOUNDS: it has no out-of-order window and already holds samples more than 1h "
            f"newer than {since}, so it accepts no history there",
            f"enable the out-of-order window (Thanos Receive: --tsdb.out-of-order.time-window={age_days}d; "
            f"Prometheus: storage.tsdb.out_of_order_time_window: {age_days}d) and run with "
            "--write-mode out_of_order; or write into a fresh tenant (--target-tenant <new name>) that holds "
            "nothing newer; narrowing --start does not help while the target holds recent data; " + _BLOCKS_FIX,
            details,
        )
    if RejectReason.TOO_OLD in exc.reasons:
        window = _target_ooo_window_ms(tgt)
        window_text = f" ({_dur(window)})" if window else ""
        oldest = ""
        narrow = "later"
        if window:
            narrow = f"no earlier than {iso_ms(int(time.time() * 1000) - window + 10 * 60_000)}"
            oldest = f"; the oldest start it accepts is about {iso_ms(int(time.time() * 1000) - window)}"
        return CheckResult(
            name,
            "fail",
            f"{refused} as TOO OLD: the start is older than its out-of-order window{window_text}{oldest}",
            f"widen the out-of-order window to at least {age_days}d (Thanos Receive: "
            f"--tsdb.out-of-order.time-window={age_days}d; Prometheus: storage.tsdb.out_of_order_time_window: "
            f"{age_days}d), or narrow the range: --start {narrow}; " + _BLOCKS_FIX,
            {**details, "ooo_window_ms": window},
        )
    if exc.reasons & {RejectReason.OUT_OF_ORDER, RejectReason.DUPLICATE}:
        kind = "a different value at that timestamp" if RejectReason.DUPLICATE in exc.reasons else "newer samples"
        return CheckResult(
            name,
            "fail",
            f"{refused} ({exc.body}): the target already holds {kind} of that series, which this migration has "
            "not written (its journal shows nothing started): another writer, an earlier migration of it "
            "(--start-over) or an earlier validation with a later --start; the migration would be refused the same way",
            "write into a fresh tenant (--target-tenant <new name>), or give the target an out-of-order window "
            "and run with --write-mode out_of_order; rerun validation with the --start the migration uses",
            details,
        )
    if exc.status == 400 and tgt.tenant_header.lower() in (exc.body or "").lower():
        return CheckResult(
            name,
            "fail",
            f"the target refused the tenant header: {exc.body}",
            f"fix --target-tenant (sent in header {tgt.tenant_header})",
            details,
        )
    return CheckResult(name, "fail", f"{refused}: {exc.body}", exc.hint or "see the target's log", details)


def _blocks_result(name: str, inp: ValidationInput, tenant: str) -> CheckResult:
    """blocks (hybrid without a tail): the migration writes nothing by remote write, so nothing is probed;
    replication then continues by remote write from the range's end."""
    spec = inp.spec
    first = (
        f"write_mode={spec.write_mode}: the history goes as blocks into the bucket, nothing by remote write; "
        f"the target accepted an empty write request{tenant} (reachable, credentials and tenant accepted)"
    )
    age_ms = int(time.time() * 1000) - spec.end_ms
    if age_ms > spec.accept_window_minutes * 60_000:
        return CheckResult(
            name,
            "warn",
            f"{first}. `m3migrate replicate` continues by remote write from the range's end, "
            f"{age_ms / HOUR_MS:,.1f} h ago: "
            f"a target that holds live data refuses samples older than its accept window "
            f"({spec.accept_window_minutes} min)",
            "for replication by remote write, end the range within the target's accept window of now (--end a few "
            "minutes before you start), or give Receive an out-of-order window (--tsdb.out-of-order.time-window)",
            {"end_age_ms": age_ms},
        )
    return CheckResult(name, "pass", first)


_BLOCKS_FIX = (
    "or upload the history as TSDB blocks into Thanos' bucket, which Receive's accept window does not limit: "
    "--write-mode blocks (or hybrid: blocks for what the target refuses, remote write for the recent tail) "
    "with --bucket-dir DIR or --bucket-url s3://... (docs/blocks.md)"
)


def check_bucket(inp: ValidationInput) -> CheckResult:
    """blocks/hybrid: the bucket takes a write (write, read back, delete one small object)."""
    name = "bucket"
    spec = inp.spec
    if not spec.uses_blocks:
        return CheckResult(name, "pass", f"not used: write_mode={spec.write_mode} writes by remote write only")
    if inp.bucket is None:
        return CheckResult(
            name,
            "fail",
            f"write_mode={spec.write_mode} uploads blocks, but no bucket is configured",
            "pass --bucket-dir DIR (a local directory in Thanos' FILESYSTEM layout) or --bucket-url "
            "s3://bucket/prefix | gs://... | az://... with its credentials (--bucket-access-key-id and "
            "M3MIGRATE_BUCKET_SECRET_ACCESS_KEY, or the provider's usual AWS_*/GOOGLE_*/AZURE_* environment)",
        )
    labels = spec.backfill_external_labels(inp.migration_id)
    try:
        bucket = Bucket(inp.bucket)
        bucket.writable_check()
        existing = bucket.blocks(labels)
    except BucketError as exc:
        return CheckResult(
            name,
            "fail",
            f"the bucket is not writable: {exc.args[0] if exc.args else exc}",
            "check --bucket-dir / --bucket-url (bucket name, prefix, region, endpoint) and that the credentials "
            "may list, read, write and delete objects there; a local directory must be writable by this user",
            {"error": type(exc).__name__},
        )
    done = f"; {len(existing)} complete blocks with these labels already there (a rerun skips their windows)"
    return CheckResult(
        name,
        "pass",
        f"{bucket.description} is writable (a check object under m3migrate/checks/ was written, read back and "
        f"deleted); blocks of {spec.block_hours} h with external labels {labels}{done if existing else ''}",
        details={"bucket": bucket.description, "external_labels": labels, "existing_blocks": len(existing)},
    )


_RAW_NOTE = (
    "every block is raw resolution to Thanos (meta.json downsample resolution 0), also history read from M3's "
    "aggregated namespaces, so --retention.resolution-raw applies, not -5m or -1h"
)
_SET_RETENTION = (
    "--bucket-retention-resolution-raw, the config file's `bucket: {retention_resolution_raw: ...}` or the "
    "ThanosBucket block's retention_resolution_raw"
)
SOON_MS = DAY_MS  # a block kept less than this after validation may be gone before the migration is verified


def _blocks_span(inp: ValidationInput) -> tuple[int, int] | None:
    """[first, last] ms (inclusive) of the range that goes as blocks (hybrid: before its boundary)."""
    spec = inp.spec
    if not spec.uses_blocks:
        return None
    tail = inp.remote_write_from_ms
    last = spec.end_ms if tail is None else tail - 1
    return (spec.start_ms, last) if last >= spec.start_ms else None


def check_bucket_retention(inp: ValidationInput, *, now_ms: int | None = None) -> CheckResult:
    """blocks/hybrid: would the compactor's raw retention delete uploaded blocks at its next run?

    Thanos (pkg/compact/retention.go) marks a block for deletion when now > maxTime + the retention of its
    resolution, measured from the compactor's clock, not from the data's: history older than the raw
    retention goes at its next run. The compactor's flags cannot be read, so the retention is a bucket
    setting; unset = unknown (warn), 0 = kept forever (Thanos' 0d).
    """
    name = "bucket retention"
    spec = inp.spec
    span = _blocks_span(inp)
    if span is None:
        return CheckResult(name, "pass", f"not used: write_mode={spec.write_mode} uploads no blocks in this range")
    if inp.bucket is None:
        return CheckResult(
            name, "warn", "no bucket configured (see the bucket check)", "pass --bucket-dir or --bucket-url"
        )
    retention = inp.bucket.raw_retention_ms
    now = int(time.time() * 1000) if now_ms is None else now_ms
    windows = block_windows(span[0], span[1], spec.block_ms)
    details: dict[str, Any] = {"raw_retention_ms": retention, "windows": len(windows)}
    blocks = f"{len(windows)} block windows of {spec.block_hours} h from {iso_ms(span[0])} to {iso_ms(span[1])}"
    if retention is None:
        return CheckResult(
            name,
            "warn",
            f"cannot check: the Thanos compactor's --retention.resolution-raw is unknown (m3migrate cannot read "
            f"its flags). It deletes a block at its next run once now > the block's maxTime + that retention; "
            f"the oldest of the {blocks} ends {(now - windows[0].max_time) / DAY_MS:,.1f} days ago",
            f"set the compactor's value with {_SET_RETENTION}: e.g. 90d, or 0d when it keeps raw data forever "
            "(Thanos' default)",
            details,
        )
    if retention == 0:
        return CheckResult(
            name, "pass", f"raw retention 0d: Thanos keeps the {blocks} forever; {_RAW_NOTE}", "", details
        )
    # retention.go: deleted when now > time.Unix(maxTime/1000, 0) + retention (maxTime exclusive, whole seconds)
    expires = [(w.max_time // 1000) * 1000 + retention for w in windows]
    deleted = [w for w, at in zip(windows, expires, strict=True) if now > at]

    # a --start whose first block outlives the compactor's next run by a day (the migration, its verification)
    safe_start = -(-(now - retention + SOON_MS) // spec.block_ms) * spec.block_ms
    oldest_age_days = (now - windows[0].max_time) / DAY_MS
    raise_fix = (
        f"raise the compactor's --retention.resolution-raw to at least {math.floor(oldest_age_days) + 2}d (the "
        f"oldest block ends {oldest_age_days:,.1f} days ago) and set {_SET_RETENTION} to match"
    )
    if safe_start <= span[1]:
        raise_fix = f"shorten the range: --start {iso_ms(max(safe_start, span[0]))} or later; or {raise_fix}"
    details.update(cutoff_ms=now - retention, safe_start_ms=safe_start)
    if deleted:
        hours = sum(w.read_end - w.read_start + 1 for w in deleted) / HOUR_MS
        details.update(deleted_windows=len(deleted), deleted_hours=round(hours, 3))
        return CheckResult(
            name,
            "fail",
            f"{len(deleted)} of the {blocks} ({hours:,.1f} h of history, {iso_ms(deleted[0].read_start)} to "
            f"{iso_ms(deleted[-1].read_end)}) end before {iso_ms(now - retention)}, now minus the compactor's raw "
            f"retention {inp.bucket.retention_resolution_raw}: Thanos' compactor deletes them at its next run "
            f"(pkg/compact/retention.go: now > maxTime + retention); {_RAW_NOTE}",
            raise_fix,
            details,
        )
    soon = expires[0] - now
    if soon < SOON_MS:
        return CheckResult(
            name,
            "warn",
            f"the oldest of the {blocks} ends {oldest_age_days:,.1f} days ago: the compactor's raw retention "
            f"{inp.bucket.retention_resolution_raw} deletes it in {soon / HOUR_MS:,.1f} h (at "
            f"{iso_ms(expires[0])}), possibly before the migration is done and verified; {_RAW_NOTE}",
            raise_fix,
            details,
        )
    return CheckResult(
        name,
        "pass",
        f"the compactor's raw retention {inp.bucket.retention_resolution_raw} keeps all {blocks}: the oldest "
        f"until {iso_ms(expires[0])}; {_RAW_NOTE}",
        "",
        details,
    )


def check_target_query(inp: ValidationInput) -> CheckResult:
    """The target's query URL answers (needed to verify and reconcile); its build info when offered."""
    name = "target query API"
    tgt = inp.target
    if not tgt.promql_base:
        return CheckResult(
            name,
            "warn",
            "no target query URL: the migration cannot verify or reconcile",
            "set --target-query-url (Thanos Query: https://HOST:10902)",
        )
    try:
        with PromQLClient(tgt.promql_base, tgt, retry=ONE_TRY, extra_headers=_tenant(tgt)) as promql:
            promql.query("vector(1)")
            info = promql.build_info()
    except _ERRORS as exc:
        return failure(name, exc, side="target", url_flag="--target-query-url", what="target query")
    version = f"version {info.get('version')}" if info else "no build info offered"
    return CheckResult(
        name, "pass", f"{redact_url(tgt.promql_base)} answered ({version})", details={"build_info": info or {}}
    )


# -- naming ------------------------------------------------------------------------------------------


def check_naming(inp: ValidationInput) -> CheckResult:
    """Names that exist in the target without _source="m3db", relabel rules, label-name problems."""
    name = "naming"
    src, tgt, spec = inp.source, inp.target, inp.spec
    try:
        relabeler = spec.relabeler()
    except ConfigError as exc:
        return CheckResult(name, "fail", f"the relabel rules do not compile: {exc}", exc.hint or "fix relabel_rules")
    try:
        labelsets = _last_hour.series(src, spec)
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-query-url", what="source series")
    try:
        for labels in labelsets:
            relabeler(labels)
        collisions = relabeler.find_collisions(labelsets)
    except ConfigError as exc:
        return CheckResult(
            name,
            "fail",
            f"relabeling makes invalid series: {exc}",
            exc.hint or "fix the relabel rules (target_label / replacement)",
        )
    if collisions:
        a, b, out = collisions[0]
        return CheckResult(
            name,
            "fail",
            f"{len(collisions)}+ pairs of source series become one after relabeling, e.g. {dict(a)} and {dict(b)} "
            f"-> {dict(out)}",
            "narrow the rename rule or the --match selectors so distinct series stay distinct",
        )
    source_names = sorted({v for labels in labelsets for n, v in labels if n == "__name__"} - {""})
    if not tgt.promql_base:
        return CheckResult(
            name,
            "warn",
            f"{len(source_names)} source metric names; the target was not checked",
            "set --target-query-url to find names that clash with data written directly",
        )
    try:
        with PromQLClient(tgt.promql_base, tgt, retry=ONE_TRY, extra_headers=_tenant(tgt)) as tq:
            direct = set(tq.label_values("__name__", ['{__name__=~".+",_source!="m3db"}']))
    except _ERRORS as exc:
        return failure(name, exc, side="target", url_flag="--target-query-url", what="target metric names")
    direct.discard(PROBE_METRIC)
    prefix = "prometheus_"
    clashes = [(n, n[len(prefix) :]) for n in source_names if n.startswith(prefix) and n[len(prefix) :] in direct]
    renamed = {n: dict(relabeler((("__name__", n),)) or ()).get("__name__", n) for n in source_names}
    same = sorted(n for n in source_names if renamed[n] in direct and not n.startswith(prefix))
    details = {
        "source_names": len(source_names),
        "target_direct_names": len(direct),
        "prefix_clashes": [list(c) for c in clashes],
        "same_name": same,
    }
    if clashes and not spec.merge_prometheus_prefix:
        listed = ", ".join(f"{a} (source) vs {b} (target)" for a, b in clashes[:10])
        return CheckResult(
            name,
            "warn",
            f"{len(clashes)} metric(s) exist under two names: {listed}; the target's are written directly "
            '(no _source="m3db")',
            "to merge them pass --merge-prometheus-prefix, i.e. the relabel rule "
            "{source_labels: [__name__], regex: 'prometheus_(.+)', target_label: __name__, replacement: '$1'}",
            details,
        )
    note = f"; {len(clashes)} prometheus_<name> metric(s) will merge with the target's names" if clashes else ""
    return CheckResult(
        name,
        "pass",
        f"{len(source_names)} source metric names, rules compile, no empty/duplicate label names or collisions{note}",
        details=details,
    )


# -- volume ------------------------------------------------------------------------------------------


def _is_victoriametrics(target: TargetSettings) -> bool:
    """VictoriaMetrics serves its command-line flags at /flags (-retentionPeriod among them)."""
    base = target.promql_base or origin(target.write_url)
    try:
        with build_client(target) as client:
            response = client.get(base + "/flags")
            return response.status_code == 200 and "-retentionPeriod" in response.text
    except httpx.HTTPError:
        return False


def _target_retention_ms(target: TargetSettings) -> tuple[int | None, str]:
    """(retention, where from) of a Prometheus or VictoriaMetrics target; (None, "") when unknown."""
    base = target.promql_base or origin(target.write_url)
    try:
        with build_client(target) as client:
            response = client.get(base + "/api/v1/status/flags", headers=_tenant(target))
            if response.status_code == 200:
                value = response.json()["data"].get("storage.tsdb.retention.time")
                if value:
                    return _prom_duration_ms(value), f"storage.tsdb.retention.time={value}"
            response = client.get(base + "/flags")
            if response.status_code == 200:
                m = re.search(r'-retentionPeriod="?([0-9a-z]+)"?', response.text)
                if m:
                    raw = m.group(1)
                    ms = _prom_duration_ms(raw if not raw.isdigit() else raw + "d")
                    if raw.isdigit():
                        ms = int(raw) * 30 * DAY_MS  # VictoriaMetrics: a bare number means months
                    return ms, f"-retentionPeriod={raw}"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        pass
    return None, ""


def check_volume(inp: ValidationInput) -> CheckResult:
    """Series, samples, bytes and duration from a measured read probe; target retention vs the range."""
    name = "volume estimate"
    src, spec = inp.source, inp.spec
    range_ms = spec.end_ms - spec.start_ms
    try:
        series = _last_hour.series(src, spec)
        probe_samples = probe_series = probe_bytes = 0
        seconds = 0.0
        probe_ms = min(range_ms, 6 * HOUR_MS)
        if metric := _a_metric_name(series):
            with RemoteReadClient(src, retry=ONE_TRY) as reader:
                while True:  # a source limit (M3's range or series limit) shrinks the probe, as it splits reads
                    t0 = time.monotonic()
                    try:
                        result = reader.read([Matcher("__name__", "=", metric)], spec.end_ms - probe_ms, spec.end_ms)
                        break
                    except SourceLimitExceeded:
                        if probe_ms <= MIN_PROBE_MS:
                            raise
                        probe_ms = max(MIN_PROBE_MS, probe_ms // 2)
                seconds = time.monotonic() - t0
                probe_bytes = reader.stats.compressed_bytes
            probe_series = len(result.timeseries)
            probe_samples = sum(len(ts.samples) for ts in result.timeseries)
    except _ERRORS as exc:
        return failure(name, exc, side="source", url_flag="--source-read-url", what="volume probe")
    n = len(series)
    per_series_ms = probe_samples / probe_series / probe_ms if probe_series else 0.0
    samples = round(n * per_series_ms * range_ms)
    bytes_per_sample = probe_bytes / probe_samples if probe_samples else 0.0
    rate = probe_samples / seconds if seconds > 0 else 0.0
    duration_s = samples / (rate * spec.task_concurrency) if rate else 0.0
    details = {
        "series": n,
        "samples": samples,
        "bytes": round(samples * bytes_per_sample),
        "probe_samples": probe_samples,
        "probe_seconds": round(seconds, 3),
        "probe_samples_per_second": round(rate),
        "expected_seconds": round(duration_s, 1),
    }
    observed = (
        f"~{n:,} series, ~{samples:,} samples, ~{details['bytes'] / 1e6:,.1f} MB compressed; read probe "
        f"{probe_samples:,} samples in {seconds:.2f} s ({rate:,.0f}/s) -> ~{duration_s:,.0f} s with "
        f"{spec.task_concurrency} tasks"
    )
    retention, where = _target_retention_ms(inp.target)
    if retention is not None:
        details["target_retention_ms"] = retention
        oldest_kept = int(time.time() * 1000) - retention
        if spec.start_ms < oldest_kept:
            return CheckResult(
                name,
                "warn",
                f"{observed}; the target's retention ({where}) deletes data older than {iso_ms(oldest_kept)}, "
                f"the range starts {iso_ms(spec.start_ms)}",
                "raise the target's retention (Thanos Receive --tsdb.retention and the compactor's "
                "--retention.resolution-raw; Prometheus --storage.tsdb.retention.time; VictoriaMetrics "
                "-retentionPeriod) or narrow --start",
                details,
            )
        observed += f"; target retention {where} covers the range"
    return CheckResult(name, "pass", observed, details=details)


# -- clock skew --------------------------------------------------------------------------------------


def _server_offset(settings: SourceSettings | TargetSettings, url: str, now: Callable[[], float]) -> float | None:
    """Server clock minus ours, in seconds, from the Date header (None if the server sent none)."""
    with build_client(settings) as client:
        before = now()
        response = client.get(url)
        after = now()
    date = response.headers.get("Date")
    if not date:
        return None
    server = parsedate_to_datetime(date).timestamp()
    return server + 0.5 - (before + after) / 2  # Date is truncated to the second


def check_clock_skew(inp: ValidationInput, *, now: Callable[[], float] = time.time) -> CheckResult:
    """Date headers of source and target against this machine's clock."""
    name = "clock skew"
    limit = inp.clock_skew_threshold_s
    offsets: dict[str, float] = {}
    missing = []
    for side, settings, url in (
        ("source", inp.source, inp.source.promql_base + "/api/v1/status/buildinfo"),
        ("target", inp.target, (inp.target.promql_base or origin(inp.target.write_url)) + "/"),
    ):
        try:
            offset = _server_offset(settings, url, now)
        except _ERRORS as exc:
            missing.append(f"{side}: no answer ({type(exc).__name__})")
            continue
        if offset is None:
            missing.append(f"{side}: no Date header")
        else:
            offsets[side] = offset
    text = ", ".join(f"{s} {o:+.1f} s" for s, o in offsets.items()) or "no server time"
    details = {f"{s}_offset_s": round(o, 1) for s, o in offsets.items()}
    if "source" in offsets and "target" in offsets:
        details["source_target_s"] = round(offsets["source"] - offsets["target"], 1)
    skewed = {k: v for k, v in details.items() if abs(v) > limit}
    if skewed:
        return CheckResult(
            name,
            "warn",
            f"clock offsets against this machine (from the Date headers): {text}; beyond {limit:.0f} s",
            "synchronise the clocks (NTP/chrony) of this machine, the source and the target: a skewed clock "
            "moves the 'now' that limits the range and the target's accept window",
            details,
        )
    if not offsets:
        return CheckResult(
            name,
            "warn",
            f"could not measure: {'; '.join(missing)}",
            "make the source and target reachable (see the other checks), then rerun",
            details,
        )
    note = f" ({'; '.join(missing)})" if missing else ""
    return CheckResult(
        name, "pass", f"clock offsets from the Date headers: {text}, within {limit:.0f} s{note}", details=details
    )


# -- all ---------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable[[ValidationInput], CheckResult]] = {
    "source remote read": check_source_read,
    "source PromQL API": check_source_promql,
    "source kind": check_source_kind,
    "source namespaces": check_source_namespaces,
    "source limits": check_source_limits,
    "target write probe": check_target_write,
    "target query API": check_target_query,
    "bucket": check_bucket,
    "bucket retention": check_bucket_retention,
    "naming": check_naming,
    "volume estimate": check_volume,
    "clock skew": check_clock_skew,
}


def checks_for(spec: MigrationSpec) -> list[str]:
    """The checks that apply to the spec: the bucket checks only where blocks are written."""
    return [name for name in CHECKS if not name.startswith("bucket") or spec.uses_blocks]


def run_check(name: str, inp: ValidationInput) -> CheckResult:
    """One check; an unexpected exception becomes a fail naming it (a check never crashes the run)."""
    try:
        result = CHECKS[name](inp)
    except Exception as exc:  # a bug in a check must not hide the other checks' results
        return CheckResult(
            name,
            "fail",
            f"the check itself crashed: {type(exc).__name__}: {exc}",
            "report this as a bug of m3migrate",
            {"error": type(exc).__name__},
        )
    result.name = name
    return result


def shared_listings() -> AbstractContextManager[None]:
    """The scope of one validation run: checks run inside it list the source's last hour once."""
    return _last_hour.shared()


def run_all(inp: ValidationInput) -> ValidationReport:
    """Every check in order, without Prefect."""
    with shared_listings():
        checks = [run_check(n, inp) for n in checks_for(inp.spec)]
    return ValidationReport(checks, migration_id=inp.migration_id)
