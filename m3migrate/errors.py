"""Typed errors: each says what failed, where, what to do about it, and whether retrying can help.

Every error that comes from an HTTP endpoint carries the endpoint (with credentials removed), the
HTTP status (if any) and a short excerpt of the response body, so a failed migration always names
the server and the answer that stopped it.

Whether an error is retried is decided here, once, by two class attributes (as Prometheus'
``RecoverableError`` and dlt's ``TransientException`` / ``TerminalException`` carry it in the error):
``transient`` -- resending the same request may succeed (the clients' per-request backoff,
:func:`m3migrate.clients.http.retry_transient`); ``terminal`` -- no rerun can succeed until a person changes
something (every task's retry condition, :func:`is_terminal`). Anything else a task raises (a killed
worker, a malformed answer, a full bucket) is rerun by the task's retries, which are safe: every unit is
journaled and idempotent.

    M3MigrateError
    ├── ConfigError                 terminal   bad URL, selector, relabel rule, time range, saved spec
    │   ├── TierExpired (tiers)     terminal   a tier's data expires before the run reaches it
    │   └── QueryError (queries)    terminal   a dashboard/rule query cannot be parsed or rewritten
    ├── EndpointError                          an endpoint answered something we cannot use
    │   ├── TransientError          transient  5xx, 429, timeouts, connection errors
    │   ├── AuthError               terminal   401/403
    │   ├── TlsError                terminal   handshake failed
    │   ├── EndpointNotFound        terminal   404
    │   ├── MalformedResponse                  not snappy/protobuf/JSON as promised
    │   ├── SourceLimitExceeded                M3/Prometheus query limit (the planner splits)
    │   ├── WriteRejected           terminal   the target refused samples (``reasons``, ``partial``)
    │   ├── BadQuery, PartialResponse (promql)
    ├── BucketError (bucket)                   the object store failed an operation
    │   └── BlockConflict           terminal   an overlapping block of the same stream exists
    ├── TsdbError (tsdb.errors)                a block cannot be written as asked: InvalidSeries,
    │                                          SampleOutOfRange, OverlappingParts, EmptyBlock
    ├── MigrationLocked, JournalError (state)
    ├── StateError (state)          terminal   a state file of an unknown version or broken
    ├── ValidationFailed (validate), VerificationFailed (verify)
"""

from __future__ import annotations

import enum
from typing import ClassVar


class M3MigrateError(Exception):
    """Base class of every error the engine raises on purpose."""

    hint: str = ""
    transient: ClassVar[bool] = False  # the same request, resent, may succeed
    terminal: ClassVar[bool] = False  # no rerun can succeed until a person changes something

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (fix: {self.hint})" if self.hint else text


class ConfigError(M3MigrateError, ValueError):
    """The configuration cannot work: a bad URL, selector, relabel rule or time range."""

    terminal = True


class EndpointError(M3MigrateError):
    """An HTTP endpoint answered something we cannot use."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        status: int | None = None,
        body: str = "",
        hint: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.status = status
        self.body = body
        detail = f"{message} [endpoint {endpoint}"
        if status is not None:
            detail += f", HTTP {status}"
        if body:
            detail += f", body: {body!r}"
        super().__init__(detail + "]", hint=hint)


class TransientError(EndpointError):
    """Worth retrying: 5xx (except permanent ones), 429, timeouts and connection errors."""

    transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, sent: bool = True, **kw) -> None:
        self.retry_after = retry_after
        self.sent = sent  # False when the request surely never reached the server (connection refused)
        super().__init__(message, **kw)


class AuthError(EndpointError):
    """401/403: credentials missing, wrong or not allowed."""

    terminal = True


class TlsError(EndpointError):
    """TLS handshake failed: wrong CA, wrong scheme (https to a plain port) or a bad client certificate."""

    terminal = True


class EndpointNotFound(EndpointError):
    """404: wrong path, or a Prometheus without the remote-write receiver enabled."""

    terminal = True


class MalformedResponse(EndpointError):
    """The body is not what the protocol promises (not snappy, not protobuf, not JSON...)."""


class SourceLimitExceeded(EndpointError):
    """The source refused or truncated a read because of a query limit.

    M3 answers 400 "query exceeded limit" (with M3-Limit-Require-Exhaustive: true) or flags a silently
    truncated result with the M3-Results-Limited header; Prometheus answers 400 "exceeded sample
    limit". The planner reacts by splitting the batch, never by accepting partial data.
    """


class RejectReason(enum.StrEnum):
    """Why a target refused samples: each needs a different reaction."""

    OUT_OF_BOUNDS = "out_of_bounds"  # older than the head accepts (~1 h behind its newest sample)
    OUT_OF_ORDER = "out_of_order"  # older than the series' newest sample
    DUPLICATE = "duplicate"  # same timestamp, different value
    TOO_OLD = "too_old"  # older than the out-of-order window
    INVALID_LABELS = "invalid_labels"  # unsorted, duplicate or empty label names/values
    TOO_LARGE = "too_large"  # request over a size/series/sample limit (413)
    BAD_REQUEST = "bad_request"  # anything else the target calls a client error


class WriteRejected(EndpointError):
    """The target refused (part of) a write for a reason resending will not fix.

    ``partial`` is true for Thanos' 409: the valid samples of the request were committed and only the
    named ones were refused.
    """

    terminal = True

    def __init__(self, message: str, *, reasons: frozenset[RejectReason], partial: bool = False, **kw) -> None:
        self.reasons = reasons
        self.partial = partial
        self.after_lost_answer = False  # set by the write client: an earlier attempt's answer was lost
        super().__init__(message, **kw)

    @property
    def only_already_written(self) -> bool:
        """True when every refused sample is older than, or equal in time to, data the series holds."""
        return bool(self.reasons) and self.reasons <= {RejectReason.OUT_OF_ORDER, RejectReason.DUPLICATE}


def is_terminal(exc: BaseException) -> bool:
    """True when rerunning the work that raised ``exc`` cannot help (see the tree above)."""
    return bool(getattr(exc, "terminal", False))
