"""What /metrics shows: one App's Prometheus metrics, fed by plain callbacks from the parts.

A leaf: the parts never import it. The composition root hands each part the bound method
it calls (``turn_done``, ``llm_call``...) and points the gauges at what they read at scrape
time (the bus's queue, the Matrix sync), so nothing polls and no part knows Prometheus.
Each ``Metrics`` has its own ``CollectorRegistry``, never the library's global one: tests
build many Apps in one process, and a process-wide registry would refuse the second.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# A turn is a command (milliseconds) up to a long tool loop on a local model (minutes).
TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LATE_AFTER_SECONDS = 60.0
"""A reminder fired more than this after its due time counts as late."""


class Metrics:
    """The metrics of one running App, and their text for a scrape."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.turn_seconds = Histogram(
            "ganglion_turn_seconds", "Time of each turn, from the worker taking it to its "
            "outcome stored (commands too)", buckets=TURN_BUCKETS, registry=r)
        self.llm_seconds = Histogram(
            "ganglion_llm_call_seconds", "Time of each answered LLM request, to its last "
            "streamed chunk, by endpoint", ["endpoint"], buckets=LLM_BUCKETS, registry=r)
        self.llm_errors = Counter(
            "ganglion_llm_errors", "Requests an endpoint failed after its retries, by "
            "endpoint", ["endpoint"], registry=r)
        self.tokens = Counter(
            "ganglion_tokens", "Prompt and completion tokens of answered LLM requests, by "
            "the account charged", ["account"], registry=r)
        self.reminders_fired = Counter(
            "ganglion_reminders_fired", "Reminder firings put on the bus", registry=r)
        self.reminders_late = Counter(
            "ganglion_reminders_late", "Reminder firings more than a minute after their due "
            "time (those that came due while the daemon was down too)", registry=r)
        self.queue_depth = Gauge(
            "ganglion_queue_depth", "Messages waiting for a turn (not yet running)", registry=r)
        self.turns_in_flight = Gauge(
            "ganglion_turns_in_flight", "Turns running now", registry=r)
        self._matrix_lag: Gauge | None = None

    # -- what the parts call ---------------------------------------------------------------

    def turn_done(self, seconds: float) -> None:
        self.turn_seconds.observe(seconds)

    def llm_call(self, endpoint: str, seconds: float) -> None:
        self.llm_seconds.labels(endpoint).observe(seconds)

    def endpoint_failed(self, endpoint: str) -> None:
        self.llm_errors.labels(endpoint).inc()

    def charged(self, account: str, tokens: int) -> None:
        self.tokens.labels(account).inc(tokens)

    def reminder_fired(self, late_by: float) -> None:
        """One firing, ``late_by`` seconds after its due time."""
        self.reminders_fired.inc()
        if late_by > LATE_AFTER_SECONDS:
            self.reminders_late.inc()

    # -- what the gauges read at scrape time -----------------------------------------------

    def read_queue(self, depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)
        self.turns_in_flight.set_function(in_flight)

    def read_matrix_lag(self, lag: Callable[[], float]) -> None:
        """Only with Matrix on: without it there is no lag to show, not a lag of 0."""
        self._matrix_lag = Gauge(
            "ganglion_matrix_sync_lag_seconds", "Seconds since the last successful Matrix "
            "sync (a long-poll returns within 30 s when all is well)", registry=self.registry)
        self._matrix_lag.set_function(lag)

    def exposition(self) -> bytes:
        """The text a scrape gets (the text format 0.0.4)."""
        return generate_latest(self.registry)
