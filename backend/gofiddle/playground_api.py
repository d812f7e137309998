"""The Go playground's HTTP API (`/compile`, `/fmt`, `/vet`, `/version`), so that tools
written for go.dev/play work against gofiddle unchanged.

The answers follow golang/playground's `sandbox.go` (response struct, compileAndRun),
`play.go` (Event), `fmt.go`, `vet.go` and `version.go`. A `/compile` goes through the
same queue, rate limit and sandbox as a WebSocket run: it is a `jobs.Job` whose frames are
collected instead of sent.

`/compile` answers, field by field as the Go playground does:

* ``Errors``: build errors as the compiler prints them (``./prog.go:4:2: declared and
  not used: x``, one per line, newline-terminated), or ``timeout running program``,
  ``Output too large``, or another reason the run did not finish. Empty otherwise.
* ``Events``: the program's output as ``{Message, Kind, Delay}``; ``null`` when nothing
  ran (build errors), a list (possibly empty) when it did. Unlike the Go playground
  (whose sandbox drops all output on a timeout), a run stopped by a limit keeps the
  output it printed before the limit, so a client can show it next to ``Errors``.
* ``Status``: the exit code; 0 whenever ``Errors`` is set.
* ``IsTest`` / ``TestsFailed``: the program ran as tests (no ``main``, some
  ``Test``/``Example``/``Fuzz``), and how many ``--- FAIL`` lines it printed.
* ``VetErrors``: present only when ``withVet`` was true and vet had findings; vet
  findings do not stop the run, exactly as in the Go playground (its tests.go expects
  both VetErrors and the program's output). Our pipeline stops at vet findings, so such
  a request runs a second, vet-less job through the queue (its build is a cache hit);
  if that one is refused, the answer has VetErrors and ``Events: null``.
* ``VetOK``: present (true) only when ``withVet`` was true, vet was clean and the
  program ran.

``Delay`` is wall-clock time, not the playground's fake time: nanoseconds between the
server receiving this piece of output and the previous one (for the first, since the
program started). Replaying with these delays reproduces the real pacing; pieces of the
same stream that arrive less than a millisecond apart are merged into one event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import protocol, source
from .jobs import Job
from .server import Rejection, Server

log = logging.getLogger(__name__)

RUN_TIMEOUT_ERROR = "timeout running program"  # golang/playground sandbox.go
OUTPUT_TOO_LARGE = "Output too large"  # golang/playground sandbox/sandbox.go
FAILED_TEST_PATTERN = "--- FAIL"
MERGE_NS = 1_000_000
CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
}
_ANALYZER_SUFFIX = re.compile(r" \([A-Za-z0-9_]+\)$")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_JSON_FIELDS = {"body": "body", "withvet": "withVet", "imports": "imports"}


def parse_bool(value: str | None) -> bool:
    """strconv.ParseBool's true spellings; everything else (including junk) is false."""
    return value is not None and value.strip() in _TRUE


def encode(obj: Any) -> bytes:
    # compact and newline-terminated, like Go's json.Encoder
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(encode(obj), status_code=status, media_type="application/json",
                    headers={**CORS, **(headers or {})})


def compile_response(*, errors: str = "", events: list[dict[str, Any]] | None = None,
                     status: int = 0, is_test: bool = False, tests_failed: int = 0,
                     vet_errors: str = "", vet_ok: bool = False) -> dict[str, Any]:
    """The playground's `response` struct, with its two `omitempty` fields."""
    out: dict[str, Any] = {"Errors": errors, "Events": events, "Status": status,
                           "IsTest": is_test, "TestsFailed": tests_failed}
    if vet_errors:
        out["VetErrors"] = vet_errors
    if vet_ok:
        out["VetOK"] = True
    return out


def diagnostics_text(items: Iterable[dict[str, Any]], *, vet: bool = False) -> str:
    """Structured diagnostics back into compiler text: `./prog.go:4:2: message`."""
    lines: list[str] = []
    for it in items:
        message = str(it.get("message", ""))
        if vet:
            # our vet diagnostics name their analyzer; the playground's text does not
            message = _ANALYZER_SUFFIX.sub("", message)
        first, *rest = message.split("\n")
        text = first + "".join(f"\n\t{r}" for r in rest)
        file = str(it.get("file") or "")
        if file:
            where = f"./{file}" if file.endswith(".go") else file
            if it.get("line"):
                where += f":{it['line']}"
                if it.get("col"):
                    where += f":{it['col']}"
            text = f"{where}: {text}"
        lines.append(text + "\n")
    return "".join(lines)


@dataclass
class Collector:
    """A job's `emit`: keeps the frames, stamps output with arrival time."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    stamps: list[int] = field(default_factory=list)
    run_started_ns: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def emit(self, frame: dict[str, Any]) -> None:
        now = time.monotonic_ns()
        kind = frame.get("type")
        if kind == "started" and frame.get("phase") in ("run", "test"):
            self.run_started_ns = now
        self.frames.append(frame)
        self.stamps.append(now)
        if kind == "done":
            self.done.set()

    def notify(self, frame: dict[str, Any]) -> None:
        """Queue positions mean nothing to a blocking HTTP request."""

    @property
    def final(self) -> dict[str, Any]:
        return next(f for f in reversed(self.frames) if f.get("type") == "done")

    @property
    def is_test(self) -> bool:
        return any(f.get("type") == "started" and f.get("phase") == "test"
                   for f in self.frames)

    @property
    def ran(self) -> bool:
        return self.run_started_ns is not None

    def diagnostics(self, *phases: str) -> list[dict[str, Any]]:
        return [it for f in self.frames
                if f.get("type") == "diagnostics" and f.get("phase") in phases
                for it in f.get("items", [])]

    def events(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        last = self.run_started_ns
        last_kind = None
        for frame, at in zip(self.frames, self.stamps, strict=True):
            if frame.get("type") != "output":
                continue
            delay = max(0, at - last) if last is not None else 0
            kind = frame.get("stream", "stdout")
            if events and kind == last_kind and delay < MERGE_NS:
                events[-1]["Message"] += frame.get("data", "")
            else:
                events.append({"Message": frame.get("data", ""), "Kind": kind,
                               "Delay": delay})
            last, last_kind = at, kind
        return events


class Unanswerable(Exception):
    """The run could not give a playground answer (queue full, shutting down, ...)."""

    def __init__(self, http_status: int, message: str, retry_after_ms: int | None = None
                 ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.retry_after_ms = retry_after_ms

    def response(self) -> Response:
        headers = {}
        if self.retry_after_ms:
            headers["Retry-After"] = str(max(1, -(-self.retry_after_ms // 1000)))
        return json_response(compile_response(errors=self.message), self.http_status,
                             headers)


REJECTION_STATUS = {protocol.RATE_LIMITED: 429, protocol.BUSY: 503, protocol.UNAVAILABLE: 503}


async def run_job(server: Server, client: str, text: str, mode: str, vet: bool
                  ) -> Collector:
    """Submit one job through the shared queue and wait for its `done`."""
    collector = Collector()
    request = protocol.Run(id=f"http-{uuid.uuid4().hex[:12]}", source=text,
                           mode=mode, vet=vet)  # type: ignore[arg-type]
    job = Job(request=request, session=f"http-{client}", client=client,
              emit=collector.emit, notify=collector.notify)
    try:
        server.submit(job)
    except Rejection as r:
        raise Unanswerable(REJECTION_STATUS.get(r.code, 503), r.message,
                           r.retry_after_ms) from None
    try:
        await collector.done.wait()
    except asyncio.CancelledError:
        # the client went away: its job must not keep a worker busy
        await asyncio.shield(server.cancel(job, "disconnect"))
        raise
    return collector


def answer(c: Collector, *, with_vet: bool, vet_errors: str = "",
           rerun: Collector | None = None) -> dict[str, Any]:
    """One finished job (plus, after vet findings, the run that followed) as the
    playground's response."""
    done = c.final
    status = done.get("status")
    message = str(done.get("message") or "")
    if status in (protocol.BUILD_FAILED, protocol.DEGRADED):
        items = c.diagnostics("build", "vet")
        if status == protocol.DEGRADED and not any(
                i.get("severity") == "error" for i in items):
            # overloaded and nothing wrong with the code: come back later
            raise Unanswerable(503, message or "the server is overloaded")
        text = diagnostics_text(items) or (message + "\n" if message else "build failed\n")
        return compile_response(errors=text)
    if status == protocol.VET_FAILED:
        vet_text = diagnostics_text(c.diagnostics("vet"), vet=True)
        if rerun is None:
            return compile_response(vet_errors=vet_text or message)
        return answer(rerun, with_vet=with_vet, vet_errors=vet_text or message)
    if status in (protocol.EXPIRED, protocol.CANCELLED):
        raise Unanswerable(503, message or "the run did not start; try again")
    if status == protocol.INTERNAL_ERROR:
        raise Unanswerable(500, message or "internal error")
    events = c.events() if c.ran else None
    is_test = c.is_test
    failed = sum(e["Message"].count(FAILED_TEST_PATTERN) for e in events or []) if is_test else 0
    if status in (protocol.OK, protocol.EXIT, protocol.TESTS_FAILED):
        return compile_response(
            events=events if events is not None else [], status=int(done.get("exit_code") or 0),
            is_test=is_test, tests_failed=failed, vet_errors=vet_errors,
            vet_ok=with_vet and not vet_errors)
    errors = {protocol.TIMEOUT: RUN_TIMEOUT_ERROR,
              protocol.OUTPUT_LIMIT: OUTPUT_TOO_LARGE}.get(str(status), message or str(status))
    return compile_response(errors=errors, events=events, is_test=is_test,
                            tests_failed=failed, vet_errors=vet_errors)


# ---- request parsing ---------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None past `limit` bytes (checked while reading, so a huge
    chunked upload never sits in memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def form_values(request: Request, limit: int) -> dict[str, str] | None:
    """Like Go's r.FormValue: URL query, then a form body; a JSON body
    ({"Body": ..., "WithVet": ...}) as the playground also accepts."""
    body = await read_body(request, limit)
    if body is None:
        return None
    values: dict[str, str] = dict(request.query_params)
    ctype = request.headers.get("content-type", "")
    if "form" in ctype:

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await Request(request.scope, replay).form()
        for key, value in form.multi_items():
            if isinstance(value, str):
                values[key] = value
    elif body.strip().startswith(b"{"):
        try:
            obj = json.loads(body)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            # Go matches JSON field names case-insensitively (Body, WithVet)
            for key, value in obj.items():
                name = _JSON_FIELDS.get(str(key).lower())
                if name is None:
                    continue
                if isinstance(value, str):
                    values[name] = value
                elif isinstance(value, bool):
                    values[name] = "true" if value else "false"
    return values


def client_of(server: Server, request: Request) -> str:
    # the same key the WebSocket and /share use, so limits are shared
    from .app import client_address

    return client_address(request.client and (request.client.host, request.client.port),
                          dict(request.headers), server.s.trust_forwarded_for)


def source_problem(server: Server, text: str) -> str | None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "source is not valid Unicode text"
    if size > server.s.source_bytes:
        return f"source is {size} bytes; the limit is {server.s.source_bytes}"
    return None


# ---- handlers --------------------------------------------------------------------


def routes(server: Server) -> list[Route]:
    # a form-encoded body can be three times its text (%XX); leave room for that
    body_limit = 3 * server.s.source_bytes + 4096

    async def preflight() -> Response:
        return Response(status_code=200, headers=CORS)

    async def read_source(request: Request) -> tuple[str, dict[str, str]] | Response:
        values = await form_values(request, body_limit)
        if values is None:
            return json_response(compile_response(errors="request body too large"), 413)
        text = values.get("body", "")
        if not text:
            return json_response(compile_response(errors="no program in 'body'"), 400)
        problem = source_problem(server, text)
        if problem:
            return json_response(compile_response(errors=problem), 413)
        return text, values

    async def compile_(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight()
        got = await read_source(request)
        if isinstance(got, Response):
            return got
        text, values = got
        with_vet = parse_bool(values.get("withVet"))
        client = client_of(server, request)
        try:
            first = await run_job(server, client, text, "run", with_vet)
            rerun = None
            if with_vet and first.final.get("status") == protocol.VET_FAILED:
                # the playground runs the program even when vet complains; our pipeline
                # stops at vet, so run once more without it (the build is cached)
                try:
                    rerun = await run_job(server, client, text, "run", False)
                except Unanswerable:
                    rerun = None
            return json_response(answer(first, with_vet=with_vet, rerun=rerun))
        except Unanswerable as u:
            return u.response()

    async def vet(request: Request) -> Response:
        """The playground's legacy /vet: vet output in Errors, nothing run."""
        if request.method == "OPTIONS":
            return await preflight()
        got = await read_source(request)
        if isinstance(got, Response):
            return got
        text, _ = got
        try:
            c = await run_job(server, client_of(server, request), text, "vet", True)
        except Unanswerable as u:
            return u.response()
        status = c.final.get("status")
        if status in (protocol.EXPIRED, protocol.CANCELLED, protocol.INTERNAL_ERROR):
            return Unanswerable(500 if status == protocol.INTERNAL_ERROR else 503,
                                str(c.final.get("message") or status)).response()
        items = c.diagnostics("build", "vet")
        return json_response(compile_response(errors=diagnostics_text(items, vet=True)))

    async def fmt(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight()
        values = await form_values(request, body_limit)
        if values is None:
            return json_response({"Body": "", "Error": "request body too large"}, 413)
        text = values.get("body", "")
        problem = source_problem(server, text)
        if problem:
            return json_response({"Body": "", "Error": problem}, 413)
        imports = parse_bool(values.get("imports"))
        try:
            formatted, items = await server.format(text, imports)
        except source.SourceError as e:
            return json_response({"Body": "", "Error": e.message})
        except source.BuildRefused as e:
            return json_response({"Body": "", "Error": str(e)})
        if items:
            return json_response({"Body": "", "Error": format_error(items)})
        return json_response({"Body": formatted, "Error": ""})

    async def version(request: Request) -> Response:
        if request.method == "OPTIONS":
            return await preflight()
        release = "go" + source.go_minor(server.tools.version)
        return json_response({"Version": server.tools.version, "Release": release,
                              "Name": "Go " + release[2:]})

    return [
        Route("/compile", compile_, methods=["POST", "OPTIONS"]),
        Route("/fmt", fmt, methods=["POST", "OPTIONS"]),
        Route("/vet", vet, methods=["POST", "OPTIONS"]),
        Route("/version", version, methods=["GET", "OPTIONS"]),
    ]


def format_error(items: list[dict[str, Any]]) -> str:
    """gofmt's first complaint about the first broken file, as go/scanner's ErrorList
    prints it: `prog.go:3:1: expected ... (and 2 more errors)`."""
    first_file = items[0].get("file") or source.DEFAULT_FILE
    same = [it for it in items if (it.get("file") or source.DEFAULT_FILE) == first_file]
    it = same[0]
    where = str(first_file)
    if it.get("line"):
        where += f":{it['line']}"
        if it.get("col"):
            where += f":{it['col']}"
    text = f"{where}: {it.get('message', '')}"
    if len(same) > 1:
        text += f" (and {len(same) - 1} more errors)"
    return text
