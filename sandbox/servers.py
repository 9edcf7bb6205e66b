"""Start and stop real Prometheus / VictoriaMetrics processes for tests and the demo.

Why real servers: the migration's hard parts (remote-read limits, remote-write rejections, special
NaN bit patterns, auth/TLS) only show up against the real implementations.  Each server gets its
own directory under a caller-provided work dir, listens on 127.0.0.1 only, runs in its own session
(so Ctrl-C in a terminal does not hit it half-way through a test) and is stopped by its pid.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx

__all__ = [
    "Server",
    "ServerNotInstalled",
    "ServerStartError",
    "TlsFiles",
    "bcrypt_hash",
    "find_binary",
    "free_port",
    "make_tls_files",
    "start_m3_gateway",
    "start_prometheus",
    "start_victoriametrics",
    "vm_force_flush",
]

_INSTALL_HINT = (
    "run scripts/install_deps.sh (or: sudo apt-get install --no-install-recommends prometheus victoria-metrics)"
)
_LOG_TAIL_LINES = 20
# Servers started by this process and not yet stopped; stopped at interpreter exit as a last resort
# so that a crashed test run never leaves a server behind.
_RUNNING: dict[int, Server] = {}
_PROM_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")

VerifyType = bool | str | Path | None


class ServerNotInstalled(RuntimeError):
    """A server binary is not on PATH; the message says how to install it."""


class ServerStartError(RuntimeError):
    """A server exited or did not become ready in time; the message carries its last log lines."""


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary(name: str) -> str:
    """Absolute path of a server binary, or :class:`ServerNotInstalled` with the install hint."""
    path = shutil.which(name)
    if path is None:
        raise ServerNotInstalled(f"{name!r} not found on PATH: {_INSTALL_HINT}")
    return path


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"<log {path} unreadable: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


def _ssl_context(verify: VerifyType, cert: tuple[str, str] | None) -> ssl.SSLContext | bool:
    """httpx >= 0.28 wants an SSLContext for a CA file or a client certificate."""
    if verify is False:
        if cert is None:
            return False
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, (str, Path)):
        ctx = ssl.create_default_context(cafile=str(verify))
    else:
        if cert is None:
            return True
        ctx = ssl.create_default_context()
    if cert is not None:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


@dataclass
class Server:
    """One running (or stopped) server process and how to reach it."""

    name: str
    url: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    argv: list[str]
    ready_path: str = "/-/ready"
    ready_timeout: float = 120.0
    ready_auth: tuple[str, str] | None = field(default=None, repr=False)  # never print the password
    ready_verify: VerifyType = None
    ready_cert: tuple[str, str] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.process.poll() is None

    def http_client(self, **kwargs: Any) -> httpx.Client:
        """An httpx client for this server with the readiness credentials/TLS settings.

        trust_env=False: a proxy from the environment must never sit between us and 127.0.0.1.
        """
        kwargs.setdefault("timeout", 30.0)
        return httpx.Client(
            base_url=self.url,
            auth=self.ready_auth,
            verify=_ssl_context(self.ready_verify, self.ready_cert),
            trust_env=False,
            **kwargs,
        )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Poll the readiness endpoint until 200; raise with the log tail if the process dies or times out.

        On failure the process is stopped first, so a failed start never leaves a process behind.
        """
        deadline = time.monotonic() + (self.ready_timeout if timeout is None else timeout)
        last = "no answer yet"
        with self.http_client(timeout=2.0) as client:
            while True:
                if not self.alive():
                    _RUNNING.pop(id(self), None)
                    raise ServerStartError(
                        f"{self.name} exited with code {self.process.returncode} before it was ready "
                        f"({self.url}{self.ready_path}); last log lines of {self.log_path}:\n"
                        f"{_log_tail(self.log_path)}"
                    )
                try:
                    resp = client.get(self.ready_path)
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                if time.monotonic() >= deadline:
                    self.stop(timeout=10)
                    raise ServerStartError(
                        f"{self.name} not ready at {self.url}{self.ready_path} after "
                        f"{self.ready_timeout if timeout is None else timeout:.0f}s (last: {last}); "
                        f"last log lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                    )
                time.sleep(0.1)

    def start(self) -> Server:
        """Start again with the same argv and data dir (e.g. after stop/kill) and wait until ready."""
        if self.alive():
            raise RuntimeError(f"{self.name} is still running (pid {self.pid})")
        self.process = _spawn(self.argv, self.log_path)
        _RUNNING[id(self)] = self
        self.wait_ready()
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (clean TSDB shutdown), SIGKILL after `timeout` seconds; always reaps the process."""
        proc = self.process
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        _RUNNING.pop(id(self), None)

    def kill(self) -> None:
        """SIGKILL, as in a crash: lets tests check crash recovery (WAL replay, resume)."""
        proc = self.process
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        _RUNNING.pop(id(self), None)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Last lines of the server log, for assertion messages."""
        return _log_tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _spawn(argv: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"=== m3migrate sandbox: starting {argv[0]} at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        # The child keeps its own copy of the log fd; ours is closed when the block ends.
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _launch(
    *,
    name: str,
    port: int | None,
    build_argv: Callable[[int], list[str]],
    scheme: str,
    data_dir: Path,
    log_path: Path,
    ready_path: str,
    ready_timeout: float,
    ready_auth: tuple[str, str] | None,
    ready_verify: VerifyType,
    ready_cert: tuple[str, str] | None,
) -> Server:
    """Spawn and wait for readiness; with an OS-picked port, retry if another process grabbed it."""
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        use_port = port if port is not None else free_port()
        argv: list[str] = build_argv(use_port)
        server = Server(
            name=name,
            url=f"{scheme}://127.0.0.1:{use_port}",
            port=use_port,
            data_dir=data_dir,
            log_path=log_path,
            process=_spawn(argv, log_path),
            argv=argv,
            ready_path=ready_path,
            ready_timeout=ready_timeout,
            ready_auth=ready_auth,
            ready_verify=ready_verify,
            ready_cert=ready_cert,
        )
        _RUNNING[id(server)] = server
        try:
            server.wait_ready()
            return server
        except ServerStartError as exc:
            if attempt + 1 < attempts and "address already in use" in str(exc):
                continue
            raise
    raise AssertionError("unreachable")


def _write_prometheus_config(path: Path, ooo_window: str | None) -> None:
    lines = [
        "# written by sandbox: scrapes nothing, data only arrives by backfill or remote write",
        "global:",
        "  scrape_interval: 1m",
        "scrape_configs: []",
    ]
    if ooo_window:
        if not _PROM_DURATION.match(ooo_window):
            raise ValueError(f"ooo_window must be a Prometheus duration like '30d', got {ooo_window!r}")
        # A config-file-only setting in 2.42 (there is no command-line flag for it).
        lines += ["storage:", "  tsdb:", f"    out_of_order_time_window: {ooo_window}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_web_config(path: Path, web_config: Mapping[str, Any]) -> None:
    # JSON is valid YAML (1.2), so no YAML library is needed; Paths become strings.
    path.write_text(json.dumps(web_config, indent=2, default=str) + "\n", encoding="utf-8")
    path.chmod(0o600)


def start_prometheus(
    workdir: Path,
    *,
    name: str,
    port: int | None = None,
    remote_write_receiver: bool = False,
    ooo_window: str | None = None,
    web_config: Mapping[str, Any] | None = None,
    extra_flags: Sequence[str] = (),
    data_dir: Path | None = None,
    ready_timeout: float = 120,
    ready_auth: tuple[str, str] | None = None,
    ready_verify: VerifyType = None,
    ready_cert: tuple[str, str] | None = None,
) -> Server:
    """Start a Prometheus 2.42 on 127.0.0.1 and wait until /-/ready answers 200.

    Config, web config and log go to ``workdir/name/``; the TSDB goes to ``data_dir`` (default
    ``workdir/name/data``), so a source can be started on blocks built by promtool.  The flags keep
    every sample forever (retention 100y), allow unlimited remote-read responses (sample limit 0)
    and never use ``--storage.remote.read-concurrent-limit=0`` (it makes every remote read hang in 2.42).
    ``web_config`` is Prometheus' --web.config.file content (``basic_auth_users`` with bcrypt hashes,
    ``tls_server_config``); with TLS the url is https and readiness uses ``ready_verify``
    (CA path or False), ``ready_auth`` and ``ready_cert`` (client cert, key) as needed.
    """
    binary = find_binary("prometheus")
    sdir = Path(workdir) / name
    sdir.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir is not None else sdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    config = sdir / "prometheus.yml"
    _write_prometheus_config(config, ooo_window)
    scheme = "http"
    web_flags: list[str] = []
    if web_config:
        web_file = sdir / "web.yml"
        _write_web_config(web_file, web_config)
        web_flags.append(f"--web.config.file={web_file}")
        if web_config.get("tls_server_config"):
            scheme = "https"

    def build_argv(p: int) -> list[str]:
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{p}",
            "--web.enable-admin-api",
            "--storage.remote.read-sample-limit=0",
            "--storage.remote.read-concurrent-limit=64",
            "--query.max-samples=500000000",
            "--query.timeout=10m",
            *web_flags,
        ]
        if remote_write_receiver:
            argv.append("--web.enable-remote-write-receiver")
        # Prometheus refuses a repeated flag: an extra flag replaces the default of the same name.
        overridden = {flag.split("=", 1)[0] for flag in extra_flags}
        argv = [arg for arg in argv if arg.split("=", 1)[0] not in overridden or arg == binary]
        argv.extend(extra_flags)
        return argv

    return _launch(
        name=name,
        port=port,
        build_argv=build_argv,
        scheme=scheme,
        data_dir=data,
        log_path=sdir / "prometheus.log",
        ready_path="/-/ready",
        ready_timeout=ready_timeout,
        ready_auth=ready_auth,
        ready_verify=ready_verify,
        ready_cert=ready_cert,
    )


def start_m3_gateway(
    workdir: Path,
    namespaces: Mapping[str, Mapping[str, Any]],
    *,
    name: str = "m3-gateway",
    port: int | None = None,
    max_series: int | None = None,
    max_range: str | None = None,
) -> Server:
    """The sandbox's M3 Coordinator gateway (sandbox.m3gateway) as a process of its own, in
    front of real Prometheus servers: ``{"default": {"upstream": url, "retention": "30d"}}``. A process,
    not a thread, so its CPU is its own (the benchmark measures it) and it does not share the GIL with
    the tool reading through it, as an M3 Coordinator would not."""
    import sys

    sdir = Path(workdir) / name
    sdir.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({ns: dict(doc) for ns, doc in namespaces.items()})
    limits = [
        *(["--max-series", str(max_series)] if max_series else []),
        *(["--max-range", max_range] if max_range else []),
    ]

    def build_argv(p: int) -> list[str]:
        return [sys.executable, "-m", "sandbox.m3gateway", "--port", str(p), "--namespaces", spec, *limits]

    return _launch(
        name=name,
        port=port,
        build_argv=build_argv,
        scheme="http",
        data_dir=sdir,
        log_path=sdir / "m3gateway.log",
        ready_path="/health",
        ready_timeout=60,
        ready_auth=None,
        ready_verify=None,
        ready_cert=None,
    )


def start_victoriametrics(
    workdir: Path,
    *,
    name: str = "vm",
    port: int | None = None,
    ready_timeout: float = 60,
    data_dir: Path | None = None,
    extra_flags: Sequence[str] = (),
) -> Server:
    """Start a VictoriaMetrics single node on 127.0.0.1 and wait until /health answers 200.

    ``-retentionPeriod=100y``: the default (1 month) silently drops older samples at ingestion.
    Query it only after :func:`vm_force_flush`.
    """
    binary = find_binary("victoria-metrics")
    sdir = Path(workdir) / name
    sdir.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir is not None else sdir / "data"
    data.mkdir(parents=True, exist_ok=True)

    def build_argv(p: int) -> list[str]:
        return [
            binary,
            f"-storageDataPath={data}",
            f"-httpListenAddr=127.0.0.1:{p}",
            "-retentionPeriod=100y",
            "-search.maxQueryDuration=10m",
            "-search.maxSamplesPerQuery=10000000000",
            "-search.maxUniqueTimeseries=10000000",
            "-loggerLevel=WARN",
            *extra_flags,
        ]

    return _launch(
        name=name,
        port=port,
        build_argv=build_argv,
        scheme="http",
        data_dir=data,
        log_path=sdir / "vm.log",
        ready_path="/health",
        ready_timeout=ready_timeout,
        ready_auth=None,
        ready_verify=None,
        ready_cert=None,
    )


def vm_force_flush(server: Server) -> None:
    """Make VictoriaMetrics' in-memory buffers searchable, so counts right after ingest are exact."""
    with server.http_client() as client:
        client.get("/internal/force_flush").raise_for_status()


def bcrypt_hash(password: str, rounds: int = 10) -> str:
    """bcrypt hash for ``basic_auth_users`` in a Prometheus web config."""
    import bcrypt  # lazy: only needed when a web config with basic auth is made

    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode("ascii")


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throw-away CA, a server cert for 127.0.0.1/localhost and a client cert."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(dir: Path) -> TlsFiles:
    """Create a fresh CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    import trustme  # lazy: a test-time dependency, only needed for TLS sandboxes

    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="m3migrate sandbox")
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="m3migrate-sandbox-server")
    client = ca.issue_cert("client.m3migrate.invalid", common_name="m3migrate-sandbox-client")
    files = TlsFiles(
        ca_cert=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        client_cert=out / "client.pem",
        client_key=out / "client.key",
    )
    ca.cert_pem.write_to_path(str(files.ca_cert))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    for key in (files.server_key, files.client_key):
        os.chmod(key, 0o600)
    return files


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_RUNNING.values()):
        with contextlib.suppress(Exception):  # best effort at exit: keep stopping the others
            server.stop(timeout=10)
