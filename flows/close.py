"""The "Close" step: a final catch-up, a verification, then a human's cutover decision.

The flow run pauses with a form in the Prefect UI (the verification summary and: stop replication or
keep replicating, approver, comment). Resume it there, or with `m3migrate approve --flow-run ID ...`.

- stop_replication pauses the replicate deployment and its schedules, then reads them back as proof.
- keep_replicating makes sure they are active, and reads them back too.
- Approving after a failed verification needs `override_failed_verification`. Without it the
  approval is refused (logged, recorded as an artifact) and the run pauses again.
- When nobody decides before the timeout, nothing is stopped. The run ends Completed with
  decision "undecided".

The pause blocks this process: the gate needs a Prefect server that outlives the command
(`prefect server start` and PREFECT_API_URL), not the CLI's ephemeral API.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field, ValidationError, field_validator

from blocks import M3Source, ThanosTarget
from flows.replicate import DEFAULT_LAG_MINUTES, replicate
from flows.verify import verify_flow
from m3migrate.checks.verify import DEFAULT_SAMPLES_FRACTION, VerificationFailed
from m3migrate.errors import ConfigError
from m3migrate.report import CloseResult, PassResult, figure_table, md, table
from m3migrate.settings.spec import MigrationSpec, default_state_dir
from m3migrate.state import MigrationState, resolve_spec

REPLICATE_DEPLOYMENT = "replicate/replicate"
DEFAULT_APPROVAL_HOURS = 72.0
MAX_APPROVAL_HOURS = 28 * 24.0
# More than the longest approval wait, plus time for the catch-up pass and the verification.
FLOW_TIMEOUT_SECONDS = int(MAX_APPROVAL_HOURS * 3600) + 2 * 86400

STOP = "stop_replication"
KEEP = "keep_replicating"
UNDECIDED = "undecided"


class CutoverDecision(RunInput):
    """The cutover form. The UI shows it on the paused run, and `m3migrate approve` fills it."""

    decision: Literal["stop_replication", "keep_replicating"] = Field(
        description="stop_replication: the cutover is done, so pause the replicate schedule. "
        "keep_replicating: leave it on."
    )
    approver: str = Field(min_length=1, description="Who decides (name or e-mail).")
    comment: str = Field(default="", description="Why, ticket number, anything for the record.")
    override_failed_verification: bool = Field(
        default=False,
        description="Verification FAILED and you decide anyway. Tick this to confirm, or the decision is refused.",
    )

    @field_validator("approver")
    @classmethod
    def _approver_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("approver must not be blank")
        return value.strip()


def cutover_artifact_key(migration_id: str, what: str = "cutover") -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{migration_id}-{what}".lower())


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary_markdown(verified: bool, verification: Mapping[str, Any], replication: Mapping[str, Any]) -> str:
    """The form's description: the verification result and what each choice does."""
    status = "**verification passed**" if verified else "**verification FAILED**"
    keys = (
        "series_total",
        "series_checked",
        "samples_source",
        "samples_target",
        "missing",
        "extra",
        "mismatches",
        "mismatched_series",
    )
    figures = {k: verification[k] for k in keys if k in verification}
    figures["final catch-up"] = (
        f"{replication.get('status', '?')} "
        f"(watermark {replication.get('watermark', '-')}, lag {replication.get('lag_seconds', '-')} s)"
    )
    lines = [f"## Cutover of `{md(verification.get('migration_id', '?'))}`: {status}", "", *figure_table(figures)]
    if verification.get("report_dir"):
        lines += ["", f"Report files: `{md(verification['report_dir'])}`"]
    if replication.get("source_changes"):
        lines += ["", "Source changes seen by the catch-up:", *(f"- {md(c)}" for c in replication["source_changes"])]
    if verification.get("error"):
        lines += ["", f"Verification error: {md(verification['error'])}"]
    lines += [
        "",
        "**Decide:**",
        "- `stop_replication`: the cutover is done. The replicate deployment and its schedule are paused.",
        "- `keep_replicating`: the replicate schedule stays on. Close again later.",
    ]
    if not verified:
        lines.append(
            "- Verification failed. To decide anyway, tick **override_failed_verification**, "
            "or the decision is refused and the run waits again."
        )
    return "\n".join(lines)


def _schedule_text(schedule: Any) -> str:
    inner = getattr(schedule, "schedule", None)
    for attr in ("interval", "cron", "rrule"):
        value = getattr(inner, attr, None)
        if value is not None:
            return f"{attr} {value}"
    return str(inner)


def read_schedule_state(client: Any, deployment_id: UUID) -> dict[str, Any]:
    """The deployment's paused flag, every schedule's active flag and its runs waiting to start."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    deployment = client.read_deployment(deployment_id)
    schedules = client.read_deployment_schedules(deployment_id)

    def runs(state: StateType) -> int:
        return len(
            client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))),
            )
        )

    return {
        "deployment_id": str(deployment_id),
        "deployment_paused": bool(deployment.paused),
        "schedules": [{"id": str(s.id), "active": bool(s.active), "schedule": _schedule_text(s)} for s in schedules],
        "scheduled_runs": runs(StateType.SCHEDULED),
        "running_runs": runs(StateType.RUNNING),
        "read_at": _now(),
    }


def is_replicating(proof: dict[str, Any]) -> bool:
    """True if the deployment is unpaused and has at least one active schedule."""
    return not proof["deployment_paused"] and any(s["active"] for s in proof["schedules"])


def is_stopped(proof: dict[str, Any]) -> bool:
    return proof["deployment_paused"] and not any(s["active"] for s in proof["schedules"])


@task(name="set-replication-schedule", cache_policy=NONE)
def set_replication_schedule(deployment_name: str, active: bool) -> dict[str, Any]:
    """Pause (or activate) the replicate deployment and each schedule, then read back the result.

    Returns the read-back state. If the deployment does not exist, returns {"found": False}.
    Raises RuntimeError if the read-back state is not the requested one.
    """
    from prefect.client.orchestration import get_client

    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return {"found": False, "deployment": deployment_name, "read_at": _now()}
        before = read_schedule_state(client, deployment.id)
        if active:
            client.resume_deployment(deployment.id)
        else:
            client.pause_deployment(deployment.id)  # also deletes its auto-scheduled runs
        for schedule in before["schedules"]:
            if schedule["active"] != active:
                client.update_deployment_schedule(deployment.id, UUID(schedule["id"]), active=active)
        after = read_schedule_state(client, deployment.id)
    proof = {"found": True, "deployment": deployment_name, "before": before, **after}
    ok = is_replicating(after) if active else is_stopped(after)
    if not ok:
        raise RuntimeError(f"{deployment_name} did not end {'active' if active else 'paused'}: read back {after}")
    logger.info(
        "%s is %s: deployment paused=%s, schedules active=%s, %d scheduled run(s) waiting",
        deployment_name,
        "replicating" if active else "stopped",
        after["deployment_paused"],
        [s["active"] for s in after["schedules"]],
        after["scheduled_runs"],
    )
    return proof


def _proof_markdown(proof: dict[str, Any] | None) -> list[str]:
    if proof is None:
        return []
    if not proof.get("found"):
        return [
            "",
            f"## WARNING: no deployment `{md(proof['deployment'])}`",
            "",
            "There was no replicate schedule to change. If replication runs somewhere else (another "
            "Prefect server, cron, `m3migrate replicate` in a loop), stop it there.",
        ]
    before = {s["id"]: s["active"] for s in proof["before"]["schedules"]}
    rows = [
        ("deployment paused", proof["before"]["deployment_paused"], proof["deployment_paused"]),
        *((f"schedule {s['schedule']} active", before.get(s["id"]), s["active"]) for s in proof["schedules"]),
        ("scheduled runs waiting", proof["before"]["scheduled_runs"], proof["scheduled_runs"]),
        ("runs in progress", proof["before"]["running_runs"], proof["running_runs"]),
    ]
    lines = [
        "",
        f"## Proof: `{md(proof['deployment'])}` as read back at {proof['read_at']}",
        "",
        *table(("", "before", "after"), rows),
    ]
    if proof["running_runs"]:
        lines += ["", "A pass in progress finishes normally; the migration's lock keeps passes from overlapping."]
    return lines


def _leave_expired_pause(ctx: FlowRunContext | None) -> None:
    """Set the run back to Running after its pause expired.

    Prefect refuses every transition out of an expired pause (the run would end Failed), so the
    undecided run would not end Completed without this. Forcing also makes late resumes fail with
    "not paused" instead of changing anything.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    if ctx is None or ctx.flow_run is None:
        return
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(ctx.flow_run.id, Running(message="cutover approval timed out: undecided"), force=True)


def _record(migration_id: str, title: str, facts: dict[str, Any], extra: list[str], description: str) -> None:
    lines = [f"# {title}", "", *table(("", ""), facts.items()), *extra]
    create_markdown_artifact("\n".join(lines) + "\n", key=cutover_artifact_key(migration_id), description=description)


@flow(name="close", log_prints=False, timeout_seconds=FLOW_TIMEOUT_SECONDS)
def close(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec | None = None,
    replicate_deployment: str = REPLICATE_DEPLOYMENT,
    approval_timeout_hours: float = DEFAULT_APPROVAL_HOURS,
    sample_fraction: float = 1.0,
    state_dir: str | None = None,
    lag_minutes: int = DEFAULT_LAG_MINUTES,
    catch_up_lock_wait_seconds: float = 600.0,
    poll_interval_seconds: int = 10,
    migration_id: str | None = None,
    evidence: Literal["figures", "samples"] = "figures",
    samples_fraction: float = DEFAULT_SAMPLES_FRACTION,
) -> CloseResult:
    """Final catch-up, verification, then wait for a human's decision: stop replication or keep it on.

    ``migration_id`` alone is enough once migrate saved the spec (a spec given is checked against it).
    ``evidence``/``samples_fraction``: how the verification compares (docs/verification.md); "samples"
    compares every sample before the cutover, at ~5 µs of CPU per sample.
    """
    if not 0 < approval_timeout_hours <= MAX_APPROVAL_HOURS:
        raise ConfigError(f"approval_timeout_hours must be in (0, {MAX_APPROVAL_HOURS:.0f}]")
    root = Path(state_dir) if state_dir else default_state_dir()
    spec = resolve_spec(root, migration_id, spec, source.read_url, target.write_url)
    migration_id = spec.resolved_id(source.read_url, target.write_url)  # resolve_spec set it: spec.migration_id
    ctx = FlowRunContext.get()
    flow_run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    # 1. final catch-up (a scheduled pass may be running: wait for it, it holds the lock)
    replication = final_catch_up(source, target, spec, state_dir, lag_minutes, catch_up_lock_wait_seconds)
    # 2. verification of everything copied so far: the bulk range and what replication added up to its watermark
    verified, verification = verify_to_watermark(
        source, target, spec, root, migration_id, state_dir, sample_fraction, evidence, samples_fraction
    )
    result = CloseResult(migration_id, flow_run_id, replication, verification, verified)
    # 3. the gate: pause until a decision arrives, or the deadline passes
    gate = CutoverGate(result, ctx, approval_timeout_hours, poll_interval_seconds)
    decision = gate.wait()
    if decision is None:  # the timeout passed: nothing changes
        gate.record_undecided()
        return result
    # 4. apply the decision, read it back, record it
    apply_decision(result, decision, replicate_deployment, gate.facts)
    return result


def final_catch_up(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    state_dir: str | None,
    lag_minutes: int,
    lock_wait_seconds: float,
) -> PassResult:
    """One last replication pass; a pass still running after ``lock_wait_seconds`` makes it skip."""
    replication = replicate(
        source,
        target,
        spec,
        lag_minutes=lag_minutes,
        state_dir=state_dir,
        wait_for_lock_seconds=lock_wait_seconds,
    )
    if replication.status == "skipped-locked":
        get_run_logger().warning("the final catch-up was skipped: %s", replication.reason)
    return replication


def verify_to_watermark(
    source: M3Source,
    target: ThanosTarget,
    spec: MigrationSpec,
    root: Path,
    migration_id: str,
    state_dir: str | None,
    sample_fraction: float,
    evidence: str,
    samples_fraction: float,
) -> tuple[bool, dict[str, Any]]:
    """Verify the migration up to the replication watermark: whether it passed, and its summary."""
    watermark = MigrationState(root, migration_id).load_replication().watermark_ms
    until = datetime.fromtimestamp(watermark / 1000, UTC) if watermark is not None else None
    try:
        verification = verify_flow(
            source,
            target,
            spec,
            sample_fraction=sample_fraction,
            state_dir=state_dir,
            until=until,
            evidence=evidence,
            samples_fraction=samples_fraction,
        )
        return True, verification
    except VerificationFailed as exc:
        verification = {**exc.summary, "ok": False} if exc.summary else {"ok": False, "error": str(exc)}
        verification.setdefault("migration_id", migration_id)
        get_run_logger().warning("verification failed: %s", exc)
        return False, verification


class CutoverGate:
    """The paused run's form: asks again after a refused decision, until a valid one or the deadline."""

    def __init__(self, result: CloseResult, ctx: FlowRunContext | None, timeout_hours: float, poll: int) -> None:
        self.result = result
        self.ctx = ctx
        self.timeout_hours = timeout_hours
        self.poll = poll
        self.logger = get_run_logger()
        self.facts = {"migration": result.migration_id, "verified": result.verified, "flow run": result.flow_run_id}
        self.timeout_s = max(1, round(timeout_hours * 3600))
        self.deadline = time.monotonic() + self.timeout_s
        self.description = self._summary()

    def _summary(self) -> str:
        return summary_markdown(self.result.verified, self.result.verification, self.result.replication)

    def wait(self) -> CutoverDecision | None:
        """The accepted decision, or None when the deadline passed first."""
        attempt = 0
        while True:
            attempt += 1
            remaining = round(self.deadline - time.monotonic())
            decision: CutoverDecision | None = None
            if remaining > 0:
                try:
                    decision = self._pause(remaining, attempt)
                except ValidationError as exc:
                    self._refuse_invalid(exc)
                    continue
            if decision is None:
                return None
            if not self.result.verified and not decision.override_failed_verification:
                self._refuse_unconfirmed(decision)
                continue
            return decision

    def _pause(self, remaining: int, attempt: int) -> CutoverDecision | None:
        self.logger.info(
            "waiting up to %.1f h for the cutover decision: resume this run in the Prefect UI, or run "
            "`m3migrate approve --flow-run %s --decision stop|keep --approver NAME`",
            remaining / 3600,
            self.result.flow_run_id,
        )
        form = CutoverDecision.with_initial_data(description=self.description, decision=KEEP)
        try:
            return pause_flow_run(
                wait_for_input=form,
                timeout=remaining,
                poll_interval=max(1, min(self.poll, remaining)),
                key=f"cutover-{attempt}",
            )
        except FlowPauseTimeout:
            _leave_expired_pause(self.ctx)
            return None

    def _refuse_invalid(self, exc: ValidationError) -> None:
        self.result.refusals += 1
        self.logger.error("cutover decision refused, invalid input: %s; waiting again", exc)
        _record(
            self.result.migration_id,
            "Cutover decision refused: invalid input",
            {**self.facts, "error": exc, "at": _now()},
            [],
            "Refused: invalid input",
        )
        self.description = f"**Previous decision refused (invalid input): {md(exc)}**\n\n" + self._summary()

    def _refuse_unconfirmed(self, decision: CutoverDecision) -> None:
        self.result.refusals += 1
        self.logger.error(
            "cutover decision %r by %s refused: verification failed and override_failed_verification is "
            "not set; nothing was changed, waiting for a new decision",
            decision.decision,
            decision.approver,
        )
        _record(
            self.result.migration_id,
            "Cutover decision refused",
            {
                **self.facts,
                "decision asked": decision.decision,
                "approver": decision.approver,
                "comment": decision.comment,
                "reason": "verification failed and override_failed_verification was not set",
                "at": _now(),
            },
            ["", "Nothing was changed. The run waits for a new decision."],
            "Refused: verification failed without override",
        )
        self.description = (
            f"**The decision of {md(decision.approver)} was refused: verification failed and "
            "override_failed_verification was not ticked.**\n\n" + self._summary()
        )

    def record_undecided(self) -> None:
        self.logger.warning(
            "undecided: nobody decided within %.1f h, nothing was stopped; replication continues as it was. "
            "Run close again to decide.",
            self.timeout_s / 3600,
        )
        _record(
            self.result.migration_id,
            "Cutover undecided",
            {**self.facts, "decision": UNDECIDED, "timeout hours": self.timeout_hours, "at": _now()},
            [
                "",
                "Nobody decided before the timeout. **Nothing was stopped**: the replicate schedule is unchanged.",
            ],
            "Undecided: nothing was stopped",
        )


def apply_decision(
    result: CloseResult, decision: CutoverDecision, replicate_deployment: str, facts: dict[str, Any]
) -> None:
    """Pause (or keep) the replicate deployment, read it back and record the decision with its proof."""
    logger = get_run_logger()
    stop = decision.decision == STOP
    proof = set_replication_schedule(replicate_deployment, active=not stop)
    if not proof.get("found"):
        log = logger.error if stop else logger.warning
        log(
            "NO deployment %r: there was no replication schedule to %s. If replication runs elsewhere, "
            "handle it there.",
            replicate_deployment,
            "pause" if stop else "keep on",
        )
    result.decision = decision.decision
    result.approver = decision.approver
    result.comment = decision.comment
    result.override_failed_verification = decision.override_failed_verification
    result.decided_at = _now()
    result.schedule = proof
    decided = {k: result[k] for k in ("decision", "approver", "comment", "override_failed_verification", "decided_at")}
    _record(
        result.migration_id,
        f"Cutover decision: {decision.decision}",
        {**facts, **decided},
        _proof_markdown(proof),
        f"{decision.decision} by {decision.approver}",
    )
    logger.info("cutover decision %s by %s recorded", decision.decision, decision.approver)
