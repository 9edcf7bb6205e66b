"""Verification's source side and figures without servers: a read part becomes per-series window samples
(stale markers counted and left out, the window cut, out-of-order samples sorted and deduplicated, as
SeriesData.build does), and the figures compare as the samples comparison does (NaN equals NaN, -0.0
equals +0.0). Prometheus' own figures are checked against a real server in tests/integration/test_verify.py."""

from __future__ import annotations

import math
import struct

import numpy as np
from read_responses import read_response

from m3migrate.checks.aggregates import Figures, figures_expression
from m3migrate.checks.verify import SeriesData, _window_series
from m3migrate.plan.batches import Window
from m3migrate.wire.codec import STALE_NAN_BITS

WINDOW = Window(0, 1_000, 1_999)
STALE = struct.unpack("<d", struct.pack("<Q", STALE_NAN_BITS))[0]


def test_a_part_becomes_window_samples_per_series():
    raw = read_response(
        {
            "plain": [(999, 9.0), (1_000, 1.0), (1_500, STALE), (1_999, -0.0), (2_000, 2.0)],
            "unordered": [(1_700, 7.0), (1_100, 1.0), (1_700, 7.0), (1_300, math.nan)],
            "empty": [(1_200, STALE)],
        }
    )
    got = {dict(labels)["__name__"]: (data, stale) for labels, data, stale in _window_series(raw, WINDOW, "")}
    plain, stale = got["plain"]
    assert (
        stale == 1
        and plain.ts.tolist() == [1_000, 1_999]
        and plain.bits.tolist()
        == [
            SeriesData.build([1_000], [1.0]).bits[0],
            0,  # -0.0 compares as +0.0
        ]
    )
    unordered, _ = got["unordered"]
    expected = SeriesData.build([1_100, 1_300, 1_700], [1.0, math.nan, 7.0])
    assert unordered.ts.tolist() == expected.ts.tolist() and unordered.digest() == expected.digest()
    empty, stale = got["empty"]
    assert stale == 1 and empty.count == 0


def test_figures_compare_as_the_samples_do():
    nan_last = Figures.of(np.array([1.0, math.nan]))
    assert nan_last.matches(Figures(2, math.nan, math.nan))
    assert Figures.of(np.array([-0.0])).matches(Figures(1, 0.0, 0.0))
    assert not Figures.of(np.array([1.0, 2.0])).matches(Figures(2, 3.0, 1.0))  # last differs
    assert not Figures.of(np.array([1.0, 2.0])).matches(Figures(1, 3.0, 2.0))  # count differs


def test_figures_expression_keeps_names_apart_and_balances_the_ors():
    expr = figures_expression({"a": '{__name__="a"}', "b$1": '{__name__="b$1"}'}, 60_000, 1_060_000)
    assert expr.count(" or ") == 7 and expr.startswith("(((")  # 8 terms: a balanced tree of depth 3
    assert '"b$$1"' in expr  # a literal $ in label_replace's replacement
    assert 'count_over_time({__name__="a"}[60000ms])' in expr and "offset 60000ms) == 1000.000" in expr
