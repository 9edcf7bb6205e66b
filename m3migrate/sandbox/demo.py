"""A whole migration on this machine: a source with M3-style history, a fresh target, the migrate flow.

    make demo                      # or: python -m m3migrate.sandbox.demo --series 200 --days 2

It starts the servers on 127.0.0.1 (Debian's prometheus: the source serves remote read like an M3
Coordinator, the target is a remote-write receiver like Thanos Receive), runs `m3migrate migrate`
through Prefect, reads both sides back and compares them sample for sample, then stops everything
(or leaves it running with --keep).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from m3migrate.sandbox.compare import diff, read_all, with_label
from m3migrate.sandbox.history import HistorySpec, start_source
from m3migrate.sandbox.servers import start_prometheus
from m3migrate.timefmt import iso_ms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--interval", type=int, default=15, help="seconds between samples")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temporary directory")
    ap.add_argument("--keep", action="store_true", help="leave the servers running at the end")
    a = ap.parse_args(argv)

    from blocks import M3Source, ThanosTarget
    from flows.migrate import migrate
    from m3migrate.spec import MigrationSpec

    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="m3migrate-demo-"))
    spec = HistorySpec(series=a.series, span_s=int(a.days * 86400), interval_s=a.interval)
    print(f"[demo] building the source: {spec.series} series x {a.days:g} d x {spec.interval_s} s ...", flush=True)
    source = start_source(spec, workdir)
    target = start_prometheus(workdir, name="target", remote_write_receiver=True)
    servers = [source.server, target]
    try:
        print(f"[demo] source (M3 stand-in)    remote read  {source.server.url}/api/v1/read", flush=True)
        print(f"[demo] target (Thanos stand-in) remote write {target.url}/api/v1/write", flush=True)
        migration = MigrationSpec(
            migration_id="demo", start=iso_ms(source.stats.start_ms), end=iso_ms(source.stats.end_ms)
        )
        t0 = time.monotonic()
        summary = migrate(
            M3Source(read_url=f"{source.server.url}/api/v1/read", query_url=source.server.url),
            ThanosTarget(write_url=f"{target.url}/api/v1/write", query_url=target.url),
            migration,
            start_over=True,
            state_dir=str(workdir / "state"),
        )
        seconds = time.monotonic() - t0
        print(
            f"[demo] migrated {summary['series']} series, {summary['samples']:,} samples in {seconds:.1f} s", flush=True
        )
        expected = with_label(
            read_all(source.server.url, source.stats.start_ms, source.stats.end_ms), "_source", "m3db"
        )
        actual = read_all(target.url, source.stats.start_ms, source.stats.end_ms)
        problems = diff(expected, actual)
        n = sum(len(s) for s in expected.values())
        if problems:
            print("[demo] VERIFICATION FAILED:\n  " + "\n  ".join(problems), flush=True)
            return 1
        print(
            f"[demo] verified: target equals source ({len(expected)} series, {n:,} samples, bit for bit, "
            'with _source="m3db")',
            flush=True,
        )
        if a.keep:
            print(f"[demo] servers left running; stop them with: kill {' '.join(str(s.pid) for s in servers)}")
        return 0
    finally:
        if not a.keep:
            for server in servers:
                server.stop()
            if a.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
