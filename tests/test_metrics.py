from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gofiddle.metrics import Metrics

NAMES = [
    "gofiddle_queue_depth",
    "gofiddle_queue_capacity",
    "gofiddle_queue_wait_seconds",
    "gofiddle_phase_duration_seconds",
    "gofiddle_jobs_total",
    "gofiddle_processes_started_total",
    "gofiddle_cancellations_total",
    "gofiddle_sessions_active",
    "gofiddle_binary_cache_hits_total",
    "gofiddle_binary_cache_misses_total",
    "gofiddle_rejected_total",
    "gofiddle_sandbox_failures_total",
    "gofiddle_breaker_state",
    "gofiddle_workers_busy",
    "gofiddle_snippets_shared_total",
    "gofiddle_output_bytes_total",
]


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_instances_coexist_and_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.jobs.labels(status="ok").inc()
    a.queue_depth.set(5)
    b.queue_depth.set(1)
    sa, sb = samples(a.render()[0]), samples(b.render()[0])
    assert sa[("gofiddle_jobs_total", (("status", "ok"),))] == 1
    assert sb[("gofiddle_jobs_total", (("status", "ok"),))] == 0
    assert sa[("gofiddle_queue_depth", ())] == 5
    assert sb[("gofiddle_queue_depth", ())] == 1


def test_render_contains_every_name() -> None:
    m = Metrics()
    m.phase_duration.labels(phase="build", outcome="ok").observe(0.3)
    m.queue_wait.observe(0.02)
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    text = body.decode()
    for name in NAMES:
        assert f"# TYPE {name.removesuffix('_total')} " in text or f"# TYPE {name} " in text
        assert f"\n{name}" in text, name


def test_label_values_and_units() -> None:
    m = Metrics()
    m.cancellations.labels(cause="disconnect").inc()
    m.rejected.labels(reason="rate_limited").inc(2)
    m.processes_started.labels(kind="program").inc()
    m.output_bytes.inc(1234)
    m.phase_duration.labels(phase="run", outcome="timeout").observe(10.0)
    s = samples(m.render()[0])
    assert s[("gofiddle_cancellations_total", (("cause", "disconnect"),))] == 1
    assert s[("gofiddle_cancellations_total", (("cause", "shutdown"),))] == 0
    assert s[("gofiddle_rejected_total", (("reason", "rate_limited"),))] == 2
    assert s[("gofiddle_processes_started_total", (("kind", "program"),))] == 1
    assert s[("gofiddle_output_bytes_total", ())] == 1234
    key = ("gofiddle_phase_duration_seconds_count", (("outcome", "timeout"), ("phase", "run")))
    assert s[key] == 1


@pytest.mark.parametrize(("state", "value"), [("closed", 0), ("half_open", 1),
                                              ("half-open", 1), ("open", 2)])
def test_breaker_state(state: str, value: int) -> None:
    m = Metrics()
    m.set_breaker(state)
    assert samples(m.render()[0])[("gofiddle_breaker_state", ())] == value


def test_process_metrics_optional() -> None:
    assert b"gofiddle_process_" not in Metrics(process_metrics=False).render()[0]
