"""One batch × window against real servers: exact copy, and refusals that must never pass silently."""

from __future__ import annotations

import pytest

from m3migrate.codec import encode_labels, frame_series, single_request
from m3migrate.config import SourceSettings, TargetSettings
from m3migrate.errors import RejectReason, WriteRejected
from m3migrate.migration import build_plan
from m3migrate.prompb import TimeSeries
from m3migrate.remote_write import RemoteWriteClient
from m3migrate.sandbox.compare import read_all, with_label
from m3migrate.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.transfer import Transfer

pytestmark = pytest.mark.servers
HOUR_MS = 3_600_000


@pytest.fixture
def one_window(source_history):
    start = source_history.stats.start_ms
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(start + HOUR_MS - 1), window_minutes=30)
    source = SourceSettings(read_url=f"{source_history.server.url}/api/v1/read", query_url=source_history.server.url)
    plan = build_plan(source, spec, "transfer-test")
    return source, spec, plan


def test_a_window_is_copied_exactly(one_window, prometheus_target, source_history):
    source, spec, plan = one_window
    target = prometheus_target()
    with Transfer(source, TargetSettings(write_url=f"{target.url}/api/v1/write"), spec.relabeler()) as transfer:
        window = plan.windows[0]
        result = transfer.run(plan.batches[0], window)
    expected = with_label(read_all(source_history.server.url, window.start_ms, window.end_ms), "_source", "m3db")
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

    # a resumed attempt takes the refusal as "this series is already there" and writes all the others
    with Transfer(source, target_settings, spec.relabeler()) as transfer:
        result = transfer.run(batch, window, resumed=True)
    assert result.reconciled_series == 1
    stored = read_all(target.url, window.start_ms, window.end_ms)
    assert len(stored) == len(batch.series) - 1 and victim not in stored
