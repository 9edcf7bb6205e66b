"""`--match` selectors parsed with promql-parser into remote-read matchers."""

from __future__ import annotations

import promql_parser

from m3migrate.errors import ConfigError
from m3migrate.wire.codec import Matcher

_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}
ALL_SERIES = '{__name__=~".+"}'
RE2_SPECIAL = set(r"\.+*?()|[]{}^$")


def parse_selector(text: str) -> list[Matcher]:
    """Parse a series selector like `up{job="api"}`; anything else is a clear ConfigError."""
    try:
        expr = promql_parser.parse(text)
    except ValueError as exc:
        raise ConfigError(
            f"selector {text!r} does not parse: {exc}", hint='use a series selector, e.g. {job="api"}'
        ) from None
    if not isinstance(expr, promql_parser.VectorSelector) or expr.offset is not None or expr.at is not None:
        raise ConfigError(
            f"selector {text!r} is not a plain series selector",
            hint="give a metric name and/or label matchers, without functions, ranges, offset or @",
        )
    if expr.matchers.or_matchers:
        raise ConfigError(f"selector {text!r} uses 'or' matchers", hint="give one --match per alternative")
    matchers = [Matcher(m.name, _OPS[str(m.op).split(".")[-1]], m.value) for m in expr.matchers.matchers]
    if expr.name:
        matchers.insert(0, Matcher("__name__", "=", expr.name))
    if not any(m.op in ("=", "=~") and m.value not in ("", ".*") for m in matchers):
        raise ConfigError(
            f"selector {text!r} matches every series including empty ones",
            hint='add at least one non-empty matcher, e.g. {__name__=~".+"}',
        )
    return matchers


def re2_escape(value: str) -> str:
    """Escape a literal for an RE2 regex (Python's re.escape escapes characters RE2 rejects, e.g. space)."""
    return "".join("\\" + c if c in RE2_SPECIAL else c for c in value)
