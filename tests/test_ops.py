"""Issue 7: metrics, breaker/degraded mode, graceful SIGTERM shutdown, slow clients."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
import websockets

from conftest import HELLO, Client, describe, done_of, settle, stdout_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

SLEEP = ('package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n'
         '\tfmt.Println("started")\n\ttime.Sleep(%s)\n\tfmt.Println("finished")\n}\n')


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(want) + r"\}" if want else "") + r" (\S+)"
    m = re.search("^" + pattern + "$", text, re.MULTILINE)
    assert m, f"{name}{{{want}}} not in metrics"
    return float(m.group(1))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def test_metrics_agree_with_what_clients_saw(start_server):
    srv = start_server()
    c = await Client.connect(srv.ws_url)
    assert done_of(await c.run(HELLO, id="a"))["status"] == "ok"
    assert done_of(await c.run("package main\nfunc main() { x }\n", id="b"))["status"] == \
        "build_failed"
    await c.send({"type": "run", "id": "c", "source": SLEEP % "30 * time.Second"})
    await c.until("output")
    await c.send({"type": "cancel", "id": "c"})
    assert done_of(await c.until("done"))["status"] == "cancelled"
    await c.send("garbage")
    assert (await c.recv())["code"] == "bad_request"
    text = httpx.get(srv.url + "/metrics").text
    assert metric(text, "gofiddle_jobs_total", status="ok") == 1
    assert metric(text, "gofiddle_jobs_total", status="build_failed") == 1
    assert metric(text, "gofiddle_jobs_total", status="cancelled") == 1
    assert metric(text, "gofiddle_cancellations_total", cause="user") == 1
    assert metric(text, "gofiddle_rejected_total", reason="bad_request") == 1
    assert metric(text, "gofiddle_sessions_active") == 1
    assert metric(text, "gofiddle_queue_capacity") == 64
    assert metric(text, "gofiddle_processes_started_total", kind="program") >= 2
    assert "gofiddle_queue_wait_seconds_bucket" in text
    assert "gofiddle_phase_duration_seconds_bucket" in text
    await c.close()


async def test_breaker_degrades_then_recovers(start_server):
    srv = start_server(workers=1, queue_size=2, breaker_saturation=1.0,
                       breaker_open_seconds=0.5, breaker_cooldown_seconds=1.0)
    runner = await Client.connect(srv.ws_url)
    await runner.send({"type": "run", "id": "a", "source": SLEEP % "20 * time.Second"})
    await runner.until("output")
    waiters = [await Client.connect(srv.ws_url) for _ in range(2)]
    for i, w in enumerate(waiters):
        await w.send({"type": "run", "id": f"w{i}", "source": SLEEP % "time.Second"})
        assert (await w.recv())["type"] == "queued"
    await asyncio.sleep(1.0)  # saturated for longer than breaker_open_seconds
    text = httpx.get(srv.url + "/metrics").text
    assert metric(text, "gofiddle_breaker_state") == 2  # open
    late = await Client.connect(srv.ws_url)
    frames = await late.run("package main\n\nfunc main() {\n\tundefined()\n}\n", id="d")
    done = done_of(frames)
    assert done["status"] == "degraded" and "overloaded" in done["message"]
    items = [i for f in frames if f["type"] == "diagnostics" for i in f["items"]]
    assert items and items[0]["line"] == 4  # the check's findings were sent
    # load falls: the breaker closes on its own and runs are queued normally again
    await runner.send({"type": "cancel", "id": "a"})
    for w in waiters:
        await w.until("done", timeout=30)
    deadline = time.monotonic() + 10
    while metric(httpx.get(srv.url + "/metrics").text, "gofiddle_breaker_state") != 0:
        assert time.monotonic() < deadline, "breaker did not close"
        await asyncio.sleep(0.2)
    frames = await late.run(HELLO, id="e")
    assert done_of(frames)["status"] == "ok"
    for c in (runner, late, *waiters):
        await c.close()


async def test_sigterm_drains_gracefully(start_server):
    srv = start_server(workers=1, shutdown_seconds=8)
    running = await Client.connect(srv.ws_url)
    await running.send({"type": "run", "id": "r", "source": SLEEP % "2 * time.Second"})
    await running.until("output")
    queued = await Client.connect(srv.ws_url)
    await queued.send({"type": "run", "id": "q", "source": HELLO})
    assert (await queued.recv())["type"] == "queued"
    srv.proc.send_signal(signal.SIGTERM)
    done = done_of(await queued.until("done", timeout=5))
    assert done["status"] == "cancelled" and "restart" in done["message"]
    frames = await running.until("done", timeout=10)
    assert done_of(frames)["status"] == "ok"  # the running job was allowed to finish
    assert stdout_of(frames) == "finished\n"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await running.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    # uvicorn re-raises the signal after a clean shutdown: exit by SIGTERM is expected
    assert srv.proc.wait(15) in (0, -signal.SIGTERM)
    assert (left := settle(srv)) == [], describe(left)


async def test_sigterm_deadline_stops_long_jobs(start_server):
    srv = start_server(workers=1, shutdown_seconds=1)
    c = await Client.connect(srv.ws_url)
    await c.send({"type": "run", "id": "r", "source": SLEEP % "time.Hour"})
    await c.until("output")
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    done = done_of(await c.until("done", timeout=10))
    assert done["status"] == "cancelled" and time.monotonic() - t0 < 5
    # uvicorn re-raises the signal after a clean shutdown: exit by SIGTERM is expected
    assert srv.proc.wait(15) in (0, -signal.SIGTERM)
    assert (left := settle(srv)) == [], describe(left)


async def test_new_sessions_refused_while_draining(start_server):
    srv = start_server(workers=1, shutdown_seconds=5)
    c = await Client.connect(srv.ws_url)
    await c.send({"type": "run", "id": "r", "source": SLEEP % "3 * time.Second"})
    await c.until("output")
    srv.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    r = httpx.get(srv.url + "/readyz")
    assert r.status_code == 503 and r.json()["draining"] is True
    await c.send({"type": "run", "id": "r2", "source": HELLO})
    frames = await c.until("error", timeout=5)
    assert frames[-1]["code"] == "unavailable"
    srv.proc.wait(20)


async def test_slow_reader_does_not_grow_server_memory(start_server):
    srv = start_server(output_bytes=200 << 20, run_seconds=6)
    base = rss_kib(srv.pid)
    ws = await websockets.connect(srv.ws_url, max_size=None, max_queue=1)
    await ws.recv()
    flood = ('package main\n\nimport (\n\t"os"\n\t"strings"\n)\n\nfunc main() {\n'
             '\tb := []byte(strings.Repeat("x", 1<<16))\n\tfor {\n\t\tos.Stdout.Write(b)\n\t}\n}\n')
    await ws.send(json.dumps({"type": "run", "id": "f", "source": flood}))
    # read nothing for a while: the server must apply backpressure, not buffer
    samples = []
    for _ in range(20):
        await asyncio.sleep(0.25)
        samples.append(rss_kib(srv.pid))
    # the allocator takes a one-off step as output starts; after that it must be flat,
    # although the program writes hundreds of MiB a second that nobody reads
    assert max(samples) - base < 100 * 1024, f"server grew by {(max(samples) - base) >> 10} MiB"
    assert samples[-1] - samples[4] < 16 * 1024, f"still growing: {samples}"
    await ws.close()
    await asyncio.sleep(1.0)
    assert (left := settle(srv)) == [], describe(left)


async def test_per_address_run_rate_and_session_limits(start_server):
    srv = start_server(runs_per_minute=6, max_sessions_per_client=2)
    a = await Client.connect(srv.ws_url)
    assert done_of(await a.run(HELLO, id="1"))["status"] == "ok"
    # a burst of 1 (ten seconds' worth of 6 a minute): the next run at once is refused
    await a.send({"type": "run", "id": "2", "source": HELLO})
    err = await a.recv()
    assert err["type"] == "error" and err["code"] == "rate_limited" and err["id"] == "2"
    assert 0 < err["retry_after_ms"] <= 10_000
    b = await Client.connect(srv.ws_url)
    # a third session from the same address is refused with a reason, then closed
    ws = await websockets.connect(srv.ws_url)
    frame = json.loads(await ws.recv())
    assert frame["type"] == "error" and frame["code"] == "rate_limited"
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    text = httpx.get(srv.url + "/metrics").text
    assert metric(text, "gofiddle_rejected_total", reason="rate_limited") == 1
    assert metric(text, "gofiddle_rejected_total", reason="too_many_sessions") == 1
    # closing a session frees its place
    await b.close()
    await asyncio.sleep(0.3)
    c = await Client.connect(srv.ws_url)
    assert c.hello["type"] == "hello"
    for client in (a, c):
        await client.close()


async def test_rlimit_fallback_without_cgroups_is_reported(start_server):
    srv = start_server(use_cgroups=False)
    state = httpx.get(srv.url + "/readyz").json()
    assert state["sandbox"]["cgroups"] is None and state["sandbox"]["rlimit_fallback"] is True
    assert "--no-use-cgroups" in state["sandbox"]["cgroup_fallback"]
    assert "fall back to rlimits" in srv.log()
    c = await Client.connect(srv.ws_url)
    assert done_of(await c.run(HELLO))["status"] == "ok"
    await c.close()
    # and the strict mode refuses to start at all
    strict = start_server(use_cgroups=False, require_cgroups=True, wait_ready=False)
    assert strict.proc.wait(60) == 2
    assert "cgroups unavailable" in strict.log() and "Traceback" not in strict.log()
