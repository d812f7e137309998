"""Prometheus metrics, one registry per `Metrics` instance.

A private registry (instead of prometheus_client's global one) lets tests
start several servers in one process without duplicate-registration errors.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

__all__ = [
    "BREAKER_STATES",
    "CANCEL_CAUSES",
    "JOB_STATUSES",
    "PHASES",
    "PROCESS_KINDS",
    "REJECT_REASONS",
    "Metrics",
]

PHASES = ("build", "vet", "run", "test", "check", "format")
JOB_STATUSES = (
    "ok", "exit", "build_failed", "vet_failed", "tests_failed", "timeout", "output_limit",
    "memory_limit", "cancelled", "expired", "degraded", "internal_error",
)
PROCESS_KINDS = ("toolchain", "program")
CANCEL_CAUSES = ("disconnect", "supersede", "user", "timeout", "shutdown")
REJECT_REASONS = (
    "busy", "rate_limited", "too_large", "bad_request", "not_found", "unavailable",
    "too_many_sessions", "slow_client",
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

# Queue waits range from instant to the 60 s expiry; phases from a cached
# format (ms) to a cold build (tens of seconds).
_QUEUE_WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_PHASE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)


class Metrics:
    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        if process_metrics:
            # CPU, RSS and open fds of the server process itself.
            ProcessCollector(namespace="gofiddle", registry=r)

        self.queue_depth = Gauge(
            "gofiddle_queue_depth", "Jobs waiting in the queue", registry=r)
        self.queue_capacity = Gauge(
            "gofiddle_queue_capacity", "Queue size limit", registry=r)
        self.queue_wait = Histogram(
            "gofiddle_queue_wait_seconds", "Time from enqueue to start (or expiry)",
            buckets=_QUEUE_WAIT_BUCKETS, registry=r)
        self.phase_duration = Histogram(
            "gofiddle_phase_duration_seconds", "Wall time of one phase of a job",
            ["phase", "outcome"], buckets=_PHASE_BUCKETS, registry=r)
        self.jobs = Counter(
            "gofiddle_jobs_total", "Jobs by final done.status", ["status"], registry=r)
        self.processes_started = Counter(
            "gofiddle_processes_started_total", "Child processes started",
            ["kind"], registry=r)
        self.cancellations = Counter(
            "gofiddle_cancellations_total", "Jobs cancelled, by cause", ["cause"], registry=r)
        self.sessions_active = Gauge(
            "gofiddle_sessions_active", "Open WebSocket sessions", registry=r)
        self.binary_cache_hits = Counter(
            "gofiddle_binary_cache_hits_total", "Runs served from a cached binary", registry=r)
        self.binary_cache_misses = Counter(
            "gofiddle_binary_cache_misses_total", "Runs that needed a build", registry=r)
        self.rejected = Counter(
            "gofiddle_rejected_total", "Requests refused, by reason", ["reason"], registry=r)
        self.sandbox_failures = Counter(
            "gofiddle_sandbox_failures_total", "Sandbox setup or teardown failures",
            registry=r)
        self.breaker_state = Gauge(
            "gofiddle_breaker_state", "Overload breaker: 0 closed, 1 half-open, 2 open",
            registry=r)
        self.workers_busy = Gauge(
            "gofiddle_workers_busy", "Workers currently running a job", registry=r)
        self.snippets_shared = Counter(
            "gofiddle_snippets_shared_total", "Successful shares", registry=r)
        self.output_bytes = Counter(
            "gofiddle_output_bytes_total", "Program output bytes sent to clients", registry=r)

        # Known label values start at 0 so rate() and absent() queries work
        # before the first event of each kind.
        for status in JOB_STATUSES:
            self.jobs.labels(status=status)
        for kind in PROCESS_KINDS:
            self.processes_started.labels(kind=kind)
        for cause in CANCEL_CAUSES:
            self.cancellations.labels(cause=cause)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)

    def set_breaker(self, state: str) -> None:
        """Accepts 'closed', 'half_open' (or 'half-open') and 'open'."""
        self.breaker_state.set(BREAKER_STATES[state.replace("-", "_")])

    def render(self) -> tuple[bytes, str]:
        """Body and Content-Type for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
