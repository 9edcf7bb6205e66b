"""One validation check as a Prefect task: retried only when its failure may go away on its own.

A check that finds a transient problem (connection refused, 5xx, timeout) raises :class:`TransientCheck`,
which the retry condition accepts; every other outcome (pass, warn, a permanent fail such as 401, a TLS
error or an out-of-bounds probe) is returned at once and never retried. When the retries are used up the
task ends Failed with the TransientCheck, whose ``result`` is the fail to report.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from m3migrate.checks.validate import CheckResult, ValidationInput, run_check
from tasks.retries import retry_unless_terminal


class TransientCheck(Exception):
    """A check failed for a reason worth retrying; ``result`` is the fail it would report."""

    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(f"{result.get('name')}: {result.get('observed')}")
        self.result = result

    def __reduce__(self):
        return (type(self), (self.result,))


@task(
    name="validation-check",
    cache_policy=NONE,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_unless_terminal,  # a TransientCheck is retried; no check raises a terminal error
)
def validation_check(name: str, inp: ValidationInput) -> dict[str, Any]:
    """Run one check; the result as a dict (CheckResult.to_dict())."""
    result = run_check(name, inp)
    if result.transient:
        raise TransientCheck(result.to_dict())
    return result.to_dict()


def result_of(name: str, state) -> CheckResult:
    """The CheckResult of a finished validation_check state (a TransientCheck after its last retry included)."""
    if state.is_completed():
        return CheckResult.from_dict(state.result())
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, TransientCheck):
        return CheckResult.from_dict(exc.result)
    return CheckResult(
        name, "fail", f"the check task ended {state.name}: {exc!r}", "see the task's log", {"error": type(exc).__name__}
    )
