"""The M3 gateway passes Prometheus' remote-read answers through at the wire level, as M3 would answer.

Prometheus 2.42 answers a series whose chunk overlaps the range but holds no sample in it, with no
samples (storage/remote/codec.go ToQueryResult appends every series tsdb's blockBaseSeriesSet yields,
and that one keeps any chunk overlapping [mint, maxt]); M3 leaves such series out. Everything else
passes byte for byte: the gateway's answer is Prometheus' answer for [start, end - 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import snappy

from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.prompb import ReadRequest, ReadResponse, TimeSeries
from m3migrate.settings.endpoints import TargetSettings
from m3migrate.wire.codec import encode_labels, pack_write_requests
from sandbox.m3gateway import LIMITED_VALUE, GatewayNamespace, M3Gateway
from sandbox.servers import Server, start_prometheus

pytestmark = [pytest.mark.servers]

T0 = 1_700_000_000_000 // 3_600_000 * 3_600_000  # an hour boundary, far in the past of "now"
MINUTE = 60_000
# gap: one sample before and one after a 10-minute hole, in one head chunk; dense: a sample per minute
SERIES = {
    "gap": ((("__name__", "wire_gap"), ("job", "a")), [T0, T0 + 10 * MINUTE]),
    "dense1": ((("__name__", "wire_dense"), ("job", "a")), [T0 + k * MINUTE for k in range(11)]),
    "dense2": ((("__name__", "wire_dense"), ("job", "b")), [T0 + k * MINUTE for k in range(11)]),
}
HEADERS = {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_prometheus(
        Path(tmp_path_factory.mktemp("wire")), name="wire-source", remote_write_receiver=True, ooo_window="100y"
    )
    try:
        pairs = []
        for labels, stamps in SERIES.values():
            ts = TimeSeries()
            for t in stamps:
                ts.samples.add(timestamp=t, value=float(t % 977) + 0.5)
            pairs.append((encode_labels(sorted(labels)), ts))
        with RemoteWriteClient(TargetSettings(write_url=f"{server.url}/api/v1/write")) as writer:
            for chain in pack_write_requests(pairs, max_bytes=1 << 20, max_samples=10_000):
                for request in chain.requests:
                    writer.write(request)
        yield server
    finally:
        server.stop()


def _read(url: str, start: int, end: int, headers: dict[str, str] | None = None) -> httpx.Response:
    request = ReadRequest(accepted_response_types=[ReadRequest.SAMPLES])
    query = request.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
    query.matchers.add(type=2, name="__name__", value="wire_.*")
    answer = httpx.post(
        url, content=snappy.compress(request.SerializeToString()), headers={**HEADERS, **(headers or {})}
    )
    assert answer.status_code == 200, answer.text
    return answer


def _series(answer: httpx.Response) -> dict[str, int]:
    result = ReadResponse.FromString(snappy.decompress(answer.content)).results[0]
    return {",".join(f"{lb.name}={lb.value}" for lb in ts.labels): len(ts.samples) for ts in result.timeseries}


def test_prometheus_answers_a_series_without_samples_and_the_gateway_leaves_it_out(source):
    a, b = T0 + 2 * MINUTE, T0 + 5 * MINUTE  # inside the gap
    direct = _series(_read(f"{source.url}/api/v1/read", a, b - 1))
    assert direct == {"__name__=wire_dense,job=a": 3, "__name__=wire_dense,job=b": 3, "__name__=wire_gap,job=a": 0}
    with M3Gateway({"default": GatewayNamespace(source.url, retention="100y")}) as m3:
        through = _series(_read(m3.read_url, a, b))
        # the series limit counts what M3 would return: 2 series, not 3
        exact = _read(m3.read_url, a, b, {"M3-Limit-Max-Series": "2", "M3-Limit-Require-Exhaustive": "true"})
        cut = _read(m3.read_url, a, b, {"M3-Limit-Max-Series": "1"})
    assert through == {"__name__=wire_dense,job=a": 3, "__name__=wire_dense,job=b": 3}
    assert _series(exact) == through and "M3-Results-Limited" not in exact.headers
    assert _series(cut) == {"__name__=wire_dense,job=a": 3} and cut.headers["M3-Results-Limited"] == LIMITED_VALUE


def test_an_answer_with_nothing_to_change_is_prometheus_answer_byte_for_byte(source):
    a, b = T0, T0 + 10 * MINUTE
    direct = _read(f"{source.url}/api/v1/read", a, b - 1)
    with M3Gateway({"default": GatewayNamespace(source.url, retention="100y")}) as m3:
        through = _read(m3.read_url, a, b)
        two = ReadRequest()
        for start, end in ((a, b), (T0 + 2 * MINUTE, T0 + 5 * MINUTE)):
            q = two.queries.add(start_timestamp_ms=start, end_timestamp_ms=end)
            q.matchers.add(type=2, name="__name__", value="wire_.*")
        both = httpx.post(m3.read_url, content=snappy.compress(two.SerializeToString()), headers=HEADERS)
    assert snappy.decompress(through.content) == snappy.decompress(direct.content)
    assert _series(through) == {
        "__name__=wire_dense,job=a": 10,
        "__name__=wire_dense,job=b": 10,
        "__name__=wire_gap,job=a": 1,
    }
    results = ReadResponse.FromString(snappy.decompress(both.content)).results
    assert [len(r.timeseries) for r in results] == [3, 2]  # one result per query, the empty series left out
    assert (
        results[0].SerializeToString()
        == ReadResponse.FromString(snappy.decompress(direct.content)).results[0].SerializeToString()
    )
