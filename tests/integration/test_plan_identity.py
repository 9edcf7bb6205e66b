"""A plan's identity covers what changes what is written: a resume with other relabeling is refused."""

from __future__ import annotations

import json

import pytest

from blocks import M3Source, ThanosTarget
from m3migrate.errors import ConfigError
from m3migrate.plan.batches import PLAN_VERSION, Batch, Plan
from m3migrate.plan.migration import prepare, writing_settings
from m3migrate.relabel import RelabelRule
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.state import MigrationState
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import Matcher
from sandbox.compare import read_all
from tasks.transfer import TransferContext, close_transfers, get_transfer

HOUR_MS = 3_600_000
RENAME = RelabelRule(source_labels=["__name__"], regex="node_(.*)", target_label="__name__", replacement="host_$1")


def _spec(**kw) -> MigrationSpec:
    return MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-01T05:59:59.999Z", migration_id="ident", **kw)


def _plan(spec: MigrationSpec) -> Plan:
    batch = Batch.create([Matcher("__name__", "=", "a")], [(("__name__", "a"),)])
    return Plan("ident", spec.start_ms, spec.end_ms, spec.window_ms, [batch], list(spec.match), writing_settings(spec))


def test_the_plan_id_changes_with_every_setting_that_changes_what_is_written(tmp_path):
    base = _plan(_spec())
    changed = [
        _spec(relabel_rules=[RENAME]),
        _spec(merge_prometheus_prefix=True),
        _spec(source_label_name="origin"),
        _spec(source_label_value="m3"),
        _spec(write_mode="out_of_order", window_minutes=60),
    ]
    ids = {base.id, *(_plan(s).id for s in changed)}
    assert len(ids) == 1 + len(changed)
    base.save(tmp_path / "plan.json")
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["version"] == PLAN_VERSION == 2 and saved["writing"]["source_label_value"] == "m3db"
    assert Plan.load(tmp_path / "plan.json").id == base.id


def test_a_plan_of_an_unknown_version_is_a_clear_error(tmp_path):
    data = _plan(_spec()).to_json()
    (tmp_path / "plan.json").write_text(json.dumps({**data, "version": 3}))
    with pytest.raises(ConfigError, match="version 3"):
        Plan.load(tmp_path / "plan.json")


def test_resuming_a_version_1_plan_is_refused_with_start_over_named(tmp_path):
    """A version-1 plan does not say which relabeling wrote its windows: resuming it could mix two."""
    spec = _spec()
    old = _plan(spec)
    old.writing = None
    data = {k: v for k, v in old.to_json().items() if k != "writing"}
    state = MigrationState(tmp_path, "ident")
    state.plan_path("migrate").parent.mkdir(parents=True, exist_ok=True)
    state.plan_path("migrate").write_text(json.dumps({**data, "version": 1}))
    assert state.load_plan().writing is None  # it still loads (verify, replication's checks read it)
    source = SourceSettings(read_url="http://127.0.0.1:9/api/v1/read")  # never contacted: refused first
    with pytest.raises(ConfigError, match="predates plan version 2") as refused:
        prepare(source, spec, state)
    assert "--start-over" in str(refused.value)


def test_dask_workers_key_their_cached_transfer_on_the_relabeling(tmp_path):
    """A long-lived worker must not reuse a Transfer (and its label cache) built for other rules."""
    spec, renamed = _spec(), _spec(relabel_rules=[RENAME])

    def ctx(s: MigrationSpec) -> TransferContext:
        relabel = s.relabeler()
        return TransferContext(
            migration_id="ident",
            plan_id="p",
            generation=0,
            stage="migrate",
            state_root=str(tmp_path),
            source=SourceSettings(read_url="http://127.0.0.1:9/api/v1/read"),
            target=TargetSettings(write_url="http://127.0.0.1:9/api/v1/write"),
            relabeler_rules=tuple(relabel.rules),
            add_labels=tuple(relabel.add_labels.items()),
            write_concurrency=1,
            units_in_flight=1,
            depth=1,
            windows_total=1,
        )

    try:
        first, second = get_transfer(ctx(spec)), get_transfer(ctx(renamed))
        assert first is not second and second.relabeler.rules == [RENAME]
        assert get_transfer(ctx(spec)) is first
    finally:
        close_transfers()


@pytest.mark.servers
@pytest.mark.prefect
def test_changed_relabeling_refuses_the_resume_and_start_over_applies_it(
    prefect_api, source_history, prometheus_target, tmp_path
):
    from flows.migrate import migrate

    target = prometheus_target(ooo_window="30d")  # start over rewrites history (under new names)
    source_block = M3Source(read_url=f"{source_history.server.url}/api/v1/read", query_url=source_history.server.url)
    target_block = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    start = source_history.stats.start_ms
    spec = MigrationSpec(
        start=iso_ms(start),
        end=iso_ms(start + 2 * HOUR_MS - 1),
        match=['{__name__="node_cpu_seconds_total"}'],
        migration_id="identity",
    )
    migrate(source_block, target_block, spec, state_dir=str(tmp_path), skip_validation=True)
    renamed = spec.model_copy(update={"relabel_rules": [RENAME]})
    with pytest.raises(ConfigError, match="relabel_rules") as refused:
        migrate(source_block, target_block, renamed, state_dir=str(tmp_path), skip_validation=True)
    assert "host_$1" in str(refused.value) and "--start-over" in str(refused.value)
    names = {dict(k)["__name__"] for k in read_all(target.url, start, start + 2 * HOUR_MS - 1)}
    assert names == {"node_cpu_seconds_total"}  # nothing was written under the new name

    migrate(source_block, target_block, renamed, start_over=True, state_dir=str(tmp_path), skip_validation=True)
    stored = read_all(target.url, start, start + 2 * HOUR_MS - 1)
    old = {k: v for k, v in stored.items() if dict(k)["__name__"] == "node_cpu_seconds_total"}
    new = {
        tuple(sorted((n, "node_cpu_seconds_total" if n == "__name__" else v) for n, v in k)): s
        for k, s in stored.items()
        if dict(k)["__name__"] == "host_cpu_seconds_total"
    }
    assert new and new == old  # every series and sample again, under the new name
