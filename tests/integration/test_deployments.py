"""The served deployments: started from the UI's point of view (the API), with saved blocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from blocks import M3Source, ThanosTarget
from m3migrate.timefmt import iso_ms as _iso
from sandbox.compare import diff_target, read_all, with_label

ROOT = Path(__file__).parents[2]


@pytest.mark.servers
@pytest.mark.prefect
def test_serve_runs_migrate_from_the_api_and_keeps_replication_paused(
    prefect_api, source_history, prometheus_target, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    target = prometheus_target()
    src = source_history.server.url
    source_id = M3Source(read_url=f"{src}/api/v1/read", query_url=src).save("served-source", overwrite=True)
    ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url).save("served-target", overwrite=True)
    start, end = source_history.stats.start_ms, source_history.stats.start_ms + 6 * 3_600_000 - 1
    config = tmp_path / "m.yaml"
    config.write_text(yaml.safe_dump({"migration": {"migration_id": "served", "start": _iso(start), "end": _iso(end)}}))
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "PYTHONPATH": str(ROOT),
        "M3MIGRATE_STATE_DIR": str(tmp_path / "state"),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--source-block",
            "served-source",
            "--target-block",
            "served-target",
            "--config",
            str(config),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    replicate_dep = client.read_deployment_by_name("replicate/replicate")
                    client.read_deployment_by_name("verify/verify")
                    client.read_deployment_by_name("close/close")
                    client.read_deployment_by_name("end-to-end/end-to-end")
                    break
                except Exception:
                    assert server.poll() is None, server.stderr.read().decode()[-2000:]
                    assert time.monotonic() < deadline, "serve did not register the deployments"
                    time.sleep(1)
            assert replicate_dep.paused is True, "replication waits until the migration has finished"
            schedules = client.read_deployment_schedules(replicate_dep.id)
            assert len(schedules) == 1
            assert schedules[0].schedule.interval.total_seconds() == 300
            # by id, as the UI's run form writes it and shows it selected (a slug reference shows None)
            assert replicate_dep.parameters["source"] == {"$ref": {"block_document_id": str(source_id)}}

        run = run_deployment("migrate/migrate", timeout=300)
        assert run.state.is_completed(), run.state
        expected = with_label(read_all(src, start, end), "_source", "m3db")
        assert diff_target(expected, target.url, start, end) == []

        checked = run_deployment("verify/verify", timeout=300)
        assert checked.state.is_completed(), checked.state
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_prefect_yaml_entrypoints_are_flows_and_reference_blocks():
    import importlib.util

    from prefect import Flow

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"] for d in config["deployments"]}
    assert {"end-to-end", "migrate", "replicate", "verify", "validate", "close"} <= names
    for deployment in config["deployments"]:
        path, _, attr = deployment["entrypoint"].partition(":")
        spec = importlib.util.spec_from_file_location(f"entry_{deployment['name']}", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(getattr(module, attr), Flow), deployment["entrypoint"]
        params = deployment["parameters"]
        if deployment["name"] in ("replicate", "verify", "close"):  # the id: they load migrate's saved spec
            assert set(params) == {"source", "target", "migration_id"}
            params = {k: v for k, v in params.items() if k != "migration_id"}
        else:
            assert set(params) == {"source", "target"}
        assert all("$ref" in v for v in params.values())
    replicate = next(d for d in config["deployments"] if d["name"] == "replicate")
    assert replicate["schedules"][0]["interval"] == 300 and replicate["schedules"][0]["active"] is False


@pytest.mark.prefect
def test_a_bucket_block_reaches_only_the_steps_that_upload_blocks(prefect_api):
    from blocks import ThanosBucket
    from flows.deployments import wizard_deployments
    from m3migrate.errors import ConfigError

    M3Source(read_url="http://m3:7201/api/v1/prom/remote/read").save("src", overwrite=True)
    ThanosTarget(write_url="http://receive:19291/api/v1/receive").save("tgt", overwrite=True)
    with pytest.raises(ConfigError, match="no saved ThanosBucket block named 'history'"):
        wizard_deployments("src", "tgt", None, bucket_block="history")
    bucket_id = ThanosBucket(url="file:///tmp/bucket").save("history", overwrite=True)
    deployments = {d.name: d for d in wizard_deployments("src", "tgt", None, bucket_block="history")}
    for name in ("migrate", "end-to-end"):
        assert deployments[name].parameters["bucket"] == {"$ref": {"block_document_id": str(bucket_id)}}
    for name in ("replicate", "verify", "close"):
        assert "bucket" not in deployments[name].parameters
    assert all("bucket" not in d.parameters for d in wizard_deployments("src", "tgt", None))


@pytest.mark.prefect
def test_the_later_steps_deployments_take_the_migration_id_not_the_spec(prefect_api):
    """A replicate run needs the migration id and the blocks, nothing more: the spec is migrate's alone."""
    from flows.deployments import wizard_deployments
    from m3migrate.settings.spec import MigrationSpec

    M3Source(read_url="http://m3:7201/api/v1/prom/remote/read").save("src", overwrite=True)
    ThanosTarget(write_url="http://receive:19291/api/v1/receive").save("tgt", overwrite=True)
    spec = MigrationSpec(start="2026-01-01T00:00:00Z", end="2026-01-02T00:00:00Z", write_mode="out_of_order")
    for given, expected_id in (
        (spec.model_copy(update={"migration_id": "named"}), "named"),
        (spec, spec.resolved_id("http://m3:7201/api/v1/prom/remote/read", "http://receive:19291/api/v1/receive")),
    ):
        deployments = {d.name: d for d in wizard_deployments("src", "tgt", given)}
        for name in ("replicate", "verify", "close"):
            params = deployments[name].parameters
            assert "spec" not in params and params["migration_id"] == expected_id, name
            assert set(params) - {"lag_minutes"} == {"source", "target", "migration_id"}
        assert deployments["migrate"].parameters["spec"]["write_mode"] == "out_of_order"
    unset = {d.name: d for d in wizard_deployments("src", "tgt", None)}
    assert "migration_id" not in unset["replicate"].parameters  # asked for in the run form
