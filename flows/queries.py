"""After the move: check (and verify) the dashboards' and rules' queries against the target.

Reads the given dashboard JSON / rule YAML files (paths on the worker), classifies every metric name
they select against the target for the migration's range and now, and publishes the report as a table
and a markdown artifact. With ``verify`` it also runs original and rewritten queries around the cutover.
It never writes the files: ``m3migrate queries rewrite`` does that.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from blocks import M3Source, ThanosTarget
from m3migrate.checks.queries import check_files, check_markdown, instants, load_sites, verify_markdown, verify_queries
from m3migrate.clients.promql import PromQLClient
from m3migrate.settings.spec import MigrationSpec


def _key(migration_id: str, what: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", f"{migration_id}-queries-{what}".lower())


@flow(name="queries")
def queries_flow(
    target: ThanosTarget,
    spec: MigrationSpec,
    files: list[str],
    source: M3Source | None = None,
    verify: bool = False,
    cutover: str | None = None,
    variables: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Report per file and panel/rule what each query will see after cutover (``source`` is unused)."""
    logger = get_run_logger()
    tgt = target.settings()
    if not tgt.promql_base:
        raise ValueError("the target has no query_url: the queries check asks the target's PromQL API")
    headers = {tgt.tenant_header: tgt.tenant} if tgt.tenant else None
    paths = [Path(f) for f in files]
    now_ms = int(time.time() * 1000)
    cut_ms = (
        spec.end_ms
        if cutover is None
        else int(datetime.fromisoformat(cutover.replace("Z", "+00:00")).timestamp() * 1000)
    )
    migration_id = spec.migration_id or "migration"
    with PromQLClient(tgt.promql_base, tgt, extra_params={"partial_response": "false"}, extra_headers=headers) as c:
        report = check_files(paths, c, spec.start_ms, spec.end_ms, now_ms)
        rows = report["rows"]
        create_table_artifact(key=_key(migration_id, "check"), table=rows, description="Queries after cutover")
        create_markdown_artifact(key=_key(migration_id, "report"), markdown=check_markdown(rows))
        flagged = [r for r in rows if r["verdict"]]
        logger.info("%d selectors in %d files, %d need a rewrite or a look", len(rows), len(paths), len(flagged))
        result: dict[str, Any] = {"selectors": len(rows), "flagged": len(flagged)}
        if verify:
            before, after = instants(spec.start_ms, cut_ms, now_ms)
            sites = [s for p in paths for s in load_sites(p)]
            checked = verify_queries(sites, report["facts"], c, before, after, variables)
            create_markdown_artifact(key=_key(migration_id, "verify"), markdown=verify_markdown(checked))
            result["verified"] = len(checked)
            result["both_sides"] = sum(r["ok"] for r in checked)
    return result
