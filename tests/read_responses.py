"""ReadResponse bodies for unit tests of the sinks and the checks: one QueryResult, a series per metric
name (the only label), samples as given (any order, duplicates and NaN bits kept)."""

from __future__ import annotations

from m3migrate.prompb import ReadResponse


def read_response(series: dict[str, list[tuple[int, float]]]) -> bytes:
    """The serialized ReadResponse of ``{metric name: [(timestamp ms, value), ...]}``."""
    rr = ReadResponse()
    qr = rr.results.add()
    for name, samples in series.items():
        ts = qr.timeseries.add()
        ts.labels.add(name="__name__", value=name)
        for t, v in samples:
            ts.samples.add(timestamp=t, value=v)
    return rr.SerializeToString()
