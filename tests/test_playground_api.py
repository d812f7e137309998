"""Issue 5: the Go-playground-compatible HTTP API (/compile, /fmt, /vet, /version) and
sharing (HTTP and WebSocket, durability, limits), against real servers and the real
toolchain.

The expected JSON shapes are golang/playground's: `response` in sandbox.go (Errors,
Events, Status, IsTest, TestsFailed, plus VetErrors/VetOK only when set), `Event` in
play.go, `fmtResponse` in fmt.go and the struct in version.go."""

from __future__ import annotations

import asyncio
import re
import signal
from typing import Any

import httpx
import pytest

from conftest import HELLO, ROOT, Client

pytestmark = pytest.mark.asyncio(loop_scope="session")

COMPILE_KEYS = {"Errors", "Events", "Status", "IsTest", "TestsFailed"}
ID_RE = re.compile(r"^[A-Za-z0-9_-]{10,16}$")
TEMPLATES = ROOT / "backend" / "gofiddle" / "templates"

VET_BAD = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Printf("%d\\n", "x")\n}\n'
UNUSED = "package main\n\nfunc main() {\n\tx := 1\n}\n"
TESTS = ('package main\n\nimport "testing"\n\n'
         'func TestBad(t *testing.T) { t.Error("boom") }\n\n'
         "func TestGood(t *testing.T) {}\n")
PACED = ('package main\n\nimport (\n\t"fmt"\n\t"os"\n\t"time"\n)\n\nfunc main() {\n'
         '\tfmt.Println("out")\n\ttime.Sleep(300 * time.Millisecond)\n'
         '\tfmt.Fprintln(os.Stderr, "err")\n\tos.Exit(3)\n}\n')
FOREVER = ('package main\n\nimport (\n\t"fmt"\n\t"time"\n)\n\nfunc main() {\n'
           '\tfmt.Println("before")\n\tfor {\n\t\ttime.Sleep(time.Second)\n\t}\n}\n')


def check_compile_shape(body: dict[str, Any]) -> None:
    """Key set and JSON types exactly as the Go playground's response struct encodes."""
    assert COMPILE_KEYS <= set(body) <= COMPILE_KEYS | {"VetErrors", "VetOK"}, body
    assert isinstance(body["Errors"], str)
    assert body["Events"] is None or isinstance(body["Events"], list)
    for e in body["Events"] or []:
        assert set(e) == {"Message", "Kind", "Delay"}, e
        assert isinstance(e["Message"], str) and e["Kind"] in ("stdout", "stderr")
        assert isinstance(e["Delay"], int) and not isinstance(e["Delay"], bool)
        assert e["Delay"] >= 0
    assert isinstance(body["Status"], int) and not isinstance(body["Status"], bool)
    assert isinstance(body["IsTest"], bool)
    assert isinstance(body["TestsFailed"], int) and not isinstance(body["TestsFailed"], bool)
    if "VetErrors" in body:  # omitempty
        assert isinstance(body["VetErrors"], str) and body["VetErrors"]
    if "VetOK" in body:  # omitempty
        assert body["VetOK"] is True
        assert "VetErrors" not in body


async def post_compile(url: str, src: str, timeout: float = 60.0, **form: str
                       ) -> tuple[httpx.Response, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=timeout) as http:
        r = await http.post(url + "/compile", data={"body": src, "version": "2", **form})
    body = r.json()
    check_compile_shape(body)
    return r, body


def output(body: dict[str, Any], kind: str | None = None) -> str:
    return "".join(e["Message"] for e in body["Events"] or []
                   if kind is None or e["Kind"] == kind)


# ---- /compile ------------------------------------------------------------------


async def test_compile_success(server):
    r, body = await post_compile(server.url, HELLO)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["access-control-allow-origin"] == "*"
    assert set(body) == COMPILE_KEYS
    assert body["Errors"] == "" and body["Status"] == 0
    assert body["IsTest"] is False and body["TestsFailed"] == 0
    assert [(e["Message"], e["Kind"]) for e in body["Events"]] == [("hello, world\n", "stdout")]

    _, vetted = await post_compile(server.url, HELLO, withVet="true")
    assert set(vetted) == COMPILE_KEYS | {"VetOK"} and vetted["VetOK"] is True
    assert output(vetted) == "hello, world\n"


async def test_compile_exit_code_streams_and_real_delays(server):
    _, body = await post_compile(server.url, PACED)
    assert body["Errors"] == "" and body["Status"] == 3
    assert [(e["Message"], e["Kind"]) for e in body["Events"]] == [
        ("out\n", "stdout"), ("err\n", "stderr")]
    # Delay is wall-clock nanoseconds since the previous event: the program slept 300 ms
    assert body["Events"][1]["Delay"] >= 250_000_000


async def test_compile_no_output_is_an_empty_list(server):
    _, body = await post_compile(server.url, "package main\n\nfunc main() {}\n")
    assert body["Events"] == [] and body["Errors"] == "" and body["Status"] == 0


async def test_compile_build_error(server):
    r, body = await post_compile(server.url, UNUSED, withVet="true")
    assert r.status_code == 200
    # as the playground: compiler text, ./-relative, banner stripped; nothing ran
    assert body == {"Errors": "./prog.go:4:2: declared and not used: x\n", "Events": None,
                    "Status": 0, "IsTest": False, "TestsFailed": 0}


async def test_compile_build_error_multi_file_names(server):
    src = ("-- prog.go --\npackage main\n\nfunc main() { f() }\n"
           "-- util.go --\npackage main\n\nfunc f() {\n\tvar s string = 1\n\t_ = s\n}\n")
    _, body = await post_compile(server.url, src)
    assert body["Events"] is None
    assert body["Errors"].startswith("./util.go:4:17: cannot use 1"), body


async def test_compile_vet_error_still_runs(server):
    _, body = await post_compile(server.url, VET_BAD, withVet="true")
    assert body["Errors"] == ""
    assert re.fullmatch(r'\./prog\.go:6:\d+: fmt\.Printf format %d has arg "x" of wrong '
                        r"type string\n", body["VetErrors"]), body["VetErrors"]
    assert "VetOK" not in body
    # the Go playground runs the program anyway and shows both
    assert output(body) == "%!d(string=x)\n" and body["Status"] == 0

    _, unvetted = await post_compile(server.url, VET_BAD)
    assert set(unvetted) == COMPILE_KEYS  # vet only when asked
    assert output(unvetted) == "%!d(string=x)\n"


async def test_compile_tests(server):
    _, body = await post_compile(server.url, TESTS, withVet="true")
    assert body["IsTest"] is True and body["TestsFailed"] == 1
    assert body["Status"] == 1 and body["Errors"] == ""
    text = output(body)
    assert "--- FAIL: TestBad" in text and "--- PASS: TestGood" in text

    passing = TESTS.replace('t.Error("boom")', "")
    _, ok = await post_compile(server.url, passing)
    assert ok["IsTest"] is True and ok["TestsFailed"] == 0 and ok["Status"] == 0
    assert "PASS" in output(ok)


async def test_compile_json_body(server):
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(server.url + "/compile", json={"Body": HELLO, "WithVet": True})
    body = r.json()
    check_compile_shape(body)
    assert output(body) == "hello, world\n" and body.get("VetOK") is True


async def test_compile_bad_requests(server):
    async with httpx.AsyncClient(timeout=30) as http:
        empty = await http.post(server.url + "/compile", data={"body": ""})
        huge = await http.post(server.url + "/compile",
                               data={"body": "package main\n//" + "x" * 70000})
        pre = await http.options(server.url + "/compile")
    assert empty.status_code == 400 and empty.json()["Errors"]
    assert huge.status_code == 413 and "limit" in huge.json()["Errors"]
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "*"


async def test_compile_timeout(start_server):
    srv = start_server(run_seconds=2)
    _, body = await post_compile(srv.url, FOREVER)
    assert body["Errors"] == "timeout running program"
    assert body["Status"] == 0
    # the output printed before the limit is kept (the Go playground drops it)
    assert output(body) == "before\n"


async def test_compile_busy(start_server):
    srv = start_server(workers=1, queue_size=1, breaker_open_seconds=600, run_seconds=20)
    blocker = await Client.connect(srv.ws_url)
    await blocker.send({"type": "run", "id": "a", "source": FOREVER})
    await blocker.until("started", timeout=60)
    while True:  # wait until the program (not just the build) holds the worker
        f = await blocker.recv()
        if f["type"] == "output":
            break
    queued = await Client.connect(srv.ws_url)
    await queued.send({"type": "run", "id": "b", "source": HELLO})
    await queued.until("queued")
    r, body = await post_compile(srv.url, HELLO)
    assert r.status_code == 503, body
    assert int(r.headers["retry-after"]) >= 1 and body["Errors"]
    await blocker.close()
    await queued.close()


async def test_vet_endpoint(server):
    async with httpx.AsyncClient(timeout=60) as http:
        bad = (await http.post(server.url + "/vet", data={"body": VET_BAD})).json()
        good = (await http.post(server.url + "/vet", data={"body": HELLO})).json()
    check_compile_shape(bad)
    assert re.fullmatch(r'\./prog\.go:6:\d+: fmt\.Printf format %d has arg "x" of wrong '
                        r"type string\n", bad["Errors"])
    assert bad["Events"] is None
    assert good["Errors"] == ""


async def test_version(server):
    async with httpx.AsyncClient() as http:
        r = await http.get(server.url + "/version")
    assert r.headers["access-control-allow-origin"] == "*"
    v = r.json()
    assert set(v) == {"Version", "Release", "Name"}
    assert v["Version"].startswith("go1.27") and v["Release"] == "go1.27"
    assert v["Name"] == "Go 1.27"


# ---- /fmt ----------------------------------------------------------------------


async def post_fmt(url: str, src: str, **form: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(url + "/fmt", data={"body": src, **form})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    body = r.json()
    assert set(body) == {"Body", "Error"} and all(isinstance(v, str) for v in body.values())
    return body


async def test_fmt_plain(server):
    body = await post_fmt(server.url, "package main\nimport \"fmt\"\nfunc main() {\n"
                                      "fmt.Println( 1 )\n}\n")
    assert body == {"Body": 'package main\n\nimport "fmt"\n\nfunc main() {\n'
                            "\tfmt.Println(1)\n}\n", "Error": ""}


async def test_fmt_syntax_error(server):
    body = await post_fmt(server.url, "package main\n\nfunc main() {\n\tfmt.Println(1\n}\n")
    assert body["Body"] == ""
    # go/scanner's ErrorList text, prefixed with the file name as the playground does
    assert re.match(r"^prog\.go:4:\d+: ", body["Error"]), body["Error"]


async def test_fmt_imports(server):
    src = ('package main\n\nimport "os"\n\nfunc main() {\n'
           '\tfmt.Println(strings.ToUpper("hi"))\n}\n')
    fixed = await post_fmt(server.url, src, imports="true")
    assert fixed == {"Body": 'package main\n\nimport (\n\t"fmt"\n\t"strings"\n)\n\n'
                             'func main() {\n\tfmt.Println(strings.ToUpper("hi"))\n}\n',
                     "Error": ""}
    untouched = await post_fmt(server.url, src, imports="false")
    assert untouched["Body"] == src


async def test_fmt_txtar_keeps_file_names(server):
    src = ("package main\nfunc main() {}\n"
           "-- util/util.go --\npackage util\nfunc F()   {}\n"
           "-- go.mod --\nmodule play\n")
    body = await post_fmt(server.url, src)
    assert body["Body"] == ("package main\n\nfunc main() {}\n"
                            "-- util/util.go --\npackage util\n\nfunc F() {}\n"
                            "-- go.mod --\nmodule play\n")
    broken = await post_fmt(server.url, "-- a.go --\npackage main\n-- b.go --\npackage main\n"
                                         "func (\n")
    assert broken["Body"] == "" and broken["Error"].startswith("b.go:2:8: "), broken


# ---- sharing -------------------------------------------------------------------

TRICKY = "package main\r\n\r\n\tfunc main() {\t// tabs, CRLF\r\n\tprintln(\"héllo, 世界 🐹\")\r\n}"


async def share_http(url: str, text: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url + "/share", content=text.encode("utf-8"))


async def test_share_round_trip_http(server):
    r = await share_http(server.url, TRICKY)
    assert r.status_code == 200 and ID_RE.match(r.text), r.text
    snippet = r.text
    async with httpx.AsyncClient(timeout=30) as http:
        raw = await http.get(f"{server.url}/p/{snippet}.go")
    assert raw.status_code == 200
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.content == TRICKY.encode("utf-8")  # byte-exact: tabs, CRLF, no final newline
    assert (await share_http(server.url, TRICKY)).text == snippet  # same source, same id
    assert (await share_http(server.url, TRICKY + "\n")).text != snippet


async def test_share_round_trip_ws(server):
    c = await Client.connect(server.ws_url)
    await c.send({"type": "share", "id": "s1", "source": TRICKY})
    shared = (await c.until("shared"))[-1]
    await c.close()
    assert shared["id"] == "s1"
    assert shared["snippet"] == (await share_http(server.url, TRICKY)).text
    assert shared["url"].endswith(f"/p/{shared['snippet']}")
    async with httpx.AsyncClient(timeout=30) as http:
        raw = await http.get(f"{server.url}/p/{shared['snippet']}.go")
    assert raw.content == TRICKY.encode("utf-8")


async def test_unknown_snippet_is_404(server):
    async with httpx.AsyncClient(timeout=30) as http:
        for snippet in ("AAAAAAAAAAA", "not-a-valid-id!"):
            for path in (f"/p/{snippet}.go", f"/p/{snippet}", f"/embed/{snippet}"):
                r = await http.get(server.url + path)
                assert r.status_code == 404, (path, r.status_code)


async def test_snippet_pages(server):
    if not (TEMPLATES / "editor.html").exists():
        pytest.skip("templates/editor.html is not written yet")
    snippet = (await share_http(server.url, HELLO)).text
    async with httpx.AsyncClient(timeout=30) as http:
        for path in (f"/p/{snippet}", f"/embed/{snippet}"):
            r = await http.get(server.url + path)
            assert r.status_code == 200, path
            assert "text/html" in r.headers["content-type"]


async def fetch(url: str, snippet: str) -> bytes | None:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{url}/p/{snippet}.go")
    return r.content if r.status_code == 200 else None


async def test_share_survives_restart(start_server, tmp_path):
    data = tmp_path / "data"
    first = start_server(data_dir=data)
    snippet = (await share_http(first.url, TRICKY)).text
    assert first.stop() is not None
    second = start_server(data_dir=data)
    assert await fetch(second.url, snippet) == TRICKY.encode("utf-8")


async def test_acknowledged_shares_survive_kill_9(start_server, tmp_path):
    data = tmp_path / "data"
    srv = start_server(data_dir=data)
    acked: dict[str, str] = {}
    enough = asyncio.Event()

    async def writer(n: int) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            for i in range(100000):
                text = f"package main\n\n// writer {n} snippet {i} ✓\nfunc main() {{}}\n"
                try:
                    r = await http.post(srv.url + "/share", content=text.encode())
                except httpx.HTTPError:
                    return  # the server is gone
                assert r.status_code == 200, r.text
                acked[r.text] = text
                if len(acked) >= 100:
                    enough.set()

    writers = [asyncio.create_task(writer(n)) for n in range(8)]
    await asyncio.wait_for(enough.wait(), 60)
    srv.proc.send_signal(signal.SIGKILL)  # mid-flight: writers are still sharing
    await asyncio.gather(*writers)
    assert srv.proc.wait(10) == -signal.SIGKILL

    again = start_server(data_dir=data)
    async with httpx.AsyncClient(timeout=30) as http:
        got = await asyncio.gather(*(http.get(f"{again.url}/p/{s}.go") for s in acked))
    missing = [s for (s, text), r in zip(acked.items(), got, strict=True)
               if r.status_code != 200 or r.content != text.encode()]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged snippets lost"


async def test_rate_limits(start_server):
    srv = start_server(runs_per_minute=1, shares_per_minute=3)
    first, _ = await post_compile(srv.url, HELLO)
    assert first.status_code == 200
    second, body = await post_compile(srv.url, HELLO)
    assert second.status_code == 429 and "too many runs" in body["Errors"]
    assert int(second.headers["retry-after"]) >= 1

    ok = await share_http(srv.url, HELLO)
    assert ok.status_code == 200
    limited = await share_http(srv.url, HELLO + "// again\n")
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    c = await Client.connect(srv.ws_url)
    await c.send({"type": "share", "id": "s2", "source": HELLO + "// ws\n"})
    err = (await c.until("error"))[-1]
    await c.close()
    assert err["code"] == "rate_limited" and err["id"] == "s2"
    assert err["retry_after_ms"] > 0
