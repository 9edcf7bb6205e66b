"""Prometheus relabel_config semantics for series labels, plus the `_source="m3db"` marker.

Relabeling touches labels only, once per distinct series: results are cached by the original label set,
so a series seen in every time window is relabeled once. Output labels are sorted, unique, with no empty
names or values: Thanos drops a series otherwise.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from m3migrate.errors import ConfigError

LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
RELABEL_TARGET = re.compile(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$", re.ASCII)  # Prometheus' relabelTarget
_EXPAND = re.compile(r"\$(?:\$|\{([a-zA-Z0-9_]+)\}|([a-zA-Z0-9_]+))")

Labels = tuple[tuple[str, str], ...]

Action = Literal[
    "replace",
    "keep",
    "drop",
    "labeldrop",
    "labelkeep",
    "labelmap",
    "hashmod",
    "lowercase",
    "uppercase",
    "keepequal",
    "dropequal",
]


class RelabelRule(BaseModel):
    """One Prometheus relabel_config entry (same field names and defaults)."""

    model_config = ConfigDict(extra="forbid")

    source_labels: list[str] = Field(default_factory=list)
    separator: str = ";"
    regex: str = "(.*)"
    target_label: str = ""
    replacement: str = "$1"
    modulus: int = 0
    action: Action = "replace"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"regex {v!r} does not compile: {exc}") from None
        return v

    def check(self) -> None:
        """Reject rules Prometheus would reject, with the reason."""
        needs_target = self.action in ("replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal")
        if needs_target and not self.target_label:
            raise ConfigError(f"relabel action {self.action!r} needs target_label", hint="set target_label")
        if self.action in ("lowercase", "uppercase", "hashmod", "keepequal", "dropequal") and not LABEL_NAME.match(
            self.target_label
        ):
            raise ConfigError(f"relabel target_label {self.target_label!r} is not a valid label name")
        if self.action == "replace" and not RELABEL_TARGET.match(self.target_label):
            raise ConfigError(f"relabel target_label {self.target_label!r} is not a valid label name or template")
        if self.action == "labelmap" and not RELABEL_TARGET.match(self.replacement):
            raise ConfigError(f"relabel labelmap replacement {self.replacement!r} is not a valid label name")
        if self.action == "hashmod" and self.modulus <= 0:
            raise ConfigError("relabel action 'hashmod' needs modulus > 0")
        if self.action in ("labeldrop", "labelkeep", "labelmap") and self.source_labels:
            raise ConfigError(f"relabel action {self.action!r} takes no source_labels")


def merge_prometheus_prefix_rule(prefix: str = "prometheus_") -> RelabelRule:
    """The rule that maps `prometheus_<name>` (how M3 stored Prometheus metrics) to `<name>`."""
    return RelabelRule(
        source_labels=["__name__"], regex=re.escape(prefix) + "(.+)", target_label="__name__", replacement="$1"
    )


def _expand(template: str, match: re.Match[str]) -> str:
    """Go regexp.Expand semantics: $1, ${1}, $name, ${name}, $$; unknown groups expand to ''."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(2)
        try:
            value = match.group(int(name)) if name.isdigit() else match.group(name)
        except (IndexError, *error_types):
            return ""
        return value or ""

    return _EXPAND.sub(sub, template)


error_types = (KeyError, re.error)


class Relabeler:
    """Applies rules, then adds the source marker label; caches per original label set."""

    def __init__(
        self,
        rules: Sequence[RelabelRule] = (),
        *,
        add_labels: dict[str, str] | None = None,
        cache_size: int = 1_000_000,
    ) -> None:
        for rule in rules:
            rule.check()
        for name, value in (add_labels or {}).items():
            if not LABEL_NAME.match(name) or not value:
                raise ConfigError(f"added label {name}={value!r} needs a valid name and a non-empty value")
        self.rules = list(rules)
        self._compiled = [re.compile(r.regex) for r in self.rules]
        self.add_labels = dict(add_labels or {})
        self._cache: dict[Labels, Labels | None] = {}
        self._cache_size = cache_size

    def __call__(self, labels: Labels) -> Labels | None:
        """The relabeled, sorted labels, or None when a rule drops the series."""
        cached = self._cache.get(labels, ...)
        if cached is not ...:
            return cached
        result = self._apply(labels)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[labels] = result
        return result

    def _apply(self, labels: Labels) -> Labels | None:
        names = [n for n, _ in labels]
        if len(set(names)) != len(names):
            raise ConfigError(f"source series has duplicate label names: {dict(labels)}")
        current = dict(labels)
        for rule, regex in zip(self.rules, self._compiled, strict=True):
            if not _apply_rule(rule, regex, current):
                return None
        current.update(self.add_labels)
        out = tuple(sorted((n, v) for n, v in current.items() if v != ""))
        for name, _ in out:
            if not LABEL_NAME.match(name):
                raise ConfigError(
                    f"relabeling produced the invalid label name {name!r} for series {dict(labels)}",
                    hint="fix the relabel rule's target_label/replacement",
                )
        if not out:
            raise ConfigError(f"relabeling removed every label of series {dict(labels)}")
        return out

    def find_collisions(self, series: Iterable[Labels], *, limit: int = 5) -> list[tuple[Labels, Labels, Labels]]:
        """Pairs of distinct source series that relabel to one label set (they would overwrite each other)."""
        seen: dict[Labels, Labels] = {}
        found: list[tuple[Labels, Labels, Labels]] = []
        for labels in series:
            out = self(labels)
            if out is None:
                continue
            first = seen.setdefault(out, labels)
            if first != labels:
                found.append((first, labels, out))
                if len(found) >= limit:
                    break
        return found


def _apply_rule(rule: RelabelRule, regex: re.Pattern[str], lb: dict[str, str]) -> bool:
    """Apply one rule in place; False when the series is dropped."""
    action = rule.action
    if action in ("labeldrop", "labelkeep"):
        for name in list(lb):
            if (regex.fullmatch(name) is not None) == (action == "labeldrop"):
                del lb[name]
        return True
    if action == "labelmap":
        for name, value in list(lb.items()):
            m = regex.fullmatch(name)
            if m:
                lb[_expand(rule.replacement, m)] = value
        return True
    value = rule.separator.join(lb.get(n, "") for n in rule.source_labels)
    if action == "keep":
        return regex.fullmatch(value) is not None
    if action == "drop":
        return regex.fullmatch(value) is None
    if action == "keepequal":
        return value == lb.get(rule.target_label, "")
    if action == "dropequal":
        return value != lb.get(rule.target_label, "")
    if action == "lowercase":
        _set(lb, rule.target_label, value.lower())
    elif action == "uppercase":
        _set(lb, rule.target_label, value.upper())
    elif action == "hashmod":
        digest = hashlib.md5(value.encode()).digest()
        _set(lb, rule.target_label, str(int.from_bytes(digest[8:], "big") % rule.modulus))
    elif action == "replace":
        m = regex.fullmatch(value)
        if m is None:
            return True
        target = _expand(rule.target_label, m)
        if not LABEL_NAME.match(target):
            return True  # Prometheus skips an invalid expanded target name
        _set(lb, target, _expand(rule.replacement, m))
    return True


def _set(lb: dict[str, str], name: str, value: str) -> None:
    if value:
        lb[name] = value
    else:
        lb.pop(name, None)
