"""`m3migrate`: the command line. Each command runs the matching Prefect flow (ephemeral API when no
PREFECT_API_URL is set) and exits non-zero when the step did not complete."""

from __future__ import annotations

import functools
import inspect
import json
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from m3migrate.errors import ConfigError, M3MigrateError
from m3migrate.spec import default_state_dir, format_validation_error, load_config_file

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
out = Console()

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_BUSY = 3  # another run of the same migration holds its lock

# Options shared by every command that talks to the source and the target.
SourceReadUrl = Annotated[
    str | None,
    typer.Option(
        "--source-read-url",
        help="Remote-read endpoint of the source (M3: https://HOST:7201/api/v1/prom/remote/read).",
        rich_help_panel="Source",
    ),
]
SourceQueryUrl = Annotated[
    str | None,
    typer.Option(
        "--source-query-url",
        help="PromQL API base URL of the source (M3: https://HOST:7201).",
        rich_help_panel="Source",
    ),
]
SourceMetricsType = Annotated[
    str | None,
    typer.Option(
        "--source-metrics-type", help="Pin M3-Metrics-Type: unaggregated or aggregated.", rich_help_panel="Source"
    ),
]
SourceNamespaces = Annotated[
    str | None,
    typer.Option(
        "--source-namespaces",
        help="auto (default): read each part of the range from the finest M3 namespace that holds it; "
        "unpinned: M3 picks per query (docs/m3.md).",
        rich_help_panel="Source",
    ),
]
SourceStoragePolicy = Annotated[
    str | None,
    typer.Option("--source-storage-policy", help="Pin M3-Storage-Policy, e.g. 1m:40d.", rich_help_panel="Source"),
]
TargetWriteUrl = Annotated[
    str | None,
    typer.Option(
        "--target-write-url",
        help="Remote-write endpoint of the target (Thanos: https://HOST:19291/api/v1/receive).",
        rich_help_panel="Target",
    ),
]
TargetQueryUrl = Annotated[
    str | None,
    typer.Option(
        "--target-query-url",
        help="PromQL API base URL of the target (Thanos Query: https://HOST:10902).",
        rich_help_panel="Target",
    ),
]
TargetTenant = Annotated[
    str | None, typer.Option("--target-tenant", help="Tenant (THANOS-TENANT header).", rich_help_panel="Target")
]


def _endpoint_options(side: str) -> tuple:
    """The auth/TLS/header options of one side (--source-* or --target-*), as typer parameter types."""
    panel = side.capitalize()
    env = f"M3MIGRATE_{side.upper()}_"
    secret = {"rich_help_panel": panel, "show_default": False}
    return (
        Annotated[str | None, typer.Option(f"--{side}-user", envvar=f"{env}USER", rich_help_panel=panel)],
        Annotated[
            str | None,
            typer.Option(
                f"--{side}-password",
                envvar=f"{env}PASSWORD",
                help="Prefer the environment variable: flags show in ps.",
                **secret,
            ),
        ],
        Annotated[str | None, typer.Option(f"--{side}-bearer-token", envvar=f"{env}BEARER_TOKEN", **secret)],
        Annotated[Path | None, typer.Option(f"--{side}-ca-file", rich_help_panel=panel)],
        Annotated[Path | None, typer.Option(f"--{side}-cert-file", rich_help_panel=panel)],
        Annotated[Path | None, typer.Option(f"--{side}-key-file", rich_help_panel=panel)],
        Annotated[bool, typer.Option(f"--{side}-insecure-skip-verify", rich_help_panel=panel)],
        Annotated[
            list[str] | None, typer.Option(f"--{side}-header", help="Extra header NAME=VALUE.", rich_help_panel=panel)
        ],
    )


def _limit_options(side: str) -> tuple:
    """The production-protection options of one side: concurrency cap, rate limits, adaptivity, timeout."""
    panel = f"{side.capitalize()} limits"
    return (
        Annotated[
            int | None,
            typer.Option(
                f"--{side}-max-concurrency", help="Most requests in flight (default 8).", rich_help_panel=panel
            ),
        ],
        Annotated[
            float | None,
            typer.Option(f"--{side}-max-requests-per-second", help="Requests/s cap.", rich_help_panel=panel),
        ],
        Annotated[
            float | None,
            typer.Option(f"--{side}-max-samples-per-second", help="Samples/s cap.", rich_help_panel=panel),
        ],
        Annotated[
            bool,
            typer.Option(
                f"--{side}-no-adaptive-concurrency",
                help="Keep the in-flight limit fixed when the endpoint answers 429/503 or times out.",
                rich_help_panel=panel,
            ),
        ],
        Annotated[
            float | None,
            typer.Option(
                f"--{side}-timeout-seconds", help="Timeout of one request (default 120).", rich_help_panel=panel
            ),
        ],
    )


SourceMaxConcurrency, SourceMaxRps, SourceMaxSps, SourceNoAdaptive, SourceTimeout = _limit_options("source")
TargetMaxConcurrency, TargetMaxRps, TargetMaxSps, TargetNoAdaptive, TargetTimeout = _limit_options("target")


def _limits(max_concurrency, rps, sps, no_adaptive, timeout) -> dict[str, Any]:
    return {
        "max_concurrency": max_concurrency,
        "max_requests_per_second": rps,
        "max_samples_per_second": sps,
        "adaptive_concurrency": 0 if no_adaptive else None,  # 0, not False: _drop_none drops False
        "timeout_seconds": timeout,
    }


SourceUser, SourcePassword, SourceToken, SourceCa, SourceCert, SourceKey, SourceInsecure, SourceHeader = (
    _endpoint_options("source")
)
TargetUser, TargetPassword, TargetToken, TargetCa, TargetCert, TargetKey, TargetInsecure, TargetHeader = (
    _endpoint_options("target")
)


def _headers(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    headers = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"header {name!r} must be NAME=VALUE")
        headers[name.strip()] = value
    return headers


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != {} and v is not False}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in override.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def _endpoint(user, password, token, ca, cert, key, insecure, headers) -> dict[str, Any]:
    return _drop_none(
        {
            "auth": _drop_none({"username": user, "password": password, "bearer_token": token}),
            "tls": _drop_none(
                {
                    "ca_file": str(ca) if ca else None,
                    "cert_file": str(cert) if cert else None,
                    "key_file": str(key) if key else None,
                    "insecure_skip_verify": insecure,
                }
            ),
            "headers": _headers(headers),
        }
    )


def build_inputs(
    config: Path | None,
    source: dict[str, Any],
    target: dict[str, Any],
    spec: dict[str, Any],
    *,
    state_dir: Path | None = None,
    replan: bool = False,
):
    """Blocks and spec from the config file overridden by flags; exits 2 with a readable error.

    A migration with a saved spec (its first migrate saved it) needs only its id: the saved spec and
    endpoint settings are the base, given endpoint options override them for this run (secrets are never
    saved: they come from the options, environment or file each run), and a given spec option that differs
    from the saved spec is refused naming it (``replan``, migrate --start-over: the given options win).
    """
    from blocks import M3Source, ThanosTarget
    from m3migrate.config import settings_from_saved
    from m3migrate.spec import MigrationSpec, check_same_spec
    from m3migrate.state import SPEC_FILE, load_saved_spec

    file = load_config_file(config) if config else {}
    unknown = set(file) - {"source", "target", "migration", "bucket"}
    if unknown:
        raise ConfigError(f"config file has unknown sections {sorted(unknown)}: use source, target, migration, bucket")
    src = _merge(file.get("source", {}), _drop_none(source))
    tgt = _merge(file.get("target", {}), _drop_none(target))
    given = _merge(file.get("migration", {}), _drop_none(spec))

    def validated(name: str, model: Any, data: dict[str, Any]) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            console.print(f"[red]{format_validation_error(exc, name + ' settings')}[/red]")
            raise typer.Exit(EXIT_CONFIG) from None

    root = state_dir or default_state_dir()
    migration_id = given.get("migration_id")
    built: list[Any] = []
    if migration_id is None:  # the id derives from the URLs, range and selectors: all must be given
        built = [validated("source", M3Source, src), validated("target", ThanosTarget, tgt)]
        built.append(validated("migration", MigrationSpec, given))
        migration_id = built[2].resolved_id(built[0].read_url, built[1].write_url)
    saved = load_saved_spec(root, migration_id)
    if saved is None:
        if built:
            return built
        if "start" not in given or "end" not in given:
            raise ConfigError(
                f"migration {migration_id!r} has no saved spec ({Path(root) / migration_id / SPEC_FILE} does "
                "not exist), and no --start/--end are given",
                hint="run migrate first (its first run saves the spec), check --state-dir / M3MIGRATE_STATE_DIR "
                "and the id, or give the options as for migrate",
            )
        return [
            validated("source", M3Source, src),
            validated("target", ThanosTarget, tgt),
            validated("migration", MigrationSpec, given),
        ]
    source_data = settings_from_saved(saved.source, src, "source")
    target_data = settings_from_saved(saved.target, tgt, "target")
    given = {**given, "migration_id": migration_id}
    try:
        if replan:
            migration = MigrationSpec.model_validate({**saved.spec.model_dump(mode="json"), **given})
        else:
            migration = check_same_spec(saved.spec, given, f"migration {migration_id!r}'s saved spec ({saved.path})")
    except ValidationError as exc:
        console.print(f"[red]{format_validation_error(exc, 'migration settings')}[/red]")
        raise typer.Exit(EXIT_CONFIG) from None
    return [validated("source", M3Source, source_data), validated("target", ThanosTarget, target_data), migration]


def _progress_bar() -> tuple[Progress, Any]:
    """One bar per phase (time front, block windows, replication pass), fed by the flows' progress events:
    windows done / total, samples, samples/s, blocks uploaded or a pass's lag, and the flow's ETA."""
    from m3migrate.progress import duration
    from tasks.transfer import PROGRESS_LISTENERS

    progress = Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} windows"),
        TextColumn("{task.fields[samples]:,} samples"),
        TextColumn("{task.fields[rate]:,.0f}/s"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    bars: dict[str, Any] = {}
    lock = threading.Lock()  # segments report from their own threads

    def listener(event: dict[str, Any]) -> None:
        eta = event.get("eta_seconds")
        fields = {
            "samples": event["samples"],
            "rate": event["rate"],
            "detail": event.get("detail") or "",
            "eta": "?" if eta is None else duration(eta),
        }
        phase = event.get("phase") or "time front"
        with lock:
            if phase not in bars:
                bars[phase] = progress.add_task(phase, total=event["windows_total"], **fields)
            progress.update(bars[phase], completed=event["windows_done"], total=event["windows_total"], **fields)

    PROGRESS_LISTENERS.append(listener)
    return progress, listener


@contextmanager
def _live_progress() -> Iterator[None]:
    """The progress bar while a step's flow runs (its listener is removed afterwards)."""
    from tasks.transfer import PROGRESS_LISTENERS

    progress, listener = _progress_bar()
    try:
        with progress:
            yield
    finally:
        PROGRESS_LISTENERS.remove(listener)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"migration {summary.get('migration_id', '')}", show_header=False)
    for k, v in summary.items():
        if k == "tiers":  # one row per M3 namespace the range was read from
            v = "\n".join(f"{t['from']} .. {t['to']}  {t['namespace']} ({t['storage_policy']})" for t in v)
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    out.print(table)


@dataclass
class Inputs:
    """What every step's command builds from its flags and config file."""

    source: Any  # blocks.M3Source
    target: Any  # blocks.ThanosTarget
    spec: Any  # m3migrate.spec.MigrationSpec
    state_dir: str | None
    config: Path | None = None  # the config file, for sections only some steps read (bucket)


def _shared_options(
    source_read_url: SourceReadUrl = None,
    source_query_url: SourceQueryUrl = None,
    target_write_url: TargetWriteUrl = None,
    target_query_url: TargetQueryUrl = None,
    start: Annotated[str | None, typer.Option(help="First instant, RFC 3339 (e.g. 2025-01-01T00:00:00Z).")] = None,
    end: Annotated[str | None, typer.Option(help="Last instant, inclusive, RFC 3339.")] = None,
    match: Annotated[list[str] | None, typer.Option("--match", help="Series selector; repeatable.")] = None,
    migration_id: Annotated[
        str | None,
        typer.Option(help="Name of the migration's saved progress; after its first migrate, all the other steps need."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML/TOML file with source/target/migration.")
    ] = None,
    merge_prometheus_prefix: Annotated[bool, typer.Option(help="Rename prometheus_<name> to <name>.")] = False,
    no_source_label: Annotated[bool, typer.Option("--no-source-label", help='Do not add _source="m3db".')] = False,
    write_mode: Annotated[
        str | None, typer.Option(help="in_order (default), out_of_order, blocks or hybrid (docs/blocks.md).")
    ] = None,
    window_minutes: Annotated[int | None, typer.Option(help="Window minutes (60 in order, 360 out of order).")] = None,
    batch_max_series: Annotated[int | None, typer.Option(help="Most series per batch.")] = None,
    task_concurrency: Annotated[int | None, typer.Option(help="Batches in parallel.")] = None,
    write_concurrency: Annotated[int | None, typer.Option(help="Write requests in flight.")] = None,
    task_runner: Annotated[str | None, typer.Option(help="thread (default) or dask.")] = None,
    dask_address: Annotated[str | None, typer.Option(help="Dask scheduler address (task_runner=dask).")] = None,
    state_dir: Annotated[
        Path | None, typer.Option(envvar="M3MIGRATE_STATE_DIR", help="Where progress is kept (default ~/.m3migrate).")
    ] = None,
    source_user: SourceUser = None,
    source_password: SourcePassword = None,
    source_bearer_token: SourceToken = None,
    source_ca_file: SourceCa = None,
    source_cert_file: SourceCert = None,
    source_key_file: SourceKey = None,
    source_insecure_skip_verify: SourceInsecure = False,
    source_header: SourceHeader = None,
    source_namespaces: SourceNamespaces = None,
    source_metrics_type: SourceMetricsType = None,
    source_storage_policy: SourceStoragePolicy = None,
    tier_margin_hours: Annotated[
        float | None, typer.Option(help="M3 tiers: start each namespace's tier this long after its oldest data.")
    ] = None,
    source_max_concurrency: SourceMaxConcurrency = None,
    source_max_requests_per_second: SourceMaxRps = None,
    source_max_samples_per_second: SourceMaxSps = None,
    source_no_adaptive_concurrency: SourceNoAdaptive = False,
    source_timeout_seconds: SourceTimeout = None,
    target_tenant: TargetTenant = None,
    target_user: TargetUser = None,
    target_password: TargetPassword = None,
    target_bearer_token: TargetToken = None,
    target_ca_file: TargetCa = None,
    target_cert_file: TargetCert = None,
    target_key_file: TargetKey = None,
    target_insecure_skip_verify: TargetInsecure = False,
    target_header: TargetHeader = None,
    target_max_concurrency: TargetMaxConcurrency = None,
    target_max_requests_per_second: TargetMaxRps = None,
    target_max_samples_per_second: TargetMaxSps = None,
    target_no_adaptive_concurrency: TargetNoAdaptive = False,
    target_timeout_seconds: TargetTimeout = None,
    *,
    replan: bool = False,
) -> Inputs:
    """The options every step shares (same names as `migrate`), turned into blocks and a spec; with a
    saved spec, `--migration-id` alone is enough (build_inputs)."""
    source = {
        "read_url": source_read_url,
        "query_url": source_query_url,
        "namespaces": source_namespaces,
        "metrics_type": source_metrics_type,
        "storage_policy": source_storage_policy,
        **_limits(
            source_max_concurrency,
            source_max_requests_per_second,
            source_max_samples_per_second,
            source_no_adaptive_concurrency,
            source_timeout_seconds,
        ),
        **_endpoint(
            source_user,
            source_password,
            source_bearer_token,
            source_ca_file,
            source_cert_file,
            source_key_file,
            source_insecure_skip_verify,
            source_header,
        ),
    }
    target = {
        "write_url": target_write_url,
        "query_url": target_query_url,
        "tenant": target_tenant,
        **_limits(
            target_max_concurrency,
            target_max_requests_per_second,
            target_max_samples_per_second,
            target_no_adaptive_concurrency,
            target_timeout_seconds,
        ),
        **_endpoint(
            target_user,
            target_password,
            target_bearer_token,
            target_ca_file,
            target_cert_file,
            target_key_file,
            target_insecure_skip_verify,
            target_header,
        ),
    }
    spec = {
        "migration_id": migration_id,
        "start": start,
        "end": end,
        "match": match or None,
        "merge_prometheus_prefix": merge_prometheus_prefix or None,
        "source_label_value": "" if no_source_label else None,
        "write_mode": write_mode,
        "window_minutes": window_minutes,
        "tier_margin_hours": tier_margin_hours,
        "batch_max_series": batch_max_series,
        "task_concurrency": task_concurrency,
        "write_concurrency": write_concurrency,
        "task_runner": task_runner,
        "dask_address": dask_address,
    }
    src, tgt, migration_spec = build_inputs(config, source, target, spec, state_dir=state_dir, replan=replan)
    return Inputs(src, tgt, migration_spec, str(state_dir) if state_dir else None, config)


# the command-line options (replan is set by step_command from migrate's --start-over)
_SHARED = [p for p in inspect.signature(_shared_options, eval_str=True).parameters.values() if p.name != "replan"]


def step_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a step's command the shared options; it receives them as `inputs: Inputs`.

    Errors map to exit codes once, here: configuration errors exit 2, a failed step exits 1.
    """
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "inputs"]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        shared = {p.name: kwargs.pop(p.name) for p in _SHARED}
        try:
            fn(inputs=_shared_options(**shared, replan=bool(kwargs.get("start_over"))), **kwargs)
        except ConfigError as exc:
            console.print(f"[red]configuration error:[/red] {exc}")
            raise typer.Exit(EXIT_CONFIG) from None
        except M3MigrateError as exc:
            console.print(f"[red]error:[/red] {exc}")
            console.print("everything acknowledged so far is kept; fix the cause and rerun the same command")
            raise typer.Exit(EXIT_FAILED) from None

    command.__signature__ = inspect.Signature([*own, *_SHARED])  # type: ignore[attr-defined]
    del command.__wrapped__  # typer must read the combined signature, not fn's
    return command


BUCKET_PANEL = "Bucket (write modes blocks and hybrid)"


def _bucket_options(
    bucket_dir: Annotated[
        Path | None,
        typer.Option(
            help="Local directory in Thanos' FILESYSTEM layout to upload blocks into.", rich_help_panel=BUCKET_PANEL
        ),
    ] = None,
    bucket_url: Annotated[
        str | None,
        typer.Option(
            help="s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.", rich_help_panel=BUCKET_PANEL
        ),
    ] = None,
    bucket_region: Annotated[str | None, typer.Option(help="S3 region.", rich_help_panel=BUCKET_PANEL)] = None,
    bucket_endpoint: Annotated[
        str | None,
        typer.Option(help="S3-compatible or Azure endpoint URL (MinIO, Ceph...).", rich_help_panel=BUCKET_PANEL),
    ] = None,
    bucket_access_key_id: Annotated[
        str | None,
        typer.Option(envvar="M3MIGRATE_BUCKET_ACCESS_KEY_ID", show_default=False, rich_help_panel=BUCKET_PANEL),
    ] = None,
    bucket_secret_access_key: Annotated[
        str | None,
        typer.Option(
            envvar="M3MIGRATE_BUCKET_SECRET_ACCESS_KEY",
            help="Prefer the environment variable: flags show in ps. Unset: the provider's AWS_* environment.",
            show_default=False,
            rich_help_panel=BUCKET_PANEL,
        ),
    ] = None,
    bucket_session_token: Annotated[
        str | None,
        typer.Option(envvar="M3MIGRATE_BUCKET_SESSION_TOKEN", show_default=False, rich_help_panel=BUCKET_PANEL),
    ] = None,
    bucket_google_service_account_path: Annotated[
        str | None, typer.Option(help="GCS service account JSON file.", rich_help_panel=BUCKET_PANEL)
    ] = None,
    bucket_azure_account_name: Annotated[str | None, typer.Option(rich_help_panel=BUCKET_PANEL)] = None,
    bucket_azure_account_key: Annotated[
        str | None,
        typer.Option(envvar="M3MIGRATE_BUCKET_AZURE_ACCOUNT_KEY", show_default=False, rich_help_panel=BUCKET_PANEL),
    ] = None,
    bucket_retention_resolution_raw: Annotated[
        str | None,
        typer.Option(
            help="The Thanos compactor's --retention.resolution-raw on this bucket (90d; 0d = forever): "
            "validate fails when blocks would be past it. Unset: unknown, not checked.",
            rich_help_panel=BUCKET_PANEL,
        ),
    ] = None,
    block_hours: Annotated[
        int | None, typer.Option(help="Hours per block: 2 (default), 8 or 48.", rich_help_panel=BUCKET_PANEL)
    ] = None,
    backfill_label: Annotated[
        list[str] | None,
        typer.Option(
            "--backfill-label",
            help="External label NAME=VALUE of the blocks; repeatable (default m3migrate_backfill=<migration id>).",
            rich_help_panel=BUCKET_PANEL,
        ),
    ] = None,
) -> dict[str, Any]:
    """The bucket and block options of the steps that write blocks, as settings and spec overrides."""
    if bucket_dir and bucket_url:
        raise ConfigError("give --bucket-dir or --bucket-url, not both")
    bucket = {
        "url": str(bucket_dir) if bucket_dir else bucket_url,
        "region": bucket_region,
        "endpoint": bucket_endpoint,
        "access_key_id": bucket_access_key_id,
        "secret_access_key": bucket_secret_access_key,
        "session_token": bucket_session_token,
        "google_service_account_path": bucket_google_service_account_path,
        "azure_account_name": bucket_azure_account_name,
        "azure_account_key": bucket_azure_account_key,
        "retention_resolution_raw": bucket_retention_resolution_raw,
    }
    spec = {"block_hours": block_hours, "backfill_labels": _headers(backfill_label)}
    return {"bucket": _drop_none(bucket), "spec": _drop_none(spec)}


_BUCKET = list(inspect.signature(_bucket_options, eval_str=True).parameters.values())


def bucket_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a step's command the bucket options (under step_command); it receives `bucket` (a ThanosBucket
    block, or None) and the spec with the block options applied. blocks/hybrid without a bucket exit 2."""
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "bucket"]

    @functools.wraps(fn)
    def command(inputs: Inputs, **kwargs: Any) -> None:
        from blocks import ThanosBucket
        from m3migrate.spec import MigrationSpec

        opts = _bucket_options(**{p.name: kwargs.pop(p.name) for p in _BUCKET})
        file = load_config_file(inputs.config) if inputs.config else {}
        data = _merge(file.get("bucket", {}), opts["bucket"])
        try:
            bucket = ThanosBucket.model_validate(data) if data else None
            if opts["spec"]:
                inputs.spec = MigrationSpec.model_validate({**inputs.spec.model_dump(), **opts["spec"]})
        except ValidationError as exc:
            console.print(f"[red]{format_validation_error(exc, 'bucket or block settings')}[/red]")
            raise typer.Exit(EXIT_CONFIG) from None
        if inputs.spec.uses_blocks and bucket is None:
            raise ConfigError(
                f"write_mode={inputs.spec.write_mode} uploads blocks into the Thanos bucket, but no bucket is given",
                hint="pass --bucket-dir DIR or --bucket-url s3://|gs://|az://... (or a `bucket:` config section)",
            )
        fn(inputs=inputs, bucket=bucket if inputs.spec.uses_blocks else None, **kwargs)

    command.__signature__ = inspect.Signature([*own, *_BUCKET])  # type: ignore[attr-defined]
    del command.__wrapped__  # step_command must read the combined signature, not fn's
    return command


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
    from flows.validate import validate as validate_flow
    from m3migrate.cli_validate import print_report
    from m3migrate.validate import ValidationFailed

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
    from flows.migrate import migrate as migrate_flow
    from m3migrate.cli_validate import print_report
    from m3migrate.validate import ValidationFailed
    from tasks.transfer import PROGRESS_LISTENERS

    progress, listener = _progress_bar()
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
    _print_summary(summary)


@app.command()
@step_command
def replicate(
    inputs: Inputs,
    lag: Annotated[str, typer.Option(help="Stay this far behind now (covers late writes), e.g. 15m, 1h.")] = "15m",
    until: Annotated[str | None, typer.Option(help="Replicate up to this instant instead of now - lag.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for a running pass of the same migration.")] = 10.0,
) -> None:
    """One replication pass: copy what reached the source since the last pass, up to now - lag."""
    from flows.replicate import pass_until_ms
    from flows.replicate import replicate as replicate_flow

    until_dt = _parse_instant(until) if until else None
    pass_until_ms(until_dt, _minutes(lag))  # a future --until is refused (exit 2) before a flow run starts
    with _live_progress():  # the pass's windows and its lag behind now
        result = replicate_flow(
            inputs.source,
            inputs.target,
            inputs.spec,
            lag_minutes=_minutes(lag),
            until=until_dt,
            state_dir=inputs.state_dir,
            wait_for_lock_seconds=wait,
        )
    _print_summary(result)
    if result["status"] == "skipped-locked":
        raise typer.Exit(EXIT_BUSY)


@app.command()
@step_command
def verify(
    inputs: Inputs,
    sample_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Check this share of the series (e.g. 0.01), every window.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the series sample.")] = 0,
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
    from flows.verify import verify_flow
    from m3migrate.cli_verify import print_problems, print_totals
    from m3migrate.verify import VerificationFailed

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
    replicate_deployment: Annotated[
        str, typer.Option(help="The deployment whose schedule a stop decision pauses.")
    ] = "replicate/replicate",
    lag: Annotated[str, typer.Option(help="The final catch-up stays this far behind now, e.g. 15m.")] = "15m",
) -> None:
    """Final catch-up, verify, then wait for the cutover decision (Prefect UI or `m3migrate approve`)."""
    import os

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
    )
    out.print(f"flow run {result.get('flow_run_id')}: decision {result['decision']}", markup=False, highlight=False)
    schedule = result.get("schedule")
    if schedule is not None:
        if schedule.get("found"):
            state = "paused" if schedule["deployment_paused"] else "active"
            out.print(f"{replicate_deployment} is {state} (read back at {schedule['read_at']})", markup=False)
        else:
            console.print(f"[red]no deployment {replicate_deployment}: no replication schedule was changed[/red]")
    if result["decision"] == "undecided":
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
    from m3migrate.spec import MigrationSpec

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
    from m3migrate.queries import target_client

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
    from m3migrate.queries import QueryError

    @functools.wraps(fn)
    def wrapper(**kw: Any) -> None:
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
    from m3migrate.queries import check_files

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
    from m3migrate.queries import check_markdown

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
    from m3migrate.queries import rewrite_files, unified_diff, write_changes

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
    from m3migrate.queries import instants, load_sites, verify_markdown, verify_queries

    client, report, (start_ms, cut_ms, now_ms) = _queries_run(files, kw)
    before, after = instants(start_ms, cut_ms, now_ms)
    sites = [s for p in files for s in load_sites(p)]
    with client:
        rows = verify_queries(sites, report["facts"], client, before, after, _headers(var))
    out.print(verify_markdown(rows), markup=False)
    if not all(r["ok"] for r in rows):
        raise typer.Exit(EXIT_FAILED)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything acknowledged so far is kept; rerun to resume[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
