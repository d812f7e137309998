"""The bounded ring-buffer job queue, live queue positions, and the worker pool."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from . import protocol

log = logging.getLogger(__name__)
T = TypeVar("T")

_TOMBSTONE: Any = object()


class RingBuffer(Generic[T]):
    """Fixed capacity FIFO. push and pop are O(1); remove() leaves a tombstone in O(1)
    (order of the rest undisturbed), and tombstones are squeezed out only when the
    physical slots run out, so the amortised cost stays O(1)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._slots: list[Any] = [None] * capacity
        self._head = 0
        self._used = 0  # occupied physical slots, tombstones included
        self._index: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __iter__(self) -> Iterator[T]:
        for i in range(self._used):
            item = self._slots[(self._head + i) % self.capacity]
            if item is not _TOMBSTONE:
                yield item

    @property
    def full(self) -> bool:
        return len(self._index) >= self.capacity

    def push(self, item: T) -> bool:
        if self.full:
            return False
        if item in self._index:
            raise ValueError("item already queued")
        if self._used == self.capacity:
            self._compact()
        slot = (self._head + self._used) % self.capacity
        self._slots[slot] = item
        self._index[item] = slot
        self._used += 1
        return True

    def pop(self) -> T | None:
        self._trim_head()
        if self._used == 0:
            return None
        item = self._slots[self._head]
        self._slots[self._head] = None
        self._head = (self._head + 1) % self.capacity
        self._used -= 1
        del self._index[item]
        self._trim_head()
        return item

    def remove(self, item: T) -> bool:
        slot = self._index.pop(item, None)
        if slot is None:
            return False
        self._slots[slot] = _TOMBSTONE
        self._trim_head()
        self._trim_tail()
        return True

    def _trim_head(self) -> None:
        while self._used and self._slots[self._head] is _TOMBSTONE:
            self._slots[self._head] = None
            self._head = (self._head + 1) % self.capacity
            self._used -= 1

    def _trim_tail(self) -> None:
        while self._used:
            last = (self._head + self._used - 1) % self.capacity
            if self._slots[last] is not _TOMBSTONE:
                break
            self._slots[last] = None
            self._used -= 1

    def _compact(self) -> None:
        live = list(self)
        self._slots = [None] * self.capacity
        self._head = 0
        self._used = 0
        self._index.clear()
        for item in live:
            self._slots[self._used] = item
            self._index[item] = self._used
            self._used += 1


CANCEL_MESSAGES = {
    "user": "stopped by the user",
    "supersede": "replaced by a newer run",
    "disconnect": "the session closed",
    "shutdown": "the server is shutting down",
}


Emit = Callable[[dict[str, Any]], Awaitable[None]]
Notify = Callable[[dict[str, Any]], None]


@dataclass(eq=False)
class Job:
    """One accepted `run`. Exactly one `done` is ever sent for it."""

    request: protocol.Run
    session: str
    client: str
    emit: Emit  # awaits: applies backpressure to output
    notify: Notify  # never blocks: queue positions
    enqueued_at: float = field(default_factory=time.monotonic)
    state: str = "new"  # new, queued, running, done
    position: int = 0
    cancel_cause: str | None = None
    cancel_message: str | None = None
    task: asyncio.Task[Any] | None = None
    stdin: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    stdin_bytes: int = 0
    stdin_closed: bool = False
    started_at: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    expiry: asyncio.TimerHandle | None = None
    degraded: bool = False

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def queue_ms(self) -> int:
        end = self.started_at if self.started_at is not None else time.monotonic()
        return int((end - self.enqueued_at) * 1000)

    async def finish(self, status: str, *, timings: dict[str, int] | None = None,
                     exit_code: int | None = None, cached: bool | None = None,
                     message: str | None = None) -> bool:
        if self.finished.is_set() or self.state == "done":
            return False
        self.state = "done"
        t = {"queue_ms": self.queue_ms, "build_ms": 0, "run_ms": 0}
        t.update(timings or {})
        try:
            # emit of a non-output frame never waits for the client, so the done is in the
            # session's outbox before a superseding run can put anything there
            await self.emit(protocol.done(self.id, status, timings=t, exit_code=exit_code,
                                          cached=cached, message=message))
        except Exception:
            log.debug("done for %s not delivered", self.id, exc_info=True)
        finally:
            self.finished.set()
        return True

    def cancelled_message(self) -> str:
        cause = self.cancel_cause or "shutdown"
        return self.cancel_message or CANCEL_MESSAGES.get(cause, cause)

    def ensure_finished(self, task: asyncio.Task[Any]) -> None:
        """Done-callback for the task running the job: a task cancelled before its first
        step never runs its own cleanup, yet the job still owes its session a done."""
        if not self.finished.is_set() and self.state != "done":
            asyncio.get_running_loop().create_task(
                self.finish(protocol.CANCELLED, message=self.cancelled_message()))


@dataclass
class ServiceTimes:
    """Moving average of recent job times, for queue ETAs."""

    window: int
    default_ms: float
    _samples: deque[float] = field(default_factory=deque)

    def add(self, ms: float) -> None:
        self._samples.append(ms)
        while len(self._samples) > self.window:
            self._samples.popleft()

    @property
    def mean_ms(self) -> float:
        return sum(self._samples) / len(self._samples) if self._samples else self.default_ms


class JobQueue:
    """Ring buffer plus the bookkeeping that tells every queued session its position."""

    def __init__(self, capacity: int, workers: int, times: ServiceTimes,
                 max_wait: float, on_change: Callable[[], None] | None = None) -> None:
        self.ring: RingBuffer[Job] = RingBuffer(capacity)
        self.workers = max(1, workers)
        self.times = times
        self.max_wait = max_wait
        self._ready = asyncio.Condition()
        self._on_change = on_change
        self.expired_handler: Callable[[Job], Awaitable[None]] | None = None
        # start times of running jobs, and the longest a job may take: for ETAs
        self.running_started: Callable[[], list[float]] = list
        self.max_job_seconds = 60.0

    def __len__(self) -> int:
        return len(self.ring)

    @property
    def capacity(self) -> int:
        return self.ring.capacity

    def eta_ms(self, position: int) -> int:
        return self.etas_ms(position)[-1]

    def etas_ms(self, count: int) -> list[int]:
        """How long until each of the next `count` queued jobs starts: simulate the workers,
        each free once its running job is done. A running job that has already outlived
        the average is assumed to be about half done (capped by the longest a job may
        take), so a burst of slow programs does not leave everyone behind a too-short
        estimate."""
        mean = self.times.mean_ms / 1000
        now = time.monotonic()
        free: list[float] = []
        for started in self.running_started()[: self.workers]:
            elapsed = now - started
            remaining = mean - elapsed
            if remaining <= 0:
                remaining = min(elapsed, max(0.0, self.max_job_seconds - elapsed))
            free.append(max(0.0, remaining))
        free += [0.0] * (self.workers - len(free))
        heapq.heapify(free)
        starts = []
        for _ in range(count):
            t = heapq.heappop(free)
            starts.append(t)
            heapq.heappush(free, t + mean)
        return [int(t * 1000) for t in starts]

    def retry_after_ms(self, floor_ms: int) -> int:
        return max(floor_ms, int(len(self.ring) / self.workers * self.times.mean_ms))

    def put(self, job: Job) -> bool:
        if not self.ring.push(job):
            return False
        job.state = "queued"
        job.position = 0
        if self.max_wait > 0:
            job.expiry = asyncio.get_running_loop().call_later(
                self.max_wait, self._expire, job)
        self._changed()
        self._wake()
        return True

    def remove(self, job: Job) -> bool:
        if not self.ring.remove(job):
            return False
        if job.expiry is not None:
            job.expiry.cancel()
        self._changed()
        return True

    async def get(self) -> Job:
        async with self._ready:
            while True:
                job = self.ring.pop()
                if job is not None:
                    break
                await self._ready.wait()
        if job.expiry is not None:
            job.expiry.cancel()
        self._changed()
        return job

    def drain(self) -> list[Job]:
        jobs = []
        while (job := self.ring.pop()) is not None:
            if job.expiry is not None:
                job.expiry.cancel()
            jobs.append(job)
        self._changed()
        return jobs

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._ready:
                self._ready.notify()

        asyncio.get_running_loop().create_task(notify())

    def _expire(self, job: Job) -> None:
        if job.state == "queued" and self.remove(job) and self.expired_handler is not None:
            asyncio.get_running_loop().create_task(self.expired_handler(job))

    def _changed(self) -> None:
        length = len(self.ring)
        etas: list[int] | None = None
        for position, job in enumerate(self.ring, start=1):
            if job.position != position:
                if etas is None:
                    etas = self.etas_ms(length)
                job.position = position
                job.notify(protocol.queued(job.id, position, length, etas[position - 1]))
        if self._on_change is not None:
            self._on_change()


@dataclass
class Result:
    status: str
    exit_code: int | None = None
    message: str | None = None
    timings: dict[str, int] = field(default_factory=dict)
    cached: bool | None = None




class WorkerPool:
    """`workers` tasks taking jobs in order; each job runs in a task of its own so that a
    cancel reaches it (and, through the sandbox's context managers, its processes)."""

    def __init__(self, queue: JobQueue, size: int,
                 execute: Callable[[Job], Awaitable[Result]],
                 on_done: Callable[[Job, Result], None] | None = None) -> None:
        self.queue = queue
        self.size = size
        self.execute = execute
        self.on_done = on_done
        self.busy = 0
        self.running: set[Job] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(i), name=f"worker-{i}")
                       for i in range(self.size)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self, index: int) -> None:
        while True:
            job = await self.queue.get()
            if job.finished.is_set() or job.cancel_cause is not None:
                continue
            job.state = "running"
            job.started_at = time.monotonic()
            self.busy += 1
            self.running.add(job)
            job.task = asyncio.get_running_loop().create_task(self._run(job))
            job.task.add_done_callback(job.ensure_finished)
            try:
                await asyncio.wait([job.task])
            except asyncio.CancelledError:
                job.cancel_cause = job.cancel_cause or "shutdown"
                job.task.cancel()
                await asyncio.wait([job.task])
                raise
            finally:
                self.busy -= 1
                self.running.discard(job)

    async def _run(self, job: Job) -> None:
        result: Result
        try:
            if job.cancel_cause is not None:
                raise asyncio.CancelledError
            result = await self.execute(job)
        except asyncio.CancelledError:
            result = Result(protocol.CANCELLED, message=job.cancelled_message())
        except Exception:
            log.exception("job %s failed", job.id)
            result = Result(protocol.INTERNAL_ERROR, message="internal error; it was logged")
        if job.started_at is not None:
            self.queue.times.add((time.monotonic() - job.started_at) * 1000)
        await job.finish(result.status, timings=result.timings, exit_code=result.exit_code,
                         cached=result.cached, message=result.message)
        if self.on_done is not None:
            self.on_done(job, result)
