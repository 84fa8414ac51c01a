"""What /metrics shows: one App's Prometheus metrics, fed by plain callbacks from the parts.

A leaf: the parts never import it. The composition root hands each part the bound method
it calls (``turn_done``, ``llm_call``...) and points the gauges at what they read at scrape
time (the bus's queue, the Matrix sync), so nothing polls and no part knows Prometheus.

What is observed is kept here in plain numbers (a histogram is its bucket counts, sum and
count); ``prometheus-client`` is imported at the first scrape, to write them in its text
format through a collector of this App's own (a registry per App, never the library's
global one: tests build many Apps in one process). A daemon nobody scrapes never pays the
library's memory (about 2 MiB).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# A turn is a command (milliseconds) up to a long tool loop on a local model (minutes).
TURN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LATE_AFTER_SECONDS = 60.0
"""A reminder fired more than this after its due time counts as late."""


@dataclass(slots=True)
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def observe(self, value: float) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative counts by upper bound, +Inf last, as the text format has them."""
        counts = self.counts or [0] * (len(self.bounds) + 1)
        out, running = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


class Metrics:
    """The metrics of one running App, and their text for a scrape."""

    def __init__(self) -> None:
        self.turns = _Histogram(TURN_BUCKETS)
        self.llm_calls: dict[str, _Histogram] = {}
        self.llm_errors: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)
        self.reminders_fired = 0
        self.reminders_late = 0
        self._depth: Callable[[], int] = lambda: 0
        self._in_flight: Callable[[], int] = lambda: 0
        self._matrix_lag: Callable[[], float] | None = None
        self._registry: Any = None

    # -- what the parts call ---------------------------------------------------------------

    def turn_done(self, seconds: float) -> None:
        self.turns.observe(seconds)

    def llm_call(self, endpoint: str, seconds: float) -> None:
        self.llm_calls.setdefault(endpoint, _Histogram(LLM_BUCKETS)).observe(seconds)

    def endpoint_failed(self, endpoint: str) -> None:
        self.llm_errors[endpoint] += 1

    def charged(self, account: str, tokens: int) -> None:
        self.tokens[account] += tokens

    def reminder_fired(self, late_by: float) -> None:
        """One firing, ``late_by`` seconds after its due time."""
        self.reminders_fired += 1
        if late_by > LATE_AFTER_SECONDS:
            self.reminders_late += 1

    # -- what the gauges read at scrape time -----------------------------------------------

    def read_queue(self, depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self._depth, self._in_flight = depth, in_flight

    def read_matrix_lag(self, lag: Callable[[], float]) -> None:
        """Only with Matrix on: without it there is no lag to show, not a lag of 0."""
        self._matrix_lag = lag

    def exposition(self) -> bytes:
        """The text a scrape gets (the text format 0.0.4)."""
        # Imported here: see the module's docstring.
        from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self))
        text: bytes = generate_latest(self._registry)
        return text

    def families(self) -> Iterator[Any]:
        """The metric families of this moment (prometheus-client's, for its writer)."""
        from prometheus_client.core import (  # noqa: PLC0415
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        turns = HistogramMetricFamily(
            "ganglion_turn_seconds", "Time of each turn, from the worker taking it to its "
            "outcome stored (commands too)")
        turns.add_metric([], self.turns.buckets(), self.turns.total)
        yield turns
        llm = HistogramMetricFamily(
            "ganglion_llm_call_seconds", "Time of each answered LLM request, to its last "
            "streamed chunk, by endpoint", labels=["endpoint"])
        for endpoint, hist in sorted(self.llm_calls.items()):
            llm.add_metric([endpoint], hist.buckets(), hist.total)
        yield llm
        errors = CounterMetricFamily(
            "ganglion_llm_errors", "Requests an endpoint failed after its retries, by "
            "endpoint", labels=["endpoint"])
        for endpoint, n in sorted(self.llm_errors.items()):
            errors.add_metric([endpoint], n)
        yield errors
        tokens = CounterMetricFamily(
            "ganglion_tokens", "Prompt and completion tokens of answered LLM requests, by "
            "the account charged", labels=["account"])
        for account, n in sorted(self.tokens.items()):
            tokens.add_metric([account], n)
        yield tokens
        yield CounterMetricFamily("ganglion_reminders_fired", "Reminder firings put on the "
                                  "bus", value=self.reminders_fired)
        yield CounterMetricFamily(
            "ganglion_reminders_late", "Reminder firings more than a minute after their due "
            "time (those that came due while the daemon was down too)",
            value=self.reminders_late)
        yield GaugeMetricFamily("ganglion_queue_depth", "Messages waiting for a turn (not "
                                "yet running)", value=self._depth())
        yield GaugeMetricFamily("ganglion_turns_in_flight", "Turns running now",
                                value=self._in_flight())
        if self._matrix_lag is not None:
            yield GaugeMetricFamily(
                "ganglion_matrix_sync_lag_seconds", "Seconds since the last successful "
                "Matrix sync (a long-poll returns within 30 s when all is well)",
                value=self._matrix_lag())


class _Collector:
    """prometheus-client's collector protocol over one App's ``Metrics``."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self.metrics.families()
