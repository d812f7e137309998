"""Issue 7: a bounded load test. 200 sessions against a queue of 32: mixed programs, some
clients vanish mid-run, some send garbage. Every accepted run gets exactly one done,
every rejection is busy/rate_limited, nothing is left running, memory stays bounded and
the metrics agree with what the clients saw."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter

import httpx
import pytest
import websockets

from conftest import HELLO, leftovers
from test_ops import metric, rss_kib

pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSIONS = 200
PROGRAMS = [
    HELLO,
    'package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n'
    '\ttime.Sleep(300 * time.Millisecond)\n\tfmt.Println("slept")\n}\n',
    'package main\n\nfunc main() {\n\tundefined()\n}\n',
    'package main\n\nimport "os"\n\nfunc main() {\n\tos.Exit(4)\n}\n',
    'package main\n\nimport "fmt"\n\nfunc main() {\n\tfor i := 0; i < 2000; i++ {\n'
    '\t\tfmt.Println(i)\n\t}\n}\n',
]


async def one_client(url: str, n: int, rng: random.Random, seen: Counter[str],
                     errors: Counter[str], problems: list[str]) -> None:
    behaviour = rng.choice(["normal"] * 6 + ["vanish", "garbage"])
    source = PROGRAMS[n % len(PROGRAMS)]
    try:
        async with websockets.connect(url, open_timeout=30) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "hello"
            if behaviour == "garbage":
                await ws.send("{not json")
                await ws.send(json.dumps({"type": "run", "id": 5}))
                for _ in range(2):
                    frame = json.loads(await ws.recv())
                    if frame.get("code") != "bad_request":
                        problems.append(f"garbage got {frame}")
                    errors["bad_request"] += 1
            await ws.send(json.dumps({"type": "run", "id": f"j{n}", "source": source}))
            if behaviour == "vanish":
                first = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if first["type"] == "error":
                    errors[first["code"]] += 1
                    return
                await asyncio.sleep(rng.uniform(0, 0.5))
                seen["vanished"] += 1
                return  # closing the socket cancels the job wherever it is
            dones = 0
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if frame["type"] == "error":
                    if frame["code"] not in ("busy", "rate_limited"):
                        problems.append(f"unexpected error {frame}")
                    if frame.get("retry_after_ms", 0) <= 0:
                        problems.append(f"no retry hint {frame}")
                    errors[frame["code"]] += 1
                    return
                if frame["type"] == "done":
                    dones += 1
                    seen[frame["status"]] += 1
                    break
            # nothing more may arrive for this job: no second done
            try:
                extra = await asyncio.wait_for(ws.recv(), 0.3)
                problems.append(f"frame after done: {extra}")
            except TimeoutError:
                pass
    except (OSError, websockets.WebSocketException) as e:
        problems.append(f"client {n}: {e!r}")


async def test_classroom_burst(start_server):
    srv = start_server(queue_size=32, queue_wait_seconds=60, breaker_open_seconds=3600,
                       max_sessions_per_client=1000)
    base = rss_kib(srv.pid)
    rng = random.Random(2026)
    seen: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    problems: list[str] = []
    started = time.monotonic()
    peak = base

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kib(srv.pid))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(one_client(srv.ws_url, n, rng, seen, errors, problems)
                           for n in range(SESSIONS)))
    watcher.cancel()
    elapsed = time.monotonic() - started
    await asyncio.sleep(1.0)
    print(f"\nload: {SESSIONS} sessions in {elapsed:.1f} s; outcomes {dict(seen)}; "
          f"errors {dict(errors)}; RSS {base >> 10} -> peak {peak >> 10} MiB")
    assert problems == []
    assert errors["busy"] > 0  # 200 at once into a queue of 32: some must be turned away
    finished = sum(v for k, v in seen.items() if k != "vanished")
    assert finished + errors["busy"] + errors["rate_limited"] + seen["vanished"] == SESSIONS
    assert leftovers(srv) == []
    assert peak - base < 200 * 1024
    text = httpx.get(srv.url + "/metrics").text
    for status in ("ok", "build_failed", "exit"):
        assert metric(text, "gofiddle_jobs_total", status=status) == seen[status], status
    assert metric(text, "gofiddle_rejected_total", reason="busy") == errors["busy"]
    assert metric(text, "gofiddle_rejected_total", reason="bad_request") == errors["bad_request"]
    assert metric(text, "gofiddle_sessions_active") == 0
    assert metric(text, "gofiddle_queue_depth") == 0
    total = sum(metric(text, "gofiddle_jobs_total", status=s) for s in
                ("ok", "exit", "build_failed", "cancelled", "expired", "timeout"))
    # every accepted run, including those of vanished clients, ended exactly once
    assert total == finished + seen["vanished"]
