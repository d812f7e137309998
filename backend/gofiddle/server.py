"""The running service: toolchain, sandbox, queue, workers, store and limits wired together.
Sessions (WebSocket) and routes (HTTP) both go through this object, so every run takes
the same queue and the same sandbox."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import protocol, source, toolchain
from .config import Settings
from .jobs import Job, JobQueue, Result, ServiceTimes, WorkerPool
from .metrics import Metrics
from .pipeline import Pipeline
from .ratelimit import ConcurrencyLimiter, RateLimiter
from .sandbox import Sandbox
from .store import SQLiteSnippetStore

log = logging.getLogger(__name__)
jobs_log = logging.getLogger("gofiddle.jobs")

WARM_MAIN = "package main\n\nimport (\n{imports})\n\nfunc main() {{}}\n"
WARM_TEST = ('package main\n\nimport "testing"\n\n'
             "func TestWarm(t *testing.T) {}\n")


@dataclass
class Rejection(Exception):
    code: str
    message: str
    retry_after_ms: int | None = None

    def frame(self, id: str | None) -> dict[str, Any]:
        extra = {"retry_after_ms": self.retry_after_ms} if self.retry_after_ms else {}
        return protocol.error(self.code, self.message, id, **extra)


class Server:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.metrics = Metrics()
        self.tools = toolchain.Toolchain.locate()
        self.sandbox = Sandbox(settings, self.metrics)
        self.pipeline = Pipeline(settings, self.sandbox, self.tools, self.metrics)
        self.times = ServiceTimes(settings.eta_window, settings.eta_default_ms)
        self.queue = JobQueue(settings.queue_size, settings.workers, self.times,
                              settings.queue_wait_seconds, on_change=self._queue_changed)
        self.queue.expired_handler = self._expired
        self.pool = WorkerPool(self.queue, settings.workers, self.pipeline.execute,
                               on_done=self._job_done)
        self.store: SQLiteSnippetStore | None = None
        self.run_limiter = RateLimiter(settings.runs_per_minute)
        self.share_limiter = RateLimiter(settings.shares_per_minute)
        self.session_limiter = ConcurrencyLimiter(settings.max_sessions_per_client)
        self.tool_slots = asyncio.Semaphore(settings.check_concurrency)
        self.ready = False
        self.warm_error: str | None = None
        self.draining = False
        self.sessions: set[Any] = set()
        self._warm_task: asyncio.Task[None] | None = None
        self.metrics.queue_capacity.set(settings.queue_size)

    # ---- lifecycle ------------------------------------------------------
    async def start(self) -> None:
        self.sandbox.setup()
        self.pipeline.prepare_dirs()
        self.s.snippet_db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteSnippetStore(self.s.snippet_db_path, self.s.snippet_bytes,
                                        synchronous=self.s.snippet_sync)
        self.pool.start()
        self._warm_task = asyncio.get_running_loop().create_task(self.warm())

    async def warm(self) -> None:
        """Compile the popular standard packages into the shared cache (build, vet and
        test deps) so the first user's run is not the one paying for it."""
        started = time.monotonic()
        pkgs = [p.strip() for p in self.s.warm_packages.split(",") if p.strip()]
        imports = "".join(f'\t_ "{p}"\n' for p in pkgs if p != "testing")
        text = (f"-- prog.go --\n{WARM_MAIN.format(imports=imports)}"
                f"-- warm_test.go --\n{WARM_TEST}")
        try:
            async with self.pipeline.open_workspace(text, "build") as ws:
                for argv in ([*self.tools.build_cmd(str(ws.binary))],
                             self.tools.vet_cmd(),
                             self.tools.test_build_cmd(str(ws.binary) + ".test")):
                    run = await self.pipeline.run_tool(argv, ws, max(300.0, self.s.build_seconds))
                    if run.returncode != 0:
                        raise RuntimeError(f"{' '.join(argv[1:3])} failed: "
                                           f"{(run.stderr or run.stdout)[-2000:]}")
        except Exception as e:
            self.warm_error = str(e)
            log.error("warming the build cache failed: %s", e)
            return
        self.ready = True
        log.info("build cache warm in %.1f s (%s, sandbox %s)", time.monotonic() - started,
                 self.tools.version, self.sandbox.mode)

    async def stop(self) -> None:
        if self._warm_task is not None:
            self._warm_task.cancel()
            with contextlib.suppress(BaseException):
                await self._warm_task
        for job in self.queue.drain():
            job.cancel_cause = "shutdown"
            await job.finish(protocol.CANCELLED, message="the server is shutting down")
        await self.pool.stop()
        if self.store is not None:
            self.store.close()

    def readiness(self) -> dict[str, Any]:
        return {
            "ready": self.ready and not self.draining,
            "warm": self.ready,
            "warm_error": self.warm_error,
            "draining": self.draining,
            "go_version": self.tools.version,
            "sandbox": self.sandbox.status(),
            "queue": {"length": len(self.queue), "capacity": self.queue.capacity},
            "workers": {"size": self.pool.size, "busy": self.pool.busy},
        }

    # ---- runs -----------------------------------------------------------
    def submit(self, job: Job) -> None:
        """Enqueue or raise Rejection; never waits."""
        if self.draining:
            raise Rejection(protocol.UNAVAILABLE, "the server is shutting down")
        # bad file names or too many files: bad_request now, not a queue slot later
        source.parse(job.request.source, max_files=self.s.max_files)
        wait = self.run_limiter.check(job.client)
        if wait > 0:
            self.metrics.rejected.labels(reason=protocol.RATE_LIMITED).inc()
            raise Rejection(protocol.RATE_LIMITED,
                            f"too many runs from your address; try again in {wait:.0f} s",
                            int(wait * 1000) + 1)
        if not self.queue.put(job):
            self.metrics.rejected.labels(reason=protocol.BUSY).inc()
            raise Rejection(protocol.BUSY,
                            f"the run queue is full ({self.queue.capacity} waiting); "
                            "try again shortly",
                            self.queue.retry_after_ms(self.s.busy_retry_ms))

    async def cancel(self, job: Job, cause: str, message: str | None = None) -> None:
        """Stop the job wherever it is; returns once its `done` has been sent."""
        if job.finished.is_set():
            return
        if job.cancel_cause is None:
            job.cancel_cause = cause
            job.cancel_message = message
            self.metrics.cancellations.labels(cause=cause).inc()
        if job.state == "queued" and self.queue.remove(job):
            await job.finish(protocol.CANCELLED,
                             message=message or f"cancelled while queued ({cause})")
            self._count(job, protocol.CANCELLED)
            return
        if job.task is not None:
            job.task.cancel()
        await job.finished.wait()

    async def _expired(self, job: Job) -> None:
        await job.finish(protocol.EXPIRED,
                         message=f"waited in the queue longer than "
                                 f"{self.s.queue_wait_seconds:g} s; please run again")
        self._count(job, protocol.EXPIRED)

    def _queue_changed(self) -> None:
        self.metrics.queue_depth.set(len(self.queue))
        self.metrics.workers_busy.set(self.pool.busy if hasattr(self, "pool") else 0)

    def _job_done(self, job: Job, result: Result) -> None:
        self._count(job, result.status)
        if job.started_at is not None:
            self.metrics.queue_wait.observe(job.started_at - job.enqueued_at)
        self.metrics.workers_busy.set(self.pool.busy)

    def _count(self, job: Job, status: str) -> None:
        self.metrics.jobs.labels(status=status).inc()
        # one line per job, no source code
        jobs_log.info("job", extra={"job": {
            "session": job.session, "id": job.id, "mode": job.request.mode,
            "status": status, "queue_ms": job.queue_ms,
            "source_bytes": len(job.request.source), "cause": job.cancel_cause}})

    # ---- format, check, share (outside the run queue) ----------------------
    async def format(self, text: str, imports: bool) -> tuple[str, list[dict[str, Any]]]:
        async with self.tool_slots:
            return await self._format(text, imports)

    async def _format(self, text: str, imports: bool) -> tuple[str, list[dict[str, Any]]]:
        files = source.parse(text, max_files=self.s.max_files)
        multi = len(source.split_txtar(text)) > 1 or text.lstrip().startswith("-- ")
        out: dict[str, str] = {}
        items: list[dict[str, Any]] = []
        async with self.pipeline.open_workspace("package main\n", "build") as ws:
            for name, body in files.files.items():
                if not name.endswith(".go"):
                    out[name] = body
                    continue
                run = await self.pipeline.run_tool([self.tools.gofmt], ws,
                                                   self.s.format_seconds,
                                                   stdin_data=body.encode())
                if run.returncode == 0 and not run.timed_out:
                    out[name] = run.stdout
                else:
                    out[name] = body
                    found = toolchain.parse_text(run.stderr, str(ws.src))
                    for it in found:
                        if it["file"] in ("prog.go", ""):
                            it["file"] = name
                    items.extend(found or [{"file": name, "line": 0, "col": 0,
                                            "severity": "error",
                                            "message": "gofmt failed"}])
        if items:
            return text, items
        if not multi:
            return out[next(iter(out))], []
        return "".join(f"-- {n} --\n{b}" for n, b in out.items()), []

    async def check(self, text: str) -> list[dict[str, Any]]:
        async with self.tool_slots:
            try:
                async with self.pipeline.open_workspace(text, "build") as ws:
                    run = await self.pipeline.run_tool(self.tools.check_cmd(), ws,
                                                       self.s.check_seconds)
                    items = toolchain.parse_check(run.stdout, str(ws.src), ws.files.display)
                    if run.returncode != 0 and not items:
                        items = toolchain.parse_text(run.stderr, str(ws.src))
                    return items
            except source.BuildRefused as e:
                return [{"file": e.file, "line": e.line, "col": 0, "severity": "error",
                         "message": str(e)}]

    async def share(self, text: str, client: str) -> str:
        wait = self.share_limiter.check(client)
        if wait > 0:
            self.metrics.rejected.labels(reason=protocol.RATE_LIMITED).inc()
            raise Rejection(protocol.RATE_LIMITED,
                            f"too many shares from your address; try again in {wait:.0f} s",
                            int(wait * 1000) + 1)
        assert self.store is not None
        snippet = await asyncio.to_thread(self.store.put, text)
        self.metrics.snippets_shared.inc()
        return snippet

    def snippet_url(self, snippet: str, base: str) -> str:
        root = (self.s.public_url or base).rstrip("/")
        return f"{root}/p/{snippet}"
