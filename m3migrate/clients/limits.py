"""Protecting production endpoints: a concurrency cap that adapts (AIMD) and a rate limit.

One :class:`EndpointLimits` per endpoint and process, shared by every client that talks to it, so the
caps hold however many protocol clients, tasks and write threads a run creates. The in-flight limit
starts at the endpoint's ``max_concurrency``; an answer saying "too much" (429, 503, a timeout) halves
it, and a run of successes raises it by one again (additive increase, multiplicative decrease), so a
struggling M3 cluster gets relief without anyone changing a setting. Each change is logged once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pyrate_limiter import Duration, Limiter, Rate, StateBucket, TokenBucket

log = logging.getLogger("m3migrate.clients.limits")


class AdaptiveLimiter:
    """A counting semaphore whose size moves between 1 and ``ceiling`` (AIMD).

    Only a request admitted at the current limit can lower it: when several in-flight requests fail
    together (they usually do), the limit halves once, not once per request.
    """

    def __init__(self, ceiling: int, *, side: str, op: str, adaptive: bool = True) -> None:
        if ceiling < 1:
            raise ValueError("ceiling must be at least 1")
        self.ceiling = ceiling
        self.limit = ceiling
        self.side, self.op, self.adaptive = side, op, adaptive
        self.in_flight = 0
        self.peak_in_flight = 0
        self.decreases = 0
        self.increases = 0
        self._generation = 0  # bumped by every change; a slot remembers the one it was admitted under
        self._successes = 0
        self._cond = threading.Condition()

    @contextmanager
    def slot(self) -> Iterator[int]:
        """Hold one of the in-flight places for the duration of one HTTP exchange."""
        with self._cond:
            while self.in_flight >= self.limit:
                self._cond.wait()
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            generation = self._generation
        try:
            yield generation
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def overloaded(self, generation: int, why: str) -> None:
        """The endpoint said "too much" (429/503/timeout): halve the limit, once per generation."""
        if not self.adaptive:
            return
        with self._cond:
            self._successes = 0
            if generation != self._generation or self.limit == 1:
                return
            old, self.limit = self.limit, max(1, self.limit // 2)
            self._generation += 1
            self.decreases += 1
        log.warning("%s %s: lowering %s concurrency %d -> %d", self.side, why, self.op, old, self.limit)

    def succeeded(self) -> None:
        """One success; after ``limit`` of them in a row the limit grows by one, up to the ceiling."""
        if not self.adaptive:
            return
        with self._cond:
            if self.limit >= self.ceiling:
                return
            self._successes += 1
            if self._successes < self.limit:
                return
            old, self.limit = self.limit, self.limit + 1
            self._successes = 0
            self._generation += 1
            self.increases += 1
            self._cond.notify_all()
        log.info("%s answers again: raising %s concurrency %d -> %d", self.side, self.op, old, self.limit)


class RateGate:
    """Requests/s and samples/s token buckets (pyrate-limiter); blocks the caller until allowed."""

    def __init__(self, requests_per_second: float | None, samples_per_second: float | None) -> None:
        self.requests = _limiter(requests_per_second)
        self.samples = _limiter(samples_per_second)
        self._samples_burst = _rate(samples_per_second).burst if samples_per_second else 0

    def request(self) -> None:
        """Wait for one request's token."""
        if self.requests is not None:
            self.requests.try_acquire("requests")

    def take_samples(self, n: int) -> None:
        """Wait until ``n`` samples fit the samples/s budget (in pieces no larger than one second's)."""
        if self.samples is None or n <= 0:
            return
        while n > 0:
            piece = min(n, self._samples_burst)
            self.samples.try_acquire("samples", weight=piece)
            n -= piece


def _rate(per_second: float) -> Rate:
    """A pyrate Rate for a possibly fractional per-second figure (0.5/s is 1 per 2 s)."""
    if per_second >= 1:
        return Rate(int(per_second), Duration.SECOND)
    return Rate(1, int(1000 / per_second))


def _limiter(per_second: float | None) -> Limiter | None:
    if not per_second:
        return None
    return Limiter(StateBucket([_rate(per_second)], algorithm=TokenBucket()))


class EndpointLimits:
    """The concurrency limiter and the rate gate of one endpoint."""

    def __init__(
        self,
        *,
        side: str,
        op: str,
        max_concurrency: int,
        adaptive: bool,
        requests_per_second: float | None,
        samples_per_second: float | None,
    ) -> None:
        self.concurrency = AdaptiveLimiter(max_concurrency, side=side, op=op, adaptive=adaptive)
        self.rate = RateGate(requests_per_second, samples_per_second)


_registry: dict[tuple, EndpointLimits] = {}
_registry_lock = threading.Lock()


def limits_for(
    origin: str,
    *,
    side: str,
    op: str,
    max_concurrency: int,
    adaptive: bool = True,
    requests_per_second: float | None = None,
    samples_per_second: float | None = None,
) -> EndpointLimits:
    """The process-wide limits of one endpoint (scheme://host:port) under one set of knobs."""
    key = (origin, side, max_concurrency, adaptive, requests_per_second, samples_per_second)
    with _registry_lock:
        limits = _registry.get(key)
        if limits is None:
            limits = EndpointLimits(
                side=side,
                op=op,
                max_concurrency=max_concurrency,
                adaptive=adaptive,
                requests_per_second=requests_per_second,
                samples_per_second=samples_per_second,
            )
            _registry[key] = limits
        return limits


def reset_limits() -> None:
    """Forget every endpoint's limiter (tests; a new run starts at the ceiling again)."""
    with _registry_lock:
        _registry.clear()
