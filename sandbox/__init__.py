"""Real-server sandbox for tests and the demo.

M3DB and Thanos cannot run here, so stand-ins that speak the same protocols are started as
local processes: a *source* Prometheus 2.42 holding a backfilled, M3-like history (remote read),
*target* Prometheus servers with the remote-write receiver, and VictoriaMetrics as a peer.
Everything listens on 127.0.0.1 only and lives in a caller-provided work directory.

- :mod:`sandbox.servers` starts and stops the server processes.
- :mod:`sandbox.history` generates the history, builds TSDB blocks with promtool and
  writes a live tail (head data with special NaN bit patterns) by remote write.
"""
