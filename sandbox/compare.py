"""Read whole data sets back by remote read and compare them bit for bit (tests and the demo)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.model import PROBE_METRIC, Labels
from m3migrate.settings.endpoints import SourceSettings
from m3migrate.wire.codec import Matcher, float_bits
from sandbox.servers import Server

Samples = list[tuple[int, int]]  # (timestamp ms, IEEE-754 bits of the value)
ALL = [Matcher("__name__", "=~", ".+")]
log = logging.getLogger("sandbox")


def read_all(
    base_url: str, start_ms: int, end_ms: int, matchers: Iterable[Matcher] = ALL, chunk_ms: int = 86_400_000, **settings
) -> dict[Labels, Samples]:
    """Every series and sample of a Prometheus (remote read at /api/v1/read) in [start, end].

    Validation's probe series (the one write outside the migrated data) is left out."""
    out: dict[Labels, Samples] = {}
    with RemoteReadClient(SourceSettings(read_url=f"{base_url}/api/v1/read", **settings)) as client:
        a = start_ms
        while a <= end_ms:
            b = min(a + chunk_ms - 1, end_ms)
            for ts in client.read(list(matchers), a, b).timeseries:
                key = tuple(sorted((label.name, label.value) for label in ts.labels))
                if ("__name__", PROBE_METRIC) in key:
                    continue
                out.setdefault(key, []).extend((s.timestamp, float_bits(s.value)) for s in ts.samples)
            a = b + 1
    return out


def with_label(data: dict[Labels, Samples], name: str, value: str) -> dict[Labels, Samples]:
    """The data set as it should look after the migration added one label."""
    return {tuple(sorted((*labels, (name, value)))): samples for labels, samples in data.items()}


def diff(expected: dict[Labels, Samples], actual: dict[Labels, Samples], limit: int = 5) -> list[str]:
    """Human-readable differences (empty when equal)."""
    problems: list[str] = []
    for labels in sorted(set(expected) - set(actual))[:limit]:
        problems.append(f"missing series {dict(labels)}")
    for labels in sorted(set(actual) - set(expected))[:limit]:
        problems.append(f"extra series {dict(labels)}")
    for labels in sorted(set(expected) & set(actual)):
        if expected[labels] != actual[labels]:
            e, a = expected[labels], actual[labels]
            first = next((i for i, (x, y) in enumerate(zip(e, a, strict=False)) if x != y), min(len(e), len(a)))
            problems.append(f"series {dict(labels)}: {len(e)} vs {len(a)} samples, first difference at #{first}")
            if len(problems) >= 3 * limit:
                break
    return problems


def diff_target(
    expected: dict[Labels, Samples],
    base_url: str,
    start_ms: int,
    end_ms: int,
    *,
    rereads: int = 2,
    restart: Server | None = None,
    **settings,
) -> list[str]:
    """Differences between ``expected`` and what the target Prometheus holds, confirmed by rereading.

    Prometheus before 2.49 can leave out-of-order head chunks out of a query that races an out-of-order
    head compaction (prometheus/prometheus#13115): the samples are stored, one read just misses them. A
    real loss shows in every read, so a difference counts only if it is still there after ``rereads``
    more reads a second apart and, with ``restart`` (the target's Server), after a restart, which
    rebuilds the head from the WAL/WBL: what a restarted server holds is what was durably stored.
    """
    problems = diff(expected, read_all(base_url, start_ms, end_ms, **settings))
    for _ in range(rereads):
        if not problems:
            return problems
        log.warning("target differs (%s); reading it again in case the read raced a compaction", problems[0])
        time.sleep(1.0)
        problems = diff(expected, read_all(base_url, start_ms, end_ms, **settings))
    if problems and restart is not None:
        log.warning("target still differs (%s); restarting it and reading what it durably holds", problems[0])
        restart.stop()
        restart.start()
        problems = diff(expected, read_all(base_url, start_ms, end_ms, **settings))
        if not problems:
            log.warning("after a restart the target holds everything: its queries had missed stored samples")
    return problems
