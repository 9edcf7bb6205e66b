"""Connection settings for the source (M3 Coordinator) and the target (Thanos Receive/Query).

Plain pydantic models, so the engine needs no Prefect; the Prefect blocks in ``blocks/`` inherit them.
Secrets are ``SecretStr``: they never show in reprs, logs or the Prefect UI.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from m3migrate.errors import ConfigError

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def check_http_url(url: str, what: str) -> str:
    """Reject what httpx would only fail on later, with the field named and the URL redacted.

    Checked on the raw text before any parsing: without a scheme, ``urlsplit`` reads
    ``admin:secret@host`` as scheme ``admin`` and path ``secret@host``, and its own error messages
    echo parts of the URL (a port that is not a number may be part of a password).
    """
    text = url.strip()
    shown = redact_url(text)
    scheme = _SCHEME.match(text)
    if scheme is None or scheme.group(1).lower() not in ("http", "https"):
        raise ConfigError(
            f"{what} {shown!r}: URL must start with http:// or https://",
            hint=f"give {what} as http://host:port/path or https://host:port/path",
        )
    try:
        parts = urlsplit(text)
    except ValueError:
        raise ConfigError(
            f"{what} {shown!r} is not a valid URL (its host cannot be parsed)",
            hint=f"give {what} as http://host:port/path or https://host:port/path",
        ) from None
    if "@" in text[scheme.end() :]:  # user info, even with a "/" or "?" typed raw in the password
        raise ConfigError(
            f"{what} must not carry credentials in the URL",
            hint="put the user name and password in the auth settings instead",
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(
            f"{what} {shown!r} has an invalid port",
            hint="the port after the host must be a number from 1 to 65535",
        )
    if not parts.hostname:
        raise ConfigError(
            f"{what} {shown!r} has no host",
            hint=f"give {what} as http://host:port/path or https://host:port/path",
        )
    return text


def redact_url(url: str) -> str:
    """The URL without user info, query string and fragment: safe to log, whatever the text is.

    Never parses (so it never raises): everything up to the last ``@`` after the scheme is dropped, so a
    password typed raw with ``/``, ``?``, ``#`` or ``@`` in it, or a URL without its scheme, still hides it.
    """
    text = str(url).strip()
    scheme = _SCHEME.match(text)
    prefix, rest = (scheme.group(0), text[scheme.end() :]) if scheme else ("", text)
    rest = rest.rpartition("@")[2]
    return prefix + re.split(r"[?#]", rest, maxsplit=1)[0]


class AuthSettings(BaseModel):
    """Basic auth or a bearer token (not both)."""

    model_config = ConfigDict(extra="forbid")

    username: str | None = Field(default=None, description="User for HTTP basic auth.")
    password: SecretStr | None = Field(default=None, description="Password for HTTP basic auth.")
    bearer_token: SecretStr | None = Field(default=None, description="Token sent as 'Authorization: Bearer'.")

    @model_validator(mode="after")
    def _one_kind(self) -> AuthSettings:
        if self.bearer_token and (self.username or self.password):
            raise ValueError("set either basic auth (username/password) or bearer_token, not both")
        if self.password and not self.username:
            raise ValueError("a password needs a username")
        return self


class TlsSettings(BaseModel):
    """TLS trust and client identity; verification stays on unless explicitly disabled."""

    model_config = ConfigDict(extra="forbid")

    ca_file: str | None = Field(default=None, description="PEM bundle of CAs to trust instead of the system's.")
    cert_file: str | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    key_file: str | None = Field(default=None, description="Private key (PEM) of the client certificate.")
    insecure_skip_verify: bool = Field(
        default=False, description="Do not verify the server certificate. Unsafe; for tests only."
    )

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together")
        return self


class EndpointSettings(BaseModel):
    """What every HTTP endpoint needs: auth, TLS, extra headers and a timeout."""

    model_config = ConfigDict(extra="forbid")

    auth: AuthSettings = Field(default_factory=AuthSettings, description="Basic auth or a bearer token.")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="CA bundle, client certificate, verification.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra HTTP headers sent with every request (no secrets: use auth)."
    )
    timeout_seconds: float = Field(default=120.0, gt=0, description="Timeout of one HTTP request.")
    max_concurrency: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Most requests in flight to this endpoint from one process (the adaptive limit's ceiling).",
    )
    adaptive_concurrency: bool = Field(
        default=True,
        description="Halve the in-flight limit when the endpoint answers 429/503 or times out; raise it by one "
        "again after a run of successes.",
    )
    max_requests_per_second: float | None = Field(
        default=None, gt=0, description="Most requests per second to this endpoint from one process (unset: no cap)."
    )
    max_samples_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Most samples per second read from (source) or written to (target) this endpoint from one "
        "process (unset: no cap).",
    )
    retry_attempts: int = Field(
        default=8, ge=1, le=100, description="Attempts of one request before a transient failure stops the run."
    )
    retry_timeout_seconds: float = Field(
        default=300.0, gt=0, description="Longest time one request keeps being retried before it fails the run."
    )
    retry_wait_max_seconds: float = Field(default=30.0, gt=0, description="Longest backoff between two attempts.")


class SourceSettings(EndpointSettings):
    """An M3 Coordinator (or any Prometheus-compatible store with remote read)."""

    read_url: str = Field(
        description="Remote-read endpoint, e.g. https://m3coordinator:7201/api/v1/prom/remote/read "
        "(Prometheus: http://host:9090/api/v1/read)."
    )
    query_url: str | None = Field(
        default=None,
        description="Base URL of the PromQL HTTP API used to discover series, e.g. https://m3coordinator:7201 "
        "(the part before /api/v1/...). Defaults to the origin of read_url.",
    )
    admin_url: str | None = Field(
        default=None,
        description="Base URL of the M3 Coordinator admin API (namespaces, placement). Defaults to query_url.",
    )
    namespaces: Literal["auto", "unpinned"] = Field(
        default="auto",
        description="auto: read each part of the range from the finest M3 namespace that still holds it "
        "(tiers, fixed when the migration is planned, every read pinned). unpinned: M3 picks a namespace per "
        "query. Ignored when metrics_type pins one namespace, and on a source without M3's namespace API.",
    )
    metrics_type: Literal["unaggregated", "aggregated"] | None = Field(
        default=None,
        description="Pin one M3 namespace type for the whole migration (M3-Metrics-Type); unset: see namespaces.",
    )
    storage_policy: str | None = Field(
        default=None,
        description="Pin an aggregated namespace by 'resolution:retention', e.g. 1m:40d (M3-Storage-Policy). "
        "Needs metrics_type=aggregated.",
    )
    limit_max_series: int | None = Field(
        default=None, gt=0, description="Send M3-Limit-Max-Series to raise or lower M3's per-query series limit."
    )
    max_series_per_query: int = Field(
        default=10_000,
        gt=0,
        description="At most this many series in one discovery or read query (M3's default limit is 100,000).",
    )

    @field_validator("read_url")
    @classmethod
    def _read_url(cls, v: str) -> str:
        return check_http_url(v, "source read_url")

    @field_validator("query_url", "admin_url")
    @classmethod
    def _base_url(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(v, "source URL")

    @model_validator(mode="after")
    def _policy(self) -> SourceSettings:
        if self.storage_policy and self.metrics_type != "aggregated":
            raise ValueError("storage_policy needs metrics_type='aggregated' (M3 answers 400 otherwise)")
        return self

    @property
    def promql_base(self) -> str:
        """PromQL API base URL (no trailing /api/v1)."""
        return api_base(self.query_url or origin(self.read_url))

    def m3_headers(self) -> dict[str, str]:
        """M3 headers for every query: exhaustive limits (fail, never truncate) and the namespace pin."""
        headers = {"M3-Limit-Require-Exhaustive": "true"}
        if self.metrics_type:
            headers["M3-Metrics-Type"] = self.metrics_type
        if self.storage_policy:
            headers["M3-Storage-Policy"] = self.storage_policy
        if self.limit_max_series:
            headers["M3-Limit-Max-Series"] = str(self.limit_max_series)
        return headers

    @property
    def admin_base(self) -> str:
        return api_base(self.admin_url or self.promql_base)


class TargetSettings(EndpointSettings):
    """A Thanos Receive (or any Prometheus remote-write receiver) plus, optionally, its query API."""

    write_url: str = Field(
        description="Remote-write endpoint, e.g. https://thanos-receive:19291/api/v1/receive "
        "(Prometheus: http://host:9090/api/v1/write)."
    )
    query_url: str | None = Field(
        default=None,
        description="Base URL of the PromQL API that reads the target back (Thanos Query), used to verify "
        "and to reconcile resent data, e.g. https://thanos-query:10902.",
    )
    tenant: str | None = Field(default=None, description="Tenant sent in tenant_header (Thanos: THANOS-TENANT).")
    tenant_header: str = Field(default="THANOS-TENANT", description="Header that carries the tenant.")
    max_request_bytes: int = Field(
        default=8 * 1024 * 1024, gt=1024, description="Largest uncompressed remote-write request."
    )
    max_samples_per_request: int = Field(default=120_000, gt=0, description="Most samples in one request.")

    @field_validator("write_url")
    @classmethod
    def _write_url(cls, v: str) -> str:
        return check_http_url(v, "target write_url")

    @field_validator("query_url")
    @classmethod
    def _query_url(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(v, "target query_url")

    @property
    def promql_base(self) -> str | None:
        return api_base(self.query_url) if self.query_url else None


# What a migration's saved settings leave out: secrets, and header values (a header may carry a credential:
# only the names are kept, and a step resumed from the saved settings must be given them again).
_NOT_SAVED: dict[str, Any] = {"auth": {"password", "bearer_token"}, "headers": True}


def saved_settings(settings: EndpointSettings) -> dict[str, Any]:
    """An endpoint's settings as a migration's state keeps them: no password, token or header value."""
    data = settings.model_dump(mode="json", exclude=_NOT_SAVED)
    data["header_names"] = sorted(settings.headers)
    return data


def settings_from_saved(saved: dict[str, Any], given: dict[str, Any], side: str) -> dict[str, Any]:
    """Saved settings overridden by those given this run (secrets come only from these); ConfigError when a
    header the migration was run with is not given again (its value was not saved)."""
    base = {k: v for k, v in saved.items() if k != "header_names"}
    merged = dict(base)
    for key, value in given.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if nested else value
    missing = sorted(set(saved.get("header_names") or ()) - set(merged.get("headers") or {}))
    if missing:
        raise ConfigError(
            f"the migration's {side} was used with the headers {', '.join(missing)}, whose values are not saved "
            "(a header may carry a credential)",
            hint=f"give them again: --{side}-header NAME=VALUE (or the config file's {side}.headers)",
        )
    return merged


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def api_base(url: str) -> str:
    """Accept http://h:p, http://h:p/, http://h:p/api/v1 or http://h:p/api/v1/query; return http://h:p."""
    url = url.rstrip("/")
    for suffix in ("/api/v1/query", "/api/v1"):
        if url.endswith(suffix):
            return url[: -len(suffix)]
    return url
