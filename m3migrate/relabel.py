"""Prometheus relabel_config semantics for series labels, plus the `_source="m3db"` marker.

Relabeling touches labels only, once per distinct series: results are cached by the original label set,
so a series seen in every time window is relabeled once. Rules that read only named labels (every action
but labeldrop, labelkeep and labelmap) are worked out once per value of those labels and replayed on each
series (the prefix rule: once per metric name; 10^5 series relabel in ~4 us each instead of ~8). Output
labels are sorted, unique, with no empty names or values: Thanos drops a series otherwise.

Regexes are Prometheus' (model/relabel/relabel.go): `^(?s:REGEX)$` in RE2 syntax, the syntax Go's regexp
implements, compiled by Google's RE2 (not Python's `re`, whose classes, flags and `$` differ). Templates
expand with Go's regexp.Expand rules, labelmap visits labels in the order of Prometheus' labels.Builder,
and lowercase/uppercase use Go's simple case mapping.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from typing import Literal

import re2
from pydantic import BaseModel, ConfigDict, Field, field_validator
from re2 import _re2  # the binding's core: 4x faster per call than its Python layer, and byte offsets as in Go

from m3migrate.errors import ConfigError
from m3migrate.model import Labels
from m3migrate.plan.selectors import re2_escape

# \Z, not $: Python's $ also matches before a trailing newline, and "job\n" is no label name.
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are raised as ConfigError, not printed to stderr
# Prometheus' relabelTargetLegacy, evaluated by RE2 like Go does (ASCII \w, $ only at the very end)
RELABEL_TARGET = re2.compile(r"^(?:(?:[a-zA-Z_]|\$(?:\{\w+\}|\w+))+\w*)+$", _RE2_OPTIONS)
_UNANCHORED = _re2.RE2.Anchor.UNANCHORED
Spans = list[tuple[int, int]]


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
        compile_regex(v)  # a ConfigError (a ValueError): pydantic names the rule's field in its error
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
        source_labels=["__name__"], regex=re2_escape(prefix) + "(.+)", target_label="__name__", replacement="$1"
    )


class GoRegexp:
    """A relabel regex as Prometheus compiles it: `^(?s:REGEX)$`, RE2 syntax, searched like Go's MatchString.

    Matching runs on UTF-8 bytes, as Go's does, so spans are byte offsets into the encoded text.
    """

    __slots__ = ("_name_hits", "_re", "groups", "names", "regex")

    def __init__(self, regex: str) -> None:
        self.regex = regex
        reason = _go_rejects(regex)
        compiled = None if reason else _re2.RE2(f"^(?s:{regex})$".encode(), _RE2_OPTIONS)
        if compiled is not None and not compiled.ok():
            reason = compiled.error().decode(errors="replace")
        elif compiled is not None:
            for name, _ in compiled.NamedCapturingGroups():  # Go's isValidCaptureName: ASCII [A-Za-z0-9_]+
                if not name.isascii() or not name.replace(b"_", b"").isalnum():
                    reason = f"invalid named capture: {name.decode()!r} (Go allows only A-Z a-z 0-9 _)"
        if reason or compiled is None:
            raise ConfigError(
                f"relabel regex {regex!r} is not valid RE2, the regex syntax of Prometheus: {reason}",
                hint="write the regex in RE2 syntax (https://github.com/google/re2/wiki/Syntax); it is anchored",
            )
        self._re = compiled
        self.groups: int = compiled.NumberOfCapturingGroups()
        self.names: dict[str, int] = {name.decode(): index for name, index in compiled.NamedCapturingGroups()}
        self._name_hits: dict[str, bool] = {}

    def find(self, text: bytes, pos: int = 0) -> Spans | None:
        """Spans of the leftmost match at or after pos (group 0 first), or None."""
        spans = self._re.Match(_UNANCHORED, text, pos, len(text))
        return spans if spans[0][0] >= 0 else None

    def matches(self, text: str) -> bool:
        data = text.encode()
        return self._re.Match(_UNANCHORED, data, 0, len(data))[0][0] >= 0

    def matches_name(self, name: str) -> bool:
        """matches() for label names (labeldrop/labelkeep/labelmap): few distinct ones, so remembered."""
        hit = self._name_hits.get(name)
        if hit is None:
            if len(self._name_hits) >= 100_000:
                self._name_hits.clear()
            hit = self._name_hits[name] = self.matches(name)
        return hit

    def replace_all(self, text: str, template: Template) -> str:
        """Go's Regexp.ReplaceAllString (what labelmap calls): every match replaced, unmatched text kept."""
        src = text.encode()
        out: list[bytes] = []
        last = pos = 0
        while pos <= len(src):
            spans = self.find(src, pos)
            if spans is None:
                break
            start, end = spans[0]
            out.append(src[last:start])
            if end > last or start == 0:  # no replacement for an empty match right after a match
                out.append(template.expand(src, spans))
            last = end
            width = _utf8_width(src, pos)
            pos = pos + width if pos + width > end else (pos + 1 if pos + 1 > end else end)
        out.append(src[last:])
        return b"".join(out).decode()


def _utf8_width(data: bytes, pos: int) -> int:
    """Bytes of the UTF-8 character at pos (0 at the end), as Go's utf8.DecodeRune reports for valid text."""
    if pos >= len(data):
        return 0
    lead = data[pos]
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _go_rejects(regex: str) -> str:
    r"""Why Go's regexp refuses a regex RE2 accepts, or "": only `\C` (one byte), outside `\Q...\E`."""
    i = regex.find("\\")
    while 0 <= i < len(regex) - 1:
        escaped = regex[i + 1]
        if escaped == "C":
            return r"invalid escape sequence: \C"
        if escaped == "Q":
            end = regex.find("\\E", i + 2)
            if end < 0:
                return ""
            i = end
        i = regex.find("\\", i + 2)
    return ""


@functools.lru_cache(maxsize=4096)
def compile_regex(regex: str) -> GoRegexp:
    """The compiled regex (shared: a rule's regex is compiled once however often a spec is validated)."""
    return GoRegexp(regex)


class Template:
    """A target_label or replacement template, parsed once by Go's regexp.Expand rules.

    `$name` and `${name}`; a name is the longest run of letters, digits and `_` (so `$1x` is the group named
    `1x`), all-ASCII-digit names without a leading zero are group numbers (`$01` is the group named "01"),
    `$$` is a dollar, a malformed `$` is literal, and groups that do not exist or did not match expand to "".
    """

    __slots__ = ("parts", "tail")

    def __init__(self, template: str, regex: GoRegexp) -> None:
        parts: list[tuple[bytes, int]] = []
        literal: list[str] = []
        i = 0
        while (dollar := template.find("$", i)) >= 0:
            literal.append(template[i:dollar])
            i = dollar + 1
            if template.startswith("$", i):
                literal.append("$")
                i += 1
                continue
            parsed = _extract(template, i)
            if parsed is None:
                literal.append("$")  # malformed: the $ is raw text
                continue
            name, i = parsed
            parts.append(("".join(literal).encode(), _group_index(name, regex)))
            literal = []
        literal.append(template[i:])
        self.parts = tuple(parts)
        self.tail = "".join(literal).encode()

    def expand(self, src: bytes, spans: Spans) -> bytes:
        out: list[bytes] = []
        for literal, group in self.parts:
            out.append(literal)
            if group >= 0:
                start, end = spans[group]
                if start >= 0:
                    out.append(src[start:end])
        out.append(self.tail)
        return b"".join(out)


def _extract(template: str, i: int) -> tuple[str, int] | None:
    """Go's regexp extract: the name after a `$` at template[i:] and where the rest starts, or None."""
    brace = template.startswith("{", i)
    start = end = i + 1 if brace else i
    while end < len(template) and (template[end].isalpha() or template[end].isdecimal() or template[end] == "_"):
        end += 1  # isalpha/isdecimal are Go's unicode.IsLetter/IsDigit (categories L and Nd)
    if end == start:
        return None
    name = template[start:end]
    if brace:
        if not template.startswith("}", end):
            return None
        end += 1
    return name, end


def _group_index(name: str, regex: GoRegexp) -> int:
    """The capture group `name` refers to, or -1 (expands to "")."""
    number = 0
    for ch in name:
        if not "0" <= ch <= "9" or number >= 100_000_000:
            number = -1
            break
        number = number * 10 + ord(ch) - 48
    if name[0] == "0" and len(name) > 1:
        number = -1  # Go disallows leading zeros: a name, not a number
    if number >= 0:
        return number if number <= regex.groups else -1
    return regex.names.get(name, -1)


@functools.lru_cache(maxsize=65536)
def _upper_char(ch: str) -> str:
    """Go's unicode.ToUpper: the simple (one-character) mapping; "ß" stays "ß" where str.upper gives "SS".

    Where Python's full mapping is longer, the simple one is the single-character titlecase if any
    ("ᾳ" -> "ᾼ"), else none: that is how UnicodeData's simple mappings relate to SpecialCasing's.
    """
    upper = ch.upper()
    if len(upper) == 1:
        return upper
    title = ch.title()
    return title if len(title) == 1 else ch


@functools.lru_cache(maxsize=65536)
def _lower_char(ch: str) -> str:
    """Go's unicode.ToLower; per character, so no final-sigma rule ("Σ" is always "σ"); "İ" -> "i"."""
    lower = ch.lower()
    return lower if len(lower) == 1 else lower[0]  # only U+0130 has a longer one: "i" + combining dot


def go_upper(value: str) -> str:
    """Go's strings.ToUpper."""
    return value.upper() if value.isascii() else "".join(map(_upper_char, value))


def go_lower(value: str) -> str:
    """Go's strings.ToLower."""
    return value.lower() if value.isascii() else "".join(map(_lower_char, value))


class _Builder:
    """Prometheus' labels.Builder: original labels, deletions, and changes in the order they were made.

    Range visits the unchanged original labels (sorted) first, then the changed ones in change order; a
    labelmap whose results collide ends with the value of the label visited last, as in Prometheus.
    """

    __slots__ = ("add", "base", "deleted")

    def __init__(self, labels: Labels) -> None:
        self.base = dict(sorted(labels))
        self.deleted = {name for name, value in labels if value == ""}
        self.add: dict[str, str] = {}

    def get(self, name: str) -> str:
        if name in self.add:
            return self.add[name]
        return "" if name in self.deleted else self.base.get(name, "")

    def set(self, name: str, value: str) -> None:
        if value == "":
            self.delete(name)
        else:
            self.add[name] = value  # an existing change keeps its place, as in Builder.Set

    def delete(self, name: str) -> None:
        self.add.pop(name, None)
        self.deleted.add(name)

    def range(self) -> list[tuple[str, str]]:
        """A snapshot in Builder.Range order (labels set while visiting are not visited)."""
        add, deleted = self.add, self.deleted
        unchanged = [(n, v) for n, v in self.base.items() if n not in deleted and n not in add]
        return unchanged + list(add.items())


class Relabeler:
    """Applies rules, then adds the source marker label; caches per original label set."""

    def __init__(
        self,
        rules: Sequence[RelabelRule] = (),
        *,
        add_labels: dict[str, str] | None = None,
        cache_size: int = 1_000_000,
    ) -> None:
        for name, value in (add_labels or {}).items():
            if not LABEL_NAME.match(name) or not value:
                raise ConfigError(f"added label {name}={value!r} needs a valid name and a non-empty value")
        self.rules = list(rules)
        self._compiled = [_compile_rule(number, rule) for number, rule in enumerate(self.rules, 1)]
        self.add_labels = dict(add_labels or {})
        self._cache: dict[Labels, Labels | None] = {}
        self._cache_size = cache_size
        self._reads = _names_read(self.rules)
        self._outcomes: dict[tuple[str, ...], _Outcome | None] = {}
        self._valid_names: set[str] = set()

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
        current = dict(labels)
        if len(current) != len(labels):
            raise ConfigError(f"source series has duplicate label names: {dict(labels)}")
        if self._reads is None:
            builder = _Builder(labels)
            for compiled in self._compiled:
                if not _apply_rule(*compiled, builder):
                    return None
            current = dict(builder.range())
            current.update(self.add_labels)
            out = [(n, v) for n, v in current.items() if v != ""]
        else:
            # The rules read only these labels, so what they do depends only on their values: worked out
            # once per distinct tuple (once per metric name for the prefix rule), then replayed.
            key = tuple([current.get(name, "") for name in self._reads])
            outcome = self._outcomes.get(key, ...)
            if outcome is ...:
                outcome = self._outcome(key)
            if outcome is None:
                return None
            replaced, added = outcome
            out = [item for item in labels if item[1] != "" and item[0] not in replaced]
            out += added
        out.sort()
        valid = self._valid_names
        if not valid.issuperset([name for name, _ in out]):
            self._check_names(out, labels)
        if not out:
            raise ConfigError(f"relabeling removed every label of series {dict(labels)}")
        return tuple(out)

    def _check_names(self, out: list[tuple[str, str]], labels: Labels) -> None:
        """Every output label name is one Prometheus accepts (the valid ones are remembered)."""
        for name, _ in out:
            if name in self._valid_names:
                continue
            if not LABEL_NAME.match(name):
                came_from_source = any(n == name for n, _ in labels)
                raise ConfigError(
                    f"relabeling produced the invalid label name {name!r} for series {dict(labels)}",
                    hint="Prometheus and Thanos accept only [a-zA-Z_][a-zA-Z0-9_]* label names: rename it with a "
                    "relabel rule (action labelmap, or replace into a valid target_label then labeldrop)"
                    if came_from_source
                    else "fix the relabel rule's target_label/replacement",
                )
            if len(self._valid_names) < _VALID_NAMES_KEPT:
                self._valid_names.add(name)

    def _outcome(self, key: tuple[str, ...]) -> _Outcome | None:
        """What the rules do to a series whose read labels have these values (None: dropped), worked out on
        a builder holding only those labels: the names whose source value no longer stands (deleted, set,
        or added), and the non-empty labels that replace them."""
        assert self._reads is not None
        builder = _Builder(tuple((n, v) for n, v in zip(self._reads, key, strict=True) if v != ""))
        outcome: _Outcome | None = None
        if all(_apply_rule(*compiled, builder) for compiled in self._compiled):
            changed = {**builder.add, **self.add_labels}
            replaced = frozenset(builder.deleted) | changed.keys()
            outcome = (replaced, tuple((n, v) for n, v in changed.items() if v != ""))
        if len(self._outcomes) >= _OUTCOMES_KEPT:
            self._outcomes.clear()
        self._outcomes[key] = outcome
        return outcome

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


CompiledRule = tuple[RelabelRule, GoRegexp, Template, Template]
_Outcome = tuple[frozenset[str], tuple[tuple[str, str], ...]]  # names replaced, the labels replacing them
_OUTCOMES_KEPT = 100_000  # distinct values of the labels the rules read (a rule reading an id label has many)
_VALID_NAMES_KEPT = 10_000
_READS_EVERY_NAME = frozenset({"labeldrop", "labelkeep", "labelmap"})


def _names_read(rules: Sequence[RelabelRule]) -> tuple[str, ...] | None:
    """The label names whose values decide what ``rules`` do, or None when a rule visits every label
    (labeldrop, labelkeep, labelmap). A rule's target_label template expands from its source values only,
    and keepequal/dropequal compare with a named label, so each rule reads only names listed here."""
    if any(rule.action in _READS_EVERY_NAME for rule in rules):
        return None
    names = {name for rule in rules for name in rule.source_labels}
    names.update(rule.target_label for rule in rules if rule.action in ("keepequal", "dropequal"))
    return tuple(sorted(names))


def _compile_rule(number: int, rule: RelabelRule) -> CompiledRule:
    """Check and compile one rule; an error names the rule (its place, action and labels)."""
    try:
        rule.check()
        regex = compile_regex(rule.regex)
    except ConfigError as exc:
        where = f"action {rule.action!r}" + (f", source_labels {rule.source_labels}" if rule.source_labels else "")
        where += f", target_label {rule.target_label!r}" if rule.target_label else ""
        raise ConfigError(f"relabel rule {number} ({where}): {exc.args[0]}", hint=exc.hint) from None
    return rule, regex, Template(rule.target_label, regex), Template(rule.replacement, regex)


def _apply_rule(rule: RelabelRule, regex: GoRegexp, target: Template, replacement: Template, lb: _Builder) -> bool:
    """Apply one rule to the builder, as Prometheus' relabel(); False when the series is dropped."""
    action = rule.action
    if action in ("labeldrop", "labelkeep"):
        drop = action == "labeldrop"
        for name, _ in lb.range():
            if regex.matches_name(name) == drop:
                lb.delete(name)
        return True
    if action == "labelmap":
        for name, value in lb.range():
            if regex.matches_name(name):
                lb.set(regex.replace_all(name, replacement), value)
        return True
    value = rule.separator.join([lb.get(n) for n in rule.source_labels])
    if action == "keep":
        return regex.matches(value)
    if action == "drop":
        return not regex.matches(value)
    if action == "keepequal":
        return value == lb.get(rule.target_label)
    if action == "dropequal":
        return value != lb.get(rule.target_label)
    if action == "lowercase":
        lb.set(rule.target_label, go_lower(value))
    elif action == "uppercase":
        lb.set(rule.target_label, go_upper(value))
    elif action == "hashmod":
        digest = hashlib.md5(value.encode()).digest()
        lb.set(rule.target_label, str(int.from_bytes(digest[8:], "big") % rule.modulus))
    elif action == "replace":
        src = value.encode()
        spans = regex.find(src)
        if spans is None:
            return True
        name = target.expand(src, spans).decode()
        if not LABEL_NAME.match(name):
            return True  # Prometheus skips an invalid expanded target name
        lb.set(name, replacement.expand(src, spans).decode())
    return True
