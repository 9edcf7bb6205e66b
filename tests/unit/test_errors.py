"""Retryability lives on the errors (m3migrate/errors.py) and one retry condition reads it for every task.

Expectations from Prometheus' remote-write client (storage/remote/client.go ``Store``): a 5xx answer and a
429 are a ``RecoverableError`` (resent); any other 4xx is not, since resending the same request cannot help.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from prefect import flow, task

import m3migrate
from m3migrate import errors
from m3migrate.clients.bucket import BlockConflict
from m3migrate.clients.http import raise_for_common_status, retry_transient
from m3migrate.errors import (
    ConfigError,
    M3MigrateError,
    MalformedResponse,
    RejectReason,
    WriteRejected,
    is_terminal,
)
from tasks.retries import retry_unless_terminal


@pytest.fixture(scope="module")
def status_server() -> Iterator[str]:
    """Answers GET /<status> with that HTTP status."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(int(self.path.strip("/")))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"no")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _error_for(base: str, status: int) -> M3MigrateError:
    with httpx.Client() as client:
        response = client.get(f"{base}/{status}")
    with pytest.raises(M3MigrateError) as caught:
        raise_for_common_status(response, what="test")
    return caught.value


def _attempts(error: BaseException) -> int:
    """How many times a task with the project's retry condition runs when every attempt raises ``error``."""
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_unless_terminal)
    def failing() -> None:
        calls.append(1)
        raise error

    @flow
    def run() -> None:
        failing.submit().wait()

    run()
    return len(calls)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_recoverable_statuses_are_resent_and_rerun(status_server: str, status: int, prefect_api: str) -> None:
    error = _error_for(status_server, status)
    assert error.transient and not is_terminal(error)
    assert retry_transient(error) is True
    assert _attempts(error) == 3


@pytest.mark.parametrize("status", [401, 403, 404])
def test_client_errors_are_neither_resent_nor_rerun(status_server: str, status: int, prefect_api: str) -> None:
    error = _error_for(status_server, status)
    assert not error.transient and is_terminal(error)
    assert retry_transient(error) is False
    assert _attempts(error) == 1


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad selector"),
        WriteRejected("refused", reasons=frozenset({RejectReason.OUT_OF_BOUNDS}), endpoint="http://t"),
        BlockConflict("overlapping block"),
    ],
    ids=type,
)
def test_terminal_errors_stop_at_once(error: M3MigrateError, prefect_api: str) -> None:
    assert _attempts(error) == 1


@pytest.mark.parametrize(
    "error",
    [MalformedResponse("truncated body", endpoint="http://s"), OSError("worker killed"), KeyError("bug")],
    ids=type,
)
def test_other_errors_rerun_the_task(error: BaseException, prefect_api: str) -> None:
    """A rerun of a unit is safe (journaled, idempotent); only terminal errors make it pointless."""
    assert _attempts(error) == 3


def _all_error_classes() -> set[type[M3MigrateError]]:
    for info in pkgutil.walk_packages(m3migrate.__path__, "m3migrate."):
        if ".sandbox" not in info.name and ".prompb" not in info.name:
            importlib.import_module(info.name)
    found: set[type[M3MigrateError]] = set()
    todo = [M3MigrateError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_the_error_tree_in_the_docstring_names_every_error() -> None:
    """errors.py draws the hierarchy once (as httpx's _exceptions.py): it must not drift from the code."""
    classes = _all_error_classes()
    assert len(classes) > 15
    missing = sorted(cls.__name__ for cls in classes if cls.__name__ not in (errors.__doc__ or ""))
    assert not missing, f"add to errors.py's tree: {missing}"
    assert not [c for c in classes if c.transient and c.terminal]
