"""No sample is lost at a range edge, on an end-exclusive source (M3) and an end-inclusive one (Prometheus).

The source holds samples on every edge a migration has: its start and end (and the millisecond on either
side), the first and last millisecond of every window, both sides of every time split, and the first
millisecond replication reads. The same migration, replication, blocks backfill and verification run
against the Prometheus itself ([start, end] reads) and through the M3 Coordinator gateway in front of it
([start, end) reads, as m3 src/query/storage/index.go FetchOptionsToM3Options builds them); the
expectation is the data as written, sample for sample, not what any read of ours returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import snappy

from blocks import M3Source, ThanosBucket, ThanosTarget
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import SourceLimitExceeded
from m3migrate.plan.batches import make_windows
from m3migrate.prompb import ReadRequest, ReadResponse, TimeSeries
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import Matcher, encode_labels, float_bits, pack_write_requests
from sandbox.compare import diff, read_all
from sandbox.m3gateway import LIMITED_VALUE, GatewayNamespace, M3Gateway
from sandbox.servers import Server, start_prometheus

pytestmark = [pytest.mark.servers]

MINUTE = 60_000
HOUR = 60 * MINUTE
Labels = tuple[tuple[str, str], ...]
SERIES: list[Labels] = [
    (("__name__", "edge_requests_total"), ("job", "api")),
    (("__name__", "edge_temperature"), ("job", "api"), ("zone", "a")),
    (("__name__", "prometheus_edge_up"), ("job", "db")),
]


class Edges:
    """The migration's range and the samples written: a 15 s grid plus every edge millisecond."""

    def __init__(self, now_ms: int) -> None:
        base = (now_ms - 7 * HOUR) // HOUR * HOUR
        self.start = base + 10 * MINUTE
        self.end = base + 4 * HOUR + 30 * MINUTE - 1
        self.replicate_until = self.end + 40 * MINUTE
        stamps = set(range(self.start - 5 * MINUTE, self.replicate_until + 5 * MINUTE, 15_000))
        for w in make_windows(self.start, self.end, HOUR):
            mid = w.start_ms + (w.end_ms - w.start_ms) // 2  # the transfer's time split: [s, mid], [mid + 1, e]
            stamps |= {w.start_ms, w.end_ms, mid, mid + 1, w.end_ms + 1}
        for k in range(-1, 4):
            stamps |= {self.start + k, self.end + k}
        for t in range(base, self.replicate_until, 2 * HOUR):  # 2 h block edges
            stamps |= {t - 1, t}
        self.stamps = sorted(stamps)
        self.data: dict[Labels, list[tuple[int, int]]] = {}
        for i, labels in enumerate(SERIES):
            # 0.0 values make record sizes uneven (the strided fast path and the upb path both run)
            values = [0.0 if (t // 15_000 + i) % 7 == 0 else float(i * 10_000 + t % 9973) + 0.5 for t in self.stamps]
            self.data[labels] = [(t, float_bits(v)) for t, v in zip(self.stamps, values, strict=True)]

    def expected(self, start: int, end: int, label: tuple[str, str] | None = ("_source", "m3db")) -> dict:
        out = {}
        for labels, samples in self.data.items():
            key = tuple(sorted((*labels, label))) if label else labels
            kept = [s for s in samples if start <= s[0] <= end]
            if kept:
                out[key] = kept
        return out


def write(url: str, data: dict[Labels, list[tuple[int, int]]]) -> None:
    import struct

    pairs = []
    for labels, samples in data.items():
        ts = TimeSeries()
        for t, bits in samples:
            ts.samples.add(timestamp=t, value=struct.unpack("<d", struct.pack("<Q", bits))[0])
        pairs.append((encode_labels(sorted(labels)), ts))
    with RemoteWriteClient(TargetSettings(write_url=f"{url}/api/v1/write")) as writer:
        for chain in pack_write_requests(pairs, max_bytes=1 << 22, max_samples=50_000):
            for request in chain.requests:
                writer.write(request)


@pytest.fixture(scope="module")
def edges() -> Edges:
    return Edges(int(time.time() * 1000))


@pytest.fixture(scope="module")
def edge_source(edges: Edges, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real Prometheus holding the edge samples (written by remote write, out of order allowed)."""
    server = start_prometheus(
        tmp_path_factory.mktemp("edge-source"), name="edge-source", remote_write_receiver=True, ooo_window="30d"
    )
    try:
        write(server.url, edges.data)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["prometheus", "m3-gateway"])
def source_url(request: pytest.FixtureRequest, edge_source: Server) -> Iterator[tuple[str, str]]:
    """(read URL, query URL) of the source: the Prometheus itself or the M3 gateway in front of it. The
    gateway's range limit (30 min, as M3-Limit-Max-Range / limits.perQuery.maxFetchedRange) forces every
    60 min window to be split in time."""
    if request.param == "prometheus":
        yield f"{edge_source.url}/api/v1/read", edge_source.url
        return
    with M3Gateway({"default": GatewayNamespace(edge_source.url, retention="30d")}, max_range="30m") as m3:
        yield m3.read_url, m3.url


def _blocks(source_url: tuple[str, str], target_url: str) -> tuple[M3Source, ThanosTarget]:
    read_url, query_url = source_url
    return (
        M3Source(read_url=read_url, query_url=query_url),
        ThanosTarget(write_url=f"{target_url}/api/v1/write", query_url=target_url),
    )


def _target(target: Server, edges: Edges) -> dict:
    return read_all(target.url, edges.start - HOUR, edges.replicate_until + HOUR)


# -- the gateway itself ---------------------------------------------------------------------------------


def _raw_read(url: str, start: int, end: int, headers: dict[str, str] | None = None) -> httpx.Response:
    request = ReadRequest(accepted_response_types=[ReadRequest.SAMPLES])
    query = request.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
    query.matchers.add(type=0, name="__name__", value=SERIES[0][0][1])
    return httpx.post(
        url,
        content=snappy.compress(request.SerializeToString()),
        headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy", **(headers or {})},
        timeout=30,
    )


def _stamps(answer: httpx.Response) -> list[int]:
    rr = ReadResponse.FromString(snappy.decompress(answer.content))
    return [s.timestamp for ts in rr.results[0].timeseries for s in ts.samples]


def test_gateway_reads_end_exclusive_where_prometheus_reads_end_inclusive(edges, edge_source):
    a, b = edges.start, edges.start + 2
    direct = _stamps(_raw_read(f"{edge_source.url}/api/v1/read", a, b))
    with M3Gateway({"default": GatewayNamespace(edge_source.url, retention="30d")}) as m3:
        through_m3 = _stamps(_raw_read(m3.read_url, a, b))
    assert direct == [a, a + 1, a + 2]
    assert through_m3 == [a, a + 1], "M3 reads [start, end)"


def test_our_reads_are_the_same_inclusive_range_on_both(edges, edge_source):
    a, b = edges.start - 1, edges.start + 2
    with M3Gateway({"default": GatewayNamespace(edge_source.url, retention="30d")}) as m3:
        for url in (f"{edge_source.url}/api/v1/read", m3.read_url):
            with RemoteReadClient(SourceSettings(read_url=url)) as reader:
                got = reader.read([Matcher("__name__", "=", SERIES[0][0][1])], a, b)
            assert [s.timestamp for s in got.timeseries[0].samples] == [a, a + 1, a + 2, a + 3], url


def test_gateway_limits_fail_when_exhaustive_and_truncate_with_a_header_otherwise(edges, edge_source):
    every = {"Content-Type": "application/x-protobuf"}
    with M3Gateway({"default": GatewayNamespace(edge_source.url, retention="30d")}) as m3:
        request = ReadRequest()
        query = request.queries.add(start_timestamp_ms=edges.start, end_timestamp_ms=edges.start + MINUTE)
        query.matchers.add(type=2, name="__name__", value="edge_.*")  # two series
        body = snappy.compress(request.SerializeToString())
        refused = httpx.post(
            m3.read_url,
            content=body,
            headers={**every, "M3-Limit-Max-Series": "1", "M3-Limit-Require-Exhaustive": "true"},
        )
        assert refused.status_code == 400
        assert "query exceeded limit: require_exhaustive=true, series_limit=1, series_matched=2" in refused.text
        truncated = httpx.post(m3.read_url, content=body, headers={**every, "M3-Limit-Max-Series": "1"})
        assert truncated.status_code == 200 and truncated.headers["M3-Results-Limited"] == LIMITED_VALUE
        assert len(ReadResponse.FromString(snappy.decompress(truncated.content)).results[0].timeseries) == 1
        settings = SourceSettings(read_url=m3.read_url, limit_max_series=1)
        with RemoteReadClient(settings) as reader, pytest.raises(SourceLimitExceeded):
            reader.read([Matcher("__name__", "=~", "edge_.*")], edges.start, edges.start + MINUTE)
        ranged = _raw_read(
            m3.read_url,
            edges.start,
            edges.start + HOUR,
            {"M3-Limit-Max-Range": "30m", "M3-Limit-Require-Exhaustive": "true"},
        )
        assert ranged.status_code == 400 and "range_limit=30m0s, range_matched=1h0m0s" in ranged.text
        cut = _raw_read(m3.read_url, edges.start, edges.start + HOUR, {"M3-Limit-Max-Range": "30m"})
        assert min(_stamps(cut)) == edges.start + 30 * MINUTE, "without exhaustive limits M3 cuts the range silently"


def test_gateway_routes_by_pinning_headers_and_by_retention(tmp_path):
    """Two namespaces in two real TSDBs: pinned reads go where the headers say; unpinned, M3 picks the
    unaggregated namespace while its retention covers the start, else the finest aggregated one."""
    now = int(time.time() * 1000)
    raw = start_prometheus(tmp_path, name="ns-raw", remote_write_receiver=True, ooo_window="30d")
    agg = start_prometheus(tmp_path, name="ns-1m", remote_write_receiver=True, ooo_window="30d")
    try:
        t = now - 3 * HOUR
        write(raw.url, {SERIES[0]: [(t, float_bits(1.0))]})
        write(agg.url, {SERIES[0]: [(t, float_bits(2.0))]})
        namespaces = {
            "default": GatewayNamespace(raw.url, retention="2h"),
            "agg_1m": GatewayNamespace(agg.url, retention="40d", resolution="1m"),
        }
        with M3Gateway(namespaces) as m3:

            def value(headers: dict[str, str], start: int) -> float:
                rr = ReadResponse.FromString(snappy.decompress(_raw_read(m3.read_url, start, t + 1, headers).content))
                return rr.results[0].timeseries[0].samples[0].value

            assert value({"M3-Metrics-Type": "unaggregated"}, t) == 1.0
            assert value({"M3-Metrics-Type": "aggregated", "M3-Storage-Policy": "1m:40d"}, t) == 2.0
            assert value({"M3-Restrict-By-Storage-Policies": "1m:40d"}, t) == 2.0
            assert value({}, t) == 2.0, "3 h ago is past the unaggregated retention (2 h)"
            assert m3.route({}, now - HOUR) == "default"
            bad = _raw_read(m3.read_url, t, t + 1, {"M3-Metrics-Type": "aggregated", "M3-Storage-Policy": "5m:1y"})
            assert bad.status_code == 400
            doc = httpx.get(f"{m3.url}/api/v1/services/m3db/namespace").json()
            assert set(doc["registry"]["namespaces"]) == {"default", "agg_1m"}
    finally:
        raw.stop()
        agg.stop()


# -- migrate, replicate, blocks, verify: exact on both -------------------------------------------------


@pytest.mark.prefect
def test_migration_and_replication_keep_every_edge_sample(prefect_api, edges, source_url, prometheus_target, tmp_path):
    from flows.migrate import migrate
    from flows.replicate import replicate

    target = prometheus_target()
    source_block, target_block = _blocks(source_url, target.url)
    spec = MigrationSpec(migration_id="edges", start=iso_ms(edges.start), end=iso_ms(edges.end))
    summary = migrate(source_block, target_block, spec, state_dir=str(tmp_path))
    expected = edges.expected(edges.start, edges.end)
    assert summary["samples"] == sum(len(s) for s in expected.values())
    assert diff(expected, _target(target, edges)) == []

    until = datetime.fromtimestamp(edges.replicate_until / 1000, UTC)
    replicate(source_block, target_block, spec, until=until, state_dir=str(tmp_path))
    assert diff(edges.expected(edges.start, edges.replicate_until), _target(target, edges)) == []


@pytest.mark.prefect
def test_blocks_keep_every_edge_sample(prefect_api, edges, source_url, prometheus_target, tmp_path):
    from flows.migrate import migrate

    target = prometheus_target()
    source_block, target_block = _blocks(source_url, target.url)
    bucket_dir = tmp_path / "bucket"
    spec = MigrationSpec(
        migration_id="edge-blocks", start=iso_ms(edges.start), end=iso_ms(edges.end), write_mode="blocks"
    )
    migrate(
        source_block, target_block, spec, state_dir=str(tmp_path / "state"), bucket=ThanosBucket(url=str(bucket_dir))
    )
    import shutil

    data = tmp_path / "served"
    shutil.copytree(bucket_dir, data, ignore=shutil.ignore_patterns("m3migrate"))
    with start_prometheus(tmp_path, name="blocks", data_dir=Path(data)) as served:
        assert diff(edges.expected(edges.start, edges.end), _target(served, edges)) == []


@pytest.mark.prefect
def test_verify_sees_a_missing_sample_on_a_window_edge(prefect_api, edges, source_url, prometheus_target, tmp_path):
    """The target lacks only the sample on the last millisecond of the first window: an end-exclusive read
    of that window does not see it on the source either, so only an exact read finds the difference."""
    from flows.verify import verify_flow
    from m3migrate.checks.verify import VerificationFailed

    target = prometheus_target(ooo_window="30d")
    first = make_windows(edges.start, edges.end, HOUR)[0]
    expected = edges.expected(edges.start, edges.end, label=None)
    assert any(t == first.end_ms for s in expected.values() for t, _ in s)
    labelled = {tuple(sorted((*k, ("_source", "m3db")))): v for k, v in expected.items()}
    write(target.url, {k: [s for s in v if s[0] != first.end_ms] for k, v in labelled.items()})
    source_block, target_block = _blocks(source_url, target.url)
    spec = MigrationSpec(migration_id="edge-verify", start=iso_ms(edges.start), end=iso_ms(edges.end))
    with pytest.raises(VerificationFailed) as failed:
        verify_flow(source_block, target_block, spec, state_dir=str(tmp_path), window_minutes=60)
    assert failed.value.summary["mismatches"] >= 1

    write(target.url, {k: [s for s in v if s[0] == first.end_ms] for k, v in labelled.items()})
    summary = verify_flow(source_block, target_block, spec, state_dir=str(tmp_path), window_minutes=60)
    assert summary["mismatches"] == 0
