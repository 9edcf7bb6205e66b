"""The production-protection knobs: AIMD limiter logic, settings, CLI options and config keys."""

from __future__ import annotations

import logging
import threading

import pytest
from pydantic import ValidationError

from m3migrate.clients.http import retry_policy
from m3migrate.clients.limits import AdaptiveLimiter, RateGate
from m3migrate.settings.endpoints import SourceSettings, TargetSettings


def test_aimd_halves_once_per_burst_of_failures_and_climbs_back_by_one(caplog):
    caplog.set_level(logging.INFO, logger="m3migrate.clients.limits")
    limiter = AdaptiveLimiter(8, side="source", op="read")
    slots = [limiter.slot() for _ in range(4)]
    generations = [s.__enter__() for s in slots]
    for g in generations:  # four requests admitted together all answer 503: one decrease, not four
        limiter.overloaded(g, "answered 503")
    for s in slots:
        s.__exit__(None, None, None)
    assert limiter.limit == 4 and limiter.decreases == 1
    assert caplog.messages == ["source answered 503: lowering read concurrency 8 -> 4"]
    for _ in range(4):
        limiter.succeeded()
    assert limiter.limit == 5
    for _ in range(200):
        limiter.succeeded()
    assert limiter.limit == 8, "never above the configured ceiling"
    for _ in range(10):
        with limiter.slot() as g:
            limiter.overloaded(g, "timed out")
    assert limiter.limit == 1, "never below one"


def test_limit_blocks_extra_requests_until_a_slot_frees():
    limiter = AdaptiveLimiter(2, side="target", op="write")
    entered = threading.Event()
    with limiter.slot(), limiter.slot():

        def third() -> None:
            with limiter.slot():
                entered.set()

        t = threading.Thread(target=third)
        t.start()
        assert not entered.wait(0.3)
    assert entered.wait(10)
    t.join()
    assert limiter.peak_in_flight == 2


def test_fixed_concurrency_when_adaptivity_is_off():
    limiter = AdaptiveLimiter(4, side="source", op="read", adaptive=False)
    with limiter.slot() as g:
        limiter.overloaded(g, "answered 429")
    assert limiter.limit == 4


def test_samples_beyond_one_seconds_budget_are_taken_in_pieces():
    gate = RateGate(None, 1_000_000)
    gate.take_samples(2_500_000)  # more than the bucket holds: must not be refused or raise


def test_settings_carry_the_knobs_with_safe_defaults():
    s = SourceSettings(read_url="http://m3:7201/api/v1/prom/remote/read")
    assert (s.max_concurrency, s.adaptive_concurrency, s.max_requests_per_second, s.max_samples_per_second) == (
        8,
        True,
        None,
        None,
    )
    assert retry_policy(s).attempts == 8
    assert s.tls.insecure_skip_verify is False, "TLS verification is on by default"
    with pytest.raises(ValidationError):
        TargetSettings(write_url="http://t/api/v1/write", max_concurrency=0)
    with pytest.raises(ValidationError):
        TargetSettings(write_url="http://t/api/v1/write", max_samples_per_second=-1)


def test_blocks_and_cli_options_reach_the_settings():
    from blocks import M3Source, ThanosTarget
    from cli.options import shared_options

    inputs = shared_options(
        source_read_url="http://127.0.0.1:9/api/v1/read",
        target_write_url="http://127.0.0.1:9/api/v1/write",
        start="2026-01-01T00:00:00Z",
        end="2026-01-02T00:00:00Z",
        source_max_concurrency=2,
        source_max_requests_per_second=10.0,
        source_max_samples_per_second=50_000.0,
        source_no_adaptive_concurrency=True,
        target_max_concurrency=3,
        target_timeout_seconds=15.0,
    )
    src, tgt = inputs.source.settings(), inputs.target.settings()
    assert (src.max_concurrency, src.max_requests_per_second, src.max_samples_per_second) == (2, 10.0, 50_000.0)
    assert src.adaptive_concurrency is False
    assert (tgt.max_concurrency, tgt.timeout_seconds, tgt.adaptive_concurrency) == (3, 15.0, True)
    assert "max_samples_per_second" in M3Source.model_fields and "max_concurrency" in ThanosTarget.model_fields
