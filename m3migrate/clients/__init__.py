"""Clients: one per protocol (remote read, remote write, PromQL, M3 admin, the bucket), over one HTTP layer with
typed errors, concurrency caps and rate limits."""
