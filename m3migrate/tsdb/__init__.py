"""Prometheus TSDB blocks (index v2, XOR chunks, meta.json with a Thanos section), in pure Python + numpy."""
