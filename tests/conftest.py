"""Shared pytest fixtures: real servers from :mod:`sandbox`.

Every server a fixture starts is stopped at teardown, also when the test fails.  Set
``M3MIGRATE_SANDBOX_CACHE=<dir>`` to keep the source's pristine blocks between runs (developers);
without it (CI) everything is built from scratch in pytest's temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.history import HistorySpec, SourceSandbox, start_source
from sandbox.m3gateway import GatewayNamespace, M3Gateway
from sandbox.servers import Server, start_prometheus, start_victoriametrics


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "servers: needs real prometheus/promtool/victoria-metrics binaries (scripts/install_deps.sh); "
        'deselect with -m "not servers"',
    )


def _stop_all(servers: list[Server]) -> None:
    """Stop every server even if stopping one of them fails, then report the first failure."""
    errors: list[Exception] = []
    for server in servers:
        try:
            server.stop()
        except Exception as exc:  # keep stopping the others first
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def sandbox_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory per test session for session-scoped servers and their data."""
    return tmp_path_factory.mktemp("sandbox")


@pytest.fixture(scope="session")
def source_history(sandbox_workdir: Path) -> Iterator[SourceSandbox]:
    """Source Prometheus with 200 series x 7 d x 60 s of history (blocks) plus a 30-minute live tail
    (head, with a stale marker and an ordinary NaN).  ``.server``, ``.spec``, ``.stats`` (blocks + tail).

    ``.m3`` is the M3 Coordinator gateway in front of it (one unaggregated namespace holding the whole
    history; ``.read_url``/``.query_url`` are its URLs): migrations, replication, blocks and verification
    read through it ([start, end) reads, M3's limits and namespace API), while expectations are read
    from the Prometheus itself ([start, end]). Samples lie on the minute, so a range starting 1 ms after
    one ends on one (the sample an M3 read of [start, end) loses) and every aligned window's first
    millisecond holds one; tests/integration/test_m3_edges.py covers every other edge."""
    cache = os.environ.get("M3MIGRATE_SANDBOX_CACHE")
    source = start_source(
        HistorySpec(series=200, span_s=7 * 86400, interval_s=60),
        sandbox_workdir,
        cache_dir=Path(cache) if cache else None,
    )
    try:
        with M3Gateway({"default": GatewayNamespace(source.server.url, retention="30d")}) as m3:
            source.m3 = m3
            yield source
    finally:
        source.stop()


@pytest.fixture
def prometheus_target(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory for fresh remote-write target Prometheus servers: ``prometheus_target(ooo_window="30d")``.

    Extra keyword arguments go to :func:`start_prometheus` (e.g. ``web_config``).
    """
    started: list[Server] = []

    def factory(ooo_window: str | None = None, **kwargs: Any) -> Server:
        kwargs.setdefault("remote_write_receiver", True)
        name = kwargs.pop("name", f"target{len(started)}")
        server = start_prometheus(tmp_path / "targets", name=name, ooo_window=ooo_window, **kwargs)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        _stop_all(started)


@pytest.fixture
def victoriametrics_target(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Factory for fresh VictoriaMetrics servers (retention 100y): ``victoriametrics_target()``."""
    started: list[Server] = []

    def factory(**kwargs: Any) -> Server:
        name = kwargs.pop("name", f"vm{len(started)}")
        server = start_victoriametrics(tmp_path / "targets", name=name, **kwargs)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        _stop_all(started)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect API (temporary SQLite) for the whole session: it takes ~15 s to start."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


@pytest.fixture
def default_gc_thresholds() -> Iterator[tuple[int, int, int]]:
    """CPython's default collector thresholds for the test (a flow may raise them), restored afterwards."""
    import gc

    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield (700, 10, 10)
    finally:
        gc.set_threshold(*before)


@pytest.fixture
def plan_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every saved plan this process reads from a state directory, in order (the parsed text's first bytes)."""
    import m3migrate.state

    reads: list[str] = []
    parse = m3migrate.state.read_plan_object

    def counted(text: str):
        reads.append(text[:80])
        return parse(text)

    monkeypatch.setattr(m3migrate.state, "read_plan_object", counted)
    return reads
