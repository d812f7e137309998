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
from .breaker import SaturationBreaker
from .config import Settings
from .jobs import Job, JobQueue, Result, ServiceTimes, WorkerPool
from .metrics import Metrics
from .pipeline import Pipeline
from .ratelimit import ConcurrencyLimiter, RateLimiter
from .sandbox import Sandbox
from .store import SQLiteSnippetStore

log = logging.getLogger(__name__)
jobs_log = logging.getLogger("gofiddle.jobs")

BREAKER_TICK_SECONDS = 0.25
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
        self.queue.running_started = lambda: [
            j.started_at for j in self.pool.running if j.started_at is not None]
        self.queue.max_job_seconds = (settings.build_seconds + settings.vet_seconds
                                      + settings.run_seconds)
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
        self.breaker = SaturationBreaker(
            capacity=settings.queue_size, saturation=settings.breaker_saturation,
            open_after=settings.breaker_open_seconds,
            cooldown=settings.breaker_cooldown_seconds, on_change=self._breaker_changed)
        self.metrics.set_breaker("closed")
        self._ticker: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------
    async def start(self) -> None:
        self.sandbox.setup()
        self.pipeline.prepare_dirs()
        self.s.snippet_db_path.parent.mkdir(parents=True, exist_ok=True)
        self.store = SQLiteSnippetStore(self.s.snippet_db_path, self.s.snippet_bytes,
                                        synchronous=self.s.snippet_sync)
        self.pool.start()
        loop = asyncio.get_running_loop()
        self._warm_task = loop.create_task(self.warm())
        self._ticker = loop.create_task(self._tick())

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
        # issue 6 hook (pipeline owner): index the warm cache for the build fast path
        await self.pipeline.warm_fast_path()
        self.ready = True
        log.info("build cache warm in %.1f s (%s, sandbox %s)", time.monotonic() - started,
                 self.tools.version, self.sandbox.mode)

    async def _tick(self) -> None:
        # time-based breaker transitions must happen even when the queue is quiet
        while True:
            await asyncio.sleep(BREAKER_TICK_SECONDS)
            self.breaker.observe(len(self.queue))

    def _breaker_changed(self, state: str) -> None:
        self.metrics.set_breaker(state)
        log.warning("circuit breaker %s (queue %d/%d)", state, len(self.queue),
                    self.queue.capacity)

    async def drain(self) -> None:
        """SIGTERM: stop taking work, tell queued sessions, let running jobs finish up to
        the deadline, then stop them and close every socket with 1001 (going away)."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d queued, %d running", len(self.queue), len(self.pool.running))
        for job in self.queue.drain():
            await self._cancel_unqueued(job, "shutdown",
                                        "the server is restarting; please run again")
        running = [j.finished.wait() for j in list(self.pool.running)]
        if running:
            await asyncio.wait([asyncio.ensure_future(w) for w in running],
                               timeout=self.s.shutdown_seconds)
            for job in list(self.pool.running):
                await self.cancel(job, "shutdown",
                                  "the server is restarting and stopped this run")
        await asyncio.gather(*(s.close(1001, "server shutting down") for s in
                               list(self.sessions)), return_exceptions=True)

    async def stop(self) -> None:
        await self.drain()
        for task in (self._warm_task, self._ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self.pool.stop()
        if self.store is not None:
            self.store.close()
        self.sandbox.close()

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
        if self.degraded(job):
            return
        if not self.queue.put(job):
            self.metrics.rejected.labels(reason=protocol.BUSY).inc()
            raise Rejection(protocol.BUSY,
                            f"the run queue is full ({self.queue.capacity} waiting); "
                            "try again shortly",
                            self.queue.retry_after_ms(self.s.busy_retry_ms))

    def degraded(self, job: Job) -> bool:
        """Breaker open: answer with a type-check now instead of a place in the queue."""
        if not self.breaker.degrading:
            return False
        job.state = "running"
        job.started_at = time.monotonic()
        job.task = asyncio.get_running_loop().create_task(self._degraded_run(job))
        job.task.add_done_callback(job.ensure_finished)
        return True

    async def _degraded_run(self, job: Job) -> None:
        status, message = protocol.DEGRADED, (
            "the server is overloaded, so only a compile check was done; "
            "run again in a little while")
        start = time.monotonic()
        try:
            await job.emit(protocol.started(job.id, "build"))
            items = await self.check(job.request.source)
            if items:
                await job.emit(protocol.diagnostics(job.id, "build", items))
        except asyncio.CancelledError:
            status, message = protocol.CANCELLED, "stopped"
        except Exception:
            log.exception("degraded check failed")
        await job.finish(status, message=message,
                         timings={"build_ms": int((time.monotonic() - start) * 1000)})
        self._count(job, status)

    async def cancel(self, job: Job, cause: str, message: str | None = None) -> None:
        """Stop the job wherever it is; returns once its `done` has been sent."""
        if job.finished.is_set():
            return
        if job.state == "queued" and self.queue.remove(job):
            await self._cancel_unqueued(job, cause,
                                        message or f"cancelled while queued ({cause})")
            return
        self._mark_cancelled(job, cause, message)
        if job.task is not None:
            job.task.cancel()
        await job.finished.wait()

    def _mark_cancelled(self, job: Job, cause: str, message: str | None) -> None:
        if job.cancel_cause is None:
            job.cancel_cause = cause
            job.cancel_message = message
            self.metrics.cancellations.labels(cause=cause).inc()

    async def _cancel_unqueued(self, job: Job, cause: str, message: str) -> None:
        """A job just taken out of the queue: it never ran, so its done is sent here."""
        self._mark_cancelled(job, cause, message)
        await job.finish(protocol.CANCELLED, message=message)
        self._count(job, protocol.CANCELLED)

    async def _expired(self, job: Job) -> None:
        await job.finish(protocol.EXPIRED,
                         message=f"waited in the queue longer than "
                                 f"{self.s.queue_wait_seconds:g} s; please run again")
        self._count(job, protocol.EXPIRED)

    def _queue_changed(self) -> None:
        self.breaker.observe(len(self.queue))
        self.metrics.queue_depth.set(len(self.queue))
        self.metrics.workers_busy.set(self.pool.busy)

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
        # imported here: only this method and check() belong to the import fixer
        from . import stdimports

        files = source.parse(text, max_files=self.s.max_files)
        multi = len(source.split_txtar(text)) > 1 or text.lstrip().startswith("-- ")
        # text before the first `-- name --` line is prog.go without a header; keep it so
        # (the Go playground's txtar formatting does the same)
        implicit = multi and not text.lstrip().startswith("-- ")
        out: dict[str, str] = {}
        items: list[dict[str, Any]] = []
        async with self.pipeline.open_workspace("package main\n", "build") as ws:

            async def gofmt(body: str) -> tuple[str | None, list[dict[str, Any]]]:
                run = await self.pipeline.run_tool([self.tools.gofmt], ws,
                                                   self.s.format_seconds,
                                                   stdin_data=body.encode())
                if run.returncode == 0 and not run.timed_out:
                    return run.stdout, []
                found = toolchain.parse_text(run.stderr, str(ws.src))
                reason = self.pipeline.tool_failure("gofmt", run, self.s.format_seconds)
                if reason:
                    found.append(toolchain.diagnostic(reason))
                return None, found

            for name, body in files.files.items():
                if not name.endswith(".go"):
                    out[name] = body
                    continue
                formatted, found = await gofmt(body)
                if formatted is not None:
                    out[name] = formatted
                    continue
                out[name] = body
                for it in found:
                    if it["file"] in ("prog.go", ""):
                        it["file"] = name
                items.extend(found or [toolchain.diagnostic("gofmt failed", name)])
            if items:
                return text, items
            if imports:

                async def refmt(body: str) -> str | None:
                    return (await gofmt(body))[0]

                try:
                    out = await stdimports.fix_imports(out, self.pipeline, refmt)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # a fixer bug must not cost the user the gofmt result
                    log.exception("fixing imports failed")
        if not multi:
            return out[next(iter(out))], []
        parts = []
        for i, (name, body) in enumerate(out.items()):
            head = i == 0 and implicit and name == source.DEFAULT_FILE
            parts.append(body if head else f"-- {name} --\n{body}")
        return "".join(parts), []

    async def check(self, text: str) -> list[dict[str, Any]]:
        # the work is shared with the import fixer, which runs inside format()'s slot
        from . import stdimports

        async with self.tool_slots:
            return await stdimports.typecheck(self.pipeline, text)

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
