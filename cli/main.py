"""`m3migrate`: the command line. Each command runs the matching Prefect flow (ephemeral API when no
PREFECT_API_URL is set) and exits non-zero when the step did not complete."""

from __future__ import annotations

import functools
import gc
import inspect
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.console import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_FAILED,
    console,
    live_progress,
    out,
    print_problems,
    print_report,
    print_summary,
    print_totals,
    progress_bar,
)
from cli.options import (
    EvidenceOption,
    Inputs,
    SpotCheckOption,
    bucket_command,
    own_process,
    parse_headers,
    startup_imports,
    step_command,
)
from m3migrate.errors import ConfigError, M3MigrateError
from m3migrate.settings.spec import default_state_dir, format_validation_error, load_config_file

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
@step_command
@bucket_command
def validate(
    inputs: Inputs,
    bucket: Any,
    report: Annotated[Path | None, typer.Option(help="Also write the report as JSON to this file.")] = None,
    clock_skew_threshold: Annotated[
        float, typer.Option(help="Seconds of clock difference that make a warning.")
    ] = 30.0,
) -> None:
    """Check source, target and spec before any data moves; exit 1 if a check fails. Writes only the probe."""
    with startup_imports():
        from flows.validate import validate as validate_flow
        from m3migrate.checks.validate import ValidationFailed

    try:
        result = validate_flow(
            inputs.source,
            inputs.target,
            inputs.spec,
            clock_skew_threshold_s=clock_skew_threshold,
            bucket=bucket,
            state_dir=inputs.state_dir or str(default_state_dir()),  # a resumed migration: probed by its journal
        )
    except ValidationFailed as exc:
        result = exc.report
    print_report(result)
    if report:
        report.write_text(json.dumps(result, indent=2, default=str) + "\n")
    if result.get("result") == "fail":
        console.print("[red]validation failed:[/red] fix each FAIL as its 'fix' column says, then rerun")
        raise typer.Exit(EXIT_FAILED)


@app.command()
@step_command
@bucket_command
def migrate(
    inputs: Inputs,
    bucket: Any,
    start_over: Annotated[
        bool, typer.Option("--start-over", help="Forget progress and rewrite from the start.")
    ] = False,
    skip_validation: Annotated[
        bool, typer.Option("--skip-validation", help="Do not run the validation checks first.")
    ] = False,
) -> None:
    """Copy history from the M3 source into the Thanos target. Rerun the same command to resume."""
    with startup_imports():
        from flows.migrate import migrate as migrate_flow
        from m3migrate.checks.validate import ValidationFailed
        from tasks.transfer import PROGRESS_LISTENERS

    progress, listener = progress_bar()
    try:
        with progress:
            summary = migrate_flow(
                inputs.source,
                inputs.target,
                inputs.spec,
                start_over=start_over,
                state_dir=inputs.state_dir,
                skip_validation=skip_validation,
                bucket=bucket,
            )
    except ValidationFailed as exc:
        print_report(exc.report)
        console.print(
            "[red]validation failed:[/red] nothing was migrated; fix each FAIL and rerun (or --skip-validation)"
        )
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        PROGRESS_LISTENERS.remove(listener)
    print_summary(summary)


@app.command()
@step_command
def replicate(
    inputs: Inputs,
    lag: Annotated[str, typer.Option(help="Stay this far behind now (covers late writes), e.g. 15m, 1h.")] = "15m",
    until: Annotated[str | None, typer.Option(help="Replicate up to this instant instead of now - lag.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running pass of the same migration.")] = 10.0,
) -> None:
    """One replication pass: copy what reached the source since the last pass, up to now - lag."""
    with startup_imports():
        from flows.replicate import pass_until_ms
        from flows.replicate import replicate as replicate_flow

    until_dt = _parse_instant(until) if until else None
    pass_until_ms(until_dt, _minutes(lag))  # a future --until is refused (exit 2) before a flow run starts
    with live_progress():  # the pass's windows and its lag behind now
        result = replicate_flow(
            inputs.source,
            inputs.target,
            inputs.spec,
            lag_minutes=_minutes(lag),
            until=until_dt,
            state_dir=inputs.state_dir,
            wait_for_lock_seconds=wait,
        )
    print_summary(result)
    if result.status == "skipped-locked":
        raise typer.Exit(EXIT_BUSY)


@app.command()
@step_command
def verify(
    inputs: Inputs,
    sample_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Check this share of the series (e.g. 0.01), every window.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the series sample.")] = 0,
    evidence: EvidenceOption = "figures",
    spot_check: SpotCheckOption = 0.01,
    report_dir: Annotated[
        Path | None, typer.Option(help="Write problems/windows CSV + Parquet and a PNG chart here.")
    ] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="Print at most this many series of each kind.")] = 20,
    ignore_label: Annotated[
        list[str] | None,
        typer.Option(
            "--ignore-label",
            help="Label the target adds, ignored on both sides; repeatable "
            "(default: tenant_id, replica, prometheus_replica, receive, rule_replica).",
        ),
    ] = None,
) -> None:
    """Compare source and target per series and window; exit 1 when anything differs."""
    with startup_imports():
        from flows.verify import verify_flow
        from m3migrate.checks.verify import VerificationFailed

    if not inputs.target.query_url:
        raise ConfigError(
            "verify reads the target back through its query API, but no target query URL is set",
            hint="pass --target-query-url (Thanos Query: https://HOST:10902) or set target.query_url",
        )
    if sample_fraction <= 0:
        raise ConfigError("--sample-fraction must be greater than 0")
    try:
        summary = verify_flow(
            inputs.source,
            inputs.target,
            inputs.spec,
            sample_fraction=sample_fraction,
            state_dir=inputs.state_dir,
            report_dir=str(report_dir) if report_dir else None,
            seed=seed,
            ignore_labels=ignore_label or None,
            evidence=evidence,
            samples_fraction=spot_check,
        )
    except VerificationFailed as exc:
        if not exc.summary:
            raise
        summary = exc.summary
    print_totals(summary)
    if summary.get("report_dir"):
        out.print(f"report files: {summary['report_dir']}", markup=False, highlight=False)
    if summary.get("ok"):
        return
    import pandas as pd

    print_problems(pd.read_parquet(Path(summary["report_dir"]) / "problems.parquet"), show)
    console.print("[red]source and target differ[/red]: see the report files for every series and window")
    raise typer.Exit(EXIT_FAILED)


def _minutes(text: str) -> int:
    units = {"m": 1, "h": 60, "d": 1440}
    value, unit = text[:-1], text[-1:]
    if unit not in units or not value.isdigit():
        raise ConfigError(f"duration {text!r} is not like 15m, 2h or 1d")
    return int(value) * units[unit]


def _parse_instant(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not an RFC 3339 instant like 2025-01-01T00:00:00Z") from None


@app.command()
@step_command
def close(
    inputs: Inputs,
    approval_timeout_hours: Annotated[
        float, typer.Option(min=0.0, help="How long the gate waits for a decision; then nothing is stopped.")
    ] = 72.0,
    sample_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Verify this share of the series (e.g. 0.01).")
    ] = 1.0,
    evidence: EvidenceOption = "figures",
    spot_check: SpotCheckOption = 0.01,
    replicate_deployment: Annotated[
        str, typer.Option(help="The deployment whose schedule a stop decision pauses.")
    ] = "replicate/replicate",
    lag: Annotated[str, typer.Option(help="The final catch-up stays this far behind now, e.g. 15m.")] = "15m",
) -> None:
    """Final catch-up, verify, then wait for the cutover decision (Prefect UI or `m3migrate approve`)."""
    import os

    with startup_imports():
        from flows.close import close as close_flow

    if not inputs.target.query_url:
        raise ConfigError(
            "close verifies the target through its query API, but no target query URL is set",
            hint="pass --target-query-url (Thanos Query: https://HOST:10902) or set target.query_url",
        )
    if not os.environ.get("PREFECT_API_URL"):
        console.print(
            "[yellow]warning:[/yellow] PREFECT_API_URL is not set: the gate runs on a temporary API that only "
            "this process can reach. To approve from the UI or another shell, start `prefect server start` "
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api first."
        )
    console.print(
        "The run pauses for the cutover decision after the catch-up and verification. Approve it in the "
        "Prefect UI (the flow run's Resume button) or with:\n"
        "  m3migrate approve --flow-run <the flow run id logged below> --decision stop|keep --approver NAME",
        markup=False,
        highlight=False,
    )
    result = close_flow(
        inputs.source,
        inputs.target,
        inputs.spec,
        replicate_deployment=replicate_deployment,
        approval_timeout_hours=approval_timeout_hours,
        sample_fraction=sample_fraction,
        state_dir=inputs.state_dir,
        lag_minutes=_minutes(lag),
        evidence=evidence,
        samples_fraction=spot_check,
    )
    out.print(f"flow run {result.flow_run_id}: decision {result.decision}", markup=False, highlight=False)
    schedule = result.schedule
    if schedule is not None:
        if schedule.get("found"):
            state = "paused" if schedule["deployment_paused"] else "active"
            out.print(f"{replicate_deployment} is {state} (read back at {schedule['read_at']})", markup=False)
        else:
            console.print(f"[red]no deployment {replicate_deployment}: no replication schedule was changed[/red]")
    if result.decision == "undecided":
        console.print("[yellow]undecided: nobody decided before the timeout; nothing was stopped[/yellow]")
        raise typer.Exit(EXIT_FAILED)


@app.command()
def approve(
    flow_run: Annotated[str, typer.Option("--flow-run", help="Id of the paused close flow run.")],
    decision: Annotated[str, typer.Option("--decision", help="stop (the cutover is done) or keep (replicating).")],
    approver: Annotated[str, typer.Option("--approver", help="Who decides; recorded with the decision.")],
    comment: Annotated[str, typer.Option(help="Recorded with the decision.")] = "",
    override_failed_verification: Annotated[
        bool, typer.Option("--override-failed-verification", help="Decide although the verification failed.")
    ] = False,
) -> None:
    """Resume a paused close run with the cutover decision (needs the same PREFECT_API_URL as the run)."""
    from uuid import UUID

    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    choices = {"stop": "stop_replication", "keep": "keep_replicating"}
    if decision not in choices:
        console.print(f"[red]--decision must be stop or keep, not {decision!r}[/red]")
        raise typer.Exit(EXIT_CONFIG)
    if not approver.strip():
        console.print("[red]--approver must not be blank[/red]")
        raise typer.Exit(EXIT_CONFIG)
    try:
        run_id = UUID(flow_run)
    except ValueError:
        console.print(f"[red]--flow-run {flow_run!r} is not a flow run id (a UUID)[/red]")
        raise typer.Exit(EXIT_CONFIG) from None
    run_input = {
        "decision": choices[decision],
        "approver": approver.strip(),
        "comment": comment,
        "override_failed_verification": override_failed_verification,
    }
    try:
        resume_flow_run(run_id, run_input=run_input)
    except ObjectNotFound:
        console.print(f"[red]no flow run {run_id}[/red] on this Prefect API (is PREFECT_API_URL the run's server?)")
        raise typer.Exit(EXIT_FAILED) from None
    except NotPausedError:
        console.print(f"[red]flow run {run_id} is not paused[/red]: it is not waiting for a decision")
        raise typer.Exit(EXIT_FAILED) from None
    except FlowPauseTimeout:
        console.print(f"[red]flow run {run_id} waited too long[/red]: its approval timed out; run close again")
        raise typer.Exit(EXIT_FAILED) from None
    except RuntimeError as exc:
        console.print(f"[red]flow run {run_id} was not resumed:[/red] {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    out.print(f"resumed {run_id} with {choices[decision]} by {approver.strip()}", markup=False, highlight=False)
    if not override_failed_verification:
        out.print(
            "if its verification failed, the run refuses this and waits again (see its logs); "
            "add --override-failed-verification to decide anyway",
            markup=False,
            highlight=False,
        )


@app.command()
def serve(
    source_block: Annotated[str, typer.Option(help="Saved M3Source block name (prefect block register -m blocks).")],
    target_block: Annotated[str, typer.Option(help="Saved ThanosTarget block name.")],
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML/TOML file whose `migration` section is the default spec.")
    ] = None,
    replicate_every: Annotated[str, typer.Option(help="Replication schedule interval, e.g. 5m.")] = "5m",
    replicate_active: Annotated[
        bool, typer.Option(help="Start with the replication schedule on (default: paused until migrated).")
    ] = False,
    bucket_block: Annotated[
        str | None, typer.Option(help="Saved ThanosBucket block name (write modes blocks and hybrid).")
    ] = None,
) -> None:
    """Serve the wizard's deployments (migrate, replicate, verify) for the Prefect UI, from this process."""
    from prefect import serve as prefect_serve

    from flows.deployments import wizard_deployments
    from m3migrate.settings.spec import MigrationSpec

    try:
        spec = None
        if config:
            data = load_config_file(config).get("migration")
            spec = MigrationSpec.model_validate(data) if data else None
        deployments = wizard_deployments(
            source_block,
            target_block,
            spec,
            replicate_every_seconds=_minutes(replicate_every) * 60,
            replicate_active=replicate_active,
            bucket_block=bucket_block,
        )
    except ValidationError as exc:
        console.print(f"[red]{format_validation_error(exc, 'migration settings')}[/red]")
        raise typer.Exit(EXIT_CONFIG) from None
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_CONFIG) from None
    prefect_serve(*deployments)


@app.command()
def version() -> None:
    """Print the version."""
    from m3migrate import __version__

    out.print(f"m3migrate {__version__}")


queries_app = typer.Typer(
    no_args_is_help=True, help="After the move: dashboards' and rules' queries (docs/queries.md)."
)
app.add_typer(queries_app, name="queries")


def _queries_inputs(target_query_url, start, end, cutover, user, password, token, tenant, insecure):
    """The client and the instants (ms) the queries commands share; bad values are ConfigErrors."""
    from m3migrate.checks.queries import target_client

    start_ms, end_ms = (int(_parse_instant(t).timestamp() * 1000) for t in (start, end))
    cut_ms = int(_parse_instant(cutover).timestamp() * 1000) if cutover else end_ms
    client = target_client(
        target_query_url,
        username=user,
        password=password,
        bearer_token=token,
        tenant=tenant,
        insecure_skip_verify=insecure,
    )
    return client, start_ms, end_ms, cut_ms


def _queries_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Shared options of the queries commands; errors print one line and exit 1 (bad input: 2)."""

    @functools.wraps(fn)
    def wrapper(**kw: Any) -> None:
        from m3migrate.checks.queries import QueryError  # here, not when the CLI starts (PromQL parser, YAML)

        try:
            fn(**kw)
        except QueryError as exc:
            console.print(f"[red]error:[/red] {exc} (nothing written)")
            raise typer.Exit(EXIT_CONFIG) from None
        except ConfigError as exc:
            console.print(f"[red]configuration error:[/red] {exc}")
            raise typer.Exit(EXIT_CONFIG) from None
        except M3MigrateError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(EXIT_FAILED) from None

    params = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    shared = [
        p.replace(kind=p.KEYWORD_ONLY) for p in inspect.signature(_queries_shared, eval_str=True).parameters.values()
    ]
    wrapper.__signature__ = inspect.Signature([*params, *shared])  # type: ignore[attr-defined]
    del wrapper.__wrapped__  # typer must read the combined signature
    return wrapper


def _queries_shared(
    target_query_url: Annotated[str, typer.Option(help="Target PromQL API base (Thanos Query).")],
    start: Annotated[str, typer.Option(help="The migration's start (RFC 3339).")],
    end: Annotated[str, typer.Option(help="The migration's end (RFC 3339).")],
    cutover: Annotated[str | None, typer.Option(help="The cutover instant (default: --end).")] = None,
    target_user: Annotated[str | None, typer.Option(envvar="M3MIGRATE_TARGET_USER")] = None,
    target_password: Annotated[str | None, typer.Option(envvar="M3MIGRATE_TARGET_PASSWORD", hidden=True)] = None,
    target_bearer_token: Annotated[
        str | None, typer.Option(envvar="M3MIGRATE_TARGET_BEARER_TOKEN", hidden=True)
    ] = None,
    target_tenant: Annotated[str | None, typer.Option(help="Sent as THANOS-TENANT.")] = None,
    target_insecure_skip_verify: bool = False,
) -> None: ...


def _queries_run(files: list[Path], kw: dict[str, Any]):
    from m3migrate.checks.queries import check_files

    client, start_ms, end_ms, cut_ms = _queries_inputs(
        kw["target_query_url"], kw["start"], kw["end"], kw["cutover"], kw["target_user"], kw["target_password"],
        kw["target_bearer_token"], kw["target_tenant"], kw["target_insecure_skip_verify"],
    )  # fmt: skip
    now_ms = int(datetime.now().timestamp() * 1000)
    try:
        return client, check_files(files, client, start_ms, end_ms, now_ms), (start_ms, cut_ms, now_ms)
    except BaseException:
        client.close()
        raise


@queries_app.command("check")
@_queries_command
def queries_check(
    files: Annotated[list[Path], typer.Argument(help="Dashboard JSON / rule YAML files.")], **kw: Any
) -> None:
    """Report, per panel/rule, each metric name, where it lives in the target and what the query will see."""
    from m3migrate.checks.queries import check_markdown

    client, report, _ = _queries_run(files, kw)
    client.close()
    out.print(check_markdown(report["rows"]), markup=False)
    if any(r["verdict"] for r in report["rows"]):
        raise typer.Exit(EXIT_FAILED)


@queries_app.command("rewrite")
@_queries_command
def queries_rewrite(
    files: Annotated[list[Path], typer.Argument(help="Dashboard JSON / rule YAML files.")],
    out_dir: Annotated[Path | None, typer.Option(help="Write the rewritten files here.")] = None,
    in_place: Annotated[bool, typer.Option(help="Overwrite the originals.")] = False,
    **kw: Any,
) -> None:
    """Rewrite each affected selector to cover both names; a unified diff unless --out-dir/--in-place."""
    from m3migrate.checks.queries import rewrite_files, unified_diff, write_changes

    client, report, _ = _queries_run(files, kw)
    client.close()
    changes = rewrite_files(files, report["facts"])
    if out_dir is None and not in_place:
        out.print(unified_diff(changes) or "no query needs a change", markup=False, highlight=False)
        return
    for path in write_changes(changes, out_dir=out_dir, in_place=in_place):
        out.print(f"wrote {path}")


@queries_app.command("verify-queries")
@_queries_command
def queries_verify(
    files: Annotated[list[Path], typer.Argument(help="Dashboard JSON / rule YAML files.")],
    var: Annotated[list[str] | None, typer.Option(help="A Grafana variable's value, NAME=VALUE.")] = None,
    **kw: Any,
) -> None:
    """Run original and rewritten queries before and after cutover: the rewritten ones must see both."""
    from m3migrate.checks.queries import instants, load_sites, verify_markdown, verify_queries

    client, report, (start_ms, cut_ms, now_ms) = _queries_run(files, kw)
    before, after = instants(start_ms, cut_ms, now_ms)
    sites = [s for p in files for s in load_sites(p)]
    with client:
        rows = verify_queries(sites, report["facts"], client, before, after, parse_headers(var))
    out.print(verify_markdown(rows), markup=False)
    if not all(r["ok"] for r in rows):
        raise typer.Exit(EXIT_FAILED)


def main() -> None:
    """Console entry point."""
    own_process()
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything acknowledged so far is kept; rerun to resume[/yellow]")
        sys.exit(130)
    finally:
        # everything has run (the atexit handlers that flush Prefect's logs and events still do): the
        # interpreter's last collections over every module's objects would only delay the exit (~0.5-1 s)
        gc.freeze()


if __name__ == "__main__":
    main()
