"""Block windows of the backfill as a Prefect task: for each window, read every batch of the plan over
it, write one TSDB block, upload it to the Thanos bucket. A task holds one window, or a few consecutive
ones when a long history has more windows than flows.backfill.MAX_WINDOW_TASKS (a task run costs ~40 ms
of Prefect bookkeeping, as much as a whole window of a few hundred series).

The bucket is the resume state (a window whose meta.json is there is skipped without reading the source;
a crashed upload is cleaned and the window rewritten), so the task's result cache only spares a rerun
the bucket listing. Memory: one block window at a time per task; the flow runs at most task_concurrency
tasks at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.context import TaskRunContext
from prefect.runtime import task_run

from m3migrate.backfill.windows import BackfillResult, BlockWindow, backfill_from_source
from m3migrate.clients.bucket import Bucket, BucketSettings
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.relabel import Relabeler
from tasks.context import UnitContext
from tasks.retries import TASK_RETRIES, retry_unless_terminal
from tasks.transfer import forget_plans, saved_plan


@dataclass(frozen=True)
class BackfillContext(UnitContext):
    """What every window task needs besides its window."""

    bucket: BucketSettings
    external_labels: tuple[tuple[str, str], ...]
    work_dir: str | None = None

    def __repr__(self) -> str:  # short in Prefect's logs; the settings' secrets are SecretStr anyway
        return f"BackfillContext({self.migration_id!r}, plan {self.plan_id}, {self.stage})"


_buckets: dict[str, Bucket] = {}
_lock = threading.Lock()


def get_bucket(settings: BucketSettings) -> Bucket:
    """One Bucket per process and bucket, so the block metas it read are read once, not once per window."""
    key = settings.model_dump_json()  # in memory only: holds secrets, never logged
    with _lock:
        bucket = _buckets.get(key)
        if bucket is None:
            bucket = _buckets[key] = Bucket(settings)
        return bucket


def clear_caches() -> None:
    forget_plans()
    with _lock:
        _buckets.clear()


def window_cache_key(context: TaskRunContext, parameters: dict) -> str:
    """Migration, plan, generation, bucket and labels, windows: a cached window is one in THIS bucket.
    (A group of one window has the key a single window's task had, so older runs' results still count.)

    After deleting blocks from the bucket by hand, rerun with --start-over (a new generation): the bucket
    then decides alone which windows are written again.
    """
    ctx: BackfillContext = parameters["ctx"]
    windows: list[BlockWindow] = parameters["windows"]
    where = hashlib.sha256(json.dumps([ctx.bucket.url, ctx.external_labels]).encode()).hexdigest()[:12]
    first = windows[0]
    key = f"{ctx.migration_id}-{ctx.plan_id}-g{ctx.generation}-blocks-{where}"
    key += f"-{first.min_time}-{first.read_start}-{first.read_end}"
    if len(windows) > 1:
        last = windows[-1]
        key += f"-to-{last.min_time}-{last.read_start}-{last.read_end}-n{len(windows)}"
    return key


def window_run_name() -> str:
    """The task run's name in the UI: "block <window>", or "block <first> .. <last> (<n>)" for a group."""
    windows: list[BlockWindow] = task_run.parameters["windows"]
    if len(windows) == 1:
        return f"block {windows[0].label}"
    return f"block {windows[0].label} .. {windows[-1].label} ({len(windows)})"


@task(
    name="backfill-window",
    task_run_name=window_run_name,
    **TASK_RETRIES,
    retry_condition_fn=retry_unless_terminal,  # BucketError, TransientError, a killed worker: retried
    cache_key_fn=window_cache_key,
    persist_result=True,
)
def backfill_block_windows(ctx: BackfillContext, windows: list[BlockWindow]) -> list[BackfillResult]:
    """Write and upload the block of each window, one after another (or skip those the bucket already
    has: a retry or rerun resumes at the first window without its block)."""
    plan = saved_plan(ctx.state_root, ctx.migration_id, ctx.stage, ctx.plan_id)
    relabeler = Relabeler(list(ctx.relabeler_rules), add_labels=dict(ctx.add_labels))
    bucket, labels = get_bucket(ctx.bucket), dict(ctx.external_labels)
    work_dir = Path(ctx.work_dir) if ctx.work_dir else None
    with RemoteReadClient(ctx.source) as reader:
        return [
            backfill_from_source(
                reader,
                plan.batches,
                window=window,
                bucket=bucket,
                relabeler=relabeler,
                external_labels=labels,
                work_dir=work_dir,
                tiers=plan.tiers,
            )
            for window in windows
        ]
