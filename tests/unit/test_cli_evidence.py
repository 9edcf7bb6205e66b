"""verify and close offer the verifier's evidence levels and its spot-check default, without importing
the verifier when the CLI starts (the names are written out in cli/options.py: kept equal here)."""

from __future__ import annotations

import inspect
import typing

import pytest
from typer.testing import CliRunner

from cli.main import app, close, verify
from cli.options import EvidenceOption
from m3migrate.checks.verify import DEFAULT_SAMPLES_FRACTION, EVIDENCE


def test_the_offered_levels_are_the_verifiers_cheapest_first() -> None:
    literal = typing.get_args(EvidenceOption)[0]
    assert typing.get_args(literal) == EVIDENCE


@pytest.mark.parametrize("step", [verify, close])
def test_both_steps_default_to_the_verifiers_defaults(step) -> None:
    parameters = inspect.signature(inspect.unwrap(step)).parameters
    assert parameters["evidence"].default == EVIDENCE[0]
    assert parameters["spot_check"].default == DEFAULT_SAMPLES_FRACTION


@pytest.mark.parametrize("step", ["verify", "close"])
def test_a_level_not_offered_is_refused_naming_the_levels(step) -> None:
    done = CliRunner().invoke(app, [step, "--evidence", "exact", "--migration-id", "m"])
    assert done.exit_code == 2
    assert "exact" in done.output and all(level in done.output for level in EVIDENCE)


def test_spot_check_outside_zero_to_one_is_refused() -> None:
    done = CliRunner().invoke(app, ["verify", "--spot-check", "1.5", "--migration-id", "m"])
    assert done.exit_code == 2
    assert "--spot-check" in done.output
