"""After the move: find and rewrite dashboard and rule queries that see a metric under two names.

A migrated metric may live in the target as ``prometheus_<name>{_source="m3db"}`` while the same metric
written to Thanos directly is ``<name>``. This module reads Grafana dashboard JSON and Prometheus rule
YAML, parses every PromQL expression with promql-parser (the validity check and the selector list), and
finds each selector's text span with a small lexer of its own (promql-parser gives no positions), so a
rewrite replaces only the selector's bytes and keeps the rest of the file byte for byte. No Prefect here.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from m3migrate.clients.promql import BadQuery, PromQLClient
from m3migrate.errors import ConfigError
from m3migrate.report import md

__all__ = [
    "NameFacts",
    "QueryError",
    "QuerySite",
    "Selector",
    "check_files",
    "find_selectors",
    "load_sites",
    "pair_names",
    "rewrite_expr",
    "rewrite_files",
    "verify_queries",
]

PREFIX = "prometheus_"

# Grafana template variables: $var, ${var}, ${var:format}, [[var]] (the old syntax).
_VAR = re.compile(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[^\]]*\]\]")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)(?:[a-zA-Z0-9_]*)")
_SPACE = re.compile(r"(?:\s+|#[^\n]*)+")
# Words that are never a metric name where they stand (PromQL's keywords); followed by "(" a word is a
# function or an aggregation, and "inf"/"nan" are numbers.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
             "group_right", "atan2", "inf", "nan"}  # fmt: skip
_AGGREGATIONS = {"sum", "avg", "count", "min", "max", "stddev", "stdvar", "topk", "bottomk", "quantile",
                 "count_values", "group", "limitk", "limit_ratio"}  # fmt: skip
_LABEL_LIST_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_SCALAR_FIRST = {"topk", "bottomk", "quantile", "limitk", "limit_ratio", "histogram_quantile",
                 "quantile_over_time"}  # fmt: skip
_VAR_IDENT = "__m3mq_var{}__"


class QueryError(ConfigError):
    """A file or expression that cannot be read: names the file and the panel or rule."""


@dataclass(frozen=True)
class Selector:
    """One vector selector of an expression: its metric name and where its text is in the original."""

    name: str | None
    start: int
    end: int
    name_span: tuple[int, int] | None  # the name token, or the `__name__="..."` matcher inside braces
    in_braces: bool  # the name is a `__name__` matcher, not a leading identifier
    has_source_matcher: bool


@dataclass
class QuerySite:
    """One PromQL expression in a file: where it is (panel/rule) and how to put a new one back."""

    file: Path
    where: str
    expr: str
    outer: str  # the string value in the file that holds expr (a variable query holds more)
    offset: int = 0  # where expr starts inside outer
    selectors: list[Selector] = field(default_factory=list)


@dataclass(frozen=True)
class NameFacts:
    """What the target holds for one name pair (migrated ``prometheus_x``, direct ``x``)."""

    prefixed: str
    bare: str
    migrated_prefixed: bool  # prefixed{_source="m3db"} in the migration range
    migrated_merged: bool  # bare{_source="m3db"} in the migration range (merge_prometheus_prefix)
    direct_history: bool  # bare without the source label inside the migration range (an overlap)
    direct_now: bool  # bare without the source label in the last hour

    @property
    def where(self) -> str:
        migrated = self.migrated_prefixed or self.migrated_merged
        direct = self.direct_history or self.direct_now
        return "both" if migrated and direct else "migrated" if migrated else "direct" if direct else "none"

    @property
    def merged(self) -> bool:
        return self.migrated_merged and not self.migrated_prefixed


def pair_names(name: str) -> tuple[str, str]:
    """(migrated prefixed name, direct bare name) for a name as a query writes it."""
    if name.startswith(PREFIX) and len(name) > len(PREFIX):
        return name, name[len(PREFIX) :]
    return PREFIX + name, name


# -- template variables ---------------------------------------------------------------------------


def _substitute(expr: str) -> tuple[str, list[tuple[int, int, int, int]]]:
    """The expression with Grafana variables outside strings replaced by parseable placeholders.

    Returns the new text and the replacements as (orig_start, orig_end, new_start, new_end), so spans
    found in the new text map back to the original.
    """
    out: list[str] = []
    spans: list[tuple[int, int, int, int]] = []
    i = n = 0
    depth_bracket = 0
    last_word = ""
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            j = _string_end(expr, i)
            out.append(expr[i:j])
            n += j - i
            i = j
            continue
        m = _VAR.match(expr, i)
        if m:
            call = re.search(r"([A-Za-z_]\w*)\s*\(\s*$", "".join(out))
            if depth_bracket or last_word == "offset":
                rep = "1m"  # a duration: $__rate_interval, $__range, $interval
            elif call and call.group(1) in _SCALAR_FIRST:
                rep = "1"  # topk($n, ...), histogram_quantile($q, ...)
            else:
                rep = _VAR_IDENT.format(len(spans))
            spans.append((i, m.end(), n, n + len(rep)))
            out.append(rep)
            n += len(rep)
            i = m.end()
            last_word = ""
            continue
        if c == "[":
            depth_bracket += 1
        elif c == "]":
            depth_bracket = max(0, depth_bracket - 1)
        w = _IDENT.match(expr, i)
        if w:
            last_word = w.group().lower()
            out.append(w.group())
            n += w.end() - i
            i = w.end()
            continue
        if not c.isspace():
            last_word = ""
        out.append(c)
        n += 1
        i += 1
    return "".join(out), spans


def _to_orig(pos: int, spans: list[tuple[int, int, int, int]]) -> int:
    shift = 0
    for _o0, o1, n0, n1 in spans:
        if n1 <= pos:
            shift = o1 - n1
        elif n0 < pos:
            return o1
        else:
            break
    return pos + shift


def _string_end(text: str, i: int) -> int:
    q = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\" and q != "`":
            j += 2
            continue
        if text[j] == q:
            return j + 1
        j += 1
    return len(text)


# -- selectors ------------------------------------------------------------------------------------


def _lex_selectors(text: str) -> list[Selector]:
    """Vector selectors of a (placeholder-substituted) expression, in source order, with spans."""
    found: list[Selector] = []
    i = 0
    L = len(text)

    def skip(k: int) -> int:
        m = _SPACE.match(text, k)
        return m.end() if m else k

    def braces(k: int) -> tuple[int, str | None, tuple[int, int] | None, bool]:
        # k at "{": returns (end, __name__ value, its matcher span, has _source matcher)
        j = k + 1
        name = None
        span = None
        source = False
        while j < L and text[j] != "}":
            j = skip(j)
            if j >= L or text[j] == "}":
                break
            if text[j] == ",":
                j += 1
                continue
            if text[j] in "\"'`":
                lab_start, j = j, _string_end(text, j)
                label = text[lab_start + 1 : j - 1]
            else:
                m = _IDENT.match(text, j)
                if not m:
                    raise ValueError(f"unexpected {text[j]!r} in a selector")
                lab_start, label, j = j, m.group(), m.end()
            j = skip(j)
            op = re.match(r"=~|!~|!=|=", text[j:])
            if not op:  # a bare string inside braces is a metric name (Prometheus 3 UTF-8 syntax)
                name, span = label, (lab_start, j)
                continue
            j = skip(j + len(op.group()))
            vs = j
            j = _string_end(text, j)
            if label == "__name__" and op.group() == "=":
                name, span = text[vs + 1 : j - 1], (lab_start, j)
            if label == "_source":
                source = True
        return j + 1, name, span, source

    label_list_next = False
    while i < L:
        i = skip(i)
        if i >= L:
            break
        c = text[i]
        if c in "\"'`":
            i = _string_end(text, i)
            continue
        if c == "[":
            i = text.index("]", i) + 1
            continue
        if c == "(" and label_list_next:
            i = text.index(")", i) + 1
            label_list_next = False
            continue
        label_list_next = False
        if c == "{":
            end, name, span, source = braces(i)
            found.append(Selector(name, i, end, span, True, source))
            i = end
            continue
        if c.isdigit() or (c == "." and i + 1 < L and text[i + 1].isdigit()):
            m = _NUMBER.match(text, i)
            i = m.end() if m and m.end() > i else i + 1
            continue
        m = _IDENT.match(text, i)
        if m:
            word = m.group()
            after = skip(m.end())
            if word.lower() in _LABEL_LIST_WORDS:
                label_list_next = True
                i = m.end()
                continue
            nxt = _IDENT.match(text, after)
            grouped = word.lower() in _AGGREGATIONS and nxt and nxt.group().lower() in ("by", "without")
            if word.lower() in _KEYWORDS or grouped or (after < L and text[after] == "("):
                i = m.end()
                continue
            if after < L and text[after] == "{":
                end, _, _, source = braces(after)
                found.append(Selector(word, i, end, (i, m.end()), False, source))
                i = end
            else:
                found.append(Selector(word, i, m.end(), (i, m.end()), False, False))
                i = m.end()
            continue
        i += 1
    return found


def _ast_selectors(expr: promql_parser.Expr) -> list[str | None]:
    names: list[str | None] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            name = node.name
            if not name:
                for m in node.matchers.matchers:
                    if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal:
                        name = m.value
            names.append(name)

    promql_parser.walk(expr, visit)
    return names


def find_selectors(expr: str, *, where: str = "expression") -> list[Selector]:
    """Parse ``expr`` (Grafana variables allowed) and return its vector selectors with original spans.

    promql-parser decides validity and which selectors exist; the lexer's list must agree with it, else
    the expression is refused rather than rewritten at a wrong place.
    """
    text, spans = _substitute(expr)
    try:
        ast = promql_parser.parse(text)
    except (ValueError, RuntimeError) as exc:
        raise QueryError(f"{where}: cannot parse PromQL {expr!r}: {exc}") from None
    try:
        lexed = _lex_selectors(text)
    except ValueError as exc:
        raise QueryError(f"{where}: cannot locate the selectors of {expr!r}: {exc}") from None
    if sorted(map(str, _ast_selectors(ast))) != sorted(str(s.name) for s in lexed):
        raise QueryError(f"{where}: cannot locate the selectors of {expr!r} reliably; rewrite it by hand")
    out = []
    for s in lexed:
        name = s.name
        if name and name.startswith("__m3mq_var"):
            name = None  # the metric name is a template variable: unknown until Grafana expands it
        span = None if s.name_span is None else (_to_orig(s.name_span[0], spans), _to_orig(s.name_span[1], spans))
        out.append(
            Selector(name, _to_orig(s.start, spans), _to_orig(s.end, spans), span, s.in_braces, s.has_source_matcher)
        )
    return out


def rewrite_expr(expr: str, selectors: list[Selector], facts: dict[str, NameFacts]) -> str:
    """``expr`` with every affected selector covering both names; every other byte unchanged."""
    edits: list[tuple[int, int, str]] = []
    for s in selectors:
        if s.name is None or s.name_span is None or s.has_source_matcher:
            continue
        f = facts.get(s.name)
        if f is None or not (f.migrated_prefixed or f.migrated_merged):
            continue
        a, b = s.name_span
        if f.merged:
            if s.name == f.bare:
                continue
            new = f'__name__="{f.bare}"' if s.in_braces else f.bare
            edits.append((a, b, new))
            continue
        regex = f'__name__=~"{f.prefixed}|{f.bare}"'
        if s.in_braces:
            edits.append((a, b, regex))
        elif s.end > b:  # name{...}: drop the name, put the matcher first inside the braces
            inner = expr[expr.index("{", b) + 1 : s.end - 1]
            sep = "," if inner.strip() else ""
            edits.append((a, s.end, "{" + regex + sep + inner + "}"))
        else:
            edits.append((a, b, "{" + regex + "}"))
    for a, b, new in sorted(edits, reverse=True):
        expr = expr[:a] + new + expr[b:]
    return expr


# -- files ----------------------------------------------------------------------------------------


def _dashboard_sites(path: Path, doc: Any) -> Iterator[QuerySite]:
    title = doc.get("title") or doc.get("name") or path.name if isinstance(doc, dict) else path.name

    def panels(node: Any, keys: tuple[Any, ...], trail: str) -> Iterator[QuerySite]:
        if not isinstance(node, list):
            return
        for i, panel in enumerate(node):
            if not isinstance(panel, dict):
                continue
            here = f"{trail}panel {panel.get('title') or panel.get('id') or i!r}"
            for j, target in enumerate(panel.get("targets") or []):
                if isinstance(target, dict) and isinstance(target.get("expr"), str) and target["expr"].strip():
                    ref = target.get("refId") or j
                    yield QuerySite(path, f"{here} query {ref}", target["expr"], target["expr"])
            yield from panels(panel.get("panels"), (*keys, i, "panels"), f"{here} / ")
            lib = panel.get("libraryPanel")
            if isinstance(lib, dict) and isinstance(lib.get("model"), dict):
                yield from panels([lib["model"]], (*keys, i, "libraryPanel", "model"), f"{here} library ")

    root = doc.get("dashboard", doc) if isinstance(doc, dict) else {}
    rkeys: tuple[Any, ...] = ("dashboard",) if isinstance(doc, dict) and "dashboard" in doc else ()
    if isinstance(root, dict) and isinstance(root.get("model"), dict):  # a library panel as exported
        yield from panels([root["model"]], (*rkeys, "model"), f"{title}: library ")
        return
    yield from panels(root.get("panels"), (*rkeys, "panels"), f"{title}: ")
    elements = doc.get("__elements") if isinstance(doc, dict) else None  # "export for sharing externally"
    for uid, element in (elements or {}).items() if isinstance(elements, dict) else ():
        if isinstance(element, dict) and isinstance(element.get("model"), dict):
            yield from panels([element["model"]], (), f"{title}: library panel {element.get('name') or uid!r} / ")
    for i, row in enumerate(root.get("rows") or []):  # the old schema's rows
        yield from panels(row.get("panels"), (*rkeys, "rows", i, "panels"), f"{title}: row {row.get('title')!r} / ")
    for var in (root.get("templating") or {}).get("list") or []:
        if not isinstance(var, dict):
            continue
        q = var.get("query")
        if var.get("type") != "query":
            continue
        if isinstance(q, dict) and isinstance(q.get("query"), str):
            q = q["query"]
        if not isinstance(q, str) or not q.strip():
            continue
        expr, offset = _variable_expr(q)
        if expr is not None:
            yield QuerySite(path, f"{title}: variable ${var.get('name')}", expr, q, offset)


def _variable_expr(q: str) -> tuple[str | None, int]:
    """The PromQL inside a Grafana variable query (label_values(EXPR, label), query_result(EXPR))."""
    m = re.match(r"\s*(label_values|query_result)\s*\(", q)
    if not m:
        return (None, 0) if re.match(r"\s*(label_names|metrics)\s*\(", q) else (q, 0)
    inner_start = m.end()
    if m.group(1) == "query_result":
        return q[inner_start : q.rstrip().rfind(")")], inner_start
    body = q[inner_start : q.rstrip().rfind(")")]
    depth = 0
    i = 0
    while i < len(body):
        c = body[i]
        if c in "\"'`":
            i = _string_end(body, i)
            continue
        depth += c in "({["
        depth -= c in ")}]"
        if c == "," and depth == 0:
            return body[:i], inner_start
        i += 1
    return None, 0  # label_values(label): no expression


def _rule_sites(path: Path, text: str, doc: Any) -> Iterator[QuerySite]:
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise QueryError(f"{path}: not a Prometheus rule file (no `groups:` list)")
    for g in doc["groups"]:
        for k, rule in enumerate(g.get("rules") or []):
            if not isinstance(rule, dict) or not isinstance(rule.get("expr"), str):
                raise QueryError(f"{path}: group {g.get('name')!r} rule {k}: no `expr`")
            name = rule.get("record") or rule.get("alert") or k
            kind = "record" if "record" in rule else "alert"
            yield QuerySite(path, f"group {g.get('name')!r} {kind} {name}", rule["expr"], rule["expr"])


def load_sites(path: Path) -> list[QuerySite]:
    """Every PromQL expression of one dashboard JSON or rule YAML file, parsed, with its selectors."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"{path}: cannot read: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise QueryError(f"{path}: invalid JSON: {exc}") from None
        sites = list(_dashboard_sites(path, doc))
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise QueryError(f"{path}: invalid YAML: {exc}") from None
        sites = list(_rule_sites(path, text, doc))
    for site in sites:
        site.selectors = find_selectors(site.expr, where=f"{path}: {site.where}")
    return sites


def gather_facts(client: PromQLClient, names: set[str], start_ms: int, end_ms: int, now_ms: int,
                 source_label: str = "_source", source_value: str = "m3db") -> dict[str, NameFacts]:  # fmt: skip
    """Ask the target's series endpoint which names hold migrated and direct series, per name."""
    facts: dict[str, NameFacts] = {}
    for name in sorted(names):
        p, b = pair_names(name)

        def has(metric: str, migrated: bool, a: int, z: int) -> bool:
            op = "=" if migrated else "!="
            return bool(client.series([f'{{__name__="{metric}",{source_label}{op}"{source_value}"}}'], a, z, limit=1))

        facts[name] = NameFacts(
            p, b, has(p, True, start_ms, end_ms), has(b, True, start_ms, end_ms),
            has(b, False, start_ms, end_ms), has(b, False, now_ms - 3_600_000, now_ms),
        )  # fmt: skip
    return facts


def verdict(selector: Selector, f: NameFacts) -> str:
    """What a selector sees after cutover, in words; "" when it sees all of it once."""
    migrated = f.migrated_prefixed or f.migrated_merged
    direct = f.direct_history or f.direct_now
    sees_migrated = (selector.name == f.prefixed and f.migrated_prefixed) or (
        selector.name == f.bare and f.migrated_merged
    )
    sees_direct = selector.name == f.bare and direct
    if selector.has_source_matcher:
        return ""
    if (migrated or direct) and not (sees_migrated or sees_direct):
        return (
            f"sees nothing: the data is under {f.bare}" if f.merged or not migrated else "misses the migrated history"
        )
    if migrated and direct and not (sees_migrated and sees_direct):
        return "half history: sees only the " + ("migrated history" if sees_migrated else "direct data")
    if migrated and not sees_migrated:
        return "misses the migrated history"
    if sees_migrated and sees_direct and f.direct_history:
        return "double-counts: migrated and direct series overlap in the migration range"
    return ""


def check_files(paths: list[Path], client: PromQLClient, start_ms: int, end_ms: int, now_ms: int) -> dict[str, Any]:
    """The report: per file and panel/rule, each selected name, where it lives and the verdict."""
    sites = [s for p in paths for s in load_sites(p)]
    names = {sel.name for s in sites for sel in s.selectors if sel.name}
    facts = gather_facts(client, names, start_ms, end_ms, now_ms)
    rows = []
    for s in sites:
        for sel in s.selectors:
            if sel.name is None:
                continue
            f = facts[sel.name]
            rows.append({"file": str(s.file), "where": s.where, "metric": sel.name, "found": f.where,
                         "verdict": verdict(sel, f)})  # fmt: skip
    return {"rows": rows, "facts": facts, "sites": sites}


def _after_lead(new: str) -> Callable[[re.Match[str]], str]:
    """A re.sub replacement keeping group 1 (the text before the query) and putting ``new`` after it."""
    return lambda match: match.group(1) + new


def _rewritten_text(path: Path, sites: list[QuerySite], facts: dict[str, NameFacts]) -> str:
    """The file's text with each changed query string replaced where it stands, all else kept."""
    out = path.read_text(encoding="utf-8")
    for s in sites:
        new = rewrite_expr(s.expr, s.selectors, facts)
        if new == s.expr:
            continue
        outer = s.outer[: s.offset] + new + s.outer[s.offset + len(s.expr) :]
        if path.suffix.lower() == ".json":  # only as the value of a query key, as Grafana/Go encode it
            lead = r'("(?:expr|query|definition)"\s*:\s*)'
            pairs = [(json.dumps(s.outer, ensure_ascii=a), json.dumps(outer, ensure_ascii=a)) for a in (False, True)]
            pairs.append((_go_escape(pairs[1][0]), _go_escape(pairs[1][1])))  # Go's json escapes <, >, &
            candidates = [(re.escape(o), n) for o, n in pairs]
        else:  # only as a rule's expr value: quoted, plain or a block scalar's body, each kept in its style
            lead = r"((?:^|\n)[ \t-]*expr:[ \t]*(?:[|>][-+0-9]*[ \t]*\n[ \t]*)?)"  # block: its header too
            end = r"(?=[ \t]*(?:#[^\n]*)?(?:\n|$))"
            old, new_value = s.outer.rstrip("\n"), outer.rstrip("\n")
            candidates = [
                ('"' + re.escape(_yaml_dq(old)) + '"' + end, '"' + _yaml_dq(new_value) + '"'),
                ("'" + re.escape(old.replace("'", "''")) + "'" + end, "'" + new_value.replace("'", "''") + "'"),
            ]
            if "\n" not in old:
                candidates.append((re.escape(old) + end, _yaml_plain(new_value)))
            candidates += [(re.escape(o), n) for o, n in _block_pairs(out, s.outer, outer)]
        for old_pattern, new_text in candidates:
            pattern = re.compile(lead + old_pattern)
            if pattern.search(out):
                out = pattern.sub(_after_lead(new_text), out)
                break
        else:
            raise QueryError(f"{path}: {s.where}: cannot find the query's text in the file to replace it; edit by hand")
    return out


def _yaml_dq(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _yaml_plain(text: str) -> str:
    """``text`` as a plain YAML scalar if it reads back the same, else single-quoted (e.g. it starts with {)."""
    try:
        if yaml.safe_load(f"k: {text}") == {"k": text}:
            return text
    except yaml.YAMLError:
        pass
    return "'" + text.replace("'", "''") + "'"


def _go_escape(text: str) -> str:
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _block_pairs(text: str, old: str, new: str) -> list[tuple[str, str]]:
    """A YAML block scalar's lines as they stand in the file (with its indentation), old and new."""
    if "\n" not in old.rstrip("\n"):
        return []
    first = old.split("\n", 1)[0]
    at = text.find(first)
    if at < 0:
        return []
    indent = text[text.rfind("\n", 0, at) + 1 : at]
    if indent.strip():
        return []

    def block(value: str) -> str:
        return "\n".join(indent + line if line else line for line in value.rstrip("\n").split("\n"))[len(indent) :]

    return [(block(old), block(new))]


def rewrite_files(paths: list[Path], facts: dict[str, NameFacts]) -> dict[Path, tuple[str, str]]:
    """{path: (old text, new text)} for every file; raises before returning if any file is bad."""
    out: dict[Path, tuple[str, str]] = {}
    for p in paths:
        sites = load_sites(p)
        out[p] = (p.read_text(encoding="utf-8"), _rewritten_text(p, sites, facts))
    return out


def unified_diff(changes: dict[Path, tuple[str, str]]) -> str:
    """The dry run: a unified diff of every changed file."""
    parts = []
    for p, (old, new) in changes.items():
        if old != new:
            parts.append("".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"a/{p}", f"b/{p}")))
    return "".join(parts)


_DEFAULT_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__interval_ms": "60000",
                 "__range_s": "3600"}  # fmt: skip


def expand_vars(expr: str, values: dict[str, str] | None = None) -> str:
    """A query with Grafana variables given values (defaults for Grafana's own, ".*" for others)."""
    values = {**_DEFAULT_VARS, **(values or {})}

    def one(m: re.Match[str]) -> str:
        raw = m.group().strip("${}[]")
        return values.get(raw.split(":")[0], ".*")

    return _VAR.sub(one, expr)


def verify_queries(
    sites: list[QuerySite],
    facts: dict[str, NameFacts],
    client: PromQLClient,
    before_ms: list[int],
    after_ms: list[int],
    values: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run each rewritten query and its original at instants before and after cutover: series counts."""
    rows = []
    for s in sites:
        new = rewrite_expr(s.expr, s.selectors, facts)
        if new == s.expr:
            continue
        row: dict[str, Any] = {"file": str(s.file), "where": s.where, "original": s.expr, "rewritten": new}
        try:
            for label, expr in (("original", s.expr), ("rewritten", new)):
                q = expand_vars(expr, values)
                row[f"{label}_before"] = [_count(client.query(q, t).result) for t in before_ms]
                row[f"{label}_after"] = [_count(client.query(q, t).result) for t in after_ms]
        except BadQuery as exc:  # e.g. a variable's stand-in value the query cannot take: say so, go on
            row.update({k: [] for k in ("original_before", "original_after", "rewritten_before", "rewritten_after")})
            row["error"] = str(exc)
        row["ok"] = any(row["rewritten_before"]) and any(row["rewritten_after"])
        rows.append(row)
    return rows


def _count(result: Any) -> int:
    if isinstance(result, list) and (not result or isinstance(result[0], dict)):
        return len(result)
    return int(bool(result))


# -- reports and the CLI/flow entry points ------------------------------------------------------------


def target_client(
    query_url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    bearer_token: str | None = None,
    tenant: str | None = None,
    tenant_header: str = "THANOS-TENANT",
    insecure_skip_verify: bool = False,
) -> PromQLClient:
    """A PromQL client for the target's query API (Thanos Query: partial responses refused)."""
    from pydantic import SecretStr

    from m3migrate.settings.endpoints import AuthSettings, EndpointSettings, TlsSettings

    settings = EndpointSettings(
        auth=AuthSettings(
            username=username,
            password=SecretStr(password) if password else None,
            bearer_token=SecretStr(bearer_token) if bearer_token else None,
        ),
        tls=TlsSettings(insecure_skip_verify=insecure_skip_verify),
        headers={tenant_header: tenant} if tenant else {},
    )
    return PromQLClient(query_url, settings, extra_params={"partial_response": "false"})


def instants(start_ms: int, cutover_ms: int, now_ms: int) -> tuple[list[int], list[int]]:
    """A few instants before (mid-history, just before) and after (mid-way to now, now) the cutover."""
    before = [start_ms + (cutover_ms - start_ms) // 2, cutover_ms - 60_000]
    after = [cutover_ms + (now_ms - cutover_ms) // 2, now_ms] if now_ms > cutover_ms + 120_000 else [now_ms]
    return before, after


def check_markdown(rows: list[dict[str, Any]]) -> str:
    """The check report as a markdown table (the flow's artifact, the CLI's --markdown)."""
    lines = ["| file | panel / rule | metric | in target | after cutover |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        cells = (Path(r["file"]).name, r["where"], r["metric"], r["found"], r["verdict"] or "ok")
        lines.append("| " + " | ".join(md(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def verify_markdown(rows: list[dict[str, Any]]) -> str:
    """verify-queries as a markdown table: series returned per instant, original vs rewritten."""
    lines = [
        "| panel / rule | original before / after | rewritten before / after | both sides |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = (
            r["where"],
            f"{r['original_before']} / {r['original_after']}",
            f"{r['rewritten_before']} / {r['rewritten_after']}",
            "yes" if r["ok"] else f"NO: {r['error']}" if r.get("error") else "NO",
        )
        lines.append("| " + " | ".join(md(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_changes(changes: dict[Path, tuple[str, str]], *, out_dir: Path | None, in_place: bool) -> list[Path]:
    """Write the rewritten files (into out_dir, or over the originals only when in_place)."""
    if in_place == (out_dir is not None):
        raise ValueError("give exactly one of out_dir and in_place")
    written = []
    for p, (old, new) in changes.items():
        if old == new:
            continue
        dest = p if in_place else out_dir / p.name  # type: ignore[operator]
        if not in_place and dest.resolve() == p.resolve():
            raise QueryError(f"{p}: the output directory holds the original; use --in-place to overwrite it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(new, encoding="utf-8")
        written.append(dest)
    return written
