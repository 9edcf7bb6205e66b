"""collector and bulkjson: JSON decoded with the cyclic GC paused, the collector's state given back exactly
(also when threads decode at once or the decode fails), and the thresholds of a process holding data."""

from __future__ import annotations

import gc
import json
import threading

import pytest

from m3migrate import bulkjson, collector


@pytest.fixture(autouse=True)
def _collector_on():
    thresholds = gc.get_threshold()
    gc.enable()
    yield
    gc.enable()
    gc.set_threshold(*thresholds)


def test_decodes_as_json_does_and_pauses_the_collector_only_meanwhile():
    seen = []

    def hook(obj: dict) -> dict:
        seen.append(gc.isenabled())
        return obj

    text = json.dumps({"a": [{"b": 1}, {"c": [1.5, "x", None]}]})
    assert bulkjson.loads(text, object_hook=hook) == json.loads(text)
    assert bulkjson.loads(text.encode()) == json.loads(text)
    assert seen == [False, False, False] and gc.isenabled()


def test_a_bad_document_raises_as_json_does_and_the_collector_is_back_on():
    with pytest.raises(json.JSONDecodeError):
        bulkjson.loads('{"a": [1, 2')
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    assert bulkjson.loads("[1]") == [1]
    assert not gc.isenabled()


def test_overlapping_pauses_in_two_threads_enable_the_collector_once_the_last_ends():
    inside, release = threading.Event(), threading.Event()
    states = []

    def other():
        with collector.paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    with collector.paused():
        states.append(gc.isenabled())
    states.append(gc.isenabled())  # the other thread still decodes: the collector stays paused
    release.set()
    thread.join(10)
    states.append(gc.isenabled())
    assert states == [False, False, True]


def test_bulk_thresholds_raise_the_defaults_and_never_lower_a_higher_setting():
    gc.set_threshold(700, 10, 10)  # CPython's defaults
    collector.tune_for_bulk_data()
    assert gc.get_threshold() == collector.BULK_THRESHOLDS
    gc.set_threshold(500_000, 10, 1000)
    collector.tune_for_bulk_data()
    assert gc.get_threshold() == (500_000, 20, 1000)
