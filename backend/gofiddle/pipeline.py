"""One accepted run, start to finish: write the sources, build, vet, run or test, with
every phase sandboxed and bounded, streaming frames to the job's session."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import bincache, fastpath, protocol, source, toolchain
from .config import Settings
from .jobs import Job, Result
from .sandbox import Bind, Limits, Outcome, Sandbox

log = logging.getLogger(__name__)

TOOL_OUTPUT_CAP = 1 << 20  # the toolchain's own chatter; more than this is never useful
PUMP_DRAIN_SECONDS = 0.5  # after exit, how long orphans may hold the pipes open
REFRESH_BACKOFF_SECONDS = 60.0  # after a failed fast-path index refresh


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
class Plan:
    """What a run needs to know before touching disk."""

    files: source.Files
    test: bool
    fast: fastpath.FastPlan | None  # None: go build
    why_slow: str = ""
    # standard-library imports missing from the index: once go build has compiled them,
    # a refresh adds them and the next such snippet takes the fast path
    want: list[str] = field(default_factory=list)


@dataclass
class Workspace:
    root: Path
    files: source.Files
    test: bool
    plan: Plan | None = None

    @property
    def src(self) -> Path:
        return self.root / "src"

    @property
    def out(self) -> Path:
        return self.root / "out"

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
    keep_text: bool = False  # tests: their failures are parsed from the output afterwards
    tail: list[str] = field(default_factory=list)
    # set by one stream's pump when it gets data, so the other flushes what it holds:
    # coalescing must not reorder stdout and stderr lines across each other
    flush: dict[str, asyncio.Event] = field(
        default_factory=lambda: {"stdout": asyncio.Event(), "stderr": asyncio.Event()})


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
        self.cache: bincache.BinaryCache | None = None
        if settings.binary_cache_entries > 0 and settings.binary_cache_bytes > 0:
            self.cache = bincache.BinaryCache(settings.binary_cache_path,
                                              settings.binary_cache_entries,
                                              settings.binary_cache_bytes)
        # the fast path's view of the build cache; None until the first refresh
        self.index: fastpath.StdIndex | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._refresh_failed_at = -1e9
        self._wanted: set[str] = set()  # std imports that sent a run to go build
        self._inflight: dict[str, asyncio.Event] = {}
        self.builds = {"fast": 0, "slow": 0}
        self.helper_dir = settings.data_path / "tools"
        self.helper: Path | None = None
        self._building_helper = False

    # ---- workspaces -----------------------------------------------------
    def prepare_dirs(self) -> None:
        self.gocache.mkdir(parents=True, exist_ok=True)
        self.tools.write_config(self.config_dir)
        if self.jobs_dir.exists():
            # leftovers of a crashed server: nothing runs in them any more
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        if self.cache is not None:
            self.cache.open()

    def plan(self, text: str, mode: str) -> Plan:
        files = source.parse(text, max_files=self.s.max_files)
        test = mode == "test" or (mode == "run" and source.is_test_program(files))
        files = source.prepare(files, go_version=self.tools.version, test=test)
        plan = Plan(files, test, None)
        if not self.s.fast_path:
            plan.why_slow = "fast path disabled"
        elif test:
            plan.why_slow = "tests"
        elif self.tools.goos_goarch[1] not in ("amd64", "arm64"):
            plan.why_slow = "architecture"
        else:
            try:
                plan.fast = fastpath.analyze(files, self.tools.minor)
            except fastpath.NotEligible as e:
                plan.why_slow = str(e)
        return plan

    def workspace(self, text: str, mode: str, plan: Plan | None = None) -> Workspace:
        plan = plan or self.plan(text, mode)
        root = self.jobs_dir / uuid.uuid4().hex
        (root / "out").mkdir(parents=True)
        source.write(plan.files, root / "src")
        return Workspace(root, plan.files, plan.test, plan)

    @contextlib.asynccontextmanager
    async def open_workspace(self, text: str, mode: str,  # type: ignore[no-untyped-def]
                             plan: Plan | None = None):
        ws = await asyncio.to_thread(self.workspace, text, mode, plan)
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

    def fast_env(self) -> dict[str, str]:
        """The go command's environment, tuned for one short-lived tool process: one
        thread and no GC cost less CPU than the defaults for a playground-sized package
        (docs/benchmarks.md). GOMEMLIMIT makes the GC start before the sandbox's memory
        limit: a quarter each, as compile, link and vet may share one sandbox."""
        env = self.tools.env(self.s, self.gocache, self.config_dir)
        env["GOMAXPROCS"] = str(self.s.fast_gomaxprocs)
        env["GOGC"] = self.s.fast_gogc
        env["GOMEMLIMIT"] = f"{max(64, self.s.build_memory_bytes // 4 >> 20)}MiB"
        return env

    async def run_tool(self, argv: list[str], ws: Workspace, wall: float,
                       stdin_data: bytes | None = None, env: dict[str, str] | None = None,
                       cap: int = TOOL_OUTPUT_CAP, dot_stderr: bool = False,
                       raw: bool = False, extra_binds: tuple[Bind, ...] = ()) -> ToolRun:
        """`raw`: stdout and stderr not scrubbed (the caller parses them first)."""
        start = time.monotonic()
        limits = Limits.for_toolchain(self.s, wall)
        if env is None:
            env = self.tools.env(self.s, self.gocache, self.config_dir)
        timed_out = False
        outcome: Outcome | None = None
        out = err = b""
        async with self.sandbox.spawn(argv, kind="toolchain", limits=limits,
                                      binds=[*self.tool_binds(ws), *extra_binds], env=env,
                                      cwd=str(ws.src), stdin=stdin_data is not None) as sp:
            try:
                async with asyncio.timeout(wall):
                    if stdin_data is not None and sp.stdin is not None:
                        sp.stdin.write(stdin_data)
                        with contextlib.suppress(ConnectionError):
                            await sp.stdin.drain()
                        sp.stdin.close()
                    out, err = await asyncio.gather(read_capped(sp.stdout, cap),
                                                    read_capped(sp.stderr, cap))
                    outcome = await sp.wait()
            except TimeoutError:
                timed_out = True
        ms = int((time.monotonic() - start) * 1000)
        rc = outcome.returncode if outcome is not None else -9
        job_dir = str(ws.src)
        if raw:
            return ToolRun(rc, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                           outcome, timed_out, ms)
        if dot_stderr:
            # what the go command does to its tools' text output: the package dir is "."
            err = err.replace(job_dir.encode() + b"/", b"./")
        return ToolRun(rc, self.scrub(out.decode("utf-8", "replace"), job_dir),
                       self.scrub(err.decode("utf-8", "replace"), job_dir),
                       outcome, timed_out, ms)

    def tool_failure(self, what: str, run: ToolRun, wall: float) -> str | None:
        if run.timed_out:
            return f"{what} took longer than {wall:g} s and was stopped"
        if run.outcome is not None and run.outcome.oom_killed:
            return f"{what} ran out of memory ({human_bytes(self.s.build_memory_bytes)} limit)"
        return None

    # ---- the fast path's index ------------------------------------------
    def warm_packages(self) -> list[str]:
        pkgs = [p.strip() for p in self.s.warm_packages.split(",") if p.strip()]
        return sorted({*pkgs, "time/tzdata", "unsafe", *self._wanted})

    async def warm_fast_path(self) -> None:
        """Build the index now (server warm-up); never raises."""
        if not self.s.fast_path:
            return
        self.schedule_refresh()
        if self._refresh is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._refresh)

    def schedule_refresh(self) -> None:
        if not self.s.fast_path:
            return
        if time.monotonic() - self._refresh_failed_at < REFRESH_BACKOFF_SECONDS:
            return  # a broken toolchain or cache: go build it is, for a while
        if self._refresh is not None and not self._refresh.done():
            self._refresh_again = True
            return
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            self._refresh_again = False
            try:
                await self.refresh_index()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fast path: refreshing the index failed; using go build")
                self.index = None
                self._refresh_failed_at = time.monotonic()
                return
            if self.helper is None:
                try:
                    await self.ensure_helper()
                except Exception:
                    log.exception("fast path: no helper; compile, link and vet spawn apart")
            if not self._refresh_again:
                return

    async def refresh_index(self) -> None:
        """Ask the go command, sandboxed, where the standard library's export data and
        vet facts are in the build cache. Compiles what is missing, so it is also the
        way an on-demand package joins the fast path."""
        pkgs = self.warm_packages()
        body = "package main\n\nimport (\n" + "".join(f'\t_ "{p}"\n' for p in pkgs) + ")\n\n"
        body += f"// {uuid.uuid4().hex}: vet must run on this package, not replay a result\n"
        body += "func main() {}\n"
        started = time.monotonic()
        async with self.open_workspace(body, "build") as ws:
            wall = max(300.0, self.s.build_seconds)
            listed = await self.run_tool(self.tools.list_export_cmd(pkgs), ws, wall,
                                         cap=64 * TOOL_OUTPUT_CAP)
            if listed.returncode != 0:
                raise RuntimeError(f"go list failed: {listed.stderr[-2000:]}")
            export, imports = fastpath.parse_list(listed.stdout)
            # first without -x: facts of packages not vetted yet are computed, so the -x
            # run below prints only the one config we want, not one per dependency
            await self.run_tool(self.tools.vet_cmd(), ws, wall)
            (ws.src / "prog.go").write_text(body.replace("// ", f"// {uuid.uuid4().hex} ", 1))
            vetted = await self.run_tool(self.tools.vet_facts_cmd(), ws, wall,
                                         cap=16 * TOOL_OUTPUT_CAP)
        cfg = fastpath.parse_vet_x(vetted.stderr, "play") or {}
        if not cfg:
            log.warning("fast path: no vet config in go vet -x output; vet uses go vet")
        index = fastpath.StdIndex(
            export, imports,
            vet_map=dict(cfg.get("ImportMap") or {}), vet_file=dict(cfg.get("PackageFile") or {}),
            vet_std=dict(cfg.get("Standard") or {}), vet_facts=dict(cfg.get("PackageVetx") or {}),
            generation=(self.index.generation + 1) if self.index else 1)
        self.index = index
        log.info("fast path: %d packages indexed, %d with vet facts, in %.2f s",
                 len(export), len(index.vet_facts), time.monotonic() - started)

    def fast_index(self, plan: Plan) -> fastpath.StdIndex | None:
        """The index, if this plan can be built with it right now."""
        index = self.index
        if plan.fast is None:
            return None
        if index is None:
            self.schedule_refresh()
            return None
        missing = index.missing_build(plan.fast)
        if missing:
            plan.want = [p for p in missing if fastpath.is_public_std(p)]
            plan.why_slow = f"not indexed: {', '.join(missing[:3])}"
            return None
        return index

    def learn_imports(self, plan: Plan) -> None:
        """After go build succeeded with std imports the index lacks: index them."""
        room = self.s.fast_extra_packages - len(self._wanted)
        new = [p for p in plan.want if p not in self._wanted][:max(0, room)]
        if new:
            self._wanted.update(new)
            self.schedule_refresh()

    def missing_file(self, index: fastpath.StdIndex, plan: fastpath.FastPlan,
                     vet: bool) -> str | None:
        """The build cache may have been trimmed or wiped since the index was made."""
        for f in fastpath.needed_files(index, plan, vet):
            if not os.path.exists(f):
                return f
        return None

    def prepare_fast(self, ws: Workspace, index: fastpath.StdIndex,
                     plan: fastpath.FastPlan, vet: bool) -> str | None:
        """In a worker thread: check the cache files, write the tools' inputs. Returns the
        first missing cache file, if any (then nothing is written)."""
        missing = self.missing_file(index, plan, vet)
        if missing is None:
            self.write_fast_inputs(ws, index, plan, vet)
        return missing

    def write_fast_inputs(self, ws: Workspace, index: fastpath.StdIndex,
                          plan: fastpath.FastPlan, vet: bool) -> None:
        goos, goarch = self.tools.goos_goarch
        (ws.out / "importcfg").write_text(fastpath.compile_importcfg(index, plan))
        (ws.out / "importcfg.link").write_text(
            fastpath.link_importcfg(index, plan, goarch, goos))
        if vet:
            (ws.out / "vet.cfg").write_text(
                fastpath.vet_config(index, plan, str(ws.src), str(ws.out / "vet.out")))

    def is_infra_failure(self, run: ToolRun) -> bool:
        """A fast-path tool that failed on the build cache, not on the user's code."""
        return run.returncode != 0 and str(self.gocache) in (run.stdout + run.stderr)

    # ---- the single-spawn helper -----------------------------------------
    async def ensure_helper(self) -> None:
        """Build fastbuild (fastpath.HELPER_SOURCE) with the fast path itself, once per
        toolchain: it lets compile, link and vet share one sandbox spawn."""
        if not self.s.fast_single_spawn or self.index is None:
            return
        digest = hashlib.sha256((fastpath.HELPER_SOURCE + self.tools.version).encode())
        target = self.helper_dir / f"fastbuild-{digest.hexdigest()[:16]}"
        if target.exists():
            self.helper = target
            return
        if self._building_helper:
            return
        self._building_helper = True
        try:
            await self._build_helper(target)
        finally:
            self._building_helper = False

    async def _build_helper(self, target: Path) -> None:
        plan = self.plan(fastpath.HELPER_SOURCE, "build")
        index = self.fast_index(plan)
        if plan.fast is None or index is None:
            log.warning("fast path: cannot build the helper (%s); using one spawn per tool",
                        plan.why_slow)
            return
        async with self.open_workspace(fastpath.HELPER_SOURCE, "build", plan) as ws:
            await asyncio.to_thread(self.write_fast_inputs, ws, index, plan.fast, False)
            run, text = await self.fast_build(ws, plan.fast)
            if run.returncode != 0:
                log.warning("fast path: building the helper failed: %s", text[-1000:])
                return
            self.helper_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.helper_dir / f"tmp-{uuid.uuid4().hex}"
            shutil.copyfile(ws.binary, tmp)
            os.chmod(tmp, 0o555)
            os.replace(tmp, target)
        self.helper = target

    def _helper_step(self, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
        return {"argv": argv, "env": [f"{k}={v}" for k, v in env.items()]}

    async def helper_build(self, ws: Workspace, plan: fastpath.FastPlan, vet: bool,
                           helper: Path) -> tuple[ToolRun, str, ToolRun | None]:
        """compile, link and (beside them) vet in one sandboxed process tree."""
        env = self.fast_env()
        archive = str(ws.out / "main.a")
        steps: dict[str, Any] = {
            "compile": self._helper_step(self.compile_argv(ws, plan, archive), env),
            # as go build -trimpath: no GOROOT baked into the binary
            "link": self._helper_step(self.link_argv(ws, archive), {**env, "GOROOT": ""}),
            "vet": self._helper_step(self.tools.vet_tool_cmd(str(ws.out / "vet.cfg")), env)
            if vet else None,
        }
        spec = ws.out / "fastbuild.json"
        await asyncio.to_thread(spec.write_text, json.dumps(steps))
        wall = self.s.build_seconds
        run = await self.run_tool([str(helper), str(spec)], ws, wall, env=env, raw=True,
                                  cap=4 * TOOL_OUTPUT_CAP, extra_binds=(Bind(helper),))
        try:
            res = json.loads(run.stdout) if run.returncode == 0 else {}
        except ValueError:
            res = {}
        if "compile" not in res:
            # killed (timeout, memory) or broken: report it as the build's failure
            run.stdout, run.stderr = "", self.scrub(run.stderr, str(ws.src))
            if run.returncode == 0:
                run.returncode = 1
            return run, run.stderr, None
        src = str(ws.src)

        def tool(r: dict[str, Any], vet: bool = False) -> ToolRun:
            # compile and link: one interleaved stream, as go build shows it; vet: two,
            # its plain text with the package dir as "." (what go vet prints)
            out = str(r.get("stdout" if vet else "output", ""))
            err = str(r.get("stderr", "")).replace(src + "/", "./") if vet else ""
            return ToolRun(int(r.get("rc", 1)), self.scrub(out, src),
                           self.scrub(err, src), run.outcome, False, int(r.get("ms", 0)))

        result = tool(res["compile"])
        self.observe("compile", result.ms, "ok" if result.returncode == 0 else "failed")
        if "link" in res:
            result = tool(res["link"])
            self.observe("link", result.ms, "ok" if result.returncode == 0 else "failed")
        result.ms = run.ms
        vetted = tool(res["vet"], vet=True) if "vet" in res else None
        return result, result.stdout, vetted

    def compile_argv(self, ws: Workspace, plan: fastpath.FastPlan, archive: str) -> list[str]:
        return self.tools.compile_cmd(archive, str(ws.out / "importcfg"), str(ws.src),
                                      plan.module, plan.lang, list(plan.files),
                                      self.s.fast_compile_concurrency)

    def link_argv(self, ws: Workspace, archive: str) -> list[str]:
        return self.tools.link_cmd(str(ws.binary), str(ws.out / "importcfg.link"), archive)

    # ---- build and vet --------------------------------------------------
    async def fast_build(self, ws: Workspace, plan: fastpath.FastPlan) -> tuple[ToolRun, str]:
        """compile, then link, each its own sandboxed process (no helper)."""
        env = self.fast_env()
        archive = str(ws.out / "main.a")
        compiled = await self.run_tool(self.compile_argv(ws, plan, archive), ws,
                                       self.s.build_seconds, env=env)
        self.observe("compile", compiled.ms, "ok" if compiled.returncode == 0 else "failed")
        if compiled.returncode != 0 or compiled.timed_out:
            return compiled, compiled.stdout + compiled.stderr
        # as go build -trimpath: no GOROOT baked into the binary
        link_env = {**env, "GOROOT": ""}
        linked = await self.run_tool(
            self.link_argv(ws, archive), ws,
            max(1.0, self.s.build_seconds - compiled.ms / 1000), env=link_env)
        self.observe("link", linked.ms, "ok" if linked.returncode == 0 else "failed")
        linked.ms += compiled.ms
        return linked, linked.stdout + linked.stderr

    async def build(self, job: Job, ws: Workspace, index: fastpath.StdIndex | None,
                    fast_vet: bool = False) -> tuple[Result | None, int, str, ToolRun | None]:
        """Returns (failure or None, ms, which path built it, vet's run if the helper
        already did it)."""
        run: ToolRun | None = None
        vetted: ToolRun | None = None
        path = "slow"
        helper = self.helper if self.s.fast_single_spawn else None
        if index is not None and ws.plan is not None and ws.plan.fast is not None:
            if helper is not None:
                run, text, vetted = await self.helper_build(ws, ws.plan.fast, fast_vet, helper)
            else:
                run, text = await self.fast_build(ws, ws.plan.fast)
            path = "fast"
            if self.is_infra_failure(run):
                log.warning("fast path build failed on the cache; falling back: %s",
                            text[-500:])
                if self.index is index:
                    self.index = None
                self.schedule_refresh()
                run = vetted = None
        if run is None:
            path = "slow"
            out = str(ws.binary)
            argv = self.tools.test_build_cmd(out) if ws.test else self.tools.build_cmd(out)
            run = await self.run_tool(argv, ws, self.s.build_seconds)
            text = toolchain.build_output_text(run.stdout, run.stderr)
        self.builds[path] += 1
        log.debug("build path=%s ms=%d rc=%d why_slow=%s", path, run.ms, run.returncode,
                  ws.plan.why_slow if ws.plan else "")
        self.observe("build", run.ms, "ok" if run.returncode == 0 else "failed")
        if run.returncode == 0 and not run.timed_out:
            return None, run.ms, path, vetted
        reason = self.tool_failure("the build", run, self.s.build_seconds)
        items = toolchain.parse_text(text, str(ws.src), ws.files.display)
        if reason:
            items.append(toolchain.diagnostic(reason))
        if items:
            await job.emit(protocol.diagnostics(job.id, "build", items))
        return Result(protocol.BUILD_FAILED, message=reason or first_message(items),
                      timings={"build_ms": run.ms}), run.ms, path, None

    async def run_vet(self, ws: Workspace, fast: bool) -> ToolRun:
        if fast:
            run = await self.run_tool(self.tools.vet_tool_cmd(str(ws.out / "vet.cfg")), ws,
                                      self.s.vet_seconds, env=self.fast_env(), dot_stderr=True)
            if not self.is_infra_failure(run):
                return run
            log.warning("fast path vet failed on the cache; using go vet: %s",
                        run.stderr[-500:])
            if self.index is not None:
                self.index = None
                self.schedule_refresh()
        return await self.run_tool(self.tools.vet_cmd(), ws, self.s.vet_seconds)

    async def vet(self, job: Job, ws: Workspace, pending: asyncio.Task[ToolRun] | None = None,
                  fast: bool = False, done: ToolRun | None = None) -> tuple[Result | None, int]:
        await job.emit(protocol.started(job.id, "vet"))
        if done is not None and self.is_infra_failure(done):
            log.warning("fast path vet failed on the cache; using go vet: %s",
                        done.stderr[-500:])
            self.index = None
            self.schedule_refresh()
            done = None
        if done is not None:
            run = done
        else:
            run = await pending if pending is not None else await self.run_vet(ws, fast)
        # go vet -json writes findings to stdout (Go >= 1.26) or stderr (older)
        items = toolchain.parse_vet(run.stdout + "\n" + run.stderr, str(ws.src),
                                    ws.files.display)
        reason = self.tool_failure("go vet", run, self.s.vet_seconds)
        self.observe("vet", run.ms, "ok" if not items and not reason else "failed")
        if reason:
            items.append(toolchain.diagnostic(reason))
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
    def cache_key(self, plan: Plan, req: Any, path: str) -> str:
        return bincache.cache_key({
            "files": sorted(plan.files.files.items()),
            "go": self.tools.version,
            "target": "_".join(self.tools.goos_goarch),
            "kind": "test" if plan.test else "exe",
            "vet": bool(req.vet) and req.mode != "build",
            "path": fastpath.IDENTITY if path == "fast" else "slow-v1",
            "flags": self.tools.test_build_cmd("OUT")[1:] if plan.test
            else self.tools.build_cmd("OUT")[1:],
            "goflags": self.s.goflags,
        })

    async def execute(self, job: Job) -> Result:
        req = job.request
        try:
            plan = self.plan(req.source, req.mode)
            if self.cache is None or req.mode not in ("run", "build", "test"):
                async with self.open_workspace(req.source, req.mode, plan) as ws:
                    return await self._execute(job, ws, None)
            return await self._execute_cached(job, plan)
        except source.BuildRefused as e:
            await job.emit(protocol.diagnostics(job.id, "build", [
                toolchain.diagnostic(str(e), e.file, e.line)]))
            return Result(protocol.BUILD_FAILED, message=str(e))
        except protocol.ProtocolError as e:
            await job.emit(protocol.diagnostics(job.id, "build", [
                toolchain.diagnostic(e.message)]))
            return Result(protocol.BUILD_FAILED, message=e.message)

    async def _execute_cached(self, job: Job, plan: Plan) -> Result:
        req = job.request
        path = "fast" if self.fast_index(plan) is not None else "slow"
        key = self.cache_key(plan, req, path)
        hit = await self.run_cached(job, plan, key)
        if hit is not None:
            return hit
        # a class pressing Run on the same link at once: one builds, the rest wait for it
        waiting = self._inflight.get(key)
        if waiting is not None:
            await waiting.wait()
            hit = await self.run_cached(job, plan, key)
            if hit is not None:
                return hit
        owner = key not in self._inflight
        if owner:
            self._inflight[key] = asyncio.Event()
        if self.metrics is not None:
            self.metrics.binary_cache_misses.inc()
        try:
            async with self.open_workspace(req.source, req.mode, plan) as ws:
                return await self._execute(job, ws, key)
        finally:
            if owner:
                self._inflight.pop(key).set()

    async def run_cached(self, job: Job, plan: Plan, key: str) -> Result | None:
        assert self.cache is not None
        dest = self.jobs_dir / f"{uuid.uuid4().hex}.prog"
        lookup = asyncio.ensure_future(asyncio.to_thread(self.cache.get, key, dest))
        try:
            entry = await asyncio.shield(lookup)
        except asyncio.CancelledError:
            # the thread still finishes its hard link: remove it once it has
            lookup.add_done_callback(lambda _: dest.unlink(missing_ok=True))
            raise
        if entry is None:
            return None
        if self.metrics is not None:
            self.metrics.binary_cache_hits.inc()
        try:
            # the phases a client expects, answered from the cache (done says cached)
            await job.emit(protocol.started(job.id, "build"))
            if job.request.vet and job.request.mode != "build":
                await job.emit(protocol.started(job.id, "vet"))
            if job.request.mode == "build":
                return Result(protocol.OK, timings={"build_ms": 0, "run_ms": 0}, cached=True,
                              message="built; not run (mode build)")
            result = await self.run_program(job, dest, plan.test, plan.files.display)
            result.timings = {"build_ms": 0, **result.timings}
            result.cached = True
            return result
        finally:
            with contextlib.suppress(OSError):
                dest.unlink()

    async def _execute(self, job: Job, ws: Workspace, key: str | None) -> Result:
        req = job.request
        plan = ws.plan or self.plan(req.source, req.mode)
        timings = {"build_ms": 0, "run_ms": 0}
        index = self.fast_index(plan)
        want_vet = req.mode == "vet" or (req.vet and req.mode != "build")
        fast_vet = bool(want_vet and index is not None and plan.fast is not None
                        and index.can_vet(plan.fast))
        if index is not None and plan.fast is not None:
            missing = await asyncio.to_thread(self.prepare_fast, ws, index, plan.fast,
                                              fast_vet)
            if missing is not None:
                log.info("fast path: %s is gone from the build cache; refreshing", missing)
                if self.index is index:
                    self.index = None
                self.schedule_refresh()
                index, fast_vet = None, False
        if req.mode == "vet":
            failed, ms = await self.vet(job, ws, fast=fast_vet)
            timings["build_ms"] = ms
            if failed:
                failed.timings = timings
                return failed
            return Result(protocol.OK, timings=timings)
        started = time.monotonic()
        await job.emit(protocol.started(job.id, "build"))
        pending: asyncio.Task[ToolRun] | None = None
        single = self.s.fast_single_spawn and self.helper is not None and index is not None
        if fast_vet and self.s.concurrent_vet and not single:
            # vet reads only the imports' export data, not the package being compiled
            pending = asyncio.get_running_loop().create_task(self.run_vet(ws, True))
        store: asyncio.Task[bool] | None = None
        try:
            failed, timings["build_ms"], path, vetted = await self.build(
                job, ws, index, fast_vet and single)
            if failed:
                return failed
            if want_vet:
                failed, _ = await self.vet(job, ws, pending, fast_vet, vetted)
                pending = None
                timings["build_ms"] = int((time.monotonic() - started) * 1000)
                if failed:
                    failed.timings = timings
                    return failed
            if key is not None and self.cache is not None:
                # under the path that really built it (a fallback changes it)
                key = self.cache_key(plan, req, path)
                # stored while the program runs; awaited before the workspace goes away
                store = asyncio.get_running_loop().create_task(asyncio.to_thread(
                    self.cache.put, key, ws.binary, {"path": path, "test": plan.test}))
            if path == "slow" and plan.want:
                self.learn_imports(plan)
            if req.mode == "build":
                return Result(protocol.OK, timings=timings,
                              message="built; not run (mode build)")
            result = await self.run_program(job, ws.binary, ws.test, ws.files.display)
            result.timings = {**timings, **result.timings}
            return result
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.wait([pending])
            if store is not None:
                await asyncio.wait([store])

    def observe(self, phase: str, ms: int, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.phase_duration.labels(phase=phase, outcome=outcome).observe(ms / 1000)

    def scrub(self, text: str, job_dir: str) -> str:
        """No server path in anything a user sees: the job dir and GOROOT (tool errors
        name the linker's own path)."""
        return toolchain.scrub(text, job_dir, str(self.tools.goroot))

    async def run_program(self, job: Job, binary: Path, test: bool,
                          display: dict[str, str]) -> Result:
        phase = "test" if test else "run"
        await job.emit(protocol.started(job.id, phase))
        limits = Limits.for_program(self.s)
        argv = ["/prog"] + (["-test.v=true"] if test else [])
        env = {
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "GOMAXPROCS": str(self.s.run_gomaxprocs),
            # no cgroupfs inside: tell the GC about the limit so it works before the OOM
            "GOMEMLIMIT": f"{max(1, self.s.run_memory_bytes * 9 // 10 >> 20)}MiB",
            "PATH": "/",
            "TZ": "UTC",
        }
        state = RunState(OutputBudget(self.s.output_bytes), keep_text=test)
        timed_out = False
        outcome: Outcome | None = None
        start = time.monotonic()
        async with self.sandbox.spawn(argv, kind="program", limits=limits,
                                      binds=[Bind(binary, "/prog")], env=env,
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
                # read the cgroup's verdict while it still exists (a fork bomb times out)
                outcome = sp.outcome(-9)
        run_ms = int((time.monotonic() - start) * 1000)
        self.observe(phase, run_ms, "timeout" if timed_out else "done")
        timings = {"run_ms": run_ms}
        assert outcome is not None
        pids_note = (f"; it also hit the limit of {self.s.run_pids} processes/threads"
                     if outcome.pids_exhausted else "")
        if timed_out:
            return Result(protocol.TIMEOUT, timings=timings,
                          message=f"the program ran longer than {self.s.run_seconds:g} s "
                                  f"(wall-clock limit) and was stopped{pids_note}")
        if state.budget.exceeded:
            return Result(protocol.OUTPUT_LIMIT, timings=timings,
                          message=f"the program wrote more than "
                                  f"{human_bytes(self.s.output_bytes)} of output and was "
                                  f"stopped{pids_note}")
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
        if test:
            items = toolchain.parse_test_failures("".join(state.tail), display)
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
        mine = state.flush[stream]
        other = state.flush["stderr" if stream == "stdout" else "stdout"]
        eof = False
        while not eof:
            data = await reader.read(chunk)
            if not data:
                break
            other.set()
            mine.clear()
            buf = bytearray(data)
            deadline = loop.time() + window
            while len(buf) < chunk and not mine.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                read = asyncio.ensure_future(reader.read(chunk - len(buf)))
                flush = asyncio.ensure_future(mine.wait())
                await asyncio.wait({read, flush}, timeout=remaining,
                                   return_when=asyncio.FIRST_COMPLETED)
                flush.cancel()
                if not read.done():
                    read.cancel()
                    # the reader allows one waiter: let the cancelled read finish leaving
                    with contextlib.suppress(asyncio.CancelledError):
                        await read
                    break
                more = read.result()
                if not more:
                    eof = True
                    break
                buf += more
            allowed = state.budget.take(len(buf))
            text = decoder.decode(bytes(buf[:allowed]), final=allowed < len(buf))
            if text:
                if self.metrics is not None:
                    self.metrics.output_bytes.inc(allowed)
                if state.keep_text:
                    state.tail.append(text)
                await job.emit(protocol.output(job.id, stream, text))
            if state.budget.exceeded:
                await sp.stop()
                return
        tail = decoder.decode(b"", final=True)
        if tail:
            await job.emit(protocol.output(job.id, stream, tail))


async def read_capped(reader: asyncio.StreamReader, cap: int) -> bytes:
    """Everything up to EOF, keeping at most `cap` bytes (StreamReader.read(n) returns as
    soon as *some* data is there); the rest is drained so the writer never blocks."""
    buf = bytearray()
    while chunk := await reader.read(1 << 16):
        if len(buf) < cap:
            buf += chunk[: cap - len(buf)]
    return bytes(buf)


def first_message(items: list[dict[str, Any]]) -> str | None:
    for it in items:
        where = f"{it['file']}:{it['line']}: " if it.get("file") else ""
        return where + str(it["message"])
    return None
