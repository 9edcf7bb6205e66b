"""Typed errors of the TSDB block writer: each names the series or block and what to change."""

from __future__ import annotations

from m3migrate.errors import M3MigrateError


class TsdbError(M3MigrateError):
    """Base class: a block cannot be written as asked."""


class InvalidSeries(TsdbError):
    """A series cannot go into a block: empty or unsorted labels, duplicate names, bad samples."""


class SampleOutOfRange(TsdbError):
    """A sample lies outside the block's time range [minTime, maxTime) (maxTime is exclusive)."""


class OverlappingParts(TsdbError):
    """Two parts of one series overlap in time: a block needs each series' chunks disjoint and ordered."""


class EmptyBlock(TsdbError):
    """A block without samples: Thanos' upload paths skip those (numSamples must be > 0)."""
