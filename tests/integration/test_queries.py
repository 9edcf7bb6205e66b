"""`m3migrate queries`: find, rewrite and verify dashboard/rule queries after a migration.

The fixtures under tests/data/queries/ are in the shapes Grafana exports (``__inputs``, ``__elements``
library panels, collapsed rows holding ``panels``, templating with a query object) and Prometheus rule
files (groups, recording rules with colons, a block-scalar alert expression). The target is a real
Prometheus remote-write receiver holding migrated (``_source="m3db"``) and direct series.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from m3migrate.checks.queries import (
    NameFacts,
    QueryError,
    check_files,
    find_selectors,
    load_sites,
    rewrite_expr,
    rewrite_files,
    unified_diff,
    verify_queries,
)
from m3migrate.clients.promql import PromQLClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import EndpointSettings, TargetSettings
from m3migrate.wire.codec import encode_labels, pack_write_requests

DATA = Path(__file__).parents[1] / "data" / "queries"
MIN = 60_000


SPLIT = NameFacts("prometheus_x", "x", True, False, False, True)
MERGED = NameFacts("prometheus_x", "x", False, True, False, True)


@pytest.mark.parametrize(
    ("expr", "want"),
    [
        ("x", '{__name__=~"prometheus_x|x"}'),
        ('rate(x{job=~"$job"}[$__rate_interval])', 'rate({__name__=~"prometheus_x|x",job=~"$job"}[$__rate_interval])'),
        ('sum by (x) (prometheus_x{a="1"} offset 1h)', 'sum by (x) ({__name__=~"prometheus_x|x",a="1"} offset 1h)'),
        ('{__name__="x", a="b"}', '{__name__=~"prometheus_x|x", a="b"}'),
        ("topk($n, x) / on(x) group_left y", 'topk($n, {__name__=~"prometheus_x|x"}) / on(x) group_left y'),
        ("rate(x[5m:1m] @ end())  # comment x", 'rate({__name__=~"prometheus_x|x"}[5m:1m] @ end())  # comment x'),
        ('x{_source="m3db"}', 'x{_source="m3db"}'),  # an explicit source choice is the user's
        ("job:x:rate5m", "job:x:rate5m"),
    ],
)
def test_rewrite_replaces_only_the_selector_text(expr: str, want: str) -> None:
    facts = {"x": SPLIT, "prometheus_x": SPLIT}
    assert rewrite_expr(expr, find_selectors(expr), facts) == want


def test_rewrite_after_a_merged_migration_uses_the_bare_name() -> None:
    facts = {"x": MERGED, "prometheus_x": MERGED}
    expr = 'sum(rate(prometheus_x{a="1"}[5m])) + x'
    assert rewrite_expr(expr, find_selectors(expr), facts) == 'sum(rate(x{a="1"}[5m])) + x'


def test_selectors_of_grafana_queries_parse_with_variables_and_keep_original_spans() -> None:
    expr = 'sum by (job) (rate(prometheus_x{job=~"${job:regex}"}[$__rate_interval])) > $threshold'
    [sel, var] = find_selectors(expr)
    assert sel.name == "prometheus_x" and expr[sel.start : sel.end] == 'prometheus_x{job=~"${job:regex}"}'
    assert var.name is None  # $threshold stood where a metric name may stand: unknown, never rewritten


def test_sites_cover_panels_rows_library_panels_variables_and_rules() -> None:
    dash = load_sites(DATA / "http-dashboard.json")
    where = {s.where: [sel.name for sel in s.selectors] for s in dash}
    assert where == {
        "HTTP: panel 'Requests (M3 era)' query A": ["prometheus_http_requests_total"],
        "HTTP: panel 'Details' / panel 'Requests (Thanos era)' query A": ["http_requests_total"],
        "HTTP: panel 'Details' / panel 'Requests (Thanos era)' query B": ["up"],
        "HTTP: panel 'Load' library panel 'Load' query A": ["node_load1"],
        "HTTP: library panel 'Errors' / panel 'Errors' query A": ["prometheus_http_requests_total"],
        "HTTP: variable $job": ["prometheus_http_requests_total"],
    }
    rules = {s.where: [sel.name for sel in s.selectors] for s in load_sites(DATA / "rules.yml")}
    assert rules["group 'http' record job:up:sum"] == ["up", "job:http_requests:rate5m"]
    assert rules["group 'http' alert HighLoad"] == ["node_load1"]


def test_bad_input_names_the_file_and_panel_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(QueryError, match=r"bad\.json: invalid JSON"):
        load_sites(DATA / "bad.json")
    with pytest.raises(QueryError, match=r"bad-expr\.json: Bad expr: panel 'Typo panel' query A: cannot parse"):
        load_sites(DATA / "bad-expr.json")
    good = tmp_path / "good.json"
    shutil.copy(DATA / "http-dashboard.json", good)
    shutil.copy(DATA / "bad-expr.json", tmp_path / "bad-expr.json")
    before = good.read_text()
    with pytest.raises(QueryError, match="Typo panel"):
        rewrite_files([good, tmp_path / "bad-expr.json"], {})
    assert good.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bad-expr.json", "good.json"]


def _write(url: str, data: dict[tuple[tuple[str, str], ...], list[tuple[int, float]]]) -> None:
    pairs = []
    for labels, samples in data.items():
        ts = TimeSeries()
        for t, v in samples:
            ts.samples.add(timestamp=t, value=v)
        pairs.append((encode_labels(sorted(labels)), ts))
    with RemoteWriteClient(TargetSettings(write_url=f"{url}/api/v1/write")) as writer:
        for chain in pack_write_requests(pairs, max_bytes=1 << 22, max_samples=50_000):
            for request in chain.requests:
                writer.write(request)


def _counter(start: int, end: int, step: int = 15_000) -> list[tuple[int, float]]:
    return [(t, float((t - start) // step)) for t in range(start, end, step)]


@pytest.fixture
def target(prometheus_target):
    """A target after a migration: history under prometheus_ with _source="m3db", then direct writes.

    http_requests_total: migrated as prometheus_http_requests_total until cutover, direct after (split).
    node_load1: migrated under its own name (merged) and direct, overlapping 20 minutes (double count).
    up: direct only.
    """
    server = prometheus_target()
    now = int(time.time() * 1000) // 1000 * 1000
    start, cut = now - 100 * MIN, now - 40 * MIN
    m3 = ("_source", "m3db")
    _write(
        server.url,
        {
            (("__name__", "prometheus_http_requests_total"), ("job", "api"), m3): _counter(start, cut),
            (("__name__", "node_load1"), ("instance", "a"), m3): _counter(start, cut),
        },
    )
    _write(
        server.url,
        {
            (("__name__", "http_requests_total"), ("job", "api")): _counter(cut + 15_000, now),
            (("__name__", "node_load1"), ("instance", "a")): _counter(cut - 20 * MIN, now),
            (("__name__", "up"), ("job", "api")): [(t, 1.0) for t, _ in _counter(cut - 20 * MIN, now)],
        },
    )
    with PromQLClient(server.url, EndpointSettings()) as client:
        yield client, start, cut, now


def test_check_classifies_names_against_a_real_target(target) -> None:
    client, start, cut, now = target
    report = check_files([DATA / "http-dashboard.json", DATA / "rules.yml"], client, start, cut, now)
    rows = {(r["where"], r["metric"]): (r["found"], r["verdict"]) for r in report["rows"]}
    assert rows[("HTTP: panel 'Requests (M3 era)' query A", "prometheus_http_requests_total")] == (
        "both",
        "half history: sees only the migrated history",
    )
    assert rows[("HTTP: panel 'Details' / panel 'Requests (Thanos era)' query A", "http_requests_total")] == (
        "both",
        "half history: sees only the direct data",
    )
    assert rows[("HTTP: panel 'Details' / panel 'Requests (Thanos era)' query B", "up")] == ("direct", "")
    assert rows[("group 'http' alert HighLoad", "node_load1")] == (
        "both",
        "double-counts: migrated and direct series overlap in the migration range",
    )
    assert rows[("group 'http' record job:up:sum", "job:http_requests:rate5m")] == ("none", "")
    facts = report["facts"]
    assert facts["node_load1"].merged and not facts["http_requests_total"].merged


def test_rewrite_keeps_every_other_byte_and_verify_sees_both_sides(target, tmp_path: Path) -> None:
    client, start, cut, now = target
    paths = [tmp_path / "http-dashboard.json", tmp_path / "rules.yml"]
    for p in paths:
        shutil.copy(DATA / p.name, p)
    facts = check_files(paths, client, start, cut, now)["facts"]
    changes = rewrite_files(paths, facts)
    old, new = changes[paths[0]]
    assert old == paths[0].read_text()  # a dry run: nothing written
    diff = unified_diff(changes)
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    # Only the lines holding an affected query differ (4 panel queries, the variable's query and its
    # identical "definition", one rule); everything else (indentation, key order, escapes) stays.
    assert len(changed) == 2 * 6, diff
    assert json.loads(new)["panels"][0]["targets"][0]["expr"] == (
        'sum by (job) (rate({__name__=~"prometheus_http_requests_total|http_requests_total",job=~"$job"}'
        "[$__rate_interval]))"
    )
    assert json.loads(new)["templating"]["list"][0]["query"]["query"] == (
        'label_values({__name__=~"prometheus_http_requests_total|http_requests_total"}, job)'
    )
    rules = yaml.safe_load(changes[paths[1]][1])
    assert rules["groups"][0]["rules"][0]["expr"] == (
        'sum by (job) (rate({__name__=~"prometheus_http_requests_total|http_requests_total"}[5m]))'
    )
    assert rules["groups"][0]["rules"][1]["expr"] == "avg by (instance) (node_load1)\n  > 4\n"  # merged: kept

    sites = [s for p in paths for s in load_sites(p)]
    before, after = [cut - 30 * MIN, cut - 10 * MIN], [cut + 10 * MIN, now]
    rows = verify_queries(sites, facts, client, before, after, {"job": "api"})
    by_where = {r["where"]: r for r in rows}
    m3_era = by_where["HTTP: panel 'Requests (M3 era)' query A"]
    assert m3_era["original_before"] == [1, 1] and m3_era["original_after"] == [0, 0]
    assert m3_era["rewritten_before"] == [1, 1] and m3_era["rewritten_after"] == [1, 1] and m3_era["ok"]
    thanos_era = by_where["HTTP: panel 'Details' / panel 'Requests (Thanos era)' query A"]
    assert thanos_era["original_before"] == [0, 0] and thanos_era["rewritten_before"] == [1, 1]
    # The Errors panel selects code=~"5..", which no series here has: no data on either side, reported.
    assert {r["where"] for r in rows if not r["ok"]} == {"HTTP: library panel 'Errors' / panel 'Errors' query A"}


def _cli_range(start: int, cut: int) -> list[str]:
    from m3migrate.timefmt import iso_ms

    return ["--start", iso_ms(start), "--end", iso_ms(cut)]


def test_cli_check_rewrite_and_verify(target, tmp_path: Path) -> None:
    from cli_helpers import run_cli

    client, start, cut, _ = target
    base = ["--target-query-url", client._base, *_cli_range(start, cut)]
    dash = tmp_path / "http-dashboard.json"
    shutil.copy(DATA / dash.name, dash)
    original = dash.read_text()

    check = run_cli("queries", "check", str(dash), *base)
    assert check.returncode == 1, check.stderr  # some panels see half the history
    assert (
        "| http-dashboard.json | HTTP: panel 'Requests (M3 era)' query A | prometheus_http_requests_total | both |"
        in (check.stdout)
    )

    dry = run_cli("queries", "rewrite", str(dash), *base)
    assert dry.returncode == 0, dry.stderr
    assert '+          "expr": "sum by (job) (rate({__name__=~\\"prometheus_http_requests_total|' in dry.stdout
    assert dash.read_text() == original

    out_dir = tmp_path / "out"
    wrote = run_cli("queries", "rewrite", str(dash), "--out-dir", str(out_dir), *base)
    assert wrote.returncode == 0, wrote.stderr
    assert dash.read_text() == original  # never in place unless --in-place
    assert json.loads((out_dir / dash.name).read_text())["panels"][0]["targets"][0]["expr"].startswith(
        'sum by (job) (rate({__name__=~"prometheus_http_requests_total|http_requests_total"'
    )

    verify = run_cli("queries", "verify-queries", str(out_dir / dash.name), str(dash), "--var", "job=api", *base)
    assert "| HTTP: panel 'Requests (M3 era)' query A | [1, 1] / [0, 0] | [1, 1] / [1, 1] | yes |" in verify.stdout

    bad = tmp_path / "bad-expr.json"
    shutil.copy(DATA / bad.name, bad)
    refused = run_cli("queries", "rewrite", str(dash), str(bad), "--out-dir", str(tmp_path / "out2"), *base)
    assert refused.returncode == 2 and "Typo panel" in refused.stderr and "nothing written" in refused.stderr
    assert not (tmp_path / "out2").exists()


def test_flow_publishes_the_report_as_artifacts(target, prefect_api) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from blocks import ThanosTarget
    from flows.queries import queries_flow
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.timefmt import iso_ms

    client, start, cut, _ = target
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(cut), migration_id="q-flow")
    block = ThanosTarget(write_url=f"{client._base}/api/v1/write", query_url=client._base)
    files = [str(DATA / "http-dashboard.json"), str(DATA / "rules.yml")]
    result = queries_flow(block, spec, files, verify=True, variables={"job": "api"})
    # flagged: 4 prometheus_http_requests_total, 1 http_requests_total, 2 node_load1 (double count)
    assert result["flagged"] == 7 and result["verified"] == 5 and result["both_sides"] == 4
    with get_client(sync_client=True) as api:
        keys = ["q-flow-queries-check", "q-flow-queries-report", "q-flow-queries-verify"]
        found = {a.key: a for a in api.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))}
    assert found["q-flow-queries-check"].type == "table"
    table = found["q-flow-queries-check"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"where": "group 'http' alert HighLoad", "metric": "node_load1", "found": "both"}.items() <= next(
        r for r in rows if r["metric"] == "node_load1" and "HighLoad" in r["where"]
    ).items()
    assert "| HTTP: panel 'Requests (M3 era)' query A | [1, 1] / [0, 0] | [1, 1] / [1, 1] | yes |" in (
        found["q-flow-queries-verify"].data
    )


def test_verify_reports_a_query_the_target_refuses_and_goes_on(target, tmp_path: Path) -> None:
    client, start, cut, now = target
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: g\n    rules:\n"
        "      - record: a:top\n        expr: topk($n, prometheus_http_requests_total)\n"
        "      - record: a:sum\n        expr: sum(prometheus_http_requests_total)\n"
    )
    facts = check_files([rules], client, start, cut, now)["facts"]
    rows = verify_queries(load_sites(rules), facts, client, [cut - 10 * MIN], [now])  # $n has no value: ".*"
    assert [r["ok"] for r in rows] == [False, True]
    assert "bad_data" in rows[0]["error"] and "rewritten" in rows[0]


def test_rewrite_touches_only_the_query_values_not_equal_text_elsewhere(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n  - name: x\n    rules:\n"
        "      - alert: x\n        expr: x\n        annotations:\n          summary: x\n"
        "      - record: 'job:x:sum'\n        expr: \"sum(x)\"  # total\n"
    )
    dash = tmp_path / "d.json"
    dash.write_text('{"title": "x", "panels": [{"title": "x", "targets": [{"expr": "x", "refId": "x"}]}]}\n')
    facts = {"x": SPLIT, "prometheus_x": SPLIT}
    changes = rewrite_files([rules, dash], facts)
    # A plain scalar that would read back as a YAML mapping ({...}) is single-quoted; a double-quoted one
    # keeps its style with escapes; names, annotations and comments that merely equal the query stay.
    assert changes[rules][1] == changes[rules][0].replace(
        "expr: x\n", "expr: '{__name__=~\"prometheus_x|x\"}'\n"
    ).replace('expr: "sum(x)"', 'expr: "sum({__name__=~\\"prometheus_x|x\\"})"')
    new_rules = yaml.safe_load(changes[rules][1])["groups"][0]
    assert [r["expr"] for r in new_rules["rules"]] == [
        '{__name__=~"prometheus_x|x"}',
        'sum({__name__=~"prometheus_x|x"})',
    ]
    assert new_rules["name"] == "x" and new_rules["rules"][0]["annotations"]["summary"] == "x"
    assert changes[dash][1] == (
        '{"title": "x", "panels": [{"title": "x", "targets": [{"expr": "{__name__=~\\"prometheus_x|x\\"}", '
        '"refId": "x"}]}]}\n'
    )


def test_verdicts_after_a_merged_migration() -> None:
    from m3migrate.checks.queries import verdict

    merged_overlap = NameFacts("prometheus_x", "x", False, True, True, True)
    [old] = find_selectors("prometheus_x")
    [bare] = find_selectors("x")
    [chosen] = find_selectors('x{_source!="m3db"}')
    assert verdict(old, MERGED) == "sees nothing: the data is under x"
    assert verdict(bare, MERGED) == ""
    assert verdict(bare, merged_overlap).startswith("double-counts")
    assert verdict(chosen, merged_overlap) == ""
    assert verdict(bare, SPLIT) == "half history: sees only the direct data"


@pytest.mark.servers
@pytest.mark.prefect
def test_check_rewrite_and_verify_after_a_real_migration(prefect_api, source_history, prometheus_target, tmp_path):
    """The last 6 h of the sandbox's prometheus_http_requests_total migrated by the migrate flow (through
    the M3 gateway), then the same metric written directly as http_requests_total after the cutover: the
    M3-era panel sees only the migrated half until it is rewritten, and then data on both sides."""
    from blocks import M3Source, ThanosTarget
    from flows.migrate import migrate
    from m3migrate.settings.spec import MigrationSpec
    from m3migrate.timefmt import iso_ms

    server = prometheus_target()
    cut = source_history.block_stats.end_ms  # the history every series has (the live tail is partial)
    start = cut - 360 * MIN
    spec = MigrationSpec(
        migration_id="queries-real",
        start=iso_ms(start),
        end=iso_ms(cut),
        match=['{__name__="prometheus_http_requests_total"}'],
    )
    source = M3Source(read_url=source_history.read_url, query_url=source_history.query_url)
    target = ThanosTarget(write_url=f"{server.url}/api/v1/write", query_url=server.url)
    summary = migrate(source, target, spec, state_dir=str(tmp_path / "state"))
    assert summary["series"] == 3  # three handler/code series in the sandbox
    now = cut + 30 * MIN
    labels = (("job", "prometheus"), ("instance", "prometheus-0:9090"), ("handler", "/api/v1/query"), ("code", "200"))
    _write(server.url, {(("__name__", "http_requests_total"), *labels): _counter(cut + 15_000, now)})

    dash = tmp_path / "http-dashboard.json"
    shutil.copy(DATA / dash.name, dash)
    with PromQLClient(server.url, EndpointSettings()) as client:
        report = check_files([dash], client, start, cut, now)
        rows = {(r["where"], r["metric"]): (r["found"], r["verdict"]) for r in report["rows"]}
        assert rows[("HTTP: panel 'Requests (M3 era)' query A", "prometheus_http_requests_total")] == (
            "both",
            "half history: sees only the migrated history",
        )
        assert rewrite_files([dash], report["facts"])[dash][1] != dash.read_text()
        before, after = [cut - 120 * MIN, cut - 10 * MIN], [cut + 10 * MIN, now]
        rows = verify_queries(load_sites(dash), report["facts"], client, before, after, {"job": "prometheus"})
    m3_era = {r["where"]: r for r in rows}["HTTP: panel 'Requests (M3 era)' query A"]
    assert m3_era["original_before"] == [1, 1] and m3_era["original_after"] == [0, 0], m3_era
    assert m3_era["rewritten_before"] == [1, 1] and m3_era["rewritten_after"] == [1, 1] and m3_era["ok"], m3_era
