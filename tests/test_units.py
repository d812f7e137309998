"""Pure units: the ring buffer, frame parsing, txtar and file-name rules, settings."""

from __future__ import annotations

import random

import pytest

from gofiddle import config, protocol, source
from gofiddle.jobs import RingBuffer


class Item:
    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Item({self.n})"


def test_ring_buffer_fifo_and_capacity():
    rb: RingBuffer[Item] = RingBuffer(3)
    items = [Item(i) for i in range(4)]
    assert all(rb.push(i) for i in items[:3])
    assert rb.full and not rb.push(items[3])
    assert rb.pop() is items[0]
    assert rb.push(items[3])
    assert [i.n for i in rb] == [1, 2, 3]
    assert [rb.pop().n for _ in range(3)] == [1, 2, 3]
    assert rb.pop() is None and len(rb) == 0


def test_ring_buffer_remove_keeps_order_and_frees_capacity():
    rb: RingBuffer[Item] = RingBuffer(4)
    items = [Item(i) for i in range(4)]
    for i in items:
        rb.push(i)
    assert rb.remove(items[1]) and not rb.remove(items[1])
    assert [i.n for i in rb] == [0, 2, 3]
    extra = Item(9)
    assert rb.push(extra)  # a tombstone does not cost a place
    assert [i.n for i in rb] == [0, 2, 3, 9]
    assert rb.full


def test_ring_buffer_matches_a_list_model():
    rng = random.Random(7)
    rb: RingBuffer[Item] = RingBuffer(8)
    model: list[Item] = []
    for step in range(5000):
        op = rng.random()
        if op < 0.45:
            it = Item(step)
            assert rb.push(it) == (len(model) < 8)
            if len(model) < 8:
                model.append(it)
        elif op < 0.75:
            got = rb.pop()
            assert got is (model.pop(0) if model else None)
        elif model:
            victim = rng.choice(model)
            model.remove(victim)
            assert rb.remove(victim)
        assert list(rb) == model and len(rb) == len(model)


def parse(text: str):
    return protocol.parse(text, max_id_chars=64, max_source_bytes=100)


def test_protocol_parse_ok_and_errors():
    run = parse('{"type":"run","id":"a","source":"x","mode":"test","vet":false,"extra":1}')
    assert run == protocol.Run("a", "x", "test", False)
    assert parse('{"type":"stdin","id":"a","eof":true}') == protocol.Stdin("a", "", True)
    assert parse('{"type":"ping"}') == protocol.Ping(None)
    for bad in ('nope', '"str"', '{"type":1}', '{"type":"run","id":"a","source":true}',
                '{"type":"run","id":"","source":"x"}', '{"type":"stdin","id":"a"}',
                '{"type":"run","id":"a","source":"\\ud800"}'):
        with pytest.raises(protocol.ProtocolError) as e:
            parse(bad)
        assert e.value.code == "bad_request", bad
    with pytest.raises(protocol.ProtocolError) as e:
        parse('{"type":"run","id":"a","source":"' + "x" * 101 + '"}')
    assert e.value.code == "too_large" and e.value.id == "a"


def test_txtar_split_and_names():
    files = source.parse("package main\n-- util.go --\npackage main\n-- go.mod --\nmodule m\n",
                         max_files=20)
    assert list(files.files) == ["prog.go", "util.go", "go.mod"]
    assert files.files["util.go"] == "package main\n"
    single = source.parse("package main\r\n", max_files=20)
    assert single.files == {"prog.go": "package main\r\n"}
    for bad in ("../x.go", "/x.go", "a//b.go", "a/./b.go", "x y.go", ".git/config", "a\\b.go"):
        with pytest.raises(source.SourceError):
            source.validate_name(bad)
    with pytest.raises(source.SourceError):
        source.parse("-- a.go --\nx\n-- a.go --\ny\n", max_files=20)
    with pytest.raises(source.SourceError):
        source.parse("-- a --\nx\n-- a/b.go --\ny\n", max_files=20)


def test_test_detection_and_go_mod_checks():
    t = source.parse("package main\nimport \"testing\"\nfunc TestX(t *testing.T) {}\n",
                     max_files=20)
    assert source.is_test_program(t)
    prepared = source.prepare(t, go_version="go1.27.3", test=True)
    assert "prog_test.go" in prepared.files and prepared.shown("prog_test.go") == "prog.go"
    assert prepared.files["go.mod"] == "module play\n\ngo 1.27\n"
    m = source.parse("package main\nfunc main() {}\nfunc TestX() {}\n", max_files=20)
    assert not source.is_test_program(m)
    for gomod in ("module m\nreplace a => ../b\n", "module m\nreplace a v1.0.0 => /etc\n",
                  "module m\nreplace (\n\ta => ./here\n)\n"):
        with pytest.raises(source.BuildRefused):
            source.check_go_mod(gomod)
    source.check_go_mod("module m\nreplace a => b.com/c v1.0.0\n")


def test_settings_from_env_and_args():
    import argparse

    s = config.from_env({"GOFIDDLE_WORKERS": "3", "GOFIDDLE_REQUIRE_CGROUPS": "yes"})
    assert s.workers == 3 and s.require_cgroups is True
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    ns = parser.parse_args(["--queue-size", "5", "--run-seconds", "2.5"])
    s = config.from_args(ns, env={"GOFIDDLE_QUEUE_SIZE": "9", "GOFIDDLE_PORT": "9000"})
    assert (s.queue_size, s.run_seconds, s.port) == (5, 2.5, 9000)
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        s.workers = 4  # type: ignore[misc]


def test_breaker_opens_half_opens_and_closes():
    from gofiddle.breaker import CLOSED, HALF_OPEN, OPEN, SaturationBreaker

    now = [0.0]
    changes: list[str] = []
    b = SaturationBreaker(capacity=10, saturation=0.9, open_after=5, cooldown=10,
                          clock=lambda: now[0], on_change=changes.append)
    assert b.observe(9) == CLOSED  # saturated, but not for long
    now[0] = 4.9
    assert b.observe(9) == CLOSED
    now[0] = 5.0
    assert b.observe(10) == OPEN and b.degrading
    now[0] = 14.0
    assert b.observe(2) == OPEN  # open lasts the cooldown whatever the load
    now[0] = 15.0
    assert b.observe(9) == OPEN  # half-open probe found it still saturated
    now[0] = 25.0
    assert b.observe(6) == HALF_OPEN  # neither saturated nor drained
    assert b.observe(4) == CLOSED
    assert changes == [OPEN, HALF_OPEN, OPEN, HALF_OPEN, CLOSED]
    now[0] = 26.0
    assert b.observe(0) == CLOSED


def test_eta_simulates_workers_and_long_running_jobs():
    import time as _time

    from gofiddle.jobs import JobQueue, ServiceTimes

    times = ServiceTimes(window=5, default_ms=1000)
    q = JobQueue(capacity=10, workers=2, times=times, max_wait=0)
    # idle workers: the first two start at once, the next two one job-time later
    assert q.etas_ms(4) == [0, 0, 1000, 1000]
    # both workers busy with jobs that already ran 4 s, far past the 1 s average:
    # they are taken to be about half done, not about to finish
    now = _time.monotonic()
    q.running_started = lambda: [now - 4, now - 4]
    q.max_job_seconds = 60
    etas = q.etas_ms(2)
    assert 3500 <= etas[0] <= 4500 and etas == sorted(etas)


def test_readme_documents_every_setting():
    from dataclasses import fields
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [f.name for f in fields(config.Settings)
               if f"`--{f.name.replace('_', '-')}`" not in readme]
    assert missing == []
