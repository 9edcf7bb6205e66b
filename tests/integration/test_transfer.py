"""One batch × window against real servers: exact copy, and refusals that must never pass silently.

The source is read through the sandbox's M3 Coordinator gateway ([start, end) reads), from 1 ms after a
sample: the plan's last window then has a sample on its first millisecond and on its last (the end),
which an M3 read loses first; expectations are read from the Prometheus behind it ([start, end])."""

from __future__ import annotations

import struct

import pytest

from m3migrate.clients.http import RetryPolicy
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import ConfigError, RejectReason, WriteRejected
from m3migrate.plan.migration import build_plan
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.unit import Transfer
from m3migrate.wire.codec import encode_labels, frame_series, single_request
from sandbox.compare import read_all, with_label
from sandbox.faultproxy import FaultProxy

pytestmark = pytest.mark.servers
HOUR_MS = 3_600_000
FAST = RetryPolicy(attempts=3, timeout_seconds=20, wait_initial=0.01, wait_max=0.05, wait_jitter=0)


@pytest.fixture
def one_window(source_history):
    start = source_history.stats.start_ms + 1  # the end, start + 1 h - 1, is then a sample
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(start + HOUR_MS - 1), window_minutes=30)
    source = SourceSettings(read_url=source_history.read_url, query_url=source_history.query_url)
    plan = build_plan(source, spec, "transfer-test")
    return source, spec, plan


def test_a_window_is_copied_exactly(one_window, prometheus_target, source_history):
    source, spec, plan = one_window
    target = prometheus_target()
    with Transfer(source, TargetSettings(write_url=f"{target.url}/api/v1/write"), spec.relabeler()) as transfer:
        window = plan.windows[-1]  # a 30 min window ending at the migration's end
        result = transfer.run(plan.batches[0], window)
    expected = with_label(read_all(source_history.server.url, window.start_ms, window.end_ms), "_source", "m3db")
    edges = {samples[0][0] for samples in expected.values()} | {samples[-1][0] for samples in expected.values()}
    assert {window.start_ms, window.end_ms} <= edges, "samples on the window's first and last millisecond"
    assert read_all(target.url, window.start_ms, window.end_ms) == expected
    assert result.samples == sum(len(s) for s in expected.values()) and result.reconciled_series == 0


def test_out_of_order_on_a_first_attempt_fails_loudly(one_window, prometheus_target):
    """Newer data written by someone else is a conflict, not "already written": nothing may be skipped."""
    source, spec, plan = one_window
    target = prometheus_target()
    target_settings = TargetSettings(write_url=f"{target.url}/api/v1/write")
    batch, window = plan.batches[0], plan.windows[0]
    victim = spec.relabeler()(batch.series[0])
    newer = TimeSeries()
    newer.samples.add(timestamp=window.end_ms + 600_000, value=1.0)
    with RemoteWriteClient(target_settings) as writer:
        writer.write(single_request(frame_series(encode_labels(victim), newer.SerializeToString()), 1))

    with Transfer(source, target_settings, spec.relabeler()) as transfer, pytest.raises(WriteRejected) as refused:
        transfer.run(batch, window)
    assert refused.value.reasons == {RejectReason.OUT_OF_ORDER}

    # a resumed attempt reads the series back: it holds none of the window's samples, only a newer one
    # it did not write, so it is a conflict there too, named, and never taken as "already written"
    reading = TargetSettings(write_url=target_settings.write_url, query_url=target.url)
    with Transfer(source, reading, spec.relabeler()) as transfer, pytest.raises(WriteRejected) as conflict:
        transfer.run(batch, window, resumed=True)
    assert "holds newer samples than this window" in str(conflict.value) and str(dict(victim)) in str(conflict.value)


def _write_first_requests(transfer: Transfer, batch, window) -> None:
    """What a run killed after the first request of each chain leaves in the target."""
    packed, _ = transfer.fetch(batch, window)
    with RemoteWriteClient(transfer.target) as writer:
        for chains in packed:
            for chain in chains:
                writer.write(chain.requests[0])


def test_resume_with_other_request_cuts_stores_every_sample(one_window, prometheus_target, source_history):
    """A rerun that cuts a series' samples at other boundaries (another max_samples_per_request) sends
    requests that overlap what the target holds: the part after the old cut must still land."""
    source, spec, plan = one_window
    target = prometheus_target()
    batch, window = plan.batches[0], plan.windows[0]
    first = TargetSettings(write_url=f"{target.url}/api/v1/write", max_samples_per_request=7)
    with Transfer(source, first, spec.relabeler()) as transfer:
        _write_first_requests(transfer, batch, window)
    expected = with_label(
        read_all(source_history.server.url, window.start_ms, window.end_ms, matchers=batch.matchers), "_source", "m3db"
    )
    partial = read_all(target.url, window.start_ms, window.end_ms)
    assert partial and all(len(partial[k]) < len(expected[k]) for k in partial)  # really half-written

    rerun = TargetSettings(write_url=first.write_url, query_url=target.url, max_samples_per_request=10)
    with Transfer(source, rerun, spec.relabeler()) as transfer:
        result = transfer.run(batch, window, resumed=True)
    assert read_all(target.url, window.start_ms, window.end_ms) == expected
    assert result.reconciled_series == len(partial)

    # without the target's query API the refusal cannot be reconciled: a clear error, not a guess
    target2 = prometheus_target()
    blind = TargetSettings(write_url=f"{target2.url}/api/v1/write", max_samples_per_request=7)
    with Transfer(source, blind, spec.relabeler()) as transfer:
        _write_first_requests(transfer, batch, window)
    blind_rerun = TargetSettings(write_url=blind.write_url, max_samples_per_request=10)
    with Transfer(source, blind_rerun, spec.relabeler()) as transfer, pytest.raises(ConfigError, match="query_url"):
        transfer.run(batch, window, resumed=True)


class _LoseFirstWriteAnswer(FaultProxy):
    """Answers the first remote write with a 5xx without forwarding it: the client cannot know."""

    def decide(self, path: str) -> str | None:
        kind = super().decide(path)
        if kind:
            self.rate = 0.0
        return kind


def test_lost_answer_resend_refused_is_read_back_not_assumed(one_window, prometheus_target, source_history):
    """A multi-series request whose first answer was lost, resent and refused as out of order because one
    series already held some samples: every other series of the request must still be stored."""
    source, spec, plan = one_window
    target = prometheus_target()
    batch, window = plan.batches[0], plan.windows[0]
    expected = with_label(
        read_all(source_history.server.url, window.start_ms, window.end_ms, matchers=batch.matchers), "_source", "m3db"
    )
    victim = sorted(expected)[0]
    head = TimeSeries()
    for ts, bits in expected[victim][:5]:
        head.samples.add(timestamp=ts, value=struct.unpack("<d", struct.pack("<Q", bits))[0])
    with RemoteWriteClient(TargetSettings(write_url=f"{target.url}/api/v1/write")) as writer:
        writer.write(single_request(frame_series(encode_labels(victim), head.SerializeToString()), 5))

    with _LoseFirstWriteAnswer(target.url, rate=1.0, kinds=("5xx",), paths=("/api/v1/write",)) as proxy:
        settings = TargetSettings(write_url=f"{proxy.url}/api/v1/write", query_url=target.url)
        with Transfer(source, settings, spec.relabeler(), write_retry=FAST) as transfer:
            result = transfer.run(batch, window)  # a first attempt: only the lost answer makes it reconcile
    assert proxy.counters["5xx"] == 1
    assert read_all(target.url, window.start_ms, window.end_ms) == expected
    assert result.reconciled_series == 1  # the victim; the others landed when resent one by one
