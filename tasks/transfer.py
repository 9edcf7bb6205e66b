"""The unit of durable work: one batch × one window, cached once the target acknowledged it.

The cache key is migration id + plan id + generation + batch + window, and results persist under the
migration's state directory, so a rerun skips every batch × window already written and `--start-over`
(a new generation) rewrites everything.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext
from prefect.states import State

from m3migrate.config import SourceSettings, TargetSettings
from m3migrate.errors import AuthError, ConfigError, EndpointNotFound, TlsError, WriteRejected
from m3migrate.plan import Batch, Window
from m3migrate.relabel import Relabeler
from m3migrate.transfer import Transfer

PERMANENT = (WriteRejected, ConfigError, AuthError, EndpointNotFound, TlsError)


@dataclass(frozen=True)
class TransferContext:
    """Everything a transfer task needs besides its batch and window (picklable for Dask workers)."""

    migration_id: str
    plan_id: str
    generation: int
    source: SourceSettings
    target: TargetSettings
    relabeler_rules: tuple
    add_labels: tuple[tuple[str, str], ...]
    write_concurrency: int
    results_dir: str

    @property
    def fingerprint(self) -> tuple:
        return (self.migration_id, self.plan_id, self.generation)


_transfers: dict[tuple, Transfer] = {}
_transfers_lock = threading.Lock()


def get_transfer(ctx: TransferContext) -> Transfer:
    """One Transfer (connection pools, write threads) per process and migration run."""
    with _transfers_lock:
        transfer = _transfers.get(ctx.fingerprint)
        if transfer is None:
            relabeler = Relabeler(list(ctx.relabeler_rules), add_labels=dict(ctx.add_labels))
            transfer = Transfer(ctx.source, ctx.target, relabeler, write_concurrency=ctx.write_concurrency)
            _transfers[ctx.fingerprint] = transfer
        return transfer


def close_transfers() -> None:
    with _transfers_lock:
        for transfer in _transfers.values():
            transfer.close()
        _transfers.clear()


def transfer_cache_key(context: TaskRunContext, parameters: dict) -> str:
    ctx: TransferContext = parameters["ctx"]
    batch: Batch = parameters["batch"]
    window: Window = parameters["window"]
    return f"{ctx.migration_id}-{ctx.plan_id}-g{ctx.generation}-{batch.id}-w{window.index}"


def _retry_transient_only(task, task_run, state: State) -> bool:
    try:
        state.result()
    except PERMANENT:
        return False
    except Exception:
        return True
    return False


def results_storage(results_dir: Path) -> Path:
    """Prefect resolves a Path to local file storage without a saved block."""
    results_dir.mkdir(parents=True, exist_ok=True)
    return results_dir


@task(
    name="transfer-batch-window",
    task_run_name="batch {batch.id} window {window.index}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_jitter_factor=0.5,
    retry_condition_fn=_retry_transient_only,
    cache_key_fn=transfer_cache_key,
    persist_result=True,
)
def transfer_batch_window(ctx: TransferContext, batch: Batch, window: Window) -> dict:
    """Copy one batch over one window; returns counts once every request was acknowledged.

    An attempt marker, written before the first request, tells a later attempt (task retry, or a rerun
    after a crash) that the target may already hold part of this batch × window.
    """
    marker = Path(ctx.results_dir) / "attempts" / f"g{ctx.generation}-{batch.id}-w{window.index}"
    resumed = marker.exists()
    if not resumed:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return get_transfer(ctx).run(batch, window, resumed=resumed).as_dict()
