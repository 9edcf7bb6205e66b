"""Recording a flow's progress as the Prefect API shows it, at each progress event (shared by the tests).

A listener in ``tasks.transfer.PROGRESS_LISTENERS`` is called right after the flow (or a segment) has
updated its progress artifact, so reading the artifact from the API there sees every value it took,
without timing luck: the readings prove the artifact advances while the run is going.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Reading:
    event: dict[str, Any]
    value: float | None  # the artifact's data (percent) as the API answered right after the event
    description: str | None


@dataclass
class Recorder:
    keys: dict[str, str]  # phase -> the progress artifact key its events follow
    readings: list[Reading] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)  # notify() swallows a listener's errors

    def __call__(self, event: dict[str, Any]) -> None:
        try:
            key = self.keys.get(event["phase"])
            value, description = read_progress(key) if key else (None, None)
            self.readings.append(Reading(event, value, description))
        except BaseException as exc:
            self.errors.append(exc)
            raise

    def phase(self, phase: str) -> list[Reading]:
        return [r for r in self.readings if r.event["phase"] == phase]


def read_progress(key: str) -> tuple[float, str]:
    """The newest progress artifact of ``key``: its value and description, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    assert found, f"no artifact {key!r}"
    assert found[0].type == "progress", found[0].type
    return float(found[0].data), found[0].description or ""


@contextmanager
def recording(keys: dict[str, str]) -> Iterator[Recorder]:
    from tasks.transfer import PROGRESS_LISTENERS

    recorder = Recorder(keys)
    PROGRESS_LISTENERS.append(recorder)
    try:
        yield recorder
    finally:
        PROGRESS_LISTENERS.remove(recorder)
    assert not recorder.errors, recorder.errors


def assert_advances(readings: list[Reading], windows: int) -> None:
    """The artifact's value follows the events, rises through intermediate values and ends at 100 %."""
    assert readings, "no progress events"
    values = [r.value for r in readings]
    for r in readings:
        assert r.value == 100.0 * r.event["windows_done"] / r.event["windows_total"], (r.value, r.event)
        assert r.event["windows_total"] == windows
    assert values == sorted(values), values
    assert any(v is not None and 0 < v < 100 for v in values), f"no step between 0 and 100 %: {values}"
    assert values[-1] == 100.0
    assert any("ETA" in (r.description or "") for r in readings[:-1]), [r.description for r in readings]
    last = readings[-1].description or ""
    assert f"{windows}/{windows} windows" in last and "samples/s" in last and "done in" in last, last
