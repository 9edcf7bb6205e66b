"""The bucket's raw retention: Thanos' compactor deletes a block once now > maxTime + --retention.resolution-raw
(pkg/compact/retention.go, ApplyRetentionPolicyByResolution), measured from the compactor's clock, so uploaded
history older than the retention is gone at its next run. m3migrate cannot read the compactor's flags: the
retention is a bucket setting, and validate blocks a blocks run whose blocks it would delete.

Expectations come from Thanos' rule applied to the meta.json files that a real blocks migration uploads from
the sandbox source, not from the check's own arithmetic.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest
from cli_helpers import run_cli
from test_m3_tiers import cluster as tiered_cluster  # noqa: F401  (a fixture: the sandbox's tiered M3 cluster)

from blocks import M3Source, ThanosBucket, ThanosTarget
from m3migrate.checks.validate import ValidationFailed, ValidationInput, check_bucket_retention, run_all
from m3migrate.clients.bucket import BucketSettings
from m3migrate.settings.endpoints import SourceSettings, TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
BLOCK_MS = 2 * HOUR_MS


def _now_ms() -> int:
    return int(time.time() * 1000)


def _thanos_deletes(meta: dict, retention_ms: int, now_ms: int) -> bool:
    """Thanos' retention rule for a raw block (retention.go): time.Now().After(time.Unix(MaxTime/1000, 0) + d)."""
    assert meta["thanos"]["downsample"]["resolution"] == 0  # raw: --retention.resolution-raw is the one
    return retention_ms != 0 and now_ms > (meta["maxTime"] // 1000) * 1000 + retention_ms


def _metas(bucket_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(bucket_dir.glob("*/meta.json"))]


def _inp(source_url: str, target_url: str, spec: MigrationSpec, bucket: BucketSettings) -> ValidationInput:
    return ValidationInput(
        SourceSettings(read_url=f"{source_url}/api/v1/read", query_url=source_url),
        TargetSettings(write_url=f"{target_url}/api/v1/write", query_url=target_url),
        spec,
        bucket=bucket,
    )


def test_the_setting_parses_like_the_compactors_flag():
    """Thanos' flag is a Prometheus model.Duration: units y w d h m s ms in that order, "0" without a unit."""
    ms = {v: BucketSettings(url="/tmp/b", retention_resolution_raw=v).raw_retention_ms for v in ("90d", "1y2w", "36h")}
    assert ms == {"90d": 90 * DAY_MS, "1y2w": 379 * DAY_MS, "36h": 36 * HOUR_MS}
    assert BucketSettings(url="/tmp/b", retention_resolution_raw="0").raw_retention_ms == 0
    assert BucketSettings(url="/tmp/b", retention_resolution_raw="0d").raw_retention_ms == 0
    assert BucketSettings(url="/tmp/b").raw_retention_ms is None  # unknown, not "forever"
    for bad in ("30 days", "1d1y", "", "-3d", "3D"):
        with pytest.raises(ValueError, match="retention_resolution_raw"):
            BucketSettings(url="/tmp/b", retention_resolution_raw=bad)
    block = ThanosBucket(url="/tmp/b", retention_resolution_raw="90d")
    assert block.settings().raw_retention_ms == 90 * DAY_MS


@pytest.mark.servers
@pytest.mark.prefect
def test_blocks_the_compactor_would_delete_stop_the_migration(prefect_api, source_history, prometheus_target, tmp_path):
    """A retention whose edge falls inside the range: the migration stops before any upload, naming how many
    blocks and hours would go and both fixes; uploaded anyway, Thanos' rule deletes exactly those blocks."""
    from flows.migrate import migrate

    stats = source_history.stats
    start, end = stats.start_ms + 30 * 60_000, stats.start_ms + 48 * HOUR_MS
    edge = (start + 6 * HOUR_MS) // BLOCK_MS * BLOCK_MS
    # the compactor's "now - retention" 1 h past a block edge (far from any edge while the test runs)
    retention_min = round((_now_ms() - (edge + HOUR_MS)) / 60_000)
    retention = f"{retention_min}m"
    retention_ms = retention_min * 60_000
    target = prometheus_target()
    source = M3Source(read_url=source_history.read_url, query_url=source_history.query_url)
    thanos = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    bucket_dir = tmp_path / "bucket"
    bucket = ThanosBucket(url=str(bucket_dir), retention_resolution_raw=retention)
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(end), write_mode="blocks", migration_id="retention")
    state_dir = str(tmp_path / "state")

    with pytest.raises(ValidationFailed) as failed:
        migrate(source, thanos, spec, state_dir=state_dir, bucket=bucket)
    assert not _metas(bucket_dir), "validation must stop the migration before any block is uploaded"
    check = next(c for c in failed.value.report["checks"] if c["name"] == "bucket retention")
    assert check["status"] == "fail"
    # the start it suggests: the first block edge whose block outlives the next compaction by a day
    safe_start = edge + BLOCK_MS + DAY_MS
    assert f"--start {iso_ms(safe_start)}" in check["fix"] and "--retention.resolution-raw" in check["fix"]
    assert "raw resolution" in check["observed"] and "-5m" in check["observed"]  # M3 tiers are raw to Thanos

    summary = migrate(source, thanos, spec, state_dir=state_dir, bucket=bucket, skip_validation=True)
    metas = _metas(bucket_dir)
    assert summary["blocks_uploaded"] == len(metas) >= 6
    now = _now_ms()
    doomed = [m for m in metas if _thanos_deletes(m, retention_ms, now)]
    assert 0 < len(doomed) < len(metas)
    assert check["details"]["deleted_windows"] == len(doomed)
    hours = sum(min(m["maxTime"], end + 1) - max(m["minTime"], start) for m in doomed) / HOUR_MS
    assert check["details"]["deleted_hours"] == pytest.approx(hours, abs=1e-3)
    assert f"{len(doomed)} of the {len(metas)} block windows" in check["observed"]
    assert f"{hours:,.1f} h of history" in check["observed"]
    # from the suggested --start on, Thanos keeps every block for a day more, and the check passes
    kept = [m for m in metas if m["minTime"] >= safe_start]
    assert kept and not any(_thanos_deletes(m, retention_ms, now + DAY_MS) for m in kept)
    assert any(_thanos_deletes(m, retention_ms, now + DAY_MS) for m in metas if m["minTime"] < safe_start)
    shorter = MigrationSpec.model_validate({**spec.model_dump(), "start": iso_ms(safe_start)})
    assert check_bucket_retention(_inp(source_history.server.url, target.url, shorter, bucket.settings())).status == (
        "pass"
    )


@pytest.mark.servers
def test_unknown_forever_and_ample_retention(source_history, prometheus_target, tmp_path):
    """Unset: cannot check (warn) and says how to set it; 0d keeps forever (Thanos' default) and a long
    retention passes; a block that expires within a day of validation warns."""
    stats = source_history.stats
    start, end = stats.start_ms + 30 * 60_000, stats.start_ms + 12 * HOUR_MS
    spec = MigrationSpec(start=iso_ms(start), end=iso_ms(end), write_mode="blocks", migration_id="retention-2")
    target = prometheus_target()
    url = source_history.server.url

    def run(retention: str | None) -> dict:
        bucket = BucketSettings(url=str(tmp_path / "bucket"), retention_resolution_raw=retention)
        report = run_all(_inp(url, target.url, spec, bucket))
        return next(c for c in report.to_dict()["checks"] if c["name"] == "bucket retention")

    unknown = run(None)
    assert unknown["status"] == "warn" and "cannot check" in unknown["observed"]
    assert "--bucket-retention-resolution-raw" in unknown["fix"] and "retention_resolution_raw" in unknown["fix"]
    forever = run("0d")
    assert forever["status"] == "pass" and "forever" in forever["observed"]
    assert run("1y")["status"] == "pass"
    oldest_end = (start // BLOCK_MS + 1) * BLOCK_MS
    soon = run(f"{(_now_ms() - oldest_end) // 60_000 + 60}m")  # the oldest block goes in about an hour
    assert soon["status"] == "warn" and "deletes it in" in soon["observed"]
    # remote-write-only runs upload no blocks: the check does not apply
    plain = run_all(_inp(url, target.url, spec.model_copy(update={"write_mode": "in_order"}), None))
    assert "bucket retention" not in {c.name for c in plain.checks}


@pytest.mark.servers
@pytest.mark.prefect
def test_cli_and_config_file_take_the_retention(prefect_api, source_history, prometheus_target, tmp_path):
    stats = source_history.stats
    start, end = stats.start_ms + 30 * 60_000, stats.start_ms + 6 * HOUR_MS
    target = prometheus_target()
    url = source_history.server.url
    base = [
        "validate",
        "--source-read-url",
        f"{url}/api/v1/read",
        "--source-query-url",
        url,
        "--target-write-url",
        f"{target.url}/api/v1/write",
        "--target-query-url",
        target.url,
        "--start",
        iso_ms(start),
        "--end",
        iso_ms(end),
        "--write-mode",
        "blocks",
        "--bucket-dir",
        str(tmp_path / "bucket"),
    ]
    env = {"PREFECT_API_URL": prefect_api}
    report = tmp_path / "report.json"
    short = run_cli(*base, "--bucket-retention-resolution-raw", "2d", "--report", str(report), env=env)
    assert short.returncode == 1, short.stdout + short.stderr[-3000:]
    checks = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    assert checks["bucket retention"]["status"] == "fail"
    assert checks["bucket retention"]["details"]["deleted_windows"] == checks["bucket retention"]["details"]["windows"]

    config = tmp_path / "m3migrate.yaml"
    config.write_text(f"bucket:\n  url: {tmp_path / 'bucket'}\n  retention_resolution_raw: 0d\n")
    kept = run_cli(*base[:-2], "--config", str(config), "--report", str(report), env=env)
    checks = {c["name"]: c for c in json.loads(report.read_text())["checks"]}
    assert checks["bucket retention"]["status"] == "pass", kept.stdout + kept.stderr[-3000:]
    bad = run_cli(*base, "--bucket-retention-resolution-raw", "30 days", env=env)
    assert bad.returncode == 2 and "retention_resolution_raw" in bad.stdout + bad.stderr


# -- history from M3's aggregated namespaces -------------------------------------------------------------


@pytest.mark.servers
@pytest.mark.prefect
def test_history_from_aggregated_namespaces_is_raw_resolution_to_thanos(
    prefect_api,
    tiered_cluster,  # noqa: F811 (the imported fixture)
    prometheus_target,
    tmp_path,
):
    """The old part of the range comes from M3's 5m namespace, yet as blocks it is raw resolution to Thanos
    (meta.json downsample resolution 0): the compactor's raw retention, not its 5m one, deletes it."""
    from flows.migrate import migrate

    cluster = tiered_cluster
    now = cluster.now_ms
    start = (now - 28 * HOUR_MS) // HOUR_MS * HOUR_MS
    end = (now - HOUR_MS) // HOUR_MS * HOUR_MS - 1
    edge = (now - 20 * HOUR_MS) // BLOCK_MS * BLOCK_MS  # inside the 5m tier (older than 12 h + 1 h margin)
    retention_min = round((_now_ms() - (edge + HOUR_MS)) / 60_000)
    target = prometheus_target()
    gw = cluster.gateway
    source = M3Source(read_url=gw.read_url, query_url=gw.url)
    thanos = ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url)
    bucket_dir = tmp_path / "bucket"
    bucket = ThanosBucket(url=str(bucket_dir), retention_resolution_raw=f"{retention_min}m")
    spec = MigrationSpec(
        migration_id="tiers-blocks", start=iso_ms(start), end=iso_ms(end), tier_margin_hours=1, write_mode="blocks"
    )
    with pytest.raises(ValidationFailed) as failed:
        migrate(source, thanos, spec, state_dir=str(tmp_path / "state"), bucket=bucket)
    check = next(c for c in failed.value.report["checks"] if c["name"] == "bucket retention")
    assert check["status"] == "fail" and "aggregated namespaces" in check["observed"]

    summary = migrate(source, thanos, spec, state_dir=str(tmp_path / "state"), bucket=bucket, skip_validation=True)
    tiers = {row["namespace"]: row for row in summary["tiers"]}
    agg_5m_end = int(datetime.fromisoformat(tiers["agg_5m"]["to"]).timestamp() * 1000)
    metas = _metas(bucket_dir)
    from_5m = [m for m in metas if m["maxTime"] - 1 <= agg_5m_end]
    assert from_5m and all(m["thanos"]["downsample"]["resolution"] == 0 for m in metas)
    doomed = [m for m in metas if _thanos_deletes(m, retention_min * 60_000, _now_ms())]
    assert doomed and all(m in from_5m for m in doomed)
    assert check["details"]["deleted_windows"] == len(doomed)
