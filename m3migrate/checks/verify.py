"""Verification: compare the source and the target, per series and per time window, after a migration.

The source is read by remote read (the batch's matchers, as the migration read it), the target through
its PromQL API (Thanos Query, Prometheus). Two levels of evidence per series × window (docs/verification.md):

* **figures** (the default): the target's engine computes count, sum and last value of each series in
  the window (one instant query per batch × window, m3migrate.checks.aggregates), compared exactly with
  the same figures computed from the source's samples. Cheap (one JSON entry per figure, not per sample),
  but equal figures are evidence, not proof: equal sums do not prove equal values;
* **samples**: ``{__name__=~"a|b",_source="m3db"}[Rms]`` evaluated at the window's end returns the raw
  samples of the window; both sides are reduced to a count, the first and last timestamp and a hash over
  the (timestamp, value bits) pairs; a differing hash yields the first differing sample. Series × windows
  whose figures differ, are ambiguous, or fall in the deterministic ``samples_fraction`` get this level;
  ``evidence="samples"`` gives it to all (the proof, at ~5 µs of CPU per target sample).

Missing and extra series are exact at both levels (a series is on the target in a window or not).

Rules that make both sides comparable:

* stale markers (NaN with bits 0x7ff0000000000002) are left out of the source side: a query API never
  returns them, so they cannot be verified this way;
* every other NaN compares as NaN (the API's JSON "NaN" loses the payload), and -0.0 as +0.0 (the
  source's remote read cannot tell them apart either); all other floats are compared bit for bit;
* labels the target adds (Thanos' ``tenant_id``, replica labels) are ignored on target series only, and
  only where the planned series does not carry them itself: two source series differing only in
  ``replica`` stay two series;
* source series are mapped through the migration's relabel rules (``spec.relabeler()``).

Extra series are looked for on the whole target, not only under the batches' selectors: per window, every
series carrying the migration's added label (``_source="m3db"``) that is not planned is an extra. Without
an added label (source label disabled) only the batches' selectors can be searched.

Memory is bounded by one batch × window per worker; ``concurrency`` workers run in parallel. A sampling
mode checks a deterministic fraction of the series (every window). The source is read as arrays from
the remote-read wire bytes (m3migrate.tsdb.samples), never as a Python object per sample. No Prefect
here: flows/verify.py and the CLI wrap this module.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from m3migrate.checks.aggregates import Figures, TargetFigures, figures_expression, parse_figures
from m3migrate.clients.promql import PartialResponse, PromQLClient
from m3migrate.clients.remote_read import RemoteReadClient
from m3migrate.errors import ConfigError, M3MigrateError, MalformedResponse, SourceLimitExceeded
from m3migrate.model import DEFAULT_IGNORE_LABELS, PROBE_METRIC, Labels
from m3migrate.plan.batches import Batch, Plan, Window, make_windows, split_batch
from m3migrate.plan.selectors import re2_escape
from m3migrate.plan.tiers import Tier
from m3migrate.read import read_batch_window_raw
from m3migrate.relabel import Relabeler
from m3migrate.report import figure_table, md, table
from m3migrate.settings.endpoints import SourceSettings, TargetSettings, redact_url
from m3migrate.settings.spec import MigrationSpec
from m3migrate.timefmt import iso_ms
from m3migrate.transfer.unit import TransferResult
from m3migrate.wire.codec import STALE_NAN_BITS, Matcher, decode_read_response, selector_string, show_labels

log = logging.getLogger("m3migrate.checks.verify")


CANONICAL_NAN_BITS = 0x7FF8000000000001  # every NaN but the stale marker compares as this
NOT_UTF8 = "not comparable: label bytes not UTF-8"
_ESCAPED = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as surrogateescape decodes it
MAX_SPLIT_DEPTH = 6
SCAN_NAMES_PER_QUERY = 50  # unplanned metric names per raw-samples query of the extras scan
SCAN_SERIES_PER_LISTING = 10_000  # planned series (by name) per series-API listing of the extras scan
SCAN_EXACT_PER_NAME = 20  # stray series of a planned name read one by one; more: the whole name
KINDS = ("missing", "extra", "mismatch")
EVIDENCE = ("figures", "samples")  # cheapest first; see the module docstring
DEFAULT_SAMPLES_FRACTION = 0.01  # series × windows compared sample by sample although their figures agree
KEYED_SAMPLE_READS = 16  # series of a batch × window read one by one at the samples level (at least; see below)
KEYED_READS_SHARE = 8  # ... or up to 1/8 of the batch's series (a read per series costs ~200 samples' JSON)

PROBLEM_COLUMNS = [
    "kind",
    "series",
    "window",
    "window_start",
    "windows",
    "source_count",
    "target_count",
    "source_first_ts",
    "target_first_ts",
    "source_last_ts",
    "target_last_ts",
    "first_diff_ts",
    "first_diff",
    "source_value",
    "target_value",
]
WINDOW_COLUMNS = [
    "window",
    "start",
    "end",
    "series",
    "source_samples",
    "target_samples",
    "stale_markers_skipped",
    "by_figures",
    "by_samples",
    "figures_differed",
    "mismatches",
    "missing",
    "extra",
]


class VerificationFailed(M3MigrateError):
    """Source and target differ: mismatching, missing or extra series. ``summary`` holds the totals."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None, *, hint: str = "") -> None:
        self.summary = summary or {}
        super().__init__(
            message,
            hint=hint
            or "see the verification report (problems table / CSV); rerun the migration with --start-over "
            "for damaged series, or check the relabel rules and selectors for missing/extra ones",
        )


# ---------------------------------------------------------------------------------------------------
# series and sample helpers


def series_text(labels: Iterable[tuple[str, str]]) -> str:
    """Prometheus notation: name{a="1",b="2"} (labels sorted, name first)."""
    d = dict(labels)
    name = d.pop("__name__", "")
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(d.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def sampled(labels: Labels, fraction: float, seed: int = 0, salt: tuple[object, ...] = ()) -> bool:
    """Deterministic choice of a series: a hash of (seed, labels) below ``fraction``; a ``salt`` (e.g. the
    window) makes another choice, independent of the one without it."""
    if fraction >= 1.0:
        return True
    if fraction <= 0.0:
        return False
    h = hashlib.blake2b(repr((seed, *salt, labels)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction


def canonical_bits(values: np.ndarray) -> np.ndarray:
    """Float64 values as uint64 bits with every NaN canonical and -0.0 as +0.0."""
    values = np.asarray(values, dtype=np.float64)
    bits = values.view(np.uint64).copy()
    bits[np.isnan(values)] = CANONICAL_NAN_BITS
    bits[values == 0.0] = 0
    return bits


@dataclass
class SeriesData:
    """One series' samples in one window: timestamps (int64 ms) and canonical value bits (uint64)."""

    ts: np.ndarray
    bits: np.ndarray
    values: np.ndarray

    @classmethod
    def build(cls, ts: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray) -> SeriesData:
        t = np.asarray(ts, dtype=np.int64)
        v = np.asarray(values, dtype=np.float64)
        if len(t) > 1 and not np.all(t[1:] > t[:-1]):
            order = np.argsort(t, kind="stable")
            t, v = t[order], v[order]
            keep = np.concatenate(([True], t[1:] != t[:-1]))
            t, v = t[keep], v[keep]
        return cls(t, canonical_bits(v), v)

    @property
    def count(self) -> int:
        return len(self.ts)

    def digest(self) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(self.ts.astype("<i8").tobytes())
        h.update(self.bits.astype("<u8").tobytes())
        return h.digest()

    def first_ts(self) -> int | None:
        return int(self.ts[0]) if len(self.ts) else None

    def last_ts(self) -> int | None:
        return int(self.ts[-1]) if len(self.ts) else None


EMPTY = SeriesData(np.empty(0, np.int64), np.empty(0, np.uint64), np.empty(0, np.float64))


def first_difference(src: SeriesData, tgt: SeriesData) -> tuple[int, float | None, float | None] | None:
    """(timestamp, source value or None, target value or None) of the first differing sample, or None."""
    n = min(src.count, tgt.count)
    differ = (src.ts[:n] != tgt.ts[:n]) | (src.bits[:n] != tgt.bits[:n])
    idx = int(np.argmax(differ)) if differ.any() else n
    if idx == n and src.count == tgt.count:
        return None
    s_ts = int(src.ts[idx]) if idx < src.count else None
    t_ts = int(tgt.ts[idx]) if idx < tgt.count else None
    if s_ts is not None and t_ts is not None and s_ts == t_ts:
        return s_ts, float(src.values[idx]), float(tgt.values[idx])
    if t_ts is None or (s_ts is not None and s_ts < t_ts):
        return s_ts, float(src.values[idx]), None  # type: ignore[return-value]
    return t_ts, None, float(tgt.values[idx])


def _describe(diff: tuple[int, float | None, float | None]) -> str:
    _, s, t = diff
    if s is None:
        return f"only on target: {t!r}"
    if t is None:
        return f"missing on target (source {s!r})"
    return f"value differs: source {s!r}, target {t!r}"


# ---------------------------------------------------------------------------------------------------
# report


@dataclass
class VerificationReport:
    """Totals, per-window counts and the problems (missing / extra series, mismatching series × windows)."""

    totals: dict[str, Any]
    windows: pd.DataFrame
    problems: pd.DataFrame
    migration_id: str = ""
    not_comparable: list[str] = field(default_factory=list)  # source series (escaped) with label bytes not UTF-8

    @property
    def ok(self) -> bool:
        return not (self.totals["mismatches"] or self.totals["missing"] or self.totals["extra"])

    def of_kind(self, kind: str) -> pd.DataFrame:
        return self.problems[self.problems["kind"] == kind]

    def summary(self) -> dict[str, Any]:
        out = {"migration_id": self.migration_id, "ok": self.ok, **self.totals}
        if self.not_comparable:
            out["not_comparable_examples"] = [f"{s}: {NOT_UTF8}" for s in self.not_comparable[:20]]
        return out

    def to_markdown(self, limit: int = 20) -> str:
        status = "**equal**" if self.ok else "**DIFFERENT**"
        lines = [f"# Verification {self.migration_id}: {status}", "", *figure_table(self.totals)]
        for kind, title in (("missing", "Missing series"), ("extra", "Extra series"), ("mismatch", "Differing")):
            rows = self.of_kind(kind)
            if rows.empty:
                continue
            lines += ["", f"## {title} ({len(rows)})", ""]
            shown = rows.head(limit).itertuples()
            if kind == "mismatch":
                header = ("series", "window start", "source/target samples", "first difference at", "what")
                cells = (
                    (f"`{r.series}`", r.window_start, f"{r.source_count}/{r.target_count}", _at(r), r.first_diff)
                    for r in shown
                )
            else:
                header = ("series", "windows", "source samples", "target samples", "first sample")
                cells = ((f"`{r.series}`", r.windows, r.source_count, r.target_count, _at(r)) for r in shown)
            lines += table(header, cells)
            if len(rows) > limit:
                lines.append(f"\n… and {len(rows) - limit} more (see the CSV/Parquet report)")
        if self.not_comparable:
            lines += ["", f"## Not compared ({len(self.not_comparable)})", ""]
            lines += [
                f"- `{md(s)}`: {NOT_UTF8} (the query API's JSON shows them as U+FFFD)" for s in self.not_comparable
            ]
        return "\n".join(lines) + "\n"

    def write(self, directory: str | Path) -> dict[str, Path]:
        """problems/windows as CSV and Parquet, totals as CSV, and a PNG chart; returns the paths."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "problems_csv": out / "problems.csv",
            "problems_parquet": out / "problems.parquet",
            "windows_csv": out / "windows.csv",
            "windows_parquet": out / "windows.parquet",
            "totals_csv": out / "totals.csv",
            "chart_png": out / "samples_per_window.png",
        }
        self.problems.to_csv(paths["problems_csv"], index=False)
        self.problems.to_parquet(paths["problems_parquet"], index=False)
        self.windows.to_csv(paths["windows_csv"], index=False)
        self.windows.to_parquet(paths["windows_parquet"], index=False)
        pd.DataFrame([{"figure": k, "value": str(v)} for k, v in self.summary().items()]).to_csv(
            paths["totals_csv"], index=False
        )
        self.chart(paths["chart_png"])
        return paths

    def chart(self, path: Path) -> Path:
        """Source vs target samples per window (windows with problems marked)."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(8, 3), dpi=100)
        ax = fig.subplots()
        w = self.windows
        if not w.empty:
            # one step per window, closed at the last window's end
            x = pd.to_datetime([*w["start"], w["end"].iloc[-1]])
            src, tgt = (
                [*w["source_samples"], w["source_samples"].iloc[-1]],
                [*w["target_samples"], w["target_samples"].iloc[-1]],
            )
            ax.step(x, src, where="post", label="source", linewidth=2)
            ax.step(x, tgt, where="post", label="target", linestyle="--")
            bad = w[(w["mismatches"] + w["missing"] + w["extra"]) > 0]
            if not bad.empty:
                ax.scatter(pd.to_datetime(bad["start"]), bad["target_samples"], color="red", zorder=3, label="differs")
        ax.set_title(f"samples per window — {'equal' if self.ok else 'DIFFERENT'}")
        ax.set_ylabel("samples")
        ax.legend(loc="best", fontsize="small")
        fig.autofmt_xdate()
        fig.tight_layout()
        fig.savefig(path)
        return path


def _at(row: Any) -> str:
    """A problem row's first differing (or first) sample time."""
    return iso_ms(optional_int(row.first_diff_ts))


def optional_int(value: Any) -> int | None:
    """An int, or None for None/NaN/NA (nullable DataFrame cells)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


# ---------------------------------------------------------------------------------------------------
# engine


@dataclass
class _BatchView:
    """What verification needs of one batch: expected target keys of its (sampled) series."""

    batch: Batch
    expected: dict[Labels, Labels]  # source labels -> expected target key (sampled series only)
    target_selector: str


@dataclass
class _TaskResult:
    window: int
    series: int = 0
    source_samples: int = 0
    target_samples: int = 0
    stale_skipped: int = 0
    by_figures: int = 0  # series × windows whose figures agreed (evidence level "figures")
    by_samples: int = 0  # series × windows compared sample by sample
    figures_differed: int = 0  # of those, the ones whose figures differed or were ambiguous
    seen_on_target: set[Labels] = field(default_factory=set)
    rows: list[dict[str, Any]] = field(default_factory=list)
    not_comparable: set[str] = field(default_factory=set)  # source series with label bytes not UTF-8 (escaped)
    hidden: set[Labels] = field(default_factory=set)  # how those show in the target's query API (U+FFFD)
    unreadable: set[Labels] = field(default_factory=set)  # target series holding U+FFFD: PromQL cannot select them


class _Verifier:
    def __init__(
        self,
        reader: RemoteReadClient,
        query: PromQLClient,
        relabeler: Relabeler,
        ignore: frozenset[str],
        all_expected: set[Labels],
        source_label: tuple[str, str] | None,
        tiers: Sequence[Tier] = (),
        *,
        evidence: str = "figures",
        samples_fraction: float = DEFAULT_SAMPLES_FRACTION,
        seed: int = 0,
        target_endpoint: str = "",
    ) -> None:
        self.reader = reader
        self.target_endpoint = target_endpoint  # redacted, for error messages
        self.evidence = evidence
        self.samples_fraction = samples_fraction
        self.seed = seed
        self.tiers = tuple(tiers)  # each part of a window is compared with the namespace it was read from
        self.query = query
        self.relabeler = relabeler
        self.ignore = ignore
        self.source_label = source_label
        self.set_expected(all_expected)

    def set_expected(self, all_expected: set[Labels]) -> None:
        """Every planned target key (full relabeled labels), indexed for :meth:`target_key`."""
        self.all_expected = all_expected
        # planned series that carry an ignorable label themselves, by their labels without those
        self.carrying: dict[Labels, list[Labels]] = {}
        self.planned_names: dict[str, int] = {}
        for key in all_expected:
            name = dict(key).get("__name__", "")
            self.planned_names[name] = self.planned_names.get(name, 0) + 1
            if any(n in self.ignore for n, _ in key):
                self.carrying.setdefault(self._strip(key), []).append(key)

    def _strip(self, labels: Iterable[tuple[str, str]]) -> Labels:
        ignore = self.ignore
        kept = [label for label in labels if label[0] not in ignore]
        kept.sort()
        return tuple(kept)

    def target_key(self, labels: Iterable[tuple[str, str]]) -> Labels:
        """The planned key a target series stands for: its labels less the ignorable ones the target
        added, i.e. those the planned series does not carry itself (most specific match first);
        for a series that is no planned one, its labels without any ignorable label."""
        labels = tuple(labels)
        stripped = self._strip(labels)
        if not self.carrying:  # no planned series carries an ignorable label: its labels less those
            return stripped
        best, best_score = (stripped if stripped in self.all_expected else None), 0
        have = dict(labels)
        for key in self.carrying.get(stripped, ()):
            own = [(n, v) for n, v in key if n in self.ignore]
            if len(own) > best_score and all(have.get(n) == v for n, v in own):
                best, best_score = key, len(own)
        return best if best is not None else stripped

    def view(self, batch: Batch, fraction: float, seed: int) -> _BatchView | None:
        expected: dict[Labels, Labels] = {}
        for labels in batch.series:
            out = self.relabeler(labels)
            if out is None or not sampled(labels, fraction, seed):
                continue
            expected[labels] = tuple(sorted(out))
        if not expected:
            return None
        return _BatchView(batch, expected, self.selector_for(batch, expected))

    def selector_for(self, batch: Batch, expected: dict[Labels, Labels]) -> str:
        """Names of the expected series, the source label, and every batch matcher relabeling keeps valid."""
        names = sorted({dict(key).get("__name__", "") for key in expected.values()})
        return selector_string([_name_matcher(names), *self._label_matchers(batch, expected)])

    def name_selectors(self, batch: Batch, expected: dict[Labels, Labels]) -> dict[str, str]:
        """selector_for split by metric name: name -> the selector of that one name."""
        rest = self._label_matchers(batch, expected)
        names = sorted({dict(key).get("__name__", "") for key in expected.values()})
        return {name: selector_string([Matcher("__name__", "=", name), *rest]) for name in names}

    def _label_matchers(self, batch: Batch, expected: dict[Labels, Labels]) -> list[Matcher]:
        matchers: list[Matcher] = []
        if self.source_label:
            matchers.append(Matcher(*self.source_label[:1], "=", self.source_label[1]))
        for m in batch.matchers:
            if m.name == "__name__" or m.op not in ("=", "=~") or m.name in self.ignore:
                continue
            if self.source_label and m.name == self.source_label[0]:
                continue
            if all(dict(src).get(m.name, "") == dict(key).get(m.name, "") for src, key in expected.items()):
                matchers.append(m)
        return matchers

    # -- one batch × window ------------------------------------------------------------------------

    def check(self, view: _BatchView, window: Window, depth: int = 0) -> _TaskResult:
        try:
            source = self._read_source(view, window)
            if self.evidence == "samples":
                return self._compare(view, window, *source, self._read_target(view, window))
            figures, merged = self._read_figures(view, window)
            agreed, need, differed = self._by_figures(view, window, source[0], source[3], figures, merged)
            target = self._read_target_keys(view, window, need)
        except SourceLimitExceeded:
            if depth >= MAX_SPLIT_DEPTH or len(view.batch.series) < 2:
                raise
            log.info("batch %s window %d hit a limit: splitting it", view.batch.id, window.index)
            result = _TaskResult(window.index)
            for sub in split_batch(view.batch):
                sub_expected = {s: k for s, k in view.expected.items() if s in sub.keys}
                if sub_expected:
                    part = self.check(
                        _BatchView(sub, sub_expected, self.selector_for(sub, sub_expected)), window, depth + 1
                    )
                    _merge_into(result, part)
            return result
        return self._compare(view, window, *source, target, agreed=agreed, compared=need, differed=differed)

    def _as_json(self, key: Labels) -> Labels | None:
        """The target key a series with label bytes that are not UTF-8 shows in the query API: Go's
        encoding/json writes each invalid byte as U+FFFD, so it cannot be told from another such series
        and is not compared; this key is left out too (no false missing/mismatch/extra)."""
        try:
            out = self.relabeler(key)
        except (UnicodeEncodeError, ConfigError):  # a rule that cannot apply: the migration set it aside
            return None
        if out is None:
            return None
        return tuple(sorted((_ESCAPED.sub("\ufffd", n), _ESCAPED.sub("\ufffd", v)) for n, v in out))

    def _read_source(
        self, view: _BatchView, window: Window
    ) -> tuple[dict[Labels, SeriesData], int, set[str], set[Labels]]:
        # split by series, then by time, under a source limit (M3's series or range limit), as the transfer
        tally = TransferResult(batch_id=view.batch.id, window=window.index)
        parts = read_batch_window_raw(self.reader, view.batch, window.start_ms, window.end_ms, tally, self.tiers)
        out: dict[Labels, SeriesData] = {}
        stale = 0
        aside: set[str] = set()
        hidden: set[Labels] = set()
        for raw in parts:
            for labels, data, skipped in _window_series(raw, window, self.reader.endpoint):
                key = tuple(sorted(labels))
                expected = view.expected.get(key)
                if expected is None and (data.count or skipped) and _ESCAPED.search("".join(n + v for n, v in key)):
                    aside.add(show_labels(key))  # any batch reading it names it: the report lists each once
                    shown = self._as_json(key)
                    if shown is not None:
                        hidden.add(shown)
                    continue
                if expected is None:
                    continue  # another batch's series, a dropped one, or not sampled
                stale += skipped
                if not data.count:
                    continue
                if expected in out:  # a later part of a time split, or two series relabeled to one: merge
                    prev = out[expected]
                    data = SeriesData.build(
                        np.concatenate([prev.ts, data.ts]), np.concatenate([prev.values, data.values])
                    )
                out[expected] = data
        return out, stale, aside, hidden

    def _read_target(self, view: _BatchView, window: Window) -> dict[Labels, SeriesData]:
        return self._read_target_selector(view.target_selector, window)

    def _read_target_selector(self, selector: str, window: Window) -> dict[Labels, SeriesData]:
        # sel[R] at T holds the samples in (T-R, T] (Prometheus 3, Thanos) or [T-R, T] (Prometheus 2):
        # ask one ms more and cut at the window's start, exact on both.
        raw = self.query.raw_samples(selector, window.end_ms, window.end_ms - window.start_ms + 1)
        out: dict[Labels, SeriesData] = {}
        for labels, samples in raw.items():
            kept = [(t, v) for t, v in samples if window.start_ms <= t <= window.end_ms]
            if not kept:
                continue
            key = self.target_key(labels)
            ts, vs = zip(*kept, strict=True)
            data = SeriesData.build(ts, vs)
            if key in out:  # series differing only in ignored labels (e.g. two replicas): one series
                prev = out[key]
                data = SeriesData.build(np.concatenate([prev.ts, data.ts]), np.concatenate([prev.values, data.values]))
            out[key] = data
        return out

    def _compare(
        self,
        view: _BatchView,
        window: Window,
        source: dict[Labels, SeriesData],
        stale: int,
        aside: set[str],
        hidden: set[Labels],
        target: dict[Labels, SeriesData],
        *,
        agreed: dict[Labels, int] | None = None,
        compared: set[Labels] | None = None,
        differed: int = 0,
    ) -> _TaskResult:
        """Problem rows of one batch × window; ``agreed``: keys whose figures matched (-> target samples),
        not compared again; every other key's target samples are in ``target`` (if it has any), those of
        ``compared`` read for it (None: every key with samples on either side)."""
        agreed = agreed or {}
        result = _TaskResult(window.index, stale_skipped=stale, not_comparable=aside, hidden=hidden)
        expected_keys = set(view.expected.values()) - hidden
        target = {k: v for k, v in target.items() if k not in hidden} if hidden else target
        result.series = len(source)
        result.source_samples = sum(d.count for d in source.values())
        result.by_figures, result.figures_differed = len(agreed), differed
        for key, count in agreed.items():
            result.target_samples += count
            result.seen_on_target.add(key)
        # with an added label, extras come from the whole-target scan (scan_extras), not from here
        extras = set() if self.source_label else target.keys() - self.all_expected
        for key in sorted((expected_keys | extras) - agreed.keys()):
            src = source.get(key)
            tgt = target.get(key)
            if (src is not None or tgt is not None) if compared is None else key in compared:
                result.by_samples += 1
            if tgt is not None:
                result.target_samples += tgt.count
                if key in expected_keys:
                    result.seen_on_target.add(key)
            if src is None and tgt is None:
                continue
            if key not in expected_keys:
                kind = "extra"
            elif tgt is None:
                kind = "missing"
            else:
                kind = "mismatch"
                if src is not None and src.count == tgt.count and src.digest() == tgt.digest():
                    continue
            result.rows.append(_row(kind, key, window, src, tgt))
        return result

    # -- evidence level "figures" ------------------------------------------------------------------

    def _read_figures(self, view: _BatchView, window: Window) -> tuple[dict[Labels, TargetFigures], set[Labels]]:
        """The target's figures of the batch's series in the window, by planned key; and the keys that
        several target series stand for (replicas differing in ignored labels: merged at the samples level)."""
        # as _read_target_selector: R = window + 1 ms, exact on both range conventions but for a sample at
        # start - 1 ms, which the "edge" figure reveals
        range_ms = window.end_ms - window.start_ms + 1
        expr = figures_expression(self.name_selectors(view.batch, view.expected), range_ms, window.end_ms)
        answer = self.query.query(expr, window.end_ms)
        endpoint = self.target_endpoint
        if answer.warnings:
            raise PartialResponse(
                "PromQL figures: the server answered with warnings, the result may be incomplete",
                endpoint=endpoint,
                status=200,
                body="; ".join(answer.warnings)[:300],
                hint="Thanos: send partial_response=false and check the health of its stores",
            )
        if answer.result_type != "vector":
            raise MalformedResponse(f"PromQL figures: expected a vector, got {answer.result_type!r}", endpoint=endpoint)
        out: dict[Labels, TargetFigures] = {}
        merged: set[Labels] = set()
        for labels, figures in parse_figures(answer.result, endpoint=endpoint).items():
            key = self.target_key(labels)
            if key in out:
                merged.add(key)
            out[key] = figures
        return out, merged

    def _by_figures(
        self,
        view: _BatchView,
        window: Window,
        source: dict[Labels, SeriesData],
        hidden: set[Labels],
        figures: dict[Labels, TargetFigures],
        merged: set[Labels],
    ) -> tuple[dict[Labels, int], set[Labels], int]:
        """(keys proven equal by figures -> target samples, keys to compare by samples, how many of those
        because their figures differed or were ambiguous). A missing series needs no samples of the target."""
        expected_keys = set(view.expected.values()) - hidden
        extras = set() if self.source_label else figures.keys() - self.all_expected - hidden
        agreed: dict[Labels, int] = {}
        need: set[Labels] = set()
        differed = 0
        for key in expected_keys | extras:
            src, tgt = source.get(key), figures.get(key)
            if tgt is not None and (tgt.edge_ms == window.start_ms - 1 or key in merged):
                need.add(key)  # a sample at start - 1 ms counts on Prometheus 2 only; replicas merge by samples
                differed += 1
            elif tgt is None or not tgt.count:
                continue  # missing (if the source has it), or on neither side
            elif src is None or key not in expected_keys or not Figures.of(src.values).matches(tgt.figures()):
                need.add(key)
                differed += 1
            elif sampled(key, self.samples_fraction, self.seed, ("samples", window.index)):
                need.add(key)
            else:
                agreed[key] = tgt.count
        return agreed, need, differed

    def _read_target_keys(self, view: _BatchView, window: Window, keys: set[Labels]) -> dict[Labels, SeriesData]:
        """The target's samples of ``keys``: one read per key (a selector of its labels), or of the whole
        batch when there are many (or a label PromQL cannot select)."""
        if not keys:
            return {}
        many = len(keys) > max(KEYED_SAMPLE_READS, len(view.expected) // KEYED_READS_SHARE)
        if many or any("\ufffd" in n + v for key in keys for n, v in key):
            found = self._read_target(view, window)
            return {k: found[k] for k in keys if k in found}
        out: dict[Labels, SeriesData] = {}
        for key in sorted(keys):
            data = self._read_target_selector(selector_string(Matcher(n, "=", v) for n, v in key), window).get(key)
            if data is not None:
                out[key] = data
        return out

    # -- extras on the whole target (one task per window) ------------------------------------------

    def scan_selector(self) -> str | None:
        """The added label every migrated series carries, as a selector; None when there is none."""
        if not self.source_label:
            return None
        return selector_string([Matcher(self.source_label[0], "=", self.source_label[1])])

    def scan_extras(self, window: Window) -> _TaskResult:
        """Every target series of the window carrying the added label that is no planned series.

        The metric names under the label come first (label values API); unplanned names are read
        whole, planned ones are listed (series API, labels only) and only their stray series read.
        Listings go by block/chunk overlap, so every extra is confirmed by its samples in the window.
        """
        result = _TaskResult(window.index)
        base = self.scan_selector()
        assert base is not None and self.source_label is not None
        added = Matcher(self.source_label[0], "=", self.source_label[1])
        names = self.query.label_values("__name__", [base], window.start_ms, window.end_ms)
        names = sorted(n for n in names if n and n != PROBE_METRIC)  # the validation's probe is no data
        unplanned = [n for n in names if n not in self.planned_names]
        selectors = [
            selector_string([_name_matcher(unplanned[i : i + SCAN_NAMES_PER_QUERY]), added])
            for i in range(0, len(unplanned), SCAN_NAMES_PER_QUERY)
        ]
        stray: dict[str, list[dict[str, str]]] = {}
        for chunk in _chunks_by_weight([n for n in names if n in self.planned_names], self.planned_names):
            listed = self.query.series([selector_string([_name_matcher(chunk), added])], window.start_ms, window.end_ms)
            for labels in listed:
                key = self.target_key(labels.items())
                if key not in self.all_expected and any("\ufffd" in n + v for n, v in key):
                    result.unreadable.add(key)  # PromQL's lexer refuses U+FFFD: bytes not UTF-8 on the target
                elif key not in self.all_expected:
                    stray.setdefault(labels.get("__name__", ""), []).append(labels)
        for name, series in sorted(stray.items()):
            if len(series) > SCAN_EXACT_PER_NAME:
                selectors.append(selector_string([Matcher("__name__", "=", name), added]))
            else:
                selectors += [selector_string(Matcher(n, "=", v) for n, v in sorted(s.items())) for s in series]
        found: dict[Labels, SeriesData] = {}
        for selector in selectors:
            for key, data in self._read_target_selector(selector, window).items():
                if key not in self.all_expected:
                    found.setdefault(key, data)  # setdefault: a stray series may come under two selectors
        for key in sorted(found):
            result.target_samples += found[key].count
            result.rows.append(_row("extra", key, window, None, found[key]))
        return result


def _window_series(raw: bytes, window: Window, endpoint: str) -> Iterator[tuple[Labels, SeriesData, int]]:
    """Each series of a decompressed ReadResponse: its labels as sent, its samples in the window (stale
    markers left out) and how many stale markers it held. The part's samples are decoded and filtered as
    whole arrays; each series gets views of them (sorted and deduplicated only where it needs it)."""
    from m3migrate.tsdb.samples import read_response_arrays, series_arrays  # numba: loaded when first read

    arrays = read_response_arrays(raw)
    if arrays is None:  # not canonically framed: decoded whole
        decoded = list(series_arrays(decode_read_response(raw, endpoint=endpoint)))
        labels = [lb for lb, _, _ in decoded]
        counts = np.array([len(t) for _, t, _ in decoded], np.int64)
        t = np.concatenate([t for _, t, _ in decoded]) if decoded else np.empty(0, np.int64)
        bits = np.concatenate([b for _, _, b in decoded]) if decoded else np.empty(0, np.uint64)
    else:
        labels, counts, t, bits = arrays.labels, arrays.counts, arrays.timestamps, arrays.bits
    n = len(labels)
    if not n:
        return
    owner = np.repeat(np.arange(n), counts)
    stale = bits == np.uint64(STALE_NAN_BITS)
    keep = ~stale & (t >= window.start_ms) & (t <= window.end_ms)
    stale_per = np.bincount(owner[stale], minlength=n)
    kept_per = np.bincount(owner[keep], minlength=n)
    kt, kept_owner = t[keep], owner[keep]
    values = bits[keep].view(np.float64)
    canonical = canonical_bits(values)
    unsorted = np.zeros(n, dtype=bool)
    if len(kt) > 1:
        step = np.flatnonzero(kt[1:] <= kt[:-1]) + 1  # not after the sample before it
        inside = kept_owner[step] == kept_owner[step - 1]
        unsorted[kept_owner[step[inside]]] = True
    bounds = np.concatenate(([0], np.cumsum(kept_per))).tolist()
    stale_list, unsorted_list = stale_per.tolist(), unsorted.tolist()
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        if unsorted_list[i]:
            data = SeriesData.build(kt[a:b], values[a:b])
        else:
            data = SeriesData(kt[a:b], canonical[a:b], values[a:b])
        yield labels[i], data, stale_list[i]


def _name_matcher(names: Sequence[str]) -> Matcher:
    if len(names) == 1:
        return Matcher("__name__", "=", names[0])
    return Matcher("__name__", "=~", "|".join(re2_escape(n) for n in names))


def _chunks_by_weight(names: list[str], weight: dict[str, int]) -> Iterator[list[str]]:
    """Consecutive groups of names holding about SCAN_SERIES_PER_LISTING planned series each."""
    chunk: list[str] = []
    total = 0
    for name in names:
        if chunk and total + weight[name] > SCAN_SERIES_PER_LISTING:
            yield chunk
            chunk, total = [], 0
        chunk.append(name)
        total += weight[name]
    if chunk:
        yield chunk


def _row(kind: str, key: Labels, window: Window, src: SeriesData | None, tgt: SeriesData | None) -> dict[str, Any]:
    """One problem row: a series in one window, with its first differing sample."""
    diff = first_difference(src or EMPTY, tgt or EMPTY)
    assert diff is not None
    return {
        "kind": kind,
        "series": series_text(key),
        "window": window.index,
        "window_start": iso_ms(window.start_ms),
        "windows": 1,
        "source_count": src.count if src else 0,
        "target_count": tgt.count if tgt else 0,
        "source_first_ts": src.first_ts() if src else None,
        "target_first_ts": tgt.first_ts() if tgt else None,
        "source_last_ts": src.last_ts() if src else None,
        "target_last_ts": tgt.last_ts() if tgt else None,
        "first_diff_ts": diff[0],
        "first_diff": _describe(diff),
        "source_value": diff[1],
        "target_value": diff[2],
        "_key": key,
    }


def _merge_into(result: _TaskResult, part: _TaskResult) -> None:
    result.series += part.series
    result.source_samples += part.source_samples
    result.target_samples += part.target_samples
    result.stale_skipped += part.stale_skipped
    result.by_figures += part.by_figures
    result.by_samples += part.by_samples
    result.figures_differed += part.figures_differed
    result.seen_on_target |= part.seen_on_target
    result.rows.extend(part.rows)
    result.not_comparable |= part.not_comparable
    result.hidden |= part.hidden
    result.unreadable |= part.unreadable


def _bounded_map(fn: Callable[[Any], _TaskResult], items: Iterable[Any], concurrency: int) -> Iterator[_TaskResult]:
    """Run fn over items with at most 2 × concurrency submitted at once (bounded memory); any order."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="verify") as pool:
        pending: set[Future[_TaskResult]] = set()
        try:
            for item in items:
                if len(pending) >= 2 * concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
                pending.add(pool.submit(fn, item))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield f.result()
        finally:
            for f in pending:
                f.cancel()


def verify(
    source: SourceSettings,
    target: TargetSettings,
    spec: MigrationSpec,
    plan: Plan | None = None,
    *,
    window_ms: int | None = None,
    sample_fraction: float = 1.0,
    seed: int = 0,
    concurrency: int = 4,
    ignore_labels: Iterable[str] = DEFAULT_IGNORE_LABELS,
    migration_id: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    evidence: str = "figures",
    samples_fraction: float = DEFAULT_SAMPLES_FRACTION,
) -> VerificationReport:
    """Compare source and target over the spec's range; never raises for differences (see ``.ok``).

    ``plan``: the migration's saved plan (its batches are reused); None discovers the series again.
    ``window_ms``: comparison window (default: the plan's/spec's window). ``sample_fraction`` < 1 checks
    that deterministic share of the series (by a hash of their labels and ``seed``), in every window.
    ``evidence``: "figures" (count, sum, last per series × window from the target's engine; the samples
    where they differ and for the deterministic ``samples_fraction`` of series × windows) or "samples"
    (every series × window sample by sample: the proof, ~5 µs of CPU per target sample).
    """
    if not 0.0 < sample_fraction <= 1.0:
        raise ConfigError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
    if evidence not in EVIDENCE:
        raise ConfigError(f"evidence must be one of {', '.join(EVIDENCE)}, got {evidence!r}")
    if not 0.0 <= samples_fraction <= 1.0:
        raise ConfigError(f"samples_fraction must be in [0, 1], got {samples_fraction}")
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    if not target.promql_base:
        raise ConfigError(
            "verification reads the target through its query API, but the target has no query_url",
            hint="set the target's query_url (Thanos Query: https://HOST:10902), e.g. --target-query-url",
        )
    t0 = time.monotonic()
    migration_id = migration_id or (plan.migration_id if plan else spec.resolved_id(source.read_url, target.write_url))
    if plan is None:
        from m3migrate.plan.migration import build_plan

        plan = build_plan(source, spec, migration_id)
    windows = make_windows(plan.start_ms, plan.end_ms, window_ms or plan.window_ms)
    relabeler = spec.relabeler()
    ignore = frozenset(ignore_labels)
    source_label = (spec.source_label_name, spec.source_label_value) if spec.source_label_value else None
    params = {"partial_response": "false", "max_source_resolution": "0s"}
    headers = {target.tenant_header: target.tenant} if target.tenant else None
    with (
        RemoteReadClient(source, max_connections=max(16, concurrency)) as reader,
        PromQLClient(target.promql_base, target, extra_params=params, extra_headers=headers) as query,
    ):
        all_expected: set[Labels] = set()
        for batch in plan.batches:
            for labels in batch.series:
                out = relabeler(labels)
                if out is not None:
                    all_expected.add(tuple(sorted(out)))
        verifier = _Verifier(
            reader,
            query,
            relabeler,
            ignore,
            all_expected,
            source_label,
            plan.tiers,
            evidence=evidence,
            samples_fraction=samples_fraction,
            seed=seed,
            target_endpoint=redact_url(target.promql_base),
        )
        views = [v for v in (verifier.view(b, sample_fraction, seed) for b in plan.batches) if v is not None]
        series_checked = len({k for v in views for k in v.expected.values()})
        tasks: list[tuple[_BatchView | None, Window]] = [(view, window) for window in windows for view in views]
        scan = verifier.scan_selector()
        if scan:  # and one whole-target extras scan per window (None: no batch)
            tasks += [(None, window) for window in windows]
        per_window = {w.index: _TaskResult(w.index) for w in windows}
        log.info(
            "verifying %d of %d series over %d windows (%d tasks) against %s",
            series_checked,
            len(all_expected),
            len(windows),
            len(tasks),
            redact_url(target.promql_base),
        )

        def run(item: tuple[_BatchView | None, Window]) -> _TaskResult:
            view, window = item
            return verifier.check(view, window) if view is not None else verifier.scan_extras(window)

        for done, part in enumerate(_bounded_map(run, tasks, concurrency), 1):
            _merge_into(per_window[part.window], part)
            if on_progress:
                on_progress(done, len(tasks))
    seen_on_target: set[Labels] = set()
    rows: list[dict[str, Any]] = []
    not_comparable: set[str] = set()
    for r in per_window.values():
        seen_on_target |= r.seen_on_target
        rows.extend(r.rows)
        not_comparable |= r.not_comparable
    hidden = {k for r in per_window.values() for k in r.hidden}
    # a target series shown with U+FFFD that no source series explains: named too, never dropped silently
    not_comparable |= {
        f"{series_text(k)} (on the target only)" for r in per_window.values() for k in r.unreadable - hidden
    }
    if not_comparable:
        log.warning("%d series not compared: %s (e.g. %s)", len(not_comparable), NOT_UTF8, min(not_comparable))
    problems, per_window_counts = _problems_frame(rows, seen_on_target)
    window_frame = _windows_frame(windows, per_window, per_window_counts)
    mismatches = problems[problems["kind"] == "mismatch"]
    totals = {
        "series_total": len(all_expected),
        "series_checked": series_checked,
        "sample_fraction": sample_fraction,
        "windows": len(windows),
        "batches": len(views),
        "samples_source": int(window_frame["source_samples"].sum()),
        "samples_target": int(window_frame["target_samples"].sum()),
        "stale_markers_skipped": int(window_frame["stale_markers_skipped"].sum()),
        "evidence": _evidence_text(evidence, samples_fraction),
        "checked_by_figures": int(window_frame["by_figures"].sum()),
        "checked_by_samples": int(window_frame["by_samples"].sum()),
        "figures_differed": int(window_frame["figures_differed"].sum()),
        "mismatches": len(mismatches),
        "mismatched_series": int(mismatches["series"].nunique()),
        "missing": int((problems["kind"] == "missing").sum()),
        "extra": int((problems["kind"] == "extra").sum()),
        "not_comparable": len(not_comparable),
        "extras_searched": f"every target series with {scan}"
        if scan
        else "under the migrated selectors only: no added label (source label disabled), no whole-target scan",
        "seconds": round(time.monotonic() - t0, 3),
    }
    return VerificationReport(
        totals, window_frame, problems, migration_id=migration_id, not_comparable=sorted(not_comparable)
    )


def _evidence_text(evidence: str, samples_fraction: float) -> str:
    """What the report's evidence figures mean, in one line."""
    if evidence == "samples":
        return "samples: every series × window compared sample by sample"
    return (
        "figures: count, sum and last value per series × window from the target's engine, equal to the "
        f"source's (evidence, not proof); samples where they differ and for {samples_fraction:.2%} of series × windows"
    )


def _problems_frame(
    rows: list[dict[str, Any]], seen_on_target: set[Labels]
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """One row per mismatching series × window, one per missing or extra series (all its windows);
    and, per kind, the number of problem series per window."""
    if not rows:
        empty = pd.Series(dtype="int64")
        return _typed(pd.DataFrame(columns=PROBLEM_COLUMNS)), dict.fromkeys(KINDS, empty)
    df = pd.DataFrame(rows)
    df = df.drop_duplicates(subset=["kind", "series", "window"])  # an extra seen by two batches of one metric
    # A series absent from some windows but present in others is damaged, not missing.
    partly = (df["kind"] == "missing") & df["_key"].map(lambda k: k in seen_on_target)
    df.loc[partly, "kind"] = "mismatch"
    counts = {kind: df[df["kind"] == kind].groupby("window").size() for kind in KINDS}
    df = df.sort_values(["kind", "series", "window"], kind="stable")
    per_window = df[df["kind"] == "mismatch"]
    whole = df[df["kind"] != "mismatch"]
    if not whole.empty:
        whole = (
            whole.groupby(["kind", "series"], sort=True)
            .agg(
                window=("window", "first"),
                window_start=("window_start", "first"),
                windows=("windows", "sum"),
                source_count=("source_count", "sum"),
                target_count=("target_count", "sum"),
                source_first_ts=("source_first_ts", "first"),
                target_first_ts=("target_first_ts", "first"),
                source_last_ts=("source_last_ts", "last"),
                target_last_ts=("target_last_ts", "last"),
                first_diff_ts=("first_diff_ts", "first"),
                first_diff=("first_diff", "first"),
                source_value=("source_value", "first"),
                target_value=("target_value", "first"),
            )
            .reset_index()
        )
        whole["first_diff"] = np.where(whole["kind"] == "missing", "series missing on target", "series only on target")
    order = {kind: i for i, kind in enumerate(KINDS)}
    df = pd.concat([whole, per_window], ignore_index=True)[PROBLEM_COLUMNS]
    df = df.sort_values(["kind", "series", "window"], key=lambda s: s.map(order) if s.name == "kind" else s)
    return _typed(df.reset_index(drop=True)), counts


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    ints = ["window", "windows", "source_count", "target_count"]
    nullable = ["source_first_ts", "target_first_ts", "source_last_ts", "target_last_ts", "first_diff_ts"]
    df = df.copy()
    for c in ints:
        df[c] = df[c].astype("int64")
    for c in nullable:
        df[c] = df[c].astype("Int64")
    for c in ("source_value", "target_value"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("kind", "series", "window_start", "first_diff"):
        df[c] = df[c].astype("string")
    return df


def _windows_frame(
    windows: list[Window], per_window: dict[int, _TaskResult], counts: dict[str, pd.Series]
) -> pd.DataFrame:
    rows = []
    for w in windows:
        r = per_window[w.index]
        rows.append(
            {
                "window": w.index,
                "start": iso_ms(w.start_ms),
                "end": iso_ms(w.end_ms),
                "series": r.series,
                "source_samples": r.source_samples,
                "target_samples": r.target_samples,
                "stale_markers_skipped": r.stale_skipped,
                "by_figures": r.by_figures,
                "by_samples": r.by_samples,
                "figures_differed": r.figures_differed,
                "mismatches": int(counts["mismatch"].get(w.index, 0)),
                "missing": int(counts["missing"].get(w.index, 0)),
                "extra": int(counts["extra"].get(w.index, 0)),
            }
        )
    return pd.DataFrame(rows, columns=WINDOW_COLUMNS)
