"""Protobuf messages of the Prometheus remote read/write protocol, generated from prompb.proto."""

from m3migrate.prompb.prompb_pb2 import (
    Label,
    LabelMatcher,
    Query,
    QueryResult,
    ReadRequest,
    ReadResponse,
    Sample,
    TimeSeries,
    WriteRequest,
)

__all__ = [
    "Label",
    "LabelMatcher",
    "Query",
    "QueryResult",
    "ReadRequest",
    "ReadResponse",
    "Sample",
    "TimeSeries",
    "WriteRequest",
]
