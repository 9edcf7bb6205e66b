"""The wizard's deployments, as a data engineer triggers them from the Prefect UI.

`m3migrate serve` serves them from this process (no work pool needed); `prefect deploy --all` reads the
same set from prefect.yaml for a process work pool. Default parameters reference saved blocks by id
(`{"$ref": {"block_document_id": ...}}`, what the UI's run form shows as the selected block), so secrets
stay in the blocks and never in a deployment. Only migrate (and end-to-end) take the spec; replicate, verify
and close take the migration id, and load the spec migrate saved in the state directory.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from prefect.blocks.core import Block
from prefect.deployments.runner import RunnerDeployment

from blocks import M3Source, ThanosBucket, ThanosTarget
from flows.close import close
from flows.migrate import migrate
from flows.queries import queries_flow
from flows.replicate import DEFAULT_LAG_MINUTES, replicate
from flows.verify import verify_flow
from flows.wizard import end_to_end
from m3migrate.errors import ConfigError
from m3migrate.settings.spec import MigrationSpec

REPLICATE_EVERY_SECONDS = 300

T = TypeVar("T")


def _sync(result: T | Coroutine[Any, Any, T]) -> T:
    """The value of a Prefect sync/async dual function (Block.load, Flow.to_deployment), typed ``T |
    Coroutine``: called outside an event loop, as everything here is, it returns the value itself."""
    return cast(T, result)


def block_ref(block_type: type[Block], name: str) -> dict[str, Any]:
    """A parameter value Prefect resolves to the saved block when a run starts.

    By id, the form the Prefect UI writes itself: its run form shows a `block_document_id` reference as
    the selected block, while a `block_document_slug` one (also resolved at run time) shows as None.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    slug = block_type.get_block_type_slug()
    with get_client(sync_client=True) as client:
        try:
            document = client.read_block_document_by_name(name, block_type_slug=slug, include_secrets=False)
        except ObjectNotFound:
            raise ConfigError(
                f"no saved {block_type.__name__} block named {name!r} ({slug}/{name}): save it first"
            ) from None
    return {"$ref": {"block_document_id": str(document.id)}}


def migration_id_of(spec: MigrationSpec, source_block: str, target_block: str) -> str:
    """The id migrate saves the spec under: the spec's, or derived from the saved blocks' URLs."""
    if spec.migration_id:
        return spec.migration_id
    source, target = _sync(M3Source.load(source_block)), _sync(ThanosTarget.load(target_block))
    return spec.resolved_id(source.read_url, target.write_url)


def wizard_deployments(
    source_block: str,
    target_block: str,
    spec: MigrationSpec | None,
    *,
    replicate_every_seconds: int = REPLICATE_EVERY_SECONDS,
    replicate_active: bool = False,
    lag_minutes: int = DEFAULT_LAG_MINUTES,
    bucket_block: str | None = None,
) -> list[RunnerDeployment]:
    """end-to-end, and each step: migrate, replicate (interval schedule, paused until migrated), verify, close.

    ``bucket_block`` (a saved ThanosBucket) is passed to the steps that upload blocks (write modes blocks
    and hybrid): migrate and end-to-end. The later steps get the migration id, not the spec: they load what
    migrate saved (without a spec here, their run form asks for the id).
    """
    blocks: dict[str, Any] = {
        "source": block_ref(M3Source, source_block),
        "target": block_ref(ThanosTarget, target_block),
    }
    params = dict(blocks)
    steps = dict(blocks)
    if spec is not None:
        params["spec"] = spec.model_dump(mode="json", exclude_none=True)
        steps["migration_id"] = migration_id_of(spec, source_block, target_block)
    uploads = {**params, "bucket": block_ref(ThanosBucket, bucket_block)} if bucket_block else params
    # Prefect's check of deployment defaults rejects block references ($ref) under a strict schema;
    # the flows validate their parameters themselves when a run starts (blocks and spec are pydantic).
    common: dict[str, Any] = {"tags": ["m3migrate"], "enforce_parameter_schema": False}
    deployments = [
        migrate.to_deployment(
            "migrate",
            parameters=uploads,
            **common,
            concurrency_limit=1,
            description="Step 3: copy history; rerun to resume, start_over to rewrite.",
        ),
        replicate.to_deployment(
            "replicate",
            parameters={**steps, "lag_minutes": lag_minutes},
            **common,
            interval=replicate_every_seconds,
            paused=not replicate_active,
            concurrency_limit=1,
            description="Step 4: one catch-up pass from the watermark to now - lag.",
        ),
        verify_flow.to_deployment(
            "verify",
            parameters=steps,
            **common,
            description="Step 5a: compare source and target per series and window.",
        ),
        close.to_deployment(
            "close",
            parameters=steps,
            description="Step 5b: final catch-up, verify, then wait for a human's cutover decision.",
            **common,
        ),
        queries_flow.to_deployment(
            "queries",
            parameters={**params, "files": []},
            **common,
            description="After the move: which dashboard/rule queries see a metric under two names (docs/queries.md).",
        ),
        end_to_end.to_deployment(
            "end-to-end",
            parameters=uploads,
            description="The whole wizard: validate, migrate, replicate, close (waits for the cutover form).",
            **common,
        ),
    ]
    return [_sync(d) for d in deployments]
