"""A remote-read body is freed as soon as it is decompressed: httpx's Response and its stream point at
each other, so without help each compressed body waits for Python's cyclic GC (measured: ~90 MB of them
at once in a 100,000-series blocks window, BENCHMARKS.md section 5)."""

from __future__ import annotations

import gc

import httpx
from fake_m3 import FakeM3Coordinator

from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.wire.codec import Matcher


def _responses() -> list[object]:
    """Live httpx responses, judged by type(): isinstance() on a weakref.proxy left by another test
    asks the dead referent for its __class__ and raises ReferenceError."""
    return [o for o in gc.get_objects() if issubclass(type(o), httpx.Response)]


def test_no_response_outlives_its_read() -> None:
    with FakeM3Coordinator() as m3, RemoteReadClient(SourceSettings(read_url=m3.read_url)) as reader:
        gc.collect()
        gc.disable()
        try:
            before = {id(o) for o in _responses()}  # other tests' leftovers
            for _ in range(3):
                reader.read_raw([Matcher("__name__", "=", "up")], 1000, 2000)
            alive = [o for o in _responses() if id(o) not in before]
        finally:
            gc.enable()
    assert alive == []
