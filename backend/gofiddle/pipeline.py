"""One accepted run, start to finish: write the sources, build, vet, run or test, with
every phase sandboxed and bounded, streaming frames to the job's session."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import protocol, source, toolchain
from .config import Settings
from .jobs import Job, Result
from .sandbox import Bind, Limits, Outcome, Sandbox

log = logging.getLogger(__name__)

TOOL_OUTPUT_CAP = 1 << 20  # the toolchain's own chatter; more than this is never useful
PUMP_DRAIN_SECONDS = 0.5  # after exit, how long orphans may hold the pipes open


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str
    outcome: Outcome | None
    timed_out: bool
    ms: int


@dataclass
class Workspace:
    root: Path
    files: source.Files
    test: bool

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def binary(self) -> Path:
        return self.root / "out" / "prog"


@dataclass
class OutputBudget:
    limit: int
    used: int = 0
    exceeded: bool = False

    def take(self, n: int) -> int:
        allowed = max(0, min(n, self.limit - self.used))
        self.used += allowed
        if allowed < n:
            self.exceeded = True
        return allowed


@dataclass
class RunState:
    budget: OutputBudget
    tail: list[str] = field(default_factory=list)  # for test diagnostics


class Pipeline:
    def __init__(self, settings: Settings, sandbox: Sandbox, tools: toolchain.Toolchain,
                 metrics: Any | None = None) -> None:
        self.s = settings
        self.sandbox = sandbox
        self.tools = tools
        self.metrics = metrics
        self.jobs_dir = settings.data_path / "jobs"
        self.gocache = settings.gocache_path
        self.config_dir = settings.data_path / "goconfig"

    # ---- workspaces -----------------------------------------------------
    def prepare_dirs(self) -> None:
        self.gocache.mkdir(parents=True, exist_ok=True)
        self.tools.write_config(self.config_dir)
        if self.jobs_dir.exists():
            # leftovers of a crashed server: nothing runs in them any more
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def workspace(self, text: str, mode: str) -> Workspace:
        files = source.parse(text, max_files=self.s.max_files)
        test = mode == "test" or (mode == "run" and source.is_test_program(files))
        files = source.prepare(files, go_version=self.tools.version, test=test)
        root = self.jobs_dir / uuid.uuid4().hex
        (root / "out").mkdir(parents=True)
        source.write(files, root / "src")
        return Workspace(root, files, test)

    @contextlib.asynccontextmanager
    async def open_workspace(self, text: str, mode: str):  # type: ignore[no-untyped-def]
        ws = await asyncio.to_thread(self.workspace, text, mode)
        try:
            yield ws
        finally:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, ws.root, True))

    # ---- the toolchain, sandboxed ---------------------------------------
    def tool_binds(self, ws: Workspace) -> list[Bind]:
        return [
            Bind(self.tools.goroot),
            Bind(self.gocache, writable=True),
            Bind(self.config_dir),
            Bind(ws.root, writable=True),
        ]

    async def run_tool(self, argv: list[str], ws: Workspace, wall: float,
                       stdin_data: bytes | None = None) -> ToolRun:
        start = time.monotonic()
        limits = Limits.for_toolchain(self.s, wall)
        env = self.tools.env(self.s, self.gocache, self.config_dir)
        timed_out = False
        outcome: Outcome | None = None
        out = err = b""
        async with self.sandbox.spawn(argv, kind="toolchain", limits=limits,
                                      binds=self.tool_binds(ws), env=env, cwd=str(ws.src),
                                      stdin=stdin_data is not None) as sp:
            try:
                async with asyncio.timeout(wall):
                    if stdin_data is not None and sp.stdin is not None:
                        sp.stdin.write(stdin_data)
                        with contextlib.suppress(ConnectionError):
                            await sp.stdin.drain()
                        sp.stdin.close()
                    out, err = await asyncio.gather(
                        sp.stdout.read(TOOL_OUTPUT_CAP), sp.stderr.read(TOOL_OUTPUT_CAP))
                    outcome = await sp.wait()
            except TimeoutError:
                timed_out = True
        ms = int((time.monotonic() - start) * 1000)
        rc = outcome.returncode if outcome is not None else -9
        job_dir = str(ws.src)
        return ToolRun(rc, toolchain.scrub(out.decode("utf-8", "replace"), job_dir),
                       toolchain.scrub(err.decode("utf-8", "replace"), job_dir),
                       outcome, timed_out, ms)

    def tool_failure(self, what: str, run: ToolRun, wall: float) -> str | None:
        if run.timed_out:
            return f"{what} took longer than {wall:g} s and was stopped"
        if run.outcome is not None and run.outcome.oom_killed:
            return f"{what} ran out of memory ({human_bytes(self.s.build_memory_bytes)} limit)"
        return None

    async def build(self, job: Job, ws: Workspace) -> tuple[Result | None, int]:
        await job.emit(protocol.started(job.id, "build"))
        out = str(ws.binary)
        argv = self.tools.test_build_cmd(out) if ws.test else self.tools.build_cmd(out)
        run = await self.run_tool(argv, ws, self.s.build_seconds)
        self.observe("build", run.ms, "ok" if run.returncode == 0 else "failed")
        if run.returncode == 0 and not run.timed_out:
            return None, run.ms
        reason = self.tool_failure("the build", run, self.s.build_seconds)
        text = toolchain.build_output_text(run.stdout, run.stderr)
        items = toolchain.parse_text(text, str(ws.src), ws.files.display)
        if reason:
            items.append({"file": "", "line": 0, "col": 0, "severity": "error",
                          "message": reason})
        if items:
            await job.emit(protocol.diagnostics(job.id, "build", items))
        return Result(protocol.BUILD_FAILED, message=reason or first_message(items),
                      timings={"build_ms": run.ms}), run.ms

    async def vet(self, job: Job, ws: Workspace) -> tuple[Result | None, int]:
        await job.emit(protocol.started(job.id, "vet"))
        run = await self.run_tool(self.tools.vet_cmd(), ws, self.s.vet_seconds)
        # go vet -json writes findings to stdout (Go >= 1.26) or stderr (older)
        items = toolchain.parse_vet(run.stdout + "\n" + run.stderr, str(ws.src),
                                    ws.files.display)
        reason = self.tool_failure("go vet", run, self.s.vet_seconds)
        self.observe("vet", run.ms, "ok" if not items and not reason else "failed")
        if reason:
            items.append({"file": "", "line": 0, "col": 0, "severity": "error",
                          "message": reason})
        if not items and run.returncode != 0:
            items = toolchain.parse_text(run.stderr, str(ws.src), ws.files.display)
        if items:
            await job.emit(protocol.diagnostics(job.id, "vet", items))
            status = protocol.VET_FAILED
            if any(i["severity"] == "error" for i in items) and not reason:
                status = protocol.BUILD_FAILED
            return Result(status, message=reason or first_message(items),
                          timings={"build_ms": run.ms}), run.ms
        return None, run.ms

    # ---- the program ----------------------------------------------------
    async def execute(self, job: Job) -> Result:
        req = job.request
        try:
            async with self.open_workspace(req.source, req.mode) as ws:
                return await self._execute(job, ws)
        except source.BuildRefused as e:
            await job.emit(protocol.diagnostics(job.id, "build", [
                {"file": e.file, "line": e.line, "col": 0, "severity": "error",
                 "message": str(e)}]))
            return Result(protocol.BUILD_FAILED, message=str(e))
        except protocol.ProtocolError as e:
            await job.emit(protocol.diagnostics(job.id, "build", [
                {"file": "", "line": 0, "col": 0, "severity": "error", "message": e.message}]))
            return Result(protocol.BUILD_FAILED, message=e.message)

    async def _execute(self, job: Job, ws: Workspace) -> Result:
        req = job.request
        timings = {"build_ms": 0, "run_ms": 0}
        if req.mode == "vet":
            failed, ms = await self.vet(job, ws)
            timings["build_ms"] = ms
            if failed:
                failed.timings = timings
                return failed
            return Result(protocol.OK, timings=timings)
        failed, timings["build_ms"] = await self.build(job, ws)
        if failed:
            return failed
        if req.vet and req.mode != "build":
            failed, ms = await self.vet(job, ws)
            timings["build_ms"] += ms
            if failed:
                failed.timings = timings
                return failed
        if req.mode == "build":
            return Result(protocol.OK, timings=timings,
                          message="built; not run (mode build)")
        result = await self.run_program(job, ws)
        result.timings = {**timings, **result.timings}
        return result

    def observe(self, phase: str, ms: int, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.phase_duration.labels(phase=phase, outcome=outcome).observe(ms / 1000)

    async def run_program(self, job: Job, ws: Workspace) -> Result:
        phase = "test" if ws.test else "run"
        await job.emit(protocol.started(job.id, phase))
        limits = Limits.for_program(self.s)
        argv = ["/prog"] + (["-test.v=true"] if ws.test else [])
        env = {
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "GOMAXPROCS": str(self.s.run_gomaxprocs),
            # no cgroupfs inside: tell the GC about the limit so it works before the OOM
            "GOMEMLIMIT": f"{max(1, self.s.run_memory_bytes * 9 // 10 >> 20)}MiB",
            "PATH": "/",
            "TZ": "UTC",
        }
        state = RunState(OutputBudget(self.s.output_bytes))
        timed_out = False
        outcome: Outcome | None = None
        start = time.monotonic()
        async with self.sandbox.spawn(argv, kind="program", limits=limits,
                                      binds=[Bind(ws.binary, "/prog")], env=env,
                                      cwd="/tmp", stdin=True) as sp:
            try:
                async with asyncio.timeout(self.s.run_seconds):
                    async with asyncio.TaskGroup() as tg:
                        feeder = tg.create_task(self.feed_stdin(job, sp))
                        pumps = [
                            tg.create_task(self.pump(job, sp.stdout, "stdout", state, sp)),
                            tg.create_task(self.pump(job, sp.stderr, "stderr", state, sp)),
                        ]
                        outcome = await sp.wait()
                        feeder.cancel()
                        # orphans (a setsid grandchild) may hold the pipes: don't wait forever
                        _, pending = await asyncio.wait(pumps, timeout=PUMP_DRAIN_SECONDS)
                        if pending:
                            await sp.stop()
            except TimeoutError:
                timed_out = True
        run_ms = int((time.monotonic() - start) * 1000)
        self.observe(phase, run_ms, "timeout" if timed_out else "done")
        timings = {"run_ms": run_ms}
        if timed_out:
            return Result(protocol.TIMEOUT, timings=timings,
                          message=f"the program ran longer than {self.s.run_seconds:g} s "
                                  "(wall-clock limit) and was stopped")
        assert outcome is not None
        if state.budget.exceeded:
            return Result(protocol.OUTPUT_LIMIT, timings=timings,
                          message=f"the program wrote more than "
                                  f"{human_bytes(self.s.output_bytes)} of output and was "
                                  "stopped")
        if outcome.oom_killed:
            return Result(protocol.MEMORY_LIMIT, exit_code=outcome.returncode, timings=timings,
                          message=f"the program used more than "
                                  f"{human_bytes(self.s.run_memory_bytes)} of memory and was "
                                  "stopped")
        rc = outcome.returncode
        if rc == 0:
            return Result(protocol.OK, exit_code=0, timings=timings)
        cpu = outcome.cpu_seconds
        if outcome.signalled and cpu is not None and cpu >= self.s.run_cpu_seconds * 0.95:
            return Result(protocol.TIMEOUT, exit_code=rc, timings=timings,
                          message=f"the program used more than {self.s.run_cpu_seconds} s of "
                                  "CPU time and was stopped")
        message = None
        if outcome.pids_exhausted:
            message = (f"the program hit the limit of {self.s.run_pids} processes/threads")
        if ws.test:
            items = toolchain.parse_test_failures("".join(state.tail), ws.files.display)
            if items:
                await job.emit(protocol.diagnostics(job.id, "test", items))
            return Result(protocol.TESTS_FAILED, exit_code=rc, timings=timings,
                          message=message or first_message(items) or "tests failed")
        return Result(protocol.EXIT, exit_code=rc, timings=timings, message=message)

    async def feed_stdin(self, job: Job, sp: Any) -> None:
        writer = sp.stdin
        if writer is None:
            return
        try:
            while True:
                data = await job.stdin.get()
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, BrokenPipeError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def pump(self, job: Job, reader: asyncio.StreamReader, stream: str,
                   state: RunState, sp: Any) -> None:
        """Forward output as it is printed, coalesced over a short window into frames of
        at most output_chunk_bytes; decoding is incremental so a split UTF-8 sequence is
        never mangled."""
        loop = asyncio.get_running_loop()
        chunk = self.s.output_chunk_bytes
        window = self.s.output_flush_ms / 1000
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        eof = False
        while not eof:
            data = await reader.read(chunk)
            if not data:
                break
            buf = bytearray(data)
            deadline = loop.time() + window
            while len(buf) < chunk:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    more = await asyncio.wait_for(reader.read(chunk - len(buf)), remaining)
                except TimeoutError:
                    break
                if not more:
                    eof = True
                    break
                buf += more
            allowed = state.budget.take(len(buf))
            text = decoder.decode(bytes(buf[:allowed]), final=allowed < len(buf))
            if text:
                if self.metrics is not None:
                    self.metrics.output_bytes.inc(allowed)
                if job.request.mode == "test" or len(state.tail) < 4096:
                    state.tail.append(text)
                await job.emit(protocol.output(job.id, stream, text))
            if state.budget.exceeded:
                await sp.stop()
                return
        tail = decoder.decode(b"", final=True)
        if tail:
            await job.emit(protocol.output(job.id, stream, tail))


def first_message(items: list[dict[str, Any]]) -> str | None:
    for it in items:
        where = f"{it['file']}:{it['line']}: " if it.get("file") else ""
        return where + str(it["message"])
    return None
