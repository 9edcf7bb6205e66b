"""Series that reach the source after discovery are migrated (exactly once), counted and named."""

from __future__ import annotations

import logging
import time

import pytest

from blocks import M3Source, ThanosTarget
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import ConfigError
from m3migrate.plan.migration import prepare
from m3migrate.prompb import TimeSeries
from m3migrate.relabel import RelabelRule
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import encode_labels, frame_series, single_request
from sandbox.compare import read_all, with_label

pytestmark = [pytest.mark.servers, pytest.mark.prefect]
MIN_MS = 60_000


def _write(url: str, labels: dict[str, str], t0: int, n: int) -> None:
    ts = TimeSeries()
    for k in range(n):
        ts.samples.add(timestamp=t0 + k * MIN_MS, value=float(k) + 0.5)
    framed = frame_series(encode_labels(sorted(labels.items())), ts.SerializeToString())
    with RemoteWriteClient(TargetSettings(write_url=f"{url}/api/v1/write")) as writer:
        writer.write(single_request(framed, n))


@pytest.fixture
def planned(prometheus_target, tmp_path):
    """A source holding m and n series, a plan of two overlapping selectors saved before more arrive."""
    source = prometheus_target(name="source")  # a receiver: the test writes its data
    t0 = (int(time.time() * 1000) - 3 * 3_600_000) // 1_800_000 * 1_800_000
    for labels in ({"job": "a", "i": "0"}, {"job": "a", "i": "1"}):
        _write(source.url, {"__name__": "m", **labels}, t0, 60)
    _write(source.url, {"__name__": "n", "job": "a", "i": "0"}, t0, 60)
    _write(source.url, {"__name__": "n", "job": "b", "i": "2"}, t0, 60)
    spec = MigrationSpec(
        start=iso_ms(t0), end=iso_ms(t0 + 3_600_000 - 1), match=['{job="a"}', '{i="2"}'], migration_id="late"
    )
    settings = SourceSettings(read_url=f"{source.url}/api/v1/read", query_url=source.url)
    state = MigrationState(tmp_path, "late")
    plan = prepare(settings, spec, state).plan
    assert plan.series_count == 4 and len(plan.batches) == 2
    return source, spec, state, t0


def test_series_new_since_discovery_are_migrated_once_and_counted(prefect_api, planned, prometheus_target, tmp_path):
    from flows.migrate import migrate

    source, spec, _state, t0 = planned
    # new since the plan: one only the first batch selects, one both batches select (overlap)
    _write(source.url, {"__name__": "m", "job": "a", "i": "3"}, t0 + 10 * MIN_MS, 40)
    _write(source.url, {"__name__": "n", "job": "a", "i": "2"}, t0 + 5 * MIN_MS, 50)
    target = prometheus_target()
    blocks = (
        M3Source(read_url=f"{source.url}/api/v1/read", query_url=source.url),
        ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    engine_log = logging.getLogger("m3migrate.transfer.unit")  # whatever logging config earlier tests left
    engine_log.addHandler(handler)
    try:
        summary = migrate(*blocks, spec, state_dir=str(tmp_path), skip_validation=True)
    finally:
        engine_log.removeHandler(handler)
    expected = with_label(read_all(source.url, spec.start_ms, spec.end_ms), "_source", "m3db")
    assert len(expected) == 6
    assert read_all(target.url, spec.start_ms, spec.end_ms) == expected  # every sample, each series once
    assert summary["new_series_after_discovery"] == 2
    assert summary["samples"] == sum(len(s) for s in expected.values())
    named = " ".join(m for r in records if "reached the source after discovery" in (m := r.getMessage()))
    assert "'i': '3'" in named and "'i': '2'" in named

    # a rerun skips every journaled unit and still counts them
    again = migrate(*blocks, spec, state_dir=str(tmp_path), skip_validation=True)
    assert again["new_series_after_discovery"] == 2 and again["samples_moved_now"] == 0


def test_a_new_series_colliding_after_relabeling_stops_the_run(prefect_api, prometheus_target, tmp_path):
    """A new series that relabels onto a planned one would overwrite its samples: never merged silently."""
    from flows.migrate import migrate

    source = prometheus_target(name="source")
    t0 = (int(time.time() * 1000) - 3 * 3_600_000) // 1_800_000 * 1_800_000
    _write(source.url, {"__name__": "m", "job": "a"}, t0, 30)
    drop = RelabelRule(action="labeldrop", regex="extra")
    spec = MigrationSpec(
        start=iso_ms(t0), end=iso_ms(t0 + 3_600_000 - 1), match=['{job="a"}'], migration_id="c", relabel_rules=[drop]
    )
    state = MigrationState(tmp_path, "c")
    prepare(SourceSettings(read_url=f"{source.url}/api/v1/read", query_url=source.url), spec, state)
    _write(source.url, {"__name__": "m", "job": "a", "extra": "x"}, t0 + MIN_MS, 20)
    target = prometheus_target()
    blocks = (
        M3Source(read_url=f"{source.url}/api/v1/read", query_url=source.url),
        ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
    )
    with pytest.raises(ConfigError, match="new since discovery") as refused:
        migrate(*blocks, spec, state_dir=str(tmp_path), skip_validation=True)
    assert "'extra': 'x'" in str(refused.value)
