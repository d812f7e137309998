"""The only place that starts processes on user input: user programs and the Go toolchain.

Every process is started as::

    sh -c 'echo $$ > <cgroup.procs>...; exec "$@"' sh prlimit <rlimits> -- bwrap <policy> -- argv

with an empty host environment (bwrap's own pid 1 environment is readable from inside),
in its own process group, inside a per-job cgroup when the kernel lets us have one.
Stopping is SIGTERM to the group, a short grace, SIGKILL, then a sweep of the cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import Settings

log = logging.getLogger(__name__)

Kind = Literal["toolchain", "program"]
SANDBOX_HOSTNAME = "play"
NOBODY = 65534
HOST_PATH = "/usr/bin:/bin"
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")


class SandboxUnavailable(RuntimeError):
    """The configured sandbox cannot work on this machine; the message says how to fix it."""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float
    cpu_seconds: int
    memory_bytes: int
    pids: int
    file_bytes: int
    open_files: int
    tmp_bytes: int
    cpu_cores: float | None = None

    @classmethod
    def for_program(cls, s: Settings) -> Limits:
        return cls(s.run_seconds, s.run_cpu_seconds, s.run_memory_bytes, s.run_pids,
                   s.run_file_bytes, s.run_open_files, s.run_tmp_bytes,
                   s.run_cpu_cores or None)

    @classmethod
    def for_toolchain(cls, s: Settings, wall_seconds: float) -> Limits:
        return cls(wall_seconds, s.build_cpu_seconds, s.build_memory_bytes, s.build_pids,
                   s.build_file_bytes, s.build_open_files, s.build_tmp_bytes)


@dataclass(frozen=True)
class Bind:
    src: Path
    dst: str = ""  # same path inside the sandbox when empty
    writable: bool = False

    @property
    def target(self) -> str:
        return self.dst or str(self.src)


@dataclass
class Outcome:
    returncode: int
    oom_killed: bool = False
    pids_exhausted: bool = False
    cpu_seconds: float | None = None
    memory_peak: int | None = None

    @property
    def signalled(self) -> bool:
        # bwrap reports a child killed by signal N as exit 128+N; asyncio as -N
        return self.returncode < 0 or self.returncode > 128


EXIT_WAIT_SECONDS = 2.0


class ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """The stream protocol plus a future resolved when the process exits, whatever the
    state of its pipes."""

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


@dataclass
class SandboxProcess:
    proc: asyncio.subprocess.Process
    kind: Kind
    limits: Limits
    cgroup: Any | None
    grace: float
    exited: asyncio.Future[None]
    transport: asyncio.SubprocessTransport
    started_at: float = field(default_factory=time.monotonic)
    _stopped: bool = False

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        assert self.proc.stderr is not None
        return self.proc.stderr

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        return self.proc.stdin

    async def _exit(self) -> int:
        # not proc.wait(): the stdlib loop only wakes it once every pipe is closed, and a
        # pipe nobody reads any more (output cap reached) never reports its EOF
        await asyncio.shield(self.exited)
        rc = self.proc.returncode
        return -9 if rc is None else rc

    async def wait(self) -> Outcome:
        return self.outcome(await self._exit())

    def outcome(self, rc: int) -> Outcome:
        out = Outcome(returncode=rc)
        cg = self.cgroup
        if cg is not None:
            with contextlib.suppress(Exception):
                out.oom_killed = cg.oom_killed()
                out.pids_exhausted = cg.pids_limit_hit()
                out.cpu_seconds = cg.cpu_seconds()
                out.memory_peak = cg.memory_peak()
        return out

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self) -> None:
        """SIGTERM the group, grace, SIGKILL, sweep the cgroup. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self.proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._exit(), self.grace)
            except TimeoutError:
                pass
        # the group may hold children even after the leader exited
        self._signal_group(signal.SIGKILL)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.kill_all)
        if self.proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit(), EXIT_WAIT_SECONDS)
        for stream in (self.proc.stdin,):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    async def release(self) -> None:
        await self.stop()
        # frees the pipes even if nobody read them to EOF
        self.transport.close()
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)


class Sandbox:
    def __init__(self, settings: Settings, metrics: Any | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.mode = settings.sandbox
        self.cgroups: Any | None = None
        self.cgroup_reason = ""
        self._counter = itertools.count()
        self._prefix = f"{os.getpid()}-"
        self.bwrap = ""
        self.prlimit = shutil.which("prlimit") or ""
        self._set_up = False

    # ---- startup --------------------------------------------------------
    def setup(self) -> None:
        """Check that the sandbox can work here; raise SandboxUnavailable with the fix."""
        if self._set_up:
            return
        if self.mode not in ("bwrap", "none"):
            raise SandboxUnavailable(f"unknown sandbox mode {self.mode!r}: use bwrap or none")
        if not self.prlimit:
            raise SandboxUnavailable("prlimit not found: apt-get install util-linux")
        if self.mode == "bwrap":
            self.bwrap = shutil.which(self.settings.bwrap_path) or ""
            if not self.bwrap:
                raise SandboxUnavailable(
                    "bubblewrap (bwrap) not found: apt-get install bubblewrap, "
                    "or run with --sandbox none on a development machine only")
            from . import seccomp

            seccomp.filter_program()  # fail now, not on the first run
        try:
            from .cgroups import CgroupManager, detect_reason

            if not self.settings.use_cgroups:
                raise RuntimeError("turned off by --no-use-cgroups")
            self.cgroups = CgroupManager.detect()
            if self.cgroups is not None:
                self.cgroups.cleanup_stale()
            else:
                self.cgroup_reason = detect_reason()
        except Exception as e:  # a broken cgroup tree must not stop a dev server
            self.cgroups = None
            self.cgroup_reason = f"cgroup setup failed: {e}"
        if self.cgroups is None:
            msg = (f"cgroups unavailable ({self.cgroup_reason}); memory and process limits "
                   "fall back to rlimits (RLIMIT_DATA), which are weaker")
            if self.settings.require_cgroups:
                raise SandboxUnavailable(msg + "; mount a writable cgroup v1 memory+pids "
                                         "hierarchy or cgroup v2 with those controllers")
            log.warning(msg)
        self._set_up = True

    def close(self) -> None:
        if self.cgroups is not None:
            with contextlib.suppress(Exception):
                self.cgroups.close()

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "cgroups": (f"v{self.cgroups.version} at {self.cgroups.root}"
                        if self.cgroups is not None else None),
            "cgroup_fallback": self.cgroup_reason or None,
            "rlimit_fallback": self.cgroups is None,
        }

    # ---- spawning -------------------------------------------------------
    def _rlimits(self, limits: Limits) -> list[str]:
        args = [
            self.prlimit,
            # Go ignores SIGXCPU: only the hard limit's SIGKILL ends a spinning program
            f"--cpu={limits.cpu_seconds}:{limits.cpu_seconds}",
            f"--fsize={limits.file_bytes}",
            f"--nofile={limits.open_files}",
            "--core=0",
            "--memlock=0",
        ]
        if self.cgroups is None:
            # RLIMIT_AS kills every Go program at start; RLIMIT_DATA is the usable fallback
            args.append(f"--data={limits.memory_bytes}")
        return [*args, "--"]

    def _bwrap_args(self, kind: Kind, binds: Sequence[Bind], env: dict[str, str],
                    cwd: str, limits: Limits, seccomp_fd: int) -> list[str]:
        args = [
            self.bwrap,
            "--unshare-all", "--unshare-user", "--disable-userns",
            "--uid", str(NOBODY), "--gid", str(NOBODY),
            "--hostname", SANDBOX_HOSTNAME,
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv",
        ]
        for key, value in env.items():
            args += ["--setenv", key, value]
        # not --dev: that adds a devpts instance (/dev/ptmx), i.e. ptys from the global
        # kernel.pty.max pool and the tty line-discipline code (n_gsm and friends), which
        # no playground program needs. The five nodes below are all Go and its tools use.
        args += ["--tmpfs", "/dev"]
        for node in DEVICES:
            args += ["--dev-bind", node, node]
        args += ["--size", str(limits.tmp_bytes), "--tmpfs", "/tmp"]
        for b in binds:
            args += ["--bind" if b.writable else "--ro-bind", str(b.src), b.target]
        # /dev is a tmpfs the sandbox user owns (bwrap maps the setup uid to it): without
        # this, /dev/anything is writable scratch space outside the bounded /tmp. The device
        # nodes are bind mounts of their own, so /dev/null stays writable.
        args += ["--chdir", cwd, "--seccomp", str(seccomp_fd),
                 "--remount-ro", "/dev", "--remount-ro", "/", "--"]
        return args

    def _wrap_cgroup(self, procs_files: Sequence[str]) -> list[str]:
        joins = " && ".join(f"echo $$ > {shlex.quote(p)}" for p in procs_files)
        return ["/bin/sh", "-c", f'{joins} && exec "$@"' if joins else 'exec "$@"', "sh"]

    @contextlib.asynccontextmanager
    async def spawn(self, argv: Sequence[str], *, kind: Kind, limits: Limits,
                    binds: Sequence[Bind] = (), env: dict[str, str] | None = None,
                    cwd: str = "/tmp", stdin: bool = False) -> AsyncIterator[SandboxProcess]:
        """Start `argv` sandboxed; on leaving the block (normally, by error or by
        cancellation) every process it started is gone and its cgroup removed."""
        env = dict(env or {})
        env.setdefault("PATH", HOST_PATH)
        env.setdefault("HOME", "/tmp")
        argv = list(argv)
        cgroup = None
        seccomp_fd = -1
        if self.cgroups is not None:
            from .cgroups import CgroupLimits

            name = f"{self._prefix}{next(self._counter)}"
            cgroup = await asyncio.to_thread(
                self.cgroups.create, name,
                CgroupLimits(memory_bytes=limits.memory_bytes, pids=limits.pids,
                             cpu_cores=limits.cpu_cores))
        try:
            if self.mode == "bwrap":
                from . import seccomp

                seccomp_fd = seccomp.memfd_with_filter(for_toolchain=(kind == "toolchain"))
                inner = self._bwrap_args(kind, binds, env, cwd, limits, seccomp_fd) + argv
                host_cwd = "/"
                host_env = {"PATH": HOST_PATH}
            else:
                mapping = {b.target: str(b.src) for b in binds}
                inner = [mapping.get(a, a) for a in argv]
                host_cwd = mapping.get(cwd, cwd)
                if host_cwd == "/tmp":
                    host_cwd = str(next((b.src for b in binds if b.writable), "/tmp"))
                host_env = env
            full = (self._wrap_cgroup(cgroup.procs_files if cgroup is not None else [])
                    + self._rlimits(limits) + inner)
            loop = asyncio.get_running_loop()
            limit = self.settings.output_chunk_bytes * 4
            transport, protocol = await loop.subprocess_exec(
                lambda: ExitAwareProtocol(limit, loop),
                *full,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=host_cwd,
                env=host_env,
                start_new_session=True,
                pass_fds=(seccomp_fd,) if seccomp_fd >= 0 else (),
            )
            proc = asyncio.subprocess.Process(transport, protocol, loop)
        except BaseException:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            if self.metrics is not None:
                self.metrics.sandbox_failures.inc()
            raise
        finally:
            if seccomp_fd >= 0:
                os.close(seccomp_fd)
        if self.metrics is not None:
            self.metrics.processes_started.labels(kind=kind).inc()
        sp = SandboxProcess(proc, kind, limits, cgroup, self.settings.kill_grace_seconds,
                            protocol.exited, transport)
        try:
            yield sp
        finally:
            # shield: cancellation of the caller must not cut the cleanup short
            await asyncio.shield(sp.release())
