"""Micro-benchmarks of the alternatives considered for issue 6, measured in-process against
the real Pipeline and sandbox (no server, no WebSocket), one job at a time.

Each variant runs `reps` times on distinct programs; we report the median wall time and the
mean CPU time (this process plus every child it waited for, i.e. bwrap, prlimit, the
toolchain and the program).
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from gofiddle import toolchain
from gofiddle.config import Settings
from gofiddle.pipeline import Pipeline
from gofiddle.sandbox import Bind, Limits, Sandbox

from .programs import distinct_hellos


class CountingSandbox(Sandbox):
    """Adds up the CPU of every sandboxed process tree from its cgroup (rusage cannot see
    inside bwrap's pid namespace)."""

    cpu = 0.0

    @contextlib.asynccontextmanager
    async def spawn(self, argv: Any, **kw: Any) -> AsyncIterator[Any]:
        async with super().spawn(argv, **kw) as sp:
            try:
                yield sp
            finally:
                if sp.cgroup is not None:
                    with contextlib.suppress(Exception):
                        CountingSandbox.cpu += sp.cgroup.cpu_seconds() or 0.0


def _cpu(children: bool) -> float:
    """This process plus its sandboxed children (from their cgroups); `children` adds
    plain child processes (rusage), for the measurements that use no sandbox."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    total = s.ru_utime + s.ru_stime + CountingSandbox.cpu
    if children:
        c = resource.getrusage(resource.RUSAGE_CHILDREN)
        total += c.ru_utime + c.ru_stime
    return total


async def measure(fn: Callable[[int], Awaitable[Any]], reps: int,
                  children: bool = False) -> dict[str, float]:
    await fn(-1)  # warm: first calls pay for page cache and lazy imports
    walls, cpus = [], []
    for i in range(reps):
        c0, t0 = _cpu(children), time.perf_counter()
        await fn(i)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((_cpu(children) - c0) * 1000)
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.fmean(cpus)}


class Ideas:
    def __init__(self, gocache: Path, sandbox: str, reps: int) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="gofiddle-ideas-"))
        self.settings = Settings(data_dir=str(self.tmp), gocache_dir=str(gocache),
                                 sandbox=sandbox, binary_cache_entries=0)
        self.reps = reps
        self.results: dict[str, dict[str, float]] = {}

    def pipeline(self, **changes: Any) -> Pipeline:
        s = self.settings.replace(**changes)
        sb = CountingSandbox(s)
        sb.setup()
        if sb.cgroups is None:
            print("  (no cgroups: CPU of sandboxed processes is not counted)")
        return Pipeline(s, sb, toolchain.Toolchain.locate())

    async def record(self, name: str, fn: Callable[[int], Awaitable[Any]],
                     children: bool = False) -> None:
        r = await measure(fn, self.reps, children)
        self.results[name] = r
        print(f"  {name:58s} wall {r['wall_ms']:7.1f} ms   cpu {r['cpu_ms']:7.1f} ms",
              flush=True)

    async def run(self) -> dict[str, dict[str, float]]:
        base = self.pipeline()
        base.prepare_dirs()
        await base.refresh_index()
        await base.ensure_helper()
        assert base.index is not None and base.helper is not None
        srcs = iter(distinct_hellos(100000))

        @contextlib.asynccontextmanager
        async def ws_for(p: Pipeline, vet: bool = False):  # type: ignore[no-untyped-def]
            text = next(srcs)
            plan = p.plan(text, "run")
            p.index = base.index
            async with p.open_workspace(text, "run", plan) as ws:
                assert plan.fast is not None and base.index is not None
                p.write_fast_inputs(ws, base.index, plan.fast, vet)
                yield ws

        print("sandbox spawn (static hello binary, program limits):")
        async with ws_for(base) as ws0:
            await base.fast_build(ws0, ws0.plan.fast)  # type: ignore[union-attr]
            binary = self.tmp / "hello"
            shutil.copy(ws0.binary, binary)
        for mode in ("bwrap", "none"):
            p = self.pipeline(sandbox=mode)

            async def spawn(_: int, p: Pipeline = p) -> None:
                async with p.sandbox.spawn(["/prog"], kind="program",
                                           limits=Limits.for_program(p.s),
                                           binds=[Bind(binary, "/prog")], env={},
                                           cwd="/tmp") as sp:
                    await sp.stdout.read()
                    await sp.wait()
            await self.record(f"spawn+run hello, sandbox={mode}", spawn)

        print("workspace (write sources, later rmtree):")

        async def workspace(_: int) -> None:
            async with base.open_workspace(next(srcs), "run"):
                pass
        await self.record("create + remove a job workspace", workspace)

        print("build of hello world, sandboxed (bwrap):")

        async def go_build(_: int) -> None:
            async with ws_for(base) as ws:
                r = await base.run_tool(base.tools.build_cmd(str(ws.binary)), ws, 60)
                assert r.returncode == 0, r.stderr
        await self.record("go build (slow path)", go_build)

        variants = {
            "fast: GOMAXPROCS=1 GOGC=off -c=1 (adopted)": {},
            "fast: GOMAXPROCS=2 GOGC=off -c=1": {"fast_gomaxprocs": 2},
            "fast: GOMAXPROCS=1 GOGC=100 -c=1": {"fast_gogc": "100"},
            "fast: GOMAXPROCS=2 GOGC=100 -c=2 (tool defaults)": {
                "fast_gomaxprocs": 2, "fast_gogc": "100", "fast_compile_concurrency": 2},
        }
        for name, changes in variants.items():
            p = self.pipeline(**changes)

            async def fast_build(_: int, p: Pipeline = p) -> None:
                async with ws_for(p) as ws:
                    r, text = await p.fast_build(ws, ws.plan.fast)  # type: ignore[union-attr]
                    assert r.returncode == 0, text
            await self.record(name, fast_build)

        async def unsandboxed_tools(_: int) -> None:
            # the floor: compile + link as plain processes, no bwrap/prlimit around them
            async with ws_for(base) as ws:
                plan = ws.plan.fast  # type: ignore[union-attr]
                env = base.fast_env()
                t = base.tools
                archive = str(ws.out / "main.a")
                for argv, e in (
                    (t.compile_cmd(archive, str(ws.out / "importcfg"), str(ws.src),
                                   plan.module, plan.lang, list(plan.files), 1), env),
                    (t.link_cmd(str(ws.binary), str(ws.out / "importcfg.link"), archive),
                     {**env, "GOROOT": ""})):
                    proc = await asyncio.create_subprocess_exec(*argv, env=e, cwd=ws.src)
                    assert await proc.wait() == 0
        await self.record("fast tools without the sandbox (floor)", unsandboxed_tools,
                          children=True)

        print("vet of hello world, sandboxed:")

        async def go_vet(_: int) -> None:
            async with ws_for(base) as ws:
                await base.run_tool(base.tools.vet_cmd(), ws, 60)
        await self.record("go vet", go_vet)

        async def vet_tool(_: int) -> None:
            async with ws_for(base, vet=True) as ws:
                r = await base.run_vet(ws, True)
                assert r.returncode == 0, r.stderr
        await self.record("vet tool with a vet.cfg (fast path)", vet_tool)

        print("build + vet, sequential vs concurrent:")
        for concurrent in (False, True):
            async def fast_both(_: int, concurrent: bool = concurrent) -> None:
                async with ws_for(base, vet=True) as ws:
                    plan = ws.plan.fast  # type: ignore[union-attr]
                    if concurrent:
                        await asyncio.gather(base.fast_build(ws, plan), base.run_vet(ws, True))
                    else:
                        await base.fast_build(ws, plan)
                        await base.run_vet(ws, True)
            await self.record(f"fast build + vet tool, concurrent={concurrent}", fast_both)

            async def slow_both(_: int, concurrent: bool = concurrent) -> None:
                async with ws_for(base) as ws:
                    b = base.run_tool(base.tools.build_cmd(str(ws.binary)), ws, 60)
                    v = base.run_tool(base.tools.vet_cmd(), ws, 60)
                    if concurrent:
                        await asyncio.gather(b, v)
                    else:
                        await b
                        await v
            await self.record(f"go build + go vet, concurrent={concurrent}", slow_both)

        async def helper_both(_: int) -> None:
            async with ws_for(base, vet=True) as ws:
                assert base.helper is not None
                r, text, vetted = await base.helper_build(
                    ws, ws.plan.fast, True, base.helper)  # type: ignore[arg-type]
                assert r.returncode == 0 and vetted is not None, text
        await self.record("fast build + vet in ONE spawn (helper, adopted)", helper_both)

        print("index (warm-up depth):")

        async def refresh(_: int) -> None:
            await base.refresh_index()
        self.results["refresh_index"] = await measure(refresh, 2)
        r = self.results["refresh_index"]
        print(f"  {'refresh the index (go list -export + go vet -x), warm':58s} wall "
              f"{r['wall_ms']:7.1f} ms   cpu {r['cpu_ms']:7.1f} ms")

        async def list_std(_: int) -> None:
            text = "package main\n\nfunc main() {}\n"
            async with base.open_workspace(text, "build") as ws:
                await base.run_tool(base.tools.list_export_cmd(["std"]), ws, 900,
                                    cap=64 << 20)
        self.results["list_export_std"] = await measure(list_std, 1)
        r = self.results["list_export_std"]
        print(f"  {'go list -export std (whole library), warm':58s} wall "
              f"{r['wall_ms']:7.1f} ms   cpu {r['cpu_ms']:7.1f} ms")
        print(f"  indexed packages: {len(base.index.export)}; "
              f"with vet facts: {len(base.index.vet_facts)}")

        print("binary cache hit check (sha256 of the binary):")
        from gofiddle.bincache import BinaryCache, cache_key
        cache = BinaryCache(self.tmp / "bc", 10, 1 << 30)
        cache.open()
        key = cache_key({"bench": uuid.uuid4().hex})
        cache.put(key, binary)

        async def hit(i: int) -> None:
            dest = self.tmp / f"hit-{uuid.uuid4().hex}"
            assert cache.get(key, dest) is not None
            dest.unlink()
        await self.record("BinaryCache.get (verify + hard link)", hit)
        return self.results

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def run_ideas(gocache: Path, sandbox: str = "bwrap", reps: int = 15) -> dict[str, Any]:
    ideas = Ideas(gocache, sandbox, reps)
    try:
        return asyncio.run(ideas.run())
    finally:
        ideas.close()

