"""Consecutive window reads are exact, and the reader learns an end-inclusive source from its answers.

A real Prometheus holds samples on a 15 s grid plus the first and last millisecond of every 60 min window.
Read window by window, every sample comes back exactly once: from the Prometheus itself, which reads
[start, end] (once an answer proved that, by a sample at the asked end + 1, the later reads ask for end
itself: seen in the request bodies), and through the M3 Coordinator gateway in front of it, which reads
[start, end) as m3 src/query/storage/index.go FetchOptionsToM3Options builds the query (EndExclusive):
it never answers its asked end, so it is never taken for end-inclusive and is always asked for end + 1,
pinned to its namespace or not. The expectation is the data as written, not what a read of ours returns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import snappy
from integration.test_m3_edges import SERIES, Labels, write

from m3migrate.clients.remote_read import END_SEMANTICS, RemoteReadClient, read_source
from m3migrate.plan.batches import Window, make_windows
from m3migrate.prompb import ReadRequest
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.wire.codec import Matcher, decode_read_response, float_bits
from sandbox.m3gateway import GatewayNamespace, M3Gateway
from sandbox.servers import Server, start_prometheus

pytestmark = [pytest.mark.servers]

HOUR = 3_600_000
ALL = [Matcher("__name__", "=~", "edge_.*|prometheus_edge_up")]
UNAGGREGATED_PIN = {"M3-Metrics-Type": "unaggregated"}


class WindowEdges:
    """Four 60 min windows and the samples written: a 15 s grid plus each window's first and last ms."""

    def __init__(self, now_ms: int) -> None:
        self.start = (now_ms - 6 * HOUR) // HOUR * HOUR
        self.end = self.start + 4 * HOUR - 1
        self.windows = make_windows(self.start, self.end, HOUR)
        stamps = set(range(self.start - HOUR, self.end + HOUR, 15_000))
        for w in self.windows:
            stamps |= {w.start_ms, w.end_ms}
        assert all(w.end_ms + 1 in stamps for w in self.windows), "the ms after each window holds a sample"
        self.data = {
            labels: [(t, float_bits(float(i * 1_000_000 + t % 999_983))) for t in sorted(stamps)]
            for i, labels in enumerate(SERIES)
        }

    def expected(self) -> dict[Labels, list[tuple[int, int]]]:
        return {k: [s for s in v if self.start <= s[0] <= self.end] for k, v in self.data.items()}


@pytest.fixture(scope="module")
def window_edges() -> WindowEdges:
    return WindowEdges(int(time.time() * 1000))


@pytest.fixture(scope="module")
def prometheus(window_edges: WindowEdges, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_prometheus(
        tmp_path_factory.mktemp("read-edges"), name="read-edges", remote_write_receiver=True, ooo_window="30d"
    )
    try:
        write(server.url, window_edges.data)
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def unproven_sources() -> Iterator[None]:
    """Every test starts as a new process does: no source proven end-inclusive."""
    END_SEMANTICS.forget()
    yield
    END_SEMANTICS.forget()


class AskedEnds:
    """An httpx client that records the end_timestamp_ms each remote-read request body asks for."""

    def __init__(self) -> None:
        self.ends: list[int] = []
        self.client = httpx.Client(timeout=30, event_hooks={"request": [self._record]})

    def _record(self, request: httpx.Request) -> None:
        body = ReadRequest.FromString(snappy.decompress(request.content))
        self.ends += [q.end_timestamp_ms for q in body.queries]


def read_windows(
    reader: RemoteReadClient, windows: list[Window], pin: dict[str, str] | None = None
) -> dict[Labels, list[tuple[int, int]]]:
    """Every window read one after the other, the samples of each series concatenated in read order."""
    got: dict[Labels, list[tuple[int, int]]] = {}
    for w in windows:
        for ts in decode_read_response(reader.read_raw(ALL, w.start_ms, w.end_ms, pin=pin), endpoint="").timeseries:
            key = tuple((label.name, label.value) for label in ts.labels)
            got.setdefault(key, []).extend((s.timestamp, float_bits(s.value)) for s in ts.samples)
    return got


def test_prometheus_windows_are_exact_and_later_reads_ask_for_the_inclusive_end(window_edges, prometheus):
    url = f"{prometheus.url}/api/v1/read"
    windows = window_edges.windows
    asked = AskedEnds()
    with asked.client, RemoteReadClient(SourceSettings(read_url=url), client=asked.client) as reader:
        assert read_windows(reader, windows) == window_edges.expected()
        assert reader.stats.edge_proofs == 1 and reader.stats.source_end == "inclusive"
        assert reader.stats.inclusive_end_reads == len(windows) - 1
    # the first read proves [start, end] by its sample at end + 1 (the next window's first ms); then end
    assert asked.ends == [windows[0].end_ms + 1] + [w.end_ms for w in windows[1:]]

    # another client of the same source in the process (the tool builds one per task and unit) knows it
    again = AskedEnds()
    with again.client, RemoteReadClient(SourceSettings(read_url=url), client=again.client) as reader:
        assert read_windows(reader, windows[:2]) == {
            k: [s for s in v if s[0] <= windows[1].end_ms] for k, v in window_edges.expected().items()
        }
        assert reader.stats.edge_proofs == 0 and reader.stats.inclusive_end_reads == 2
    assert again.ends == [w.end_ms for w in windows[:2]]

    # a read pinned to a namespace is another source: it learns for itself, starting from end + 1
    assert END_SEMANTICS.of(read_source(url, UNAGGREGATED_PIN)) == "unproven"


def test_m3_gateway_windows_are_exact_and_never_taken_for_end_inclusive(window_edges, prometheus):
    windows = window_edges.windows
    with M3Gateway({"default": GatewayNamespace(prometheus.url, retention="30d")}) as m3:
        # the same Prometheus, read directly, is proven end-inclusive first: that says nothing about M3
        with RemoteReadClient(SourceSettings(read_url=f"{prometheus.url}/api/v1/read")) as direct:
            direct.read_raw(ALL, windows[0].start_ms, windows[0].end_ms)
            assert direct.stats.source_end == "inclusive"
        for pin in (None, UNAGGREGATED_PIN):
            m3.reads.clear()
            with RemoteReadClient(SourceSettings(read_url=m3.read_url)) as reader:
                for _ in range(2):  # a second pass: nothing learnt from the first changes the reads
                    assert read_windows(reader, windows, pin) == window_edges.expected(), pin
                assert reader.stats.edge_proofs == 0 and reader.stats.inclusive_end_reads == 0
                assert reader.stats.source_end == "unproven"
            assert [(ns, start, end) for ns, start, end in m3.reads] == [
                ("default", w.start_ms, w.end_ms + 1) for w in windows
            ] * 2, "M3 is asked for [start, end + 1) every time"
