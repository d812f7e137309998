"""Issue 2: sessions, the queue, the build/run pipeline and streaming, end to end over a
real WebSocket against a real server, toolchain and processes."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from conftest import HELLO, Client, done_of, leftovers, processes_under, stdout_of

pytestmark = pytest.mark.asyncio(loop_scope="session")

SLEEP = ('package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n'
         '\tfmt.Println("started")\n\ttime.Sleep(%d * time.Second)\n\tfmt.Println("woke")\n}\n')
ECHO = ('package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n'
        '\ts := bufio.NewScanner(os.Stdin)\n\tfor s.Scan() {\n\t\tfmt.Println("echo:", s.Text())\n'
        '\t}\n\tfmt.Println("bye")\n}\n')


async def test_hello_world_frames_in_order(server):
    c = await Client.connect(server.ws_url)
    assert c.hello["go_version"].startswith("go1.27")
    assert c.hello["limits"]["source_bytes"] == 65536
    assert c.hello["session"]
    frames = await c.run(HELLO)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "queued"
    phases = [f["phase"] for f in frames if f["type"] == "started"]
    assert phases == ["build", "vet", "run"]
    assert stdout_of(frames) == "hello, world\n"
    done = done_of(frames)
    assert done["status"] == "ok" and done["exit_code"] == 0
    assert set(done["timings"]) >= {"queue_ms", "build_ms", "run_ms"}
    assert kinds.index("output") > kinds.index("started")
    await c.close()


async def test_build_error_diagnostics_structured(server):
    c = await Client.connect(server.ws_url)
    src = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tx := 1\n\tfmt.Println(y)\n}\n'
    frames = await c.run(src)
    done = done_of(frames)
    assert done["status"] == "build_failed"
    diags = [f for f in frames if f["type"] == "diagnostics"]
    assert diags and diags[0]["phase"] == "build"
    items = diags[0]["items"]
    by_line = {i["line"]: i for i in items}
    assert by_line[6]["file"] == "prog.go" and by_line[6]["col"] == 2
    assert "declared and not used" in by_line[6]["message"]
    assert "undefined: y" in by_line[7]["message"] and by_line[7]["severity"] == "error"
    assert str(server.data_dir) not in json.dumps(frames)
    await c.close()


async def test_vet_failure_stops_the_run(server):
    c = await Client.connect(server.ws_url)
    src = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Printf("%d\\n", "s")\n}\n'
    frames = await c.run(src)
    assert done_of(frames)["status"] == "vet_failed"
    items = [i for f in frames if f["type"] == "diagnostics" for i in f["items"]]
    assert items[0]["line"] == 6 and items[0]["file"] == "prog.go"
    assert "wrong type" in items[0]["message"]
    assert not any(f["type"] == "output" for f in frames)
    # vet: false skips vet
    frames = await c.run(src, id="r2", vet=False)
    assert done_of(frames)["status"] == "ok"
    await c.close()


async def test_tests_without_main_run_as_tests(server):
    c = await Client.connect(server.ws_url)
    ok = ('package main\n\nimport "testing"\n\nfunc TestAdd(t *testing.T) {\n'
          '\tif 1+1 != 2 {\n\t\tt.Fatal("math")\n\t}\n}\n')
    frames = await c.run(ok)
    assert [f["phase"] for f in frames if f["type"] == "started"][-1] == "test"
    assert done_of(frames)["status"] == "ok"
    assert "PASS" in stdout_of(frames)
    bad = ('package main\n\nimport "testing"\n\nfunc TestAdd(t *testing.T) {\n'
           '\tt.Errorf("got %d, want %d", 3, 2)\n}\n')
    frames = await c.run(bad, id="r2")
    done = done_of(frames)
    assert done["status"] == "tests_failed"
    items = [i for f in frames if f["type"] == "diagnostics" for i in f["items"]]
    assert items and items[0]["file"] == "prog.go" and items[0]["line"] == 6
    await c.close()


async def test_txtar_multi_file_with_go_mod(server):
    c = await Client.connect(server.ws_url)
    src = ("-- go.mod --\nmodule example.com/hi\n\ngo 1.27\n"
           "-- main.go --\npackage main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/hi/greet\"\n)\n\n"
           "func main() { fmt.Println(greet.Hello(\"class\")) }\n"
           "-- greet/greet.go --\npackage greet\n\nfunc Hello(n string) string "
           "{ return \"hi \" + n }\n")
    frames = await c.run(src)
    assert done_of(frames)["status"] == "ok", frames
    assert stdout_of(frames) == "hi class\n"
    # an error in the sub-package file is reported with the user's file name
    broken = src.replace('return "hi " + n', 'return 1')
    frames = await c.run(broken, id="r2")
    items = [i for f in frames if f["type"] == "diagnostics" for i in f["items"]]
    assert done_of(frames)["status"] == "build_failed"
    assert any(i["file"] == "greet/greet.go" and i["line"] == 3 for i in items), items
    await c.close()


@pytest.mark.parametrize("gomod, needle", [
    ("module play\n\ngo 1.27\n\nreplace evil => ../cache\n", "local path"),
    ("module play\n\ngo 1.99\n", "go >= 1.99"),
    ("module play\n\ngo 1.27\n\nrequire github.com/google/uuid v1.6.0\n", "GOPROXY=off"),
])
async def test_hermetic_build_refusals(server, gomod, needle):
    c = await Client.connect(server.ws_url)
    prog = HELLO.replace('import "fmt"', 'import (\n\t"fmt"\n\n\t_ "github.com/google/uuid"\n)')
    src = f"-- go.mod --\n{gomod}-- prog.go --\n{prog}"
    frames = await c.run(src)
    done = done_of(frames)
    assert done["status"] == "build_failed"
    text = json.dumps(frames)
    assert needle in text, frames
    await c.close()


async def test_output_streams_before_exit(server):
    c = await Client.connect(server.ws_url)
    await c.send({"type": "run", "id": "s", "source": SLEEP % 2})
    first_output = None
    while True:
        f = await c.recv()
        now = time.monotonic()
        if f["type"] == "output" and first_output is None:
            first_output = now
            assert f["data"] == "started\n"
        if f["type"] == "done":
            break
    assert first_output is not None
    assert now - first_output > 1.5  # the line came while the program still slept
    await c.close()


async def test_output_is_coalesced(server):
    c = await Client.connect(server.ws_url)
    src = ('package main\n\nimport "fmt"\n\nfunc main() {\n\tfor i := 0; i < 5000; i++ {\n'
           '\t\tfmt.Println("line", i)\n\t}\n}\n')
    frames = await c.run(src)
    outputs = [f for f in frames if f["type"] == "output"]
    text = stdout_of(frames)
    assert text.count("\n") == 5000 and text.endswith("line 4999\n")
    assert len(outputs) < 100, len(outputs)
    await c.close()


async def test_interactive_stdin(server):
    c = await Client.connect(server.ws_url)
    await c.send({"type": "run", "id": "e", "source": ECHO})
    await c.until("started")  # build
    frames = []
    while not any(f.get("phase") == "run" for f in frames):
        frames.append(await c.recv())
    await c.send({"type": "stdin", "id": "e", "data": "one\n"})
    got = await c.until("output")
    assert got[-1]["data"] == "echo: one\n"
    await c.send({"type": "stdin", "id": "e", "data": "two\n"})
    got = await c.until("output")
    assert got[-1]["data"] == "echo: two\n"
    await c.send({"type": "stdin", "id": "e", "eof": True})
    rest = await c.until("done")
    assert stdout_of(rest) == "bye\n"
    assert done_of(rest)["status"] == "ok"
    await c.close()


async def test_stdin_sent_before_the_program_starts_is_kept(server):
    c = await Client.connect(server.ws_url)
    await c.send({"type": "run", "id": "e", "source": ECHO})
    await c.send({"type": "stdin", "id": "e", "data": "early\n"})
    await c.send({"type": "stdin", "id": "e", "eof": True})
    frames = await c.until("done")
    assert stdout_of(frames) == "echo: early\nbye\n"
    await c.close()


async def test_exit_code_and_stderr(server):
    c = await Client.connect(server.ws_url)
    src = ('package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n'
           '\tfmt.Fprintln(os.Stderr, "oops")\n\tos.Exit(3)\n}\n')
    frames = await c.run(src)
    done = done_of(frames)
    assert done["status"] == "exit" and done["exit_code"] == 3
    assert stdout_of(frames, "stderr") == "oops\n"
    await c.close()


@pytest.mark.parametrize("raw, code", [
    ("this is not json", "bad_request"),
    ("[1, 2]", "bad_request"),
    ('{"id": "x"}', "bad_request"),
    ('{"type": "launch_missiles", "id": "x"}', "bad_request"),
    ('{"type": "run", "id": "x", "source": 42}', "bad_request"),
    ('{"type": "run", "id": 7, "source": "package main"}', "bad_request"),
    ('{"type": "run", "source": "package main"}', "bad_request"),
    ('{"type": "run", "id": "x", "source": "package main", "mode": "nuke"}', "bad_request"),
    ('{"type": "run", "id": "x", "source": "package main", "vet": "yes"}', "bad_request"),
    ('{"type": "run", "id": "' + "i" * 65 + '", "source": "package main"}', "bad_request"),
    ('{"type": "stdin", "id": "x", "data": 5}', "bad_request"),
    ('{"type": "cancel", "id": "nothing-running"}', "not_found"),
])
async def test_bad_frames_get_errors_and_session_survives(server, raw, code):
    c = await Client.connect(server.ws_url)
    await c.send(raw)
    err = await c.recv()
    assert err["type"] == "error" and err["code"] == code, err
    assert err["message"]
    frames = await c.run(HELLO)
    assert done_of(frames)["status"] == "ok"
    await c.close()


async def test_oversized_source_is_too_large(server):
    c = await Client.connect(server.ws_url)
    big = HELLO + "// " + "x" * 70000 + "\n"
    await c.send({"type": "run", "id": "big", "source": big})
    err = await c.recv()
    assert err == {**err, "type": "error", "code": "too_large", "id": "big"}
    frames = await c.run(HELLO)
    # the rejected run got no done: the next done belongs to the next run
    assert done_of(frames)["id"] == "r1"
    await c.close()


async def test_bad_file_names_are_bad_request(server):
    c = await Client.connect(server.ws_url)
    for name in ("../evil.go", "/etc/x.go", "a/../../b.go", ".hidden.go", "a\\b.go"):
        await c.send({"type": "run", "id": "n", "source": f"-- {name} --\n{HELLO}"})
        err = await c.recv()
        assert err["type"] == "error" and err["code"] == "bad_request", (name, err)
        assert repr(name) in err["message"]
    many = "".join(f"-- f{i}.go --\npackage main\n" for i in range(21))
    await c.send({"type": "run", "id": "n", "source": many})
    err = await c.recv()
    assert err["code"] == "bad_request" and "20" in err["message"]
    assert done_of(await c.run(HELLO))["status"] == "ok"
    await c.close()


async def test_cancel_running_job(server):
    c = await Client.connect(server.ws_url)
    await c.send({"type": "run", "id": "long", "source": SLEEP % 30})
    frames = await c.until("output")
    t0 = time.monotonic()
    await c.send({"type": "cancel", "id": "long"})
    frames = await c.until("done")
    assert done_of(frames)["status"] == "cancelled"
    assert time.monotonic() - t0 < 2
    await asyncio.sleep(0.5)
    assert leftovers(server) == []
    await c.close()


async def test_new_run_supersedes_old(server):
    c = await Client.connect(server.ws_url)
    await c.send({"type": "run", "id": "old", "source": SLEEP % 30})
    await c.until("output")
    await c.send({"type": "run", "id": "new", "source": HELLO})
    frames = await c.until("done")
    assert frames[-1]["id"] == "old" and frames[-1]["status"] == "cancelled"
    assert all(f.get("id") == "old" for f in frames)
    frames = await c.until("done")
    assert all(f["id"] == "new" for f in frames)
    assert done_of(frames)["status"] == "ok"
    await c.close()


async def test_disconnect_while_running_leaves_no_process(server):
    # the program forks a child that ignores its parent's death: all must go
    src = ('package main\n\nimport (\n\t"fmt"\n\t"os"\n\t"os/exec"\n\t"syscall"\n\t"time"\n)\n\n'
           'func main() {\n\tif len(os.Args) > 1 {\n\t\ttime.Sleep(time.Hour)\n\t}\n'
           '\tcmd := exec.Command(os.Args[0], "child")\n'
           '\tcmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}\n'
           '\tif err := cmd.Start(); err != nil {\n\t\tfmt.Println("start:", err)\n\t}\n'
           '\tfmt.Println("started")\n\ttime.Sleep(time.Hour)\n}\n')
    c = await Client.connect(server.ws_url)
    await c.send({"type": "run", "id": "d", "source": src})
    frames = await c.until("output")
    assert frames[-1]["data"] == "started\n"
    assert len(processes_under(server.pid)) >= 2
    await c.ws.close()
    await asyncio.sleep(1.0)
    assert leftovers(server) == []


async def test_timeouts(start_server):
    srv = start_server(run_seconds=1.5)
    c = await Client.connect(srv.ws_url)
    frames = await c.run(SLEEP % 3600)
    done = done_of(frames)
    assert done["status"] == "timeout" and "1.5 s" in done["message"]
    assert done["timings"]["run_ms"] < 1500 + 1000  # stopped at the limit, not later
    assert stdout_of(frames) == "started\n"  # partial output kept
    spin = 'package main\n\nfunc main() {\n\tfor {\n\t}\n}\n'
    frames = await c.run(spin, id="spin")
    assert done_of(frames)["status"] == "timeout"
    await asyncio.sleep(0.3)
    assert leftovers(srv) == []
    await c.close()


async def test_output_limit(start_server):
    srv = start_server(output_bytes=20000)
    c = await Client.connect(srv.ws_url)
    flood = ('package main\n\nimport "fmt"\n\nfunc main() {\n\tfor {\n'
             '\t\tfmt.Println("spam spam spam spam spam")\n\t}\n}\n')
    frames = await c.run(flood)
    done = done_of(frames)
    assert done["status"] == "output_limit", done
    assert "20000 bytes" in done["message"]
    assert len(stdout_of(frames).encode()) <= 20000
    await c.close()


async def test_queue_positions_and_busy_and_disconnect_frees_place(start_server):
    srv = start_server(workers=1, queue_size=3)
    runner = await Client.connect(srv.ws_url)
    await runner.send({"type": "run", "id": "a", "source": SLEEP % 4})
    await runner.until("output")  # the only worker is busy now
    waiting = [await Client.connect(srv.ws_url) for _ in range(3)]
    for i, w in enumerate(waiting):
        await w.send({"type": "run", "id": f"w{i}", "source": HELLO})
        q = await w.recv()
        assert q["type"] == "queued" and q["position"] == i + 1 and q["queue_length"] == i + 1
        assert q["eta_ms"] > 0
    # queue full: busy at once, with a retry hint
    extra = await Client.connect(srv.ws_url)
    await extra.send({"type": "run", "id": "x", "source": HELLO})
    err = await extra.recv(timeout=2)
    assert err["code"] == "busy" and err["retry_after_ms"] > 0
    # the first waiter leaves: those behind move up at once
    await waiting[0].ws.close()
    q1 = await waiting[1].recv(timeout=2)
    q2 = await waiting[2].recv(timeout=2)
    assert (q1["position"], q2["position"]) == (1, 2)
    # positions strictly decrease to 1, then the job runs
    positions = [2]
    frames = await waiting[2].until("done", timeout=60)
    positions += [f["position"] for f in frames if f["type"] == "queued"]
    assert positions == sorted(positions, reverse=True) and positions[-1] == 1
    assert len(set(positions)) == len(positions)
    assert done_of(frames)["status"] == "ok"
    for c in (runner, waiting[1], waiting[2], extra):
        await c.close()


async def test_queue_wait_expiry(start_server):
    srv = start_server(workers=1, queue_wait_seconds=1)
    runner = await Client.connect(srv.ws_url)
    await runner.send({"type": "run", "id": "a", "source": SLEEP % 5})
    await runner.until("output")
    w = await Client.connect(srv.ws_url)
    frames = await w.run(HELLO, timeout=10)
    done = done_of(frames)
    assert done["status"] == "expired" and "queue" in done["message"]
    await runner.close()
    await w.close()


async def test_health_and_ready(server):
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
        r = await http.get("/readyz")
        assert r.status_code == 200 and r.json()["warm"] is True


async def test_idle_session_is_closed(start_server):
    import websockets

    srv = start_server(idle_session_seconds=1)
    c = await Client.connect(srv.ws_url)
    await c.send({"type": "ping", "id": "p"})
    assert await c.recv() == {"type": "pong", "id": "p"}
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await c.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_stdout_and_stderr_keep_their_order(server):
    # coalescing must not regroup lines printed a little apart on different streams
    c = await Client.connect(server.ws_url)
    src = ('package main\n\nimport (\n\t"fmt"\n\t"os"\n\t"time"\n)\n\nfunc main() {\n'
           '\tfor i := 0; i < 4; i++ {\n\t\tfmt.Println("out", i)\n'
           '\t\ttime.Sleep(3 * time.Millisecond)\n\t\tfmt.Fprintln(os.Stderr, "err", i)\n'
           '\t\ttime.Sleep(3 * time.Millisecond)\n\t}\n}\n')
    frames = await c.run(src)
    seq = [(f["stream"], line) for f in frames if f["type"] == "output"
           for line in f["data"].splitlines()]
    expected = [(s, f"{s[3:]} {i}") for i in range(4) for s in ("stdout", "stderr")]
    assert seq == expected
    await c.close()



async def test_check_flood_is_bounded_and_every_request_answered(server):
    c = await Client.connect(server.ws_url)
    src = 'package main\n\nfunc main() {\n\tvar x int = "s"\n}\n'
    for i in range(12):
        await c.send({"type": "check", "id": f"c{i}", "source": src})
    answers = {}
    while len(answers) < 12:
        f = await c.recv()
        answers[f["id"]] = f
    kinds = [f["type"] for f in answers.values()]
    assert "checked" in kinds and set(kinds) <= {"checked", "error"}
    busy = [f for f in answers.values() if f["type"] == "error"]
    assert busy and all(f["code"] == "busy" and f["retry_after_ms"] > 0 for f in busy)
    checked = next(f for f in answers.values() if f["type"] == "checked")
    assert checked["diagnostics"][0]["line"] == 4
    assert done_of(await c.run(HELLO))["status"] == "ok"
    await c.close()
