"""Tiered migration of history: each part of the range comes from the finest M3 namespace that still holds it.

The sandbox's M3 cluster is the gateway in front of three real Prometheus TSDBs: the unaggregated
namespace (6 h retention) and two aggregated ones (1m:12h, 5m:40d) holding real downsampled data, the
last value of every resolution window as M3's aggregator writes it. Every TSDB holds the whole history,
so only routing decides what a read returns: a part read from the wrong namespace shows up as the wrong
resolution. The expectation is the namespaces' data cut at the tier boundaries the retentions and the
margin imply, computed here from the retentions, not from the plan.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from test_m3_edges import write

from blocks import M3Source, ThanosTarget
from m3migrate.clients.m3admin import M3Namespace
from m3migrate.plan.tiers import Tier, plan_tiers, split_by_tier
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import float_bits
from sandbox.compare import diff, read_all
from sandbox.m3gateway import GatewayNamespace, M3Gateway, downsample
from sandbox.servers import Server, start_prometheus

MINUTE = 60_000
HOUR = 60 * MINUTE
Labels = tuple[tuple[str, str], ...]
SERIES: list[Labels] = [
    (("__name__", "tier_requests_total"), ("job", "api")),
    (("__name__", "tier_temperature"), ("zone", "a")),
]
NAMESPACES = [("default", None, "6h"), ("agg_1m", "1m", "12h"), ("agg_5m", "5m", "40d")]


def _ns(name: str, resolution_ms: int | None, retention_ms: int, ready: bool = True) -> M3Namespace:
    return M3Namespace(name, resolution_ms is not None, resolution_ms, retention_ms, 2 * HOUR, 0, 0, ready, True)


# -- planning (no servers) ----------------------------------------------------------------------------


def test_tiers_take_the_finest_namespace_that_still_holds_each_part():
    now = 100 * 24 * HOUR + 17 * MINUTE
    namespaces = [
        _ns("default", None, 48 * HOUR),
        _ns("a1m", MINUTE, 40 * 24 * HOUR),
        _ns("a5m", 5 * MINUTE, 365 * 24 * HOUR),
    ]
    start, end = now - 90 * 24 * HOUR, now - HOUR
    tiers = plan_tiers(namespaces, start, end, align_ms=HOUR, margin_ms=6 * HOUR, now_ms=now)
    raw_from = -(-(now - 48 * HOUR + 6 * HOUR) // HOUR) * HOUR
    agg_from = -(-(now - 40 * 24 * HOUR + 6 * HOUR) // HOUR) * HOUR
    assert tiers == [
        Tier("a5m", 5 * MINUTE, 365 * 24 * HOUR, start, agg_from - 1),
        Tier("a1m", MINUTE, 40 * 24 * HOUR, agg_from, raw_from - 1),
        Tier("default", 0, 48 * HOUR, raw_from, end),
    ]
    assert tiers[0].headers() == {"M3-Metrics-Type": "aggregated", "M3-Storage-Policy": "5m:1y"}
    assert tiers[2].headers() == {"M3-Metrics-Type": "unaggregated"}
    # every millisecond of the range in exactly one tier, in order
    parts = list(split_by_tier(tiers, start, end))
    assert parts[0][1] == start and parts[-1][2] == end
    assert all(p[2] + 1 == q[1] for p, q in itertools.pairwise(parts))


def test_a_range_within_the_raw_retention_is_one_pinned_tier_and_unready_namespaces_are_skipped():
    now = 10 * 24 * HOUR
    namespaces = [_ns("default", None, 48 * HOUR), _ns("a1m", MINUTE, 40 * 24 * HOUR, ready=False)]
    assert plan_tiers(namespaces, now - 10 * HOUR, now, align_ms=HOUR, now_ms=now) == [
        Tier("default", 0, 48 * HOUR, now - 10 * HOUR, now)
    ]
    # older than the raw namespace keeps and no ready aggregated one: read what the raw one still has
    tiers = plan_tiers(namespaces, now - 5 * 24 * HOUR, now, align_ms=HOUR, now_ms=now)
    assert [(t.namespace, t.start_ms) for t in tiers] == [("default", now - 5 * 24 * HOUR)]


def test_an_expired_tier_is_refused_not_read():
    from m3migrate.plan.tiers import TierExpired

    tier = Tier("default", 0, 48 * HOUR, 0, HOUR)
    tier.check_not_expired(0, now_ms=48 * HOUR)
    with pytest.raises(TierExpired, match="may already be deleted"):
        tier.check_not_expired(0, now_ms=48 * HOUR + 1)


# -- a whole migration through the sandbox's M3 cluster ------------------------------------------------


@dataclass
class Cluster:
    gateway: M3Gateway
    now_ms: int
    raw: dict[Labels, list[tuple[int, int]]]
    by_namespace: dict[str, dict[Labels, list[tuple[int, int]]]]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    now = int(time.time() * 1000)
    first = (now - 30 * HOUR) // MINUTE * MINUTE
    raw = {}
    for i, labels in enumerate(SERIES):
        stamps = range(first + 7 * i, now - 10 * MINUTE, 15_000)
        raw[labels] = [(t, float_bits(float(i * 1000 + (t // 15_000) % 4099) + 0.25)) for t in stamps]
    work = tmp_path_factory.mktemp("m3-cluster")
    servers: list[Server] = []
    namespaces: dict[str, GatewayNamespace] = {}
    by_namespace: dict[str, dict[Labels, list[tuple[int, int]]]] = {}
    try:
        for name, resolution, retention in NAMESPACES:
            server = start_prometheus(work, name=name, remote_write_receiver=True, ooo_window="30d")
            servers.append(server)
            held = raw if resolution is None else downsample(raw, int(resolution[:-1]) * MINUTE)
            write(server.url, held)
            by_namespace[name] = held
            namespaces[name] = GatewayNamespace(server.url, retention=retention, resolution=resolution)
        with M3Gateway(namespaces) as gateway:
            yield Cluster(gateway, now, raw, by_namespace)
    finally:
        for server in servers:
            server.stop()


def test_downsampled_namespaces_hold_the_last_value_per_window_at_its_end(cluster):
    raw = cluster.raw[SERIES[0]]
    agg = dict(cluster.by_namespace["agg_5m"][SERIES[0]])
    window_end = (raw[10][0] // (5 * MINUTE) + 1) * (5 * MINUTE)
    last_in_window = [bits for t, bits in raw if window_end - 5 * MINUTE <= t < window_end][-1]
    assert agg[window_end] == last_in_window


@pytest.mark.servers
@pytest.mark.prefect
def test_tiered_migration_reads_each_range_from_its_namespace_and_verifies_per_tier(
    prefect_api, cluster, prometheus_target, tmp_path
):
    from flows.migrate import migrate
    from flows.verify import verify_flow

    now = cluster.now_ms
    start = (now - 28 * HOUR) // HOUR * HOUR
    end = (now - HOUR) // HOUR * HOUR - 1
    target = prometheus_target()
    gw = cluster.gateway
    source = M3Source(read_url=gw.read_url, query_url=gw.url)
    target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    spec = MigrationSpec(migration_id="tiers", start=iso_ms(start), end=iso_ms(end), tier_margin_hours=1)
    summary = migrate(source, target_block, spec, state_dir=str(tmp_path))

    # the boundaries the retentions imply (6 h raw, 12 h at 1m, the rest at 5m), 1 h margin, hour grid
    def boundary(retention_h: int) -> int:
        return -(-(now - retention_h * HOUR + HOUR) // HOUR) * HOUR

    raw_from, agg1_from = boundary(6), boundary(12)
    # the clock moved on between here and planning by seconds, never by a whole hour boundary... unless it
    # crossed one: then the plan's boundaries are one hour later, which the saved plan shows
    plan = json.loads((tmp_path / "tiers" / "plan.json").read_text())
    planned = [(t["namespace"], t["start_ms"], t["end_ms"]) for t in plan["tiers"]]
    if planned[1][1] != agg1_from:
        raw_from, agg1_from = raw_from + HOUR, agg1_from + HOUR
    assert planned == [
        ("agg_5m", start, agg1_from - 1),
        ("agg_1m", agg1_from, raw_from - 1),
        ("default", raw_from, end),
    ]
    expected: dict[Labels, list[tuple[int, int]]] = {}
    for name, a, b in planned:
        for labels, samples in cluster.by_namespace[name].items():
            key = tuple(sorted((*labels, ("_source", "m3db"))))
            expected.setdefault(key, []).extend(s for s in samples if a <= s[0] <= b)
    assert diff(expected, read_all(target.url, start - HOUR, end + HOUR)) == []
    assert summary["samples"] == sum(len(s) for s in expected.values())
    assert [row["namespace"] for row in summary["tiers"]] == ["agg_5m", "agg_1m", "default"]
    assert {name for name, _, _ in gw.reads} == {"agg_5m", "agg_1m", "default"}

    result = verify_flow(source, target_block, spec, state_dir=str(tmp_path))
    assert result["ok"] and result["mismatches"] == 0 and result["missing"] == 0
