"""Migrating into VictoriaMetrics 1.79.5 instead of Thanos: exact within what VictoriaMetrics keeps.

VictoriaMetrics does not store IEEE-754 doubles.  Every value becomes a decimal, an int64 mantissa times a power
of ten, and a storage block (one series, up to 8192 samples) shares ONE exponent.  Ordinary NaNs are dropped at
ingestion; the Prometheus stale marker is kept as a special value.  docs/victoriametrics.md explains this for
users; this file pins it:

- ``vm_from_float`` / ``vm_to_float`` / ``vm_rescale`` / ``vm_block_exponent`` transcribe ``lib/decimal/decimal.go``
  of VictoriaMetrics v1.79.5 (FromFloat, ToFloat, the rescaling of AppendFloatToDecimal/CalibrateScale, the block
  exponent with Go's int16 arithmetic);
- ``test_vm_engine_answers_for_special_values`` writes crafted and random values with m3migrate's codec and
  remote-write client and asserts the server's exact export tokens and block exponents (the tables of the docs),
  which also checks the model bit for bit;
- three small tests pin what users must configure or expect: merges changing stored values, retention, dedup;
- ``test_migrate_into_victoriametrics_keeps_exactly_what_vm_keeps`` runs the migrate flow into a fresh
  VictoriaMetrics and compares every series, timestamp and value with the source through the model, using the
  exponent VictoriaMetrics reports for each sample's storage block (``/api/v1/export/native``).
"""

from __future__ import annotations

import json
import math
import random
import struct
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any

import pytest

from blocks import M3Source, ThanosTarget
from flows.migrate import migrate
from m3migrate.clients.remote_write import RemoteWriteClient
from m3migrate.model import PROBE_METRIC
from m3migrate.prompb import TimeSeries
from m3migrate.settings.endpoints import TargetSettings
from m3migrate.settings.spec import MigrationSpec
from m3migrate.wire.codec import WriteBody, compress, encode_labels, frame_series, single_request
from sandbox.compare import read_all, with_label
from sandbox.history import COST_INSTANCE, PROBE_INSTANCE, PROBES, SourceSandbox, tail_series
from sandbox.servers import Server, vm_force_flush

pytestmark = [pytest.mark.servers, pytest.mark.prefect]

Labels = tuple[tuple[str, str], ...]

# -------------------------------------------------------------------------------------------------------------
# VictoriaMetrics v1.79.5 lib/decimal, transcribed (Python floats are IEEE-754 doubles, like Go's float64)
# -------------------------------------------------------------------------------------------------------------
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker (value.StaleNaN)
STALE_NAN = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]
V_INF_POS = (1 << 63) - 1  # the mantissas VictoriaMetrics reserves for +Inf, -Inf and the stale marker
V_INF_NEG = -(1 << 63)
V_STALE_NAN = (1 << 63) - 2
V_MAX = (1 << 63) - 3
V_MIN = -(1 << 63) + 1
INT64_MAX = (1 << 63) - 1
# Go's math.Pow10 multiplies two table entries (it is not correctly rounded above 1e31): copy its tables.
_POW10 = [float(f"1e{i}") for i in range(32)]
_POW10_POS32 = [float(f"1e{32 * i}") for i in range(10)]
_POW10_NEG32 = [float(f"1e-{32 * i}") for i in range(11)]
with localcontext() as _ctx:
    _ctx.prec = 50
    _LN2_OVER_LN10 = float(Decimal(2).log10())  # Go: math.Ln2 / math.Ln10, an exact constant rounded once


def bits(x: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", x))[0])


def _int16(x: int) -> int:
    """Go int16 arithmetic wraps around (it matters for blocks holding only special values)."""
    return (x + 0x8000) % 0x10000 - 0x8000


def go_pow10(n: int) -> float:
    if 0 <= n <= 308:
        return _POW10_POS32[n // 32] * _POW10[n % 32]
    if -323 <= n <= 0:
        return _POW10_NEG32[-n // 32] / _POW10[-n % 32]
    return math.inf if n > 0 else 0.0


def is_special(v: int) -> bool:
    return v > V_MAX or v < V_MIN


def _positive_to_decimal_slow(f: float) -> tuple[int, int]:
    scale = 0
    prec = 1e12  # conversionPrecision
    if f > 1e6 or f < 1e-6:
        if f > 1e6:
            prec = 1e15
        _, exp = math.frexp(f)
        exp = max(-1022, min(1023, exp))
        scale = int(float(exp) * _LN2_OVER_LN10)  # int16(...) truncates toward zero
        f *= go_pow10(-scale)
    # "Multiply f by 100 until the fractional part becomes too small comparing to integer part."
    while f < prec:
        frac, x = math.modf(f)
        if frac * prec < x:
            f = x
            break
        if (1 - frac) * prec < x:
            f = x + 1
            break
        f *= 100
        scale -= 2
    u = int(f)
    if u % 10 != 0:
        return u, scale
    return u // 10, scale + 1


def _positive_to_decimal(f: float) -> tuple[int, int]:
    u = int(f) if f < 2.0**64 else 0  # out of uint64's range Go gives some u != f: the slow path runs
    if float(u) != f:
        return _positive_to_decimal_slow(f)
    if u < 1 << 55 and u % 10 != 0:  # integers below 2**55 are exact
        return u, 0
    scale = 0
    while u >= 1 << 55:  # "remove trailing garbage bits": drops decimal digits (truncates)
        u //= 10
        scale += 1
    if u % 10 != 0:
        return u, scale
    u //= 10
    scale += 1
    while u != 0 and u % 10 == 0:
        u //= 10
        scale += 1
    return u, scale


def vm_from_float(f: float) -> tuple[int, int]:
    """decimal.FromFloat: f ~ v * 10**e.  Not defined for NaNs other than the stale marker (VM drops those)."""
    if f == 0:
        return 0, 0
    if bits(f) == STALE_NAN_BITS:
        return V_STALE_NAN, 0
    if math.isinf(f):
        return (V_INF_POS if f > 0 else V_INF_NEG), 0
    if f > 0:
        v, e = _positive_to_decimal(f)
        return min(v, V_MAX), e
    v, e = _positive_to_decimal(-f)
    return max(-v, V_MIN), e


def vm_to_float(v: int, e: int) -> float:
    """decimal.ToFloat (and AppendDecimalToFloat, which the export uses): float64(v) / 10**-e or * 10**e."""
    if is_special(v):
        return math.inf if v == V_INF_POS else -math.inf if v == V_INF_NEG else STALE_NAN
    f = float(v)
    return f / go_pow10(-e) if e < 0 else f * go_pow10(e)


def max_up_exponent(v: int) -> int:
    """How many decimal digits v can be shifted up without overflowing int64."""
    if v == 0 or is_special(v):
        return 1024
    v = abs(v)
    for k in range(18, 0, -1):
        if v <= INT64_MAX // 10**k:
            return k
    return 0


def vm_rescale(v: int, e: int, scale: int) -> int:
    """Mantissa of v*10**e at the block exponent ``scale``: exact when shifted up, truncated (Go's integer
    division, toward zero) when shifted down."""
    if is_special(v) or scale <= e:
        return v if is_special(v) else v * 10 ** (e - scale)
    q = abs(v) // 10 ** (scale - e)
    return q if v >= 0 else -q


def vm_block_exponent(values: Iterable[float]) -> int:
    """decimal.AppendFloatToDecimal's choice of the one exponent of a block (Go int16 arithmetic)."""
    ve = [vm_from_float(x) for x in values]
    min_exp = 0x7FFF
    for v, e in ve:
        if e < min_exp and not is_special(v):
            min_exp = e
    down = 0
    for v, e in ve:
        d = _int16(_int16(e - min_exp) - max_up_exponent(v))
        down = max(down, d)
    return _int16(min_exp + down)


def vm_value(x: float, scale: int) -> float:
    """What VictoriaMetrics returns for source value x stored in a block with exponent ``scale``."""
    return vm_to_float(vm_rescale(*vm_from_float(x), scale), scale)


def fits_one_exponent(values: Iterable[float]) -> bool:
    """True when all values share one exponent without losing a digit, whatever blocks VM puts them in."""
    ve = [vm_from_float(x) for x in values]
    ve = [(v, e) for v, e in ve if not is_special(v) and v != 0]
    if not ve:
        return True
    low = min(e for _, e in ve)
    return all(e - low <= max_up_exponent(v) for v, e in ve)


def export_form(y: float) -> float:
    """The JSON export prints integral values through int(): -0.0 comes back as 0."""
    return 0.0 if y == 0 else y


# -------------------------------------------------------------------------------------------------------------
# reading VictoriaMetrics back: /api/v1/export (JSON lines, raw tokens) and /api/v1/export/native (block scales)
# -------------------------------------------------------------------------------------------------------------
def _export_params(match: str, start_ms: int, end_ms: int) -> dict[str, str]:
    return {"match[]": match, "start": f"{start_ms / 1000:.3f}", "end": f"{end_ms / 1000:.3f}"}


def parse_export_line(line: str) -> tuple[Labels, list[int], list[str]]:
    """One JSON line of /api/v1/export, with the value tokens as VM wrote them.

    1.79.5 writes +Inf/-Inf/NaN bare (not JSON), so the values are split by hand; the metric object is JSON.
    """
    head = '{"metric":'
    assert line.startswith(head), line[:80]
    metric, pos = json.JSONDecoder().raw_decode(line, len(head))
    rest = line[pos:]
    assert rest.startswith(',"values":['), rest[:80]
    end = rest.index("]")
    raw = rest[len(',"values":[') : end]
    tokens = raw.split(",") if raw else []
    timestamps = json.loads("{" + rest[end + 2 :])["timestamps"]
    assert len(timestamps) == len(tokens)
    return tuple(sorted(metric.items())), timestamps, tokens


def token_value(token: str) -> float:
    """null (and NaN, see the docs) are the only NaNs VM can hold: the stale marker."""
    return STALE_NAN if token in ("null", "NaN") else float(token)


def export_lines(vm: Server, match: str, start_ms: int, end_ms: int, **extra: str) -> list[tuple]:
    with vm.http_client(timeout=300) as client:
        resp = client.get("/api/v1/export", params={**_export_params(match, start_ms, end_ms), **extra})
    resp.raise_for_status()
    return [parse_export_line(line) for line in resp.text.splitlines() if line]


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7


def _varint(b: bytes, i: int) -> tuple[int, int]:  # zig-zag, lib/encoding.MarshalVarInt64
    u, i = _uvarint(b, i)
    return (u >> 1) ^ -(u & 1), i


def _metric_name(raw: bytes) -> Labels:
    """storage.MetricName.Marshal: values end with 0x01; 0x00 escapes 0x00/0x01/0x02 as 0x00 '0'/'1'/'2'."""
    fields: list[str] = []
    cur = bytearray()
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0:
            cur.append(raw[i + 1] - ord("0"))
            i += 2
            continue
        if c == 1:
            fields.append(cur.decode())
            cur = bytearray()
        else:
            cur.append(c)
        i += 1
    labels = dict(zip(fields[1::2], fields[2::2], strict=True))
    if fields[0]:
        labels["__name__"] = fields[0]
    return tuple(sorted(labels.items()))


def native_blocks(vm: Server, match: str, start_ms: int, end_ms: int) -> list[tuple[Labels, int, int, int]]:
    """(labels, first timestamp, rows, decimal exponent) of every storage block (Block.MarshalPortable)."""
    with vm.http_client(timeout=300) as client:
        resp = client.get("/api/v1/export/native", params=_export_params(match, start_ms, end_ms))
    resp.raise_for_status()
    body, i, out = resp.content, 16, []  # 16: the time range header
    while i < len(body):
        n = int.from_bytes(body[i : i + 4], "big")
        labels = _metric_name(body[i + 4 : i + 4 + n])
        i += 4 + n
        n = int.from_bytes(body[i : i + 4], "big")
        block = body[i + 4 : i + 4 + n]
        i += 4 + n
        min_ts, j = _varint(block, 0)
        _first_value, j = _varint(block, j)
        rows, j = _uvarint(block, j)
        scale, j = _varint(block, j)
        out.append((labels, min_ts, rows, scale))
    return out


def tile_scales(
    blocks: list[tuple[Labels, int, int, int]], series: dict[Labels, list[int]]
) -> tuple[dict[Labels, list[int]], list[Labels]]:
    """Per series, the exponent of the storage block of each exported sample, and the series where that fails.

    Sorted by first timestamp, the (first timestamp, rows) of a series' storage blocks must tile its exported
    timestamps exactly.
    """
    per_series: dict[Labels, list[tuple[int, int, int]]] = defaultdict(list)
    for labels, min_ts, rows, scale in blocks:
        per_series[labels].append((min_ts, rows, scale))
    out: dict[Labels, list[int]] = {}
    untiled = sorted(set(per_series) - set(series))
    for labels, timestamps in series.items():
        scales: list[int] = []
        for min_ts, rows, scale in sorted(per_series.get(labels, [])):
            if len(scales) >= len(timestamps) or timestamps[len(scales)] != min_ts:
                break
            scales += [scale] * rows
        if len(scales) != len(timestamps):
            untiled.append(labels)
        out[labels] = scales
    return out, untiled


def export_snapshot(
    vm: Server, match: str, start_ms: int, end_ms: int
) -> tuple[dict[Labels, tuple[list[int], list[str]]], dict[Labels, list[int]]]:
    """The JSON export of every series plus the exponent of each sample's storage block, from one storage state.

    Background merges recompute blocks (and can change values, see the docs), so the native block listing is read
    before and after the export and must be equal.  (Not ``/api/v1/export?reduce_mem_usage=1``, which prints one
    line per block: in 1.79.5 it intermittently gives a line the timestamps/values of another block.)
    """
    problem = "no attempt"
    for _ in range(40):
        before = sorted(native_blocks(vm, match, start_ms, end_ms))
        lines = export_lines(vm, match, start_ms, end_ms)
        if sorted(native_blocks(vm, match, start_ms, end_ms)) == before:
            exported = {labels: (timestamps, tokens) for labels, timestamps, tokens in lines}
            assert len(exported) == len(lines), "the export must give one line per series"
            scales, untiled = tile_scales(before, {labels: ts for labels, (ts, _) in exported.items()})
            if not untiled:
                return exported, scales
            problem = f"storage blocks do not tile the export of {len(untiled)} series, e.g. {untiled[:2]}"
        else:
            problem = "storage blocks kept changing"
        time.sleep(1)
    raise AssertionError(problem)


# -------------------------------------------------------------------------------------------------------------
# engine level: crafted values, exact answers
# -------------------------------------------------------------------------------------------------------------
MINUTE_MS = 60_000
ORDINARY_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000000))[0]
GO_NAN = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]  # Go's math.NaN(), what promtool writes
UNICODE = 'zürich 東京 ελλάδα 📈 "q" \\ ä'

# case -> (input values at t0, t0+1s, ...; exact export tokens; exponent of the block)
SINGLE: dict[str, tuple[float, str, int]] = {
    "sum_0.1_0.2": (0.1 + 0.2, "0.3", -1),
    "one_third": (1 / 3, "0.333333333333", -12),
    "minus_one_third": (-1 / 3, "-0.333333333333", -12),
    "pi": (math.pi, "3.141592653589", -12),
    "counter_3_decimals": (123456789.123, "123456789.123", -3),
    "above_1e6_15_digits": (12345678901.234567, "12345678901.23457", -5),
    "tiny_1e-7": (1e-7, "0.0000001", -7),
    "two_pow_53": (2.0**53, "9007199254740992", 0),
    "two_pow_53_plus_2": (2.0**53 + 2, "9007199254740994", 0),
    "two_pow_55_minus_4": (2.0**55 - 4, "36028797018963964", 0),
    "two_pow_55": (2.0**55, "36028797018963960", 1),
    "two_pow_60": (2.0**60, "1152921504606846848", 2),
    "two_pow_64": (2.0**64, "18446744073709548000", 3),
    "1e20": (1e20, "100000000000000000000", 20),
    "1e300": (1e300, "1" + "0" * 300, 300),
    "max_double": (1.7976931348623157e308, "1797693134862315" + "0" * 293, 293),
    "1e-300": (1e-300, "0." + "0" * 299 + "1", -300),
    "1.234567e-296": (1.234567e-296, "0." + "0" * 295 + "12345669999999998", -302),
    "min_normal": (2.2250738585072014e-308, "0", -321),
    "min_subnormal": (5e-324, "0", -335),
    "zero": (0.0, "0", 0),
    "minus_zero": (-0.0, "0", 0),
    "plus_inf": (math.inf, "+Inf", -1024),
    "minus_inf": (-math.inf, "-Inf", -1024),
    "stale_marker": (STALE_NAN, "NaN", -1024),  # first value of a line: printed NaN, not null (1.79.5)
}
# case -> (values, exact tokens of the exported values, block exponent); NaN samples are dropped
MULTI: dict[str, tuple[list[float], list[str], int]] = {
    "specials": (
        [1.0, math.inf, -math.inf, ORDINARY_NAN, STALE_NAN, GO_NAN, 2.0],
        ["1", "+Inf", "-Inf", "null", "2"],
        0,
    ),
    "stale_first": ([STALE_NAN, 1.0, STALE_NAN], ["NaN", "1", "null"], 0),
    "block_2pow53_1e20": ([2.0**53, 1e20], ["9007199254740900", "100000000000000000000"], 2),
    "block_third_1e9": ([1 / 3, 1e9 + 0.5], ["0.333333333", "1000000000.5"], -9),
    "block_1e300_zeroes": ([1e300, 1.0, 0.5], ["1" + "0" * 300, "0", "0"], 282),
}
NAN_ONLY = [ORDINARY_NAN, GO_NAN]


def _series(labels: Sequence[tuple[str, str]], samples: Sequence[tuple[int, float]]) -> bytes:
    ts = TimeSeries()
    for t, v in samples:
        ts.samples.add(timestamp=t, value=v)
    return frame_series(encode_labels(sorted(labels)), ts.SerializeToString())


def _write_all(vm: Server, framed: list[bytes], samples: int) -> None:
    """One remote-write request (m3migrate's client, so a refusal raises)."""
    raw = b"".join(framed)
    body = (
        single_request(raw, samples)
        if len(framed) == 1
        else WriteBody(compress(raw), len(framed), samples, len(raw), framed)
    )
    with RemoteWriteClient(TargetSettings(write_url=f"{vm.url}/api/v1/write")) as writer:
        writer.write(body)


def _random_doubles(rng: random.Random, n: int) -> list[float]:
    out: list[float] = []
    while len(out) < n:
        kind = rng.randrange(6)
        if kind == 0:  # any finite double
            x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            if math.isnan(x) or math.isinf(x):
                continue
        elif kind == 1:
            x = rng.uniform(-1e3, 1e3)
        elif kind == 2:  # counters/gauges rounded to a few decimals
            x = round(rng.uniform(0, 1e7), rng.randrange(6))
        elif kind == 3:  # integers up to 2**62
            x = float(rng.randrange(-(2**62), 2**62))
        elif kind == 4:
            x = rng.random() * 10.0 ** rng.randrange(-30, 30)
        else:  # decimal literals with up to 17 digits
            x = float(f"{rng.randrange(1, 10 ** rng.randrange(1, 18))}e{rng.randrange(-20, 20)}")
        out.append(x)
    return out


def test_vm_engine_answers_for_special_values(victoriametrics_target: Callable[..., Server]) -> None:
    """The table of docs/victoriametrics.md: what VictoriaMetrics 1.79.5 returns for each kind of value."""
    vm = victoriametrics_target()
    t0 = (int(time.time() * 1000) // MINUTE_MS) * MINUTE_MS - 60 * MINUTE_MS
    rng = random.Random(20251)
    fuzz_single = _random_doubles(rng, 2000)
    fuzz_blocks = [[x * 10.0 ** rng.randrange(0, 1 + k % 25) for x in _random_doubles(rng, 40)] for k in range(150)]
    # VictoriaMetrics cuts a request into chunks of 8000 rows that may land in different parts (blocks, exponents):
    # keep every request below that so each series here is one block.
    crafted = [_series([("__name__", "m3m_nan_only")], [(t0 + k * 1000, v) for k, v in enumerate(NAN_ONLY)])]
    for case, (value, _, _) in SINGLE.items():
        crafted.append(_series([("__name__", "m3m_single"), ("case", case), ("u", UNICODE)], [(t0, value)]))
    for case, (values, _, _) in MULTI.items():
        samples = [(t0 + k * 1000, v) for k, v in enumerate(values)]
        crafted.append(_series([("__name__", "m3m_multi"), ("case", case)], samples))
    for i, x in enumerate(fuzz_single):
        crafted.append(_series([("__name__", "m3m_fuzz_single"), ("i", str(i))], [(t0, x)]))
    _write_all(vm, crafted, len(NAN_ONLY) + len(SINGLE) + sum(len(v) for v, _, _ in MULTI.values()) + len(fuzz_single))
    blocks = []
    for i, values in enumerate(fuzz_blocks):
        samples = [(t0 + k * 1000, v) for k, v in enumerate(values)]
        blocks.append(_series([("__name__", "m3m_fuzz_block"), ("i", str(i))], samples))
    for k in range(0, len(blocks), 50):
        _write_all(vm, blocks[k : k + 50], sum(len(v) for v in fuzz_blocks[k : k + 50]))
    # duplicates: the same timestamp twice in one request, and once more in a later request
    dup = [("__name__", "m3m_dup")]
    _write_all(vm, [_series(dup, [(t0, 1.0), (t0, 2.0), (t0 + 1000, 3.0)])], 3)
    _write_all(vm, [_series(dup, [(t0 + 1000, 3.0)])], 1)
    vm_force_flush(vm)

    start, end = t0 - MINUTE_MS, t0 + 10 * MINUTE_MS
    lines = export_lines(vm, '{__name__=~"m3m_.*"}', start, end)
    exported = {labels: (timestamps, tokens) for labels, timestamps, tokens in lines}
    assert len(exported) == len(lines), "one line per series"
    scales: dict[Labels, list[int]] = defaultdict(list)
    for labels, _, _, scale in native_blocks(vm, '{__name__=~"m3m_.*"}', start, end):
        scales[labels].append(scale)

    # crafted single values: exact tokens, exponents, and the model agrees
    for case, (value, token, scale) in SINGLE.items():
        labels = (("__name__", "m3m_single"), ("case", case), ("u", UNICODE))  # unicode label value kept as is
        assert exported.get(labels) == ([t0], [token]), case
        assert scales[labels] == [scale], case
        assert bits(token_value(token)) == bits(export_form(vm_value(value, scale))), case
        assert vm_block_exponent([value]) == scale, case
    # blocks: one exponent for the block; NaNs dropped (their timestamps too); the stale marker kept
    for case, (values, tokens, scale) in MULTI.items():
        labels = (("__name__", "m3m_multi"), ("case", case))
        kept = [(t0 + k * 1000, v) for k, v in enumerate(values) if not math.isnan(v) or bits(v) == STALE_NAN_BITS]
        assert exported[labels] == ([t for t, _ in kept], tokens), case
        assert scales[labels] == [scale], case
        assert vm_block_exponent([v for _, v in kept]) == scale, case
        for (_, v), tok in zip(kept, tokens, strict=True):
            assert bits(token_value(tok)) == bits(export_form(vm_value(v, scale))), (case, v, tok)
    # a series whose only samples are NaN does not exist at all
    assert (("__name__", "m3m_nan_only"),) not in exported
    # duplicates are all kept (no -dedup.minScrapeInterval): a resent sample appears twice
    dup_ts, dup_tokens = exported[(("__name__", "m3m_dup"),)]
    assert sorted(zip(dup_ts, dup_tokens, strict=True)) == [(t0, "1"), (t0, "2"), (t0 + 1000, "3"), (t0 + 1000, "3")]

    # the model is bit-exact for random doubles, alone and in blocks of mixed magnitudes
    for i, x in enumerate(fuzz_single):
        labels = (("__name__", "m3m_fuzz_single"), ("i", str(i)))
        (scale,) = scales[labels]
        assert scale == vm_block_exponent([x])
        assert exported[labels][0] == [t0]
        assert bits(token_value(exported[labels][1][0])) == bits(export_form(vm_value(x, scale))), x
    for i, values in enumerate(fuzz_blocks):
        labels = (("__name__", "m3m_fuzz_block"), ("i", str(i)))
        (scale,) = scales[labels]
        assert scale == vm_block_exponent(values), i
        got = [bits(token_value(t)) for t in exported[labels][1]]
        assert got == [bits(export_form(vm_value(x, scale))) for x in values], i


def test_vm_background_merge_can_change_stored_values(victoriametrics_target: Callable[..., Server]) -> None:
    """A value read back correctly can change later: a merge puts it into one block with a much larger value."""
    vm = victoriametrics_target()
    t0 = (int(time.time() * 1000) // MINUTE_MS) * MINUTE_MS - 60 * MINUTE_MS
    labels = [("__name__", "m3m_merge")]
    _write_all(vm, [_series(labels, [(t0, 0.5), (t0 + 1000, 1 / 3)])], 2)
    vm_force_flush(vm)
    window = (t0 - MINUTE_MS, t0 + MINUTE_MS)
    assert [tokens for _, _, tokens in export_lines(vm, "m3m_merge", *window)] == [["0.5", "0.333333333333"]]
    _write_all(vm, [_series(labels, [(t0 + 2000, 1e300)])], 1)
    vm_force_flush(vm)
    assert [tokens for _, _, tokens in export_lines(vm, "m3m_merge", *window)] == [
        ["0.5", "0.333333333333", "1" + "0" * 300]
    ]
    assert sorted(scale for *_, scale in native_blocks(vm, "m3m_merge", *window)) == [-12, 300]  # two parts
    with vm.http_client() as client:
        month = datetime.fromtimestamp(t0 / 1000, UTC).strftime("%Y_%m")
        client.get("/internal/force_merge", params={"partition_prefix": month}).raise_for_status()
    deadline = time.monotonic() + 60
    while len(native_blocks(vm, "m3m_merge", *window)) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [scale for *_, scale in native_blocks(vm, "m3m_merge", *window)] == [282]  # 1e300 = 10**18 * 10**282
    assert [tokens for _, _, tokens in export_lines(vm, "m3m_merge", *window)] == [["0", "0", "1" + "0" * 300]]


def test_vm_drops_samples_outside_retention_and_still_answers_204(
    victoriametrics_target: Callable[..., Server],
) -> None:
    """-retentionPeriod must cover the oldest migrated sample: older ones are dropped while the write succeeds."""
    vm = victoriametrics_target(extra_flags=["-retentionPeriod=1d"])  # the last value of a repeated flag wins
    now = (int(time.time() * 1000) // MINUTE_MS) * MINUTE_MS
    old, recent = now - 3 * 86_400_000, now - 60 * MINUTE_MS
    _write_all(vm, [_series([("__name__", "m3m_retention")], [(old, 1.0), (recent, 2.0)])], 2)  # no error
    vm_force_flush(vm)
    assert [(ts, tokens) for _, ts, tokens in export_lines(vm, "m3m_retention", old - 1, now)] == [([recent], ["2"])]


def test_vm_dedup_collapses_identical_resent_samples(victoriametrics_target: Callable[..., Server]) -> None:
    """With -dedup.minScrapeInterval=1ms a resent window (identical samples) is stored once."""
    vm = victoriametrics_target(extra_flags=["-dedup.minScrapeInterval=1ms"])
    t0 = (int(time.time() * 1000) // MINUTE_MS) * MINUTE_MS - 60 * MINUTE_MS
    window = [(t0 + k * 1000, 0.1 * k) for k in range(5)] + [(t0 + 4001, 7.0)]
    labels = [("__name__", "m3m_resent"), ("_source", "m3db")]
    _write_all(vm, [_series(labels, window)], len(window))
    _write_all(vm, [_series(labels, window[2:])], len(window) - 2)
    vm_force_flush(vm)
    ((got_labels, timestamps, tokens),) = export_lines(vm, "m3m_resent", t0 - MINUTE_MS, t0 + MINUTE_MS)
    assert got_labels == tuple(labels)
    assert timestamps == [t for t, _ in window]  # one per timestamp; 1 ms apart is still two samples
    assert [bits(token_value(t)) for t in tokens] == [bits(vm_value(v, vm_block_exponent([v]))) for _, v in window]


# -------------------------------------------------------------------------------------------------------------
# the migrate flow into VictoriaMetrics
# -------------------------------------------------------------------------------------------------------------
def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_ordinary_nan(b: int) -> bool:
    """A NaN that is not the stale marker: VictoriaMetrics drops it at ingestion."""
    return (b & 0x7FF0000000000000) == 0x7FF0000000000000 and (b & 0xFFFFFFFFFFFFF) != 0 and b != STALE_NAN_BITS


def _float(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b))[0]


def _truncations(x: float, scale: int, highest: int) -> set[int]:
    """Bits of x truncated at any decimal position above its own, read at ``scale``: what a value becomes after a
    merge with a block of much larger values shifted its digits out, and a later merge shifted it back up."""
    v, e = vm_from_float(x)
    return {
        bits(export_form(vm_to_float(vm_rescale(vm_rescale(v, e, p), p, scale), scale)))
        for p in range(e + 1, highest + 1)
    }


def _check_series(
    labels: Labels, source: list[tuple[int, int]], line: tuple[list[int], list[str]], scales: list[int], wide: bool
) -> list[str]:
    """Compare one series exactly; returns the problems (empty when VictoriaMetrics holds what it should)."""
    name = dict(labels)
    kept = [(t, b) for t, b in source if not _is_ordinary_nan(b)]
    timestamps, tokens = line
    if timestamps != [t for t, _ in kept]:
        missing = sorted({t for t, _ in kept} - set(timestamps))[:3]
        extra = sorted(set(timestamps) - {t for t, _ in kept})[:3]
        dups = [t for t, n in Counter(timestamps).items() if n > 1][:3]
        return [
            f"{name}: {len(timestamps)} timestamps, expected {len(kept)}; missing {missing} extra {extra} dup {dups}"
        ]
    problems: list[str] = []
    highest = max((vm_from_float(_float(b))[1] for _, b in kept if not math.isnan(_float(b))), default=0) if wide else 0
    for pos, ((t, b), tok, scale) in enumerate(zip(kept, tokens, scales, strict=True)):
        x = _float(b)
        if b == STALE_NAN_BITS:  # kept; printed null, or NaN as the first value of a line (1.79.5)
            want_tok = "NaN" if pos == 0 else "null"
            ok, expected = tok == want_tok, want_tok
        else:
            want = bits(export_form(vm_value(x, scale)))
            got = bits(token_value(tok))
            ok = got == want or (wide and got in _truncations(x, scale, highest))
            expected = repr(_float(want))
        if not ok:
            problems.append(f"{name} @{t}: source {x!r}, block exponent {scale}: expected {expected}, got {tok}")
            if len(problems) >= 3:
                break
    return problems


def test_migrate_into_victoriametrics_keeps_exactly_what_vm_keeps(
    prefect_api: str, source_history: SourceSandbox, victoriametrics_target: Callable[..., Server], tmp_path: Any
) -> None:
    stats = source_history.stats
    vm = victoriametrics_target()
    src = source_history.server.url
    summary = migrate(
        M3Source(read_url=f"{src}/api/v1/read", query_url=src),
        ThanosTarget(write_url=f"{vm.url}/api/v1/write"),
        MigrationSpec(start=_iso(stats.start_ms), end=_iso(stats.end_ms)),
        state_dir=str(tmp_path),
    )
    assert (summary["series"], summary["samples"]) == (stats.series, stats.samples)
    vm_force_flush(vm)

    expected = with_label(read_all(src, stats.start_ms, stats.end_ms), "_source", "m3db")
    assert sum(len(s) for s in expected.values()) == stats.samples
    # Everything VictoriaMetrics holds, except the one write-probe series the migration's validation step leaves
    # in the target (m3migrate.checks.validate; sandbox.compare.read_all leaves it out the same way).
    everything = f'{{__name__=~".+",__name__!="{PROBE_METRIC}"}}'
    exported, scales = export_snapshot(vm, everything, stats.start_ms, stats.end_ms)

    # 1. the same series, each with _source="m3db"
    assert sorted(set(expected) - set(exported))[:5] == []
    assert sorted(set(exported) - set(expected))[:5] == []

    # 2. exactly the ordinary NaNs are dropped: the failed probes of one probe series, and the live tail's NaN
    dropped = {labels: [t for t, b in s if _is_ordinary_nan(b)] for labels, s in expected.items()}
    dropped = {labels: ts for labels, ts in dropped.items() if ts}
    probe_nan = {"__name__": "edge_probe_rtt_seconds", **PROBE_INSTANCE, **PROBES[1][0], "_source": "m3db"}
    tail_nan = {**tail_series(source_history.spec)["nan"], "_source": "m3db"}
    assert sorted(map(dict, dropped), key=str) == sorted([probe_nan, tail_nan], key=str)
    assert _tail_nan_timestamp(source_history) in dropped[tuple(sorted(tail_nan.items()))]
    stale = sum(b == STALE_NAN_BITS for s in expected.values() for _, b in s)
    assert stale == 2, "the live tail holds two stale markers (both must be kept)"

    # 3. which series mix magnitudes too far apart for one int64 exponent (there VM may truncate more)
    wide = {
        labels
        for labels, s in expected.items()
        if not fits_one_exponent(_float(b) for _, b in s if not math.isnan(_float(b)))
    }
    random_cost = {"__name__": "app_cost_ratio", **COST_INSTANCE, "kind": "random", "_source": "m3db"}
    assert [dict(labels) for labels in wide] == [random_cost]

    # 4. every timestamp, and every value as VM's decimal model says for the exponent of its storage block
    problems: list[str] = []
    for labels in sorted(expected):
        problems += _check_series(labels, expected[labels], exported[labels], scales[labels], labels in wide)
        if len(problems) >= 10:
            break
    assert problems == []


def _tail_nan_timestamp(source: SourceSandbox) -> int:
    """The live tail writes an ordinary NaN in the middle of its ``nan`` series (history._tail_values)."""
    assert source.tail_stats is not None
    n = (source.tail_stats.end_ms - source.tail_stats.start_ms) // source.spec.interval_ms + 1
    return source.tail_stats.start_ms + (n // 2) * source.spec.interval_ms
