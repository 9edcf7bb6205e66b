"""Secrets never leave the settings, TLS is verified by default, and the probe is the only foreign write.

A real source Prometheus behind basic auth and mutual TLS, a real target given a bearer token; a
migration with validate and verify runs through the CLI (stdout/stderr) and in-process (logs,
exceptions), and every output is searched for the secrets: logs, CLI output, Prefect artifacts, the
flow-run parameters the Prefect API stores (the UI's parameter view), exception texts, reprs and
every file under the state directory.
"""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.errors import AuthError, TlsError
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import AuthSettings, SourceSettings, TargetSettings, TlsSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.wire.codec import Matcher, WriteBody, compress, encode_labels, frame_series
from sandbox.compare import diff_target, read_all, with_label
from sandbox.servers import Server, TlsFiles, bcrypt_hash, make_tls_files, start_prometheus

pytestmark = [pytest.mark.servers, pytest.mark.prefect]

ROOT = Path(__file__).parents[2]
USER = "migrator"
PASSWORD = "src-Pw-7f3a9c1e-never-print"
TOKEN = "tgt-Tok-51b2d8e4-never-print"
WRONG = "wrong-Pw-0c9d2e11-never-print"
START = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
END = START + 3 * 3_600_000 - 1
MATCH = [Matcher("__name__", "=", "sec_metric")]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("sec-tls"))


@pytest.fixture(scope="module")
def secure_source(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[Server]:
    """Basic auth + TLS + a required client certificate; 4 series x 3 h x 60 s of data."""
    server = start_prometheus(
        tmp_path_factory.mktemp("sec-source"),
        name="secsource",
        remote_write_receiver=True,
        web_config={
            "basic_auth_users": {USER: bcrypt_hash(PASSWORD, rounds=4)},
            "tls_server_config": {
                "cert_file": tls.server_cert,
                "key_file": tls.server_key,
                "client_auth_type": "RequireAndVerifyClientCert",
                "client_ca_file": tls.ca_cert,
            },
        },
        ready_auth=(USER, PASSWORD),
        ready_verify=tls.ca_cert,
        ready_cert=(str(tls.client_cert), str(tls.client_key)),
    )
    try:
        with RemoteWriteClient(
            TargetSettings(write_url=f"{server.url}/api/v1/write", **_source_kw(tls, PASSWORD))
        ) as writer:
            # One request: a fresh head fixes its accept window once per request, so all 4 series fit.
            parts = []
            for i in range(4):
                ts = TimeSeries()
                for t in range(START, END, 60_000):
                    ts.samples.add(timestamp=t, value=float(i * 1000 + (t - START) // 60_000))
                labels = encode_labels([("__name__", "sec_metric"), ("i", str(i))])
                parts.append(frame_series(labels, ts.SerializeToString()))
            writer.write(WriteBody(compress(b"".join(parts)), 4, 4 * 180, sum(map(len, parts)), parts))
        yield server
    finally:
        server.stop()


def _source_kw(tls: TlsFiles, password: str) -> dict:
    return {
        "auth": AuthSettings(username=USER, password=password),
        "tls": TlsSettings(ca_file=str(tls.ca_cert), cert_file=str(tls.client_cert), key_file=str(tls.client_key)),
    }


def _secrets(tls: TlsFiles) -> list[str]:
    key_lines = [line for line in tls.client_key.read_text().splitlines() if line and not line.startswith("-----")]
    return [
        PASSWORD,
        TOKEN,
        WRONG,
        base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        *key_lines,
    ]


def _assert_clean(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret ({secret[:6]}...) appears in {where}"


def _cli(*args: str, prefect_api: str, state_dir: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        "PREFECT_API_URL": prefect_api,
        "M3MIGRATE_SOURCE_PASSWORD": PASSWORD,
        "M3MIGRATE_TARGET_BEARER_TOKEN": TOKEN,
        "M3MIGRATE_STATE_DIR": str(state_dir),
    }
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, timeout=600)


def test_secrets_appear_in_no_output_and_the_probe_is_the_only_foreign_write(
    prefect_api, secure_source, prometheus_target, tls, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    began = datetime.now(UTC) - timedelta(seconds=1)
    secrets = _secrets(tls)
    target = prometheus_target()
    state_dir = tmp_path / "state"
    common = [
        "--source-read-url",
        f"{secure_source.url}/api/v1/read",
        "--source-query-url",
        secure_source.url,
        "--source-user",
        USER,
        "--source-ca-file",
        str(tls.ca_cert),
        "--source-cert-file",
        str(tls.client_cert),
        "--source-key-file",
        str(tls.client_key),
        "--target-write-url",
        f"{target.url}/api/v1/write",
        "--target-query-url",
        target.url,
        "--start",
        iso_ms(START),
        "--end",
        iso_ms(END),
        "--migration-id",
        "secrets",
    ]
    outputs: list[tuple[str, str]] = []
    for step in ("validate", "migrate", "verify"):
        extra = ["--report-dir", str(tmp_path / "report")] if step == "verify" else []
        result = _cli(step, *common, *extra, prefect_api=prefect_api, state_dir=state_dir)
        outputs.append((f"{step} stdout/stderr", result.stdout + result.stderr))
        assert result.returncode == 0, f"{step}: {result.stderr[-3000:]}"

    # The target holds exactly the migrated series: validation's probe is a sample of the migration itself.
    expected = with_label(read_all(secure_source.url, START, END, **_source_kw(tls, PASSWORD)), "_source", "m3db")
    assert diff_target(expected, target.url, START, END) == []
    names = httpx.get(f"{target.url}/api/v1/series", params={"match[]": '{__name__=~".+"}', "start": "0"}).json()
    held = {tuple(sorted(s.items())) for s in names["data"]}
    assert held == set(expected), "nothing outside the migrated data"

    # In-process: a rerun (logs) and a run with a wrong password (exception text, repr).
    source_block = M3Source(
        read_url=f"{secure_source.url}/api/v1/read", query_url=secure_source.url, **_source_kw(tls, PASSWORD)
    )
    target_block = ThanosTarget(
        write_url=f"{target.url}/api/v1/write", query_url=target.url, auth=AuthSettings(bearer_token=TOKEN)
    )
    spec = MigrationSpec(start=iso_ms(START), end=iso_ms(END), migration_id="secrets")
    migrate(source_block, target_block, spec, state_dir=str(state_dir))
    wrong = M3Source(read_url=f"{secure_source.url}/api/v1/read", **_source_kw(tls, WRONG))
    with pytest.raises(AuthError) as refused, RemoteReadClient(wrong.settings()) as reader:
        reader.read_raw(MATCH, START, END)
    outputs += [
        ("caplog", caplog.text),
        ("exception", str(refused.value) + repr(refused.value) + str(refused.value.__dict__)),
        ("reprs", repr(source_block) + repr(target_block) + repr(source_block.settings()) + repr(wrong)),
        ("model_dump_json", source_block.model_dump_json() + target_block.model_dump_json()),
        ("model_dump", str(source_block.model_dump()) + str(target_block.model_dump())),
    ]

    # Prefect: artifacts and the flow-run parameters as the API stores them (the UI's parameter view).
    from prefect.client.orchestration import get_client

    # Only this test's runs and their artifacts: the session's API holds other tests' too, and an unfiltered
    # read stops at the server's default page of 200.
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=began)))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs]))
        )
    assert len(runs) < 200 and len(artifacts) < 200, "a full page: some runs or artifacts were not scanned"
    assert any((r.parameters.get("source") or {}).get("read_url", "").startswith(secure_source.url) for r in runs)
    assert artifacts, "the migration and verification publish artifacts"
    outputs.append(("flow-run parameters", "\n".join(repr(r.parameters) for r in runs)))
    outputs.append(("artifacts", "\n".join(f"{a.key} {a.description} {a.data}" for a in artifacts)))

    # State files and the verify report.
    for root in (state_dir, tmp_path / "report"):
        files = [p for p in root.rglob("*") if p.is_file()]
        assert files, root
        for path in files:
            outputs.append((str(path), path.read_bytes().decode("utf-8", "replace")))
    for where, text in outputs:
        _assert_clean(text, secrets, where)


def test_tls_is_verified_by_default(secure_source, tls):
    """Without a CA file the system trust store is used: a private CA's certificate is refused."""
    kw = _source_kw(tls, PASSWORD)
    settings = SourceSettings(
        read_url=f"{secure_source.url}/api/v1/read",
        auth=kw["auth"],
        tls=TlsSettings(cert_file=str(tls.client_cert), key_file=str(tls.client_key)),
    )
    assert settings.tls.insecure_skip_verify is False
    t0 = time.monotonic()
    with pytest.raises(TlsError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):  # noqa: SIM117
        with RemoteReadClient(settings) as reader:
            reader.read_raw(MATCH, START, END)
    assert time.monotonic() - t0 < 60, "a TLS failure is permanent: never retried"
