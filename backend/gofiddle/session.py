"""One WebSocket, one session: reads client frames, sends server frames, owns at most one
job at a time. Every bad frame gets an `error` and the session lives on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from starlette.websockets import WebSocket

from . import protocol, source
from .jobs import Job
from .server import Rejection, Server
from .store import InvalidSnippet, SnippetTooLarge

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
CLOSE_FLUSH_SECONDS = 1.0
SIDE_RETRY_MS = 500
SLOW_CLIENT_FACTOR = 4  # non-output frames queued beyond credits x this: not reading


class SlowClient(Exception):
    pass


class Session:
    def __init__(self, ws: WebSocket, server: Server, client: str) -> None:
        self.ws = ws
        self.server = server
        self.client = client
        self.id = uuid.uuid4().hex[:16]
        self.job: Job | None = None
        # output frames take a credit (backpressure on the program); other frames never
        # wait, but a client this far behind on them is not reading at all
        self.credit_limit = server.s.send_queue_frames
        self._credits = asyncio.Semaphore(self.credit_limit)
        self.outbox: asyncio.Queue[tuple[dict[str, Any] | None, bool]] = asyncio.Queue()
        self.closed = False
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._sender_task: asyncio.Task[None] | None = None

    # ---- sending --------------------------------------------------------
    async def emit(self, frame: dict[str, Any]) -> None:
        """Output waits for a credit: a slow reader slows the program down instead of
        growing the server's memory. Anything else is queued at once."""
        if self.closed:
            return
        if frame.get("type") != "output":
            self._put(frame, credited=False)
            return
        await self._credits.acquire()
        if self.closed:
            return
        self._put(frame, credited=True)

    def notify(self, frame: dict[str, Any]) -> None:
        if not self.closed:
            self._put(frame, credited=False)

    def _put(self, frame: dict[str, Any] | None, credited: bool) -> None:
        if self.outbox.qsize() >= self.credit_limit * SLOW_CLIENT_FACTOR:
            self._close_slow()
            return
        self.outbox.put_nowait((frame, credited))

    def _close_slow(self) -> None:
        if not self.closed:
            self._mark_closed()
            self.server.metrics.rejected.labels(reason="slow_client").inc()
            asyncio.get_running_loop().create_task(self._abort())

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self.closed = True
        # wake every emitter waiting for a credit: they see `closed` and return
        for _ in range(self.credit_limit):
            self._credits.release()

    async def _abort(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(CLOSE_POLICY, "client too slow")

    async def _sender(self) -> None:
        while True:
            frame, credited = await self.outbox.get()
            if frame is None:
                return
            await self.ws.send_text(json.dumps(frame, ensure_ascii=False))
            if credited:
                self._credits.release()

    # ---- the connection -------------------------------------------------
    async def serve(self) -> None:
        s = self.server
        if s.draining:
            await self.ws.close(CLOSE_TRY_AGAIN, "server shutting down")
            return
        if not s.session_limiter.acquire(self.client):
            s.metrics.rejected.labels(reason="too_many_sessions").inc()
            await self.ws.accept()
            await self.ws.send_text(json.dumps(protocol.error(
                protocol.RATE_LIMITED, "too many open sessions from your address",
                retry_after_ms=5000)))
            await self.ws.close(CLOSE_TRY_AGAIN, "too many sessions")
            return
        s.sessions.add(self)
        s.metrics.sessions_active.inc()
        try:
            await self.ws.accept()
            self.notify(protocol.hello(self.id, s.tools.version, s.s.public_limits(),
                                       ready=s.ready))
            sender = self._sender_task = asyncio.get_running_loop().create_task(self._sender())
            receiver = asyncio.get_running_loop().create_task(self._receive_loop())
            _done, _ = await asyncio.wait({sender, receiver},
                                         return_when=asyncio.FIRST_COMPLETED)
            for t in (sender, receiver):
                t.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
        finally:
            self._mark_closed()
            await self._teardown()
            s.sessions.discard(self)
            s.metrics.sessions_active.dec()
            s.session_limiter.release(self.client)

    async def _teardown(self) -> None:
        job = self.job
        for t in list(self._side_tasks):
            t.cancel()
        if job is not None and not job.finished.is_set():
            await asyncio.shield(self.server.cancel(job, "disconnect"))

    async def close(self, code: int, reason: str) -> None:
        """Used by the server at shutdown: flush what is queued (a client that does not
        read gets a short grace), then close with `code`."""
        with contextlib.suppress(Exception):
            self.outbox.put_nowait((None, False))
            if self._sender_task is not None:
                await asyncio.wait_for(asyncio.shield(self._sender_task), CLOSE_FLUSH_SECONDS)
        self._mark_closed()
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    async def _receive_loop(self) -> None:
        idle = self.server.s.idle_session_seconds
        while True:
            try:
                async with asyncio.timeout(idle):
                    message = await self.ws.receive()
            except TimeoutError:
                with contextlib.suppress(Exception):
                    await self.ws.close(CLOSE_GOING_AWAY, "idle timeout")
                return
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = message.get("bytes") or b""
            await self.handle(text)

    async def handle(self, text: str | bytes) -> None:
        s = self.server
        try:
            frame = protocol.parse(text, max_id_chars=s.s.job_id_chars,
                                   max_source_bytes=s.s.source_bytes)
        except protocol.ProtocolError as e:
            s.metrics.rejected.labels(reason=e.code).inc()
            await self.emit(e.frame())
            return
        try:
            if isinstance(frame, protocol.Run):
                await self.on_run(frame)
            elif isinstance(frame, protocol.Stdin):
                await self.on_stdin(frame)
            elif isinstance(frame, protocol.Cancel):
                await self.on_cancel(frame)
            elif isinstance(frame, protocol.Ping):
                await self.emit(protocol.pong(frame.id))
            else:
                self._side(frame)
        except Rejection as r:
            await self.emit(r.frame(getattr(frame, "id", None)))
        except protocol.ProtocolError as e:
            s.metrics.rejected.labels(reason=e.code).inc()
            await self.emit(protocol.error(e.code, e.message, getattr(frame, "id", None)))

    # ---- frames ---------------------------------------------------------
    async def on_run(self, req: protocol.Run) -> None:
        old = self.job
        if old is not None and not old.finished.is_set():
            # the old job's done(cancelled) goes out before anything of the new one
            await self.server.cancel(old, "supersede")
        job = Job(request=req, session=self.id, client=self.client,
                  emit=self.emit, notify=self.notify)
        self.server.submit(job)
        self.job = job

    def _current(self, id: str) -> Job | None:
        job = self.job
        if job is None or job.id != id or job.finished.is_set():
            return None
        return job

    async def on_cancel(self, req: protocol.Cancel) -> None:
        job = self._current(req.id)
        if job is None:
            raise protocol.ProtocolError(protocol.NOT_FOUND, f"no job '{req.id}' in flight",
                                         req.id)
        await self.server.cancel(job, "user")

    async def on_stdin(self, req: protocol.Stdin) -> None:
        job = self._current(req.id)
        if job is None:
            raise protocol.ProtocolError(protocol.NOT_FOUND, f"no job '{req.id}' in flight",
                                         req.id)
        if job.stdin_closed:
            raise protocol.ProtocolError(protocol.BAD_REQUEST, "stdin is already closed",
                                         req.id)
        if req.data:
            data = req.data.encode("utf-8", "replace")
            limit = self.server.s.stdin_bytes
            if job.stdin_bytes + len(data) > limit:
                job.stdin_closed = True
                job.stdin.put_nowait(None)
                raise protocol.ProtocolError(
                    protocol.TOO_LARGE, f"stdin is limited to {limit} bytes per run; "
                    "the program's input was closed", req.id)
            job.stdin_bytes += len(data)
            job.stdin.put_nowait(data)
        if req.eof:
            job.stdin_closed = True
            job.stdin.put_nowait(None)

    def _side(self, frame: Any) -> None:
        """format, check and share run beside the job, outside the run queue."""
        limit = self.server.s.side_requests_per_session
        if len(self._side_tasks) >= limit:
            # each waits for one of a few tool slots: a flood must not pile up sources
            self.server.metrics.rejected.labels(reason=protocol.BUSY).inc()
            raise Rejection(protocol.BUSY, f"at most {limit} format/check/share requests "
                            "at a time per session", SIDE_RETRY_MS)
        task = asyncio.get_running_loop().create_task(self._side_request(frame))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _side_request(self, frame: Any) -> None:
        s = self.server
        try:
            if isinstance(frame, protocol.Format):
                text, items = await s.format(frame.source, frame.imports)
                await self.emit(protocol.formatted(frame.id, text, items))
            elif isinstance(frame, protocol.Check):
                items = await s.check(frame.source)
                await self.emit(protocol.checked(frame.id, items))
            elif isinstance(frame, protocol.Share):
                snippet = await s.share(frame.source, self.client)
                base = str(self.ws.base_url).replace("ws://", "http://", 1).replace(
                    "wss://", "https://", 1)
                await self.emit(protocol.shared(frame.id, snippet, s.snippet_url(snippet, base)))
        except Rejection as r:
            await self.emit(r.frame(frame.id))
        except protocol.ProtocolError as e:  # SourceError included
            await self.emit(protocol.error(e.code, e.message, frame.id))
        except source.BuildRefused as e:
            await self.emit(protocol.error(protocol.BAD_REQUEST, str(e), frame.id))
        except SnippetTooLarge as e:
            await self.emit(protocol.error(protocol.TOO_LARGE, str(e), frame.id))
        except InvalidSnippet as e:
            await self.emit(protocol.error(protocol.BAD_REQUEST, str(e), frame.id))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s request failed", type(frame).__name__)
            await self.emit(protocol.error(protocol.UNAVAILABLE,
                                           "that request failed on the server", frame.id))
