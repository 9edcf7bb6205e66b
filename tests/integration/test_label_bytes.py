"""Label bytes that are not UTF-8: M3 keeps tags as raw bytes (m3's prompb types.proto declares Label
name/value ``bytes``), so a remote read may carry them. They must not fail the read: such a series is
migrated byte-exact where the target takes it (Prometheus 2.42's receiver stores it: its gogo-proto
strings are not validated), and set aside, named with the reason, where the target refuses it (Prometheus
3's remote-write handler: ``invalid metric name or labels``, HTTP 400 for the whole request)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import snappy
from google.protobuf.message import DecodeError

from blocks import M3Source, ThanosTarget
from m3migrate.backfill.windows import backfill_from_source, block_windows
from m3migrate.clients.bucket import Bucket
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.plan.batches import Batch, Window
from m3migrate.prompb import ReadResponse, TimeSeries, WriteRequest
from m3migrate.relabel import Relabeler, RelabelRule
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.unit import Transfer
from m3migrate.wire.codec import Matcher, _field1, parse_read_response, series_labels, single_request, uvarint
from m3migrate.wire.walk import Counters, LabelCache, pack_read_response
from sandbox.m3gateway import GatewayNamespace, M3Gateway
from sandbox.servers import start_prometheus

MIN_MS = 60_000
BAD, RAW = b"bad0", b"\xffad0"  # the gateway answers RAW where the source holds BAD


def _label(name: bytes, value: bytes) -> bytes:
    body = b"\x0a" + uvarint(len(name)) + name + b"\x12" + uvarint(len(value)) + value
    return b"\x0a" + uvarint(len(body)) + body


def _series(labels: list[tuple[bytes, bytes]], t0: int, n: int) -> bytes:
    ts = TimeSeries()
    for k in range(n):
        ts.samples.add(timestamp=t0 + k * MIN_MS, value=k + 0.25)
    body = b"".join(_label(a, b) for a, b in labels) + ts.SerializeToString()
    return b"\x0a" + uvarint(len(body)) + body


def test_wire_path_passes_non_utf8_labels_byte_exact_in_a_request_of_their_own():
    ok = _series([(b"__name__", b"m"), (b"v", b"ok")], 1000, 3)
    bad = _series([(b"__name__", b"m"), (b"v", RAW)], 1000, 3)
    raw = b"\x0a" + uvarint(len(ok) + len(bad)) + ok + bad
    keys = frozenset({(("__name__", "m"), ("v", "ok")), (("__name__", "m"), ("v", "\udcffad0"))})
    labels = LabelCache(Relabeler([], add_labels={"_source": "m3db"}), endpoint="source")
    counters = Counters()
    chains = pack_read_response(raw, keys, labels, counters, max_bytes=1 << 20, max_samples=10_000)
    assert counters.series == 2 and counters.samples == 6 and not counters.skipped
    plain, alone = chains
    assert plain.non_utf8 == "" and alone.non_utf8 == '{__name__="m", v="\\xffad0"}'
    assert [len(r.parts) for c in chains for r in c.requests] == [1, 1]  # never in one request together
    sent = alone.requests[0].parts[0]
    assert b"\x12\x04" + RAW in sent  # the value's bytes, unchanged
    assert sent.replace(RAW, BAD) == _series([(b"__name__", b"m"), (b"_source", b"m3db"), (b"v", BAD)], 1000, 3)


def test_the_samples_per_second_budget_counts_series_with_non_utf8_labels():
    """A source's max_samples_per_second is charged with every sample read, such series' included."""
    from m3migrate.clients.remote_read import count_samples

    ok = _series([(b"__name__", b"m"), (b"v", b"ok")], 1000, 3)
    bad = _series([(b"__name__", b"m"), (b"v", RAW)], 1000, 4)
    assert count_samples(b"\x0a" + uvarint(len(ok) + len(bad)) + ok + bad) == 7


def test_a_rule_that_cannot_read_non_utf8_bytes_sets_only_that_series_aside():
    ok = _series([(b"__name__", b"m"), (b"v", b"ok")], 1000, 2)
    bad = _series([(b"__name__", b"m"), (b"v", RAW)], 1000, 2)
    raw = b"\x0a" + uvarint(len(ok) + len(bad)) + ok + bad
    keys = frozenset({(("__name__", "m"), ("v", "ok")), (("__name__", "m"), ("v", "\udcffad0"))})
    rule = RelabelRule(source_labels=["v"], regex="(.*)", target_label="w", replacement="$1")
    counters = Counters()
    labels = LabelCache(Relabeler([rule]), endpoint="source")
    chains = pack_read_response(raw, keys, labels, counters, max_bytes=1 << 20, max_samples=10_000)
    assert counters.series == 1 and counters.samples == 2 and len(chains) == 1
    assert len(counters.skipped) == 1 and counters.skipped[0].startswith('{__name__="m", v="\\xffad0"}: ')
    assert "not UTF-8" in counters.skipped[0]


@pytest.fixture
def m3_with_raw_bytes(prometheus_target):
    """An M3 gateway over a source holding m{v="ok1"}, m{v="ok2"}, m{v="bad0"}; remote read answers the
    last one's value as the bytes ff 'ad0' (not UTF-8), as an M3 holding such a tag does."""
    source = prometheus_target(name="source")
    t0 = (int(time.time() * 1000) - 3 * 3_600_000) // 1_800_000 * 1_800_000
    body = b"".join(_series([(b"__name__", b"m"), (b"v", v)], t0, 60) for v in (b"ok1", b"ok2", BAD))
    with RemoteWriteClient(TargetSettings(write_url=f"{source.url}/api/v1/write")) as writer:
        writer.write(single_request(body, 180))
    with M3Gateway({"default": GatewayNamespace(source.url, retention="30d")}, raw_label_values={BAD: RAW}) as m3:
        spec = MigrationSpec(start=iso_ms(t0), end=iso_ms(t0 + 3_600_000 - 1), match=['{__name__="m"}'])
        yield source, m3, spec


def _read_raw(url: str, spec: MigrationSpec) -> bytes:
    with RemoteReadClient(SourceSettings(read_url=url)) as reader:
        return reader.read_raw([Matcher("__name__", "=", "m")], spec.start_ms, spec.end_ms)


def _with_source_label(raw: bytes) -> dict[tuple, list]:
    """Series of a (valid UTF-8) ReadResponse as labels -> samples, with _source="m3db" added."""
    out = {}
    for ts in ReadResponse.FromString(raw).results[0].timeseries:
        labels = tuple(sorted([(lab.name, lab.value) for lab in ts.labels] + [("_source", "m3db")]))
        out[labels] = [(s.timestamp, s.value) for s in ts.samples]
    return out


def _as_dict(raw: bytes) -> dict[tuple, list]:
    return {
        tuple((lab.name, lab.value) for lab in ts.labels): [(s.timestamp, s.value) for s in ts.samples]
        for ts in ReadResponse.FromString(raw).results[0].timeseries
    }


@pytest.mark.servers
@pytest.mark.prefect
def test_migration_copies_non_utf8_label_bytes_exactly(prefect_api, m3_with_raw_bytes, prometheus_target, tmp_path):
    from flows.migrate import migrate

    source, m3, spec = m3_with_raw_bytes
    assert b"\x12\x04" + RAW in _read_raw(m3.read_url, spec)  # the gateway serves the raw bytes
    target = prometheus_target()
    summary = migrate(
        M3Source(read_url=m3.read_url, query_url=m3.url),
        ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
        spec,
        state_dir=str(tmp_path),
        skip_validation=True,
    )
    held = _read_raw(f"{target.url}/api/v1/read", spec)
    assert b"\x12\x04" + RAW in held and BAD not in held  # the value's own bytes, not U+FFFD
    # same length: swapping the bytes back gives what the source holds, every sample, with _source added
    assert _as_dict(held.replace(RAW, BAD)) == _with_source_label(_read_raw(f"{source.url}/api/v1/read", spec))
    assert summary["samples"] == 180 and summary["non_utf8_series"] == 1 and summary["skipped_series"] == 0


class _RefusingProxy:
    """A remote-write receiver in front of a real one that answers 400 to a request holding a label that
    is not UTF-8, refusing the whole request (Prometheus 3, storage/remote/write_handler.go: ``invalid
    metric name or labels``); any other request is forwarded."""

    def __init__(self, upstream: str) -> None:
        self.refused: list[WriteRequest] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    WriteRequest.FromString(snappy.decompress(body))  # proto3 strings: UTF-8 only
                except DecodeError:
                    proxy.refused.append(WriteRequest.FromString(snappy.decompress(body).replace(RAW, BAD)))
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(b"invalid metric name or labels")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(upstream + self.path, data=body, headers=headers)
                with urllib.request.urlopen(request) as answer:
                    self.send_response(answer.status)
                    self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.servers
@pytest.mark.prefect
def test_a_target_refusing_non_utf8_labels_costs_only_that_series(
    prefect_api, m3_with_raw_bytes, prometheus_target, tmp_path
):
    from flows.migrate import migrate

    source, m3, spec = m3_with_raw_bytes
    target = prometheus_target()
    proxy = _RefusingProxy(target.url)
    try:
        summary = migrate(
            M3Source(read_url=m3.read_url, query_url=m3.url),
            ThanosTarget(write_url=f"{proxy.url}/api/v1/write", query_url=target.url),
            spec,
            state_dir=str(tmp_path),
            skip_validation=True,
        )
    finally:
        proxy.close()
    # one refused request per window, each holding only that series
    refused = [[dict((lab.name, lab.value) for lab in ts.labels)["v"] for ts in r.timeseries] for r in proxy.refused]
    assert refused == [["bad0"]] * summary["windows"] and refused
    expected = _with_source_label(_read_raw(f"{source.url}/api/v1/read", spec))
    del expected[(("__name__", "m"), ("_source", "m3db"), ("v", "bad0"))]
    assert _as_dict(_read_raw(f"{target.url}/api/v1/read", spec)) == expected  # the others, exactly
    assert summary["skipped_series"] == 1 and summary["samples"] == 120 and summary["non_utf8_series"] == 0
    (example,) = summary["skipped_series_examples"]
    assert example.startswith('{__name__="m", v="\\xffad0"}: label bytes are not UTF-8 and the target refused')
    assert "HTTP 400" in example and "invalid metric name or labels" in example


@pytest.mark.servers
def test_a_resumed_window_sets_aside_a_non_utf8_series_it_cannot_reconcile(m3_with_raw_bytes, prometheus_target):
    """A resumed unit's refused series is reconciled by reading it back through the target's query API;
    that API cannot name bytes that are not UTF-8, so that series is named and set aside, not a crash."""
    source, m3, spec = m3_with_raw_bytes
    target = prometheus_target()
    keys = tuple((("__name__", "m"), ("v", v)) for v in ("ok1", "ok2", "\udcffad0"))
    batch = Batch(id="b", matchers=(Matcher("__name__", "=", "m"),), series=keys)
    window = Window(0, spec.start_ms, spec.end_ms)
    settings = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    relabeler = Relabeler([], add_labels={"_source": "m3db"})
    with Transfer(SourceSettings(read_url=m3.read_url), settings, relabeler) as transfer:
        first = transfer.run(batch, window)
        again = transfer.run(batch, window, resumed=True)
    assert first.series == 3 and first.samples == 180 and first.non_utf8_series == ['{__name__="m", v="\\xffad0"}']
    assert again.reconciled_series == 2 and again.series == 2 and again.non_utf8_series == []
    (skipped,) = again.skipped_series
    assert skipped.startswith('{__name__="m", v="\\xffad0"}: label bytes are not UTF-8 and the target already holds')
    held = _read_raw(f"{target.url}/api/v1/read", spec)
    assert _as_dict(held.replace(RAW, BAD)) == _with_source_label(_read_raw(f"{source.url}/api/v1/read", spec))


def test_the_decoded_read_path_parses_non_utf8_labels(m3_with_raw_bytes):
    """RemoteReadClient.read (blocks, verify, validation read decoded results) gets the bytes, not an error."""
    source, m3, spec = m3_with_raw_bytes
    with RemoteReadClient(SourceSettings(read_url=m3.read_url)) as reader:
        result = reader.read([Matcher("__name__", "=", "m")], spec.start_ms, spec.end_ms)
    got = {series_labels(ts): [(s.timestamp, s.value) for s in ts.samples] for ts in result.timeseries}
    want = _as_dict(_read_raw(f"{source.url}/api/v1/read", spec))
    assert got == {tuple((n, "\udcffad0" if v == "bad0" else v) for n, v in k): s for k, s in want.items()}


class _SamplesFirstProxy:
    """A remote-read source in front of the gateway that writes each series' samples before its labels:
    legal protobuf (fields may come in any order), so m3migrate takes its exact (decoding) path."""

    def __init__(self, upstream: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                with urllib.request.urlopen(urllib.request.Request(upstream, data=body, headers=headers)) as answer:
                    raw = snappy.decompress(answer.read())
                out = b""
                for ts in parse_read_response(raw).results[0].timeseries:  # labels as bytes
                    labels, samples = type(ts)(), type(ts)()
                    labels.labels.extend(ts.labels)
                    samples.samples.extend(ts.samples)
                    out += _field1(samples.SerializeToString() + labels.SerializeToString())
                payload = snappy.compress(_field1(out))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/prom/remote/read"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.servers
def test_the_exact_path_migrates_non_utf8_labels_byte_exact_in_a_request_of_their_own(
    m3_with_raw_bytes, prometheus_target
):
    source, m3, spec = m3_with_raw_bytes
    target = prometheus_target()
    proxy = _SamplesFirstProxy(m3.read_url)
    keys = tuple((("__name__", "m"), ("v", v)) for v in ("ok1", "ok2", "\udcffad0"))
    batch = Batch(id="b", matchers=(Matcher("__name__", "=", "m"),), series=keys)
    settings = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    try:
        with Transfer(SourceSettings(read_url=proxy.url), settings, Relabeler([], add_labels={"_source": "m3db"})) as t:
            result = t.run(batch, Window(0, spec.start_ms, spec.end_ms))
    finally:
        proxy.close()
    assert result.series == 3 and result.samples == 180 and result.non_utf8_series == ['{__name__="m", v="\\xffad0"}']
    assert result.requests == 2  # the series that is not UTF-8 alone: a target refusing it refuses nothing else
    held = _read_raw(f"{target.url}/api/v1/read", spec)
    assert b"\x12\x04" + RAW in held
    assert _as_dict(held.replace(RAW, BAD)) == _with_source_label(_read_raw(f"{source.url}/api/v1/read", spec))


def _promtool(*args: str) -> str:
    done = subprocess.run(["promtool", "tsdb", *args], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-1500:]
    return done.stdout.decode("utf-8", "surrogateescape")


@pytest.mark.servers
def test_blocks_hold_non_utf8_label_bytes_exactly_and_prometheus_serves_them(m3_with_raw_bytes, tmp_path):
    """Blocks mode: the index stores label strings as raw bytes (Go strings are bytes: prometheus
    tsdb/index/index.go neither checks nor changes them), sorted byte-wise; promtool accepts the block and
    prints the value Go-quoted (\\xff), and a Prometheus 2.42 started on it serves the bytes by remote read."""
    source, m3, spec = m3_with_raw_bytes
    bucket_dir = tmp_path / "bucket"
    # the plan holds the series as a series API lists it: never the raw bytes (see docs/m3.md)
    keys = tuple((("__name__", "m"), ("v", v)) for v in ("ok1", "ok2", "bad0"))
    batch = Batch(id="b", matchers=(Matcher("__name__", "=", "m"),), series=keys)
    results = []
    with RemoteReadClient(SourceSettings(read_url=m3.read_url)) as reader:
        for window in block_windows(spec.start_ms, spec.end_ms, 2 * 3_600_000):
            results.append(
                backfill_from_source(
                    reader,
                    [batch],
                    window=window,
                    bucket=Bucket(bucket_dir),
                    relabeler=Relabeler([], add_labels={"_source": "m3db"}),
                    external_labels={"backfill": "m3db"},
                    work_dir=tmp_path,
                )
            )
    assert sum(r.samples for r in results) == 180 and sum(r.series for r in results) >= 3
    assert {s for r in results for s in r.non_utf8_series} == {'{__name__="m", v="\\xffad0"}'}
    assert not any(r.skipped_series for r in results)
    blocks = sorted(p for p in bucket_dir.iterdir() if p.is_dir() and len(p.name) == 26)
    _promtool("list", str(bucket_dir))
    scratch = tmp_path / "scratch"
    (scratch / "wal").mkdir(parents=True)
    for block in blocks:
        shutil.copytree(block, scratch / block.name)
        _promtool("analyze", str(scratch), block.name)
    dumped = _promtool("dump", str(scratch))
    assert '{__name__="m", _source="m3db", v="\\xffad0"}' in dumped  # Go's strconv.Quote of the raw bytes
    data = tmp_path / "prom-data"
    shutil.copytree(bucket_dir, data, ignore=shutil.ignore_patterns("m3migrate"))
    with start_prometheus(tmp_path, name="blocks", data_dir=data) as prom:
        held = _read_raw(f"{prom.url}/api/v1/read", spec)
    assert b"\x12\x04" + RAW in held and BAD not in held
    assert _as_dict(held.replace(RAW, BAD)) == _with_source_label(_read_raw(f"{source.url}/api/v1/read", spec))


@pytest.mark.servers
def test_verify_names_a_non_utf8_series_as_not_comparable_and_compares_the_rest(m3_with_raw_bytes, prometheus_target):
    """The target's query API answers JSON, where Go's encoding/json writes each byte that is not UTF-8 as
    U+FFFD: such a series cannot be matched by its labels there. verify names it as not comparable,
    counted, and neither crashes nor reports it as missing, mismatching or extra."""
    from m3migrate.checks.verify import verify

    _, m3, spec = m3_with_raw_bytes
    target = prometheus_target()
    settings = TargetSettings(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    keys = tuple((("__name__", "m"), ("v", v)) for v in ("ok1", "ok2", "\udcffad0"))
    batch = Batch(id="b", matchers=(Matcher("__name__", "=", "m"),), series=keys)
    relabeler = Relabeler([], add_labels={"_source": "m3db"})
    with Transfer(SourceSettings(read_url=m3.read_url), settings, relabeler) as transfer:
        assert transfer.run(batch, Window(0, spec.start_ms, spec.end_ms)).samples == 180
    json_form = urllib.request.urlopen(f"{target.url}/api/v1/series?match[]=m").read()
    assert b'"v":"\\ufffdad0"' in json_form or '"v":"\ufffdad0"'.encode() in json_form  # what the API shows

    report = verify(SourceSettings(read_url=m3.read_url, query_url=m3.url), settings, spec)
    shown = '{__name__="m", v="\\xffad0"}'
    assert report.not_comparable == [shown] and report.totals["not_comparable"] == 1
    assert report.summary()["not_comparable_examples"] == [f"{shown}: not comparable: label bytes not UTF-8"]
    assert report.problems.empty and report.ok  # the two UTF-8 series compared equal, nothing false
    assert report.totals["samples_source"] == report.totals["samples_target"] == 120
    assert f"`{shown}`: not comparable: label bytes not UTF-8" in report.to_markdown()
