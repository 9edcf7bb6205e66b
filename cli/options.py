"""The options every step shares (same names on every command), turned into the blocks and the spec the
flows take; the decorators that give a command those options and map errors to exit codes once."""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import typer
from pydantic import ValidationError

from cli.console import EXIT_CONFIG, EXIT_FAILED, console
from m3migrate import collector
from m3migrate.errors import ConfigError, M3MigrateError
from m3migrate.settings.spec import default_state_dir, format_validation_error, load_config_file

# How verify and close compare a series × window (docs/verification.md); the names are
# m3migrate.checks.verify.EVIDENCE (not imported here: the CLI starts without the verifier).
EvidenceOption = Annotated[
    Literal["figures", "samples"],
    typer.Option(
        help="figures: count, sum and last value per series × window from the target's engine, samples where "
        "they differ and for --spot-check of the rest; samples: every sample compared (~5 µs of CPU each).",
    ),
]
SpotCheckOption = Annotated[
    float,
    typer.Option(
        "--spot-check",
        min=0.0,
        max=1.0,
        help="With --evidence figures: this share of the series × windows whose figures agree is compared "
        "sample by sample as well (same choice on every run).",
    ),
]

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
    secret: dict[str, Any] = {"rich_help_panel": panel, "show_default": False}
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


def _limits(max_concurrency, rps, sps, no_adaptive, timeout) -> dict[str, Any]:
    return {
        "max_concurrency": max_concurrency,
        "max_requests_per_second": rps,
        "max_samples_per_second": sps,
        "adaptive_concurrency": 0 if no_adaptive else None,  # 0, not False: _drop_none drops False
        "timeout_seconds": timeout,
    }


if TYPE_CHECKING:  # at run time these carry the typer options made per side; to a type checker, their types
    SourceUser: TypeAlias = str | None
    SourcePassword: TypeAlias = str | None
    SourceToken: TypeAlias = str | None
    SourceCa: TypeAlias = Path | None
    SourceCert: TypeAlias = Path | None
    SourceKey: TypeAlias = Path | None
    SourceInsecure: TypeAlias = bool
    SourceHeader: TypeAlias = list[str] | None
    SourceMaxConcurrency: TypeAlias = int | None
    SourceMaxRps: TypeAlias = float | None
    SourceMaxSps: TypeAlias = float | None
    SourceNoAdaptive: TypeAlias = bool
    SourceTimeout: TypeAlias = float | None
    TargetUser: TypeAlias = str | None
    TargetPassword: TypeAlias = str | None
    TargetToken: TypeAlias = str | None
    TargetCa: TypeAlias = Path | None
    TargetCert: TypeAlias = Path | None
    TargetKey: TypeAlias = Path | None
    TargetInsecure: TypeAlias = bool
    TargetHeader: TypeAlias = list[str] | None
    TargetMaxConcurrency: TypeAlias = int | None
    TargetMaxRps: TypeAlias = float | None
    TargetMaxSps: TypeAlias = float | None
    TargetNoAdaptive: TypeAlias = bool
    TargetTimeout: TypeAlias = float | None
else:
    SourceUser, SourcePassword, SourceToken, SourceCa, SourceCert, SourceKey, SourceInsecure, SourceHeader = (
        _endpoint_options("source")
    )
    TargetUser, TargetPassword, TargetToken, TargetCa, TargetCert, TargetKey, TargetInsecure, TargetHeader = (
        _endpoint_options("target")
    )
    SourceMaxConcurrency, SourceMaxRps, SourceMaxSps, SourceNoAdaptive, SourceTimeout = _limit_options("source")
    TargetMaxConcurrency, TargetMaxRps, TargetMaxSps, TargetNoAdaptive, TargetTimeout = _limit_options("target")


def parse_headers(items: list[str] | None) -> dict[str, str] | None:
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
            "headers": parse_headers(headers),
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
    from m3migrate.settings.endpoints import settings_from_saved
    from m3migrate.settings.spec import MigrationSpec, check_same_spec
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


_process = {"owned": False}  # set by cli.main.main: the console entry point owns its process's GC


def own_process() -> None:
    """The command runs as its own process (not in a test's CliRunner): start-up imports may be frozen."""
    _process["owned"] = True


@contextlib.contextmanager
def startup_imports() -> Iterator[None]:
    """Start-up imports (Prefect, its pydantic models, the engine: objects that live as long as the
    process) with the cyclic GC off: collecting again and again while they are created costs about a
    third of the start-up CPU. In a process the CLI owns they are then frozen (gc.freeze), so later
    collections do not scan them again. The GC is back on before any data moves."""
    with collector.paused():
        try:
            yield
        finally:
            if _process["owned"]:
                gc.freeze()


@dataclass
class Inputs:
    """What every step's command builds from its flags and config file."""

    source: Any  # blocks.M3Source
    target: Any  # blocks.ThanosTarget
    spec: Any  # m3migrate.settings.spec.MigrationSpec
    state_dir: str | None
    config: Path | None = None  # the config file, for sections only some steps read (bucket)


def shared_options(
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
_SHARED = [p for p in inspect.signature(shared_options, eval_str=True).parameters.values() if p.name != "replan"]


def step_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a step's command the shared options; it receives them as `inputs: Inputs`.

    Errors map to exit codes once, here: configuration errors exit 2, a failed step exits 1.
    """
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "inputs"]

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        shared = {p.name: kwargs.pop(p.name) for p in _SHARED}
        try:
            with startup_imports():  # the blocks import Prefect and the engine's settings
                inputs = shared_options(**shared, replan=bool(kwargs.get("start_over")))
            fn(inputs=inputs, **kwargs)
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
    spec = {"block_hours": block_hours, "backfill_labels": parse_headers(backfill_label)}
    return {"bucket": _drop_none(bucket), "spec": _drop_none(spec)}


_BUCKET = list(inspect.signature(_bucket_options, eval_str=True).parameters.values())


def bucket_command(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a step's command the bucket options (under step_command); it receives `bucket` (a ThanosBucket
    block, or None) and the spec with the block options applied. blocks/hybrid without a bucket exit 2."""
    own = [p for name, p in inspect.signature(fn, eval_str=True).parameters.items() if name != "bucket"]

    @functools.wraps(fn)
    def command(inputs: Inputs, **kwargs: Any) -> None:
        from blocks import ThanosBucket
        from m3migrate.settings.spec import MigrationSpec

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
