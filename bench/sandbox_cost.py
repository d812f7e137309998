"""What the sandbox costs (docs/security-measurements.md).

    .venv/bin/python -m bench.sandbox_cost [--runs 20] [--spawns 50] [--json out.json]

(a) End to end through a real server: median ms of a hello world over a WebSocket, with
    `--sandbox bwrap` and with `--sandbox none` (cgroups in both), once from the binary
    cache (run only) and once as a fresh build each time (fast path: compile, link, vet),
    back to back and with 0.3 s of idle server before each run.
(b) Per process, in-process against the Sandbox class: starting and reaping a static
    Go binary that exits at once, adding one layer at a time (sh wrapper, prlimit, bwrap,
    seccomp, the job cgroup), then Sandbox.spawn itself in both modes.
(c) The cgroup join alone, back to back and after idle time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from gofiddle import toolchain
from gofiddle.config import Settings
from gofiddle.sandbox import Bind, Limits, Sandbox

ROOT = Path(__file__).resolve().parent.parent
HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello, world")\n}\n'


def stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"n": len(ms), "p50": round(statistics.median(ms), 2),
            "p90": round(ms[int(0.9 * (len(ms) - 1))], 2), "min": round(ms[0], 2)}


# ---- (a) end to end ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(sandbox: str, data_dir: Path, gocache: Path) -> tuple[subprocess.Popen[bytes],
                                                                        int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOFIDDLE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gofiddle", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--data-dir", str(data_dir), "--gocache-dir", str(gocache), "--sandbox", sandbox,
         "--require-cgroups", "--runs-per-minute", "100000", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server ({sandbox}) exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc, port
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server not ready")


async def run_once(ws: Any, source: str, id: str) -> float:
    t0 = time.monotonic()
    await ws.send(json.dumps({"type": "run", "id": id, "source": source}))
    while True:
        frame = json.loads(await ws.recv())
        if frame["type"] == "done":
            if frame["status"] != "ok":
                raise RuntimeError(f"run failed: {frame}")
            return (time.monotonic() - t0) * 1000


async def end_to_end(port: int, runs: int) -> dict[str, Any]:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await ws.recv()  # hello
        await run_once(ws, HELLO, "warm")
        cached = [await run_once(ws, HELLO, f"c{i}") for i in range(runs)]
        tag = os.urandom(4).hex()
        fresh = [await run_once(ws, HELLO.replace("hello, world", f"hello, {tag} {i}"), f"f{i}")
                 for i in range(runs)]
        # as a person presses Run: the server is idle before each (see join_cost)
        paced = []
        for i in range(runs):
            await asyncio.sleep(0.3)
            paced.append(await run_once(ws, HELLO.replace("hello, world", f"hi, {tag} {i}"),
                                        f"p{i}"))
    return {"cached_binary": stats(cached), "fresh_build": stats(fresh),
            "fresh_build_idle": stats(paced)}


def measure_end_to_end(runs: int, gocache: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("bwrap", "none"):
            proc, port = start_server(mode, Path(tmp) / mode, gocache)
            try:
                out[mode] = asyncio.run(end_to_end(port, runs))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    return out


# ---- (b) per process --------------------------------------------------------------------

def build_static(tools: toolchain.Toolchain, dir: Path, gocache: Path) -> Path:
    src = dir / "src"
    src.mkdir()
    (src / "go.mod").write_text(f"module x\n\ngo {tools.minor}\n")
    (src / "main.go").write_text("package main\n\nfunc main() {}\n")
    tools.write_config(dir / "cfg")
    env = {**tools.env(Settings(), gocache, dir / "cfg"), "GOPATH": str(dir / "gopath"),
           "GOMODCACHE": str(dir / "gopath" / "mod"), "TMPDIR": str(dir)}
    subprocess.run([tools.go, "build", "-o", str(dir / "prog"), "."], cwd=src, env=env,
                   check=True)
    return dir / "prog"


async def spawn_once(argv: list[str], fd: int = -1, **kw: Any) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True,
        pass_fds=(fd,) if fd >= 0 else (), cwd="/", env={"PATH": "/usr/bin:/bin"}, **kw)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed: {err.decode()[-500:]}")


async def per_process(n: int, gocache: Path) -> dict[str, Any]:
    """Every variant once per round, round-robin, so a busy neighbour slows all alike."""
    from gofiddle.sandbox import seccomp
    from gofiddle.sandbox.cgroups import CgroupLimits

    tools = toolchain.Toolchain.locate()
    settings = Settings(sandbox="bwrap")
    sb = Sandbox(settings)
    sb.setup()
    sb_none = Sandbox(settings.replace(sandbox="none"))
    sb_none.setup()
    if sb.cgroups is None:
        raise RuntimeError(f"no cgroups: {sb.cgroup_reason}")
    limits = Limits.for_program(settings)
    cg_limits = CgroupLimits(limits.memory_bytes, limits.pids, limits.cpu_cores)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_static(tools, Path(tmp), gocache)
        env = {"PATH": "/", "HOME": "/tmp"}
        prl = sb._rlimits(limits)
        sh = sb._wrap_cgroup([])

        def bw(fd: int) -> list[str]:
            args = sb._bwrap_args("program", [Bind(binary, "/prog")], env, "/tmp", limits, fd)
            if fd < 0:  # without seccomp
                i = args.index("--seccomp")
                del args[i:i + 2]
            return [*args, "/prog"]

        async def with_seccomp(prefix: list[str]) -> None:
            fd = seccomp.memfd_with_filter(for_toolchain=False)
            try:
                await spawn_once([*prefix, *prl, *bw(fd)], fd)
            finally:
                os.close(fd)

        cg_ms: list[float] = []

        async def with_cgroup() -> None:
            t0 = time.monotonic()
            cg = mgr.create(f"bench-{os.getpid()}-{next(count)}", cg_limits)
            t1 = time.monotonic()
            await with_seccomp(sb._wrap_cgroup(cg.procs_files))
            t2 = time.monotonic()
            cg.remove()
            cg_ms.append(((t1 - t0) + (time.monotonic() - t2)) * 1000)

        async def via_spawn(box: Sandbox) -> None:
            async with box.spawn(["/prog"], kind="program", limits=limits,
                                 binds=[Bind(binary, "/prog")], env=env, cwd="/tmp") as sp:
                await sp.proc.communicate()

        import itertools

        count = itertools.count()
        mgr = sb.cgroups
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("exec the binary", lambda: spawn_once([str(binary)])),
            ("+ sh -c 'exec \"$@\"'", lambda: spawn_once([*sh, str(binary)])),
            ("+ prlimit", lambda: spawn_once([*sh, *prl, str(binary)])),
            ("+ bwrap (namespaces, mounts)", lambda: spawn_once([*sh, *prl, *bw(-1)])),
            ("+ seccomp filter (memfd, --seccomp)", lambda: with_seccomp(sh)),
            ("+ job cgroup (all of the above)", with_cgroup),
            ("Sandbox.spawn, mode bwrap", lambda: via_spawn(sb)),
            ("Sandbox.spawn, mode none", lambda: via_spawn(sb_none)),
        ]
        for _ in range(n):
            for name, fn in steps:
                t0 = time.monotonic()
                await fn()
                times.setdefault(name, []).append((time.monotonic() - t0) * 1000)
    sb.close()
    sb_none.close()
    results = {name: stats(ms) for name, ms in times.items()}
    results["   of which cgroup create + remove"] = stats(cg_ms)
    return results


def join_cost(n: int) -> dict[str, Any]:
    """(c) Moving a process into the job cgroup (what the sh wrapper's `echo $$ >` does)
    back to back and with 50 ms of idle time before each spawn. On cgroup v1 a migration
    takes cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period
    unless another writer just did: an idle server pays it on every spawn."""
    from gofiddle.sandbox.cgroups import CgroupLimits

    sb = Sandbox(Settings(sandbox="none"))
    sb.setup()
    if sb.cgroups is None:
        raise RuntimeError(f"no cgroups: {sb.cgroup_reason}")
    cg = sb.cgroups.create(f"bench-join-{os.getpid()}", CgroupLimits(256 << 20, 64))
    out: dict[str, Any] = {}
    try:
        for joined in (False, True):
            argv = [*sb._wrap_cgroup(cg.procs_files if joined else []), "/bin/true"]
            for gap in (0.0, 0.05):
                ms = []
                for _ in range(n):
                    time.sleep(gap)
                    t0 = time.monotonic()
                    subprocess.run(argv, check=True)
                    ms.append((time.monotonic() - t0) * 1000)
                what = "sh + join cgroup" if joined else "sh, no cgroup"
                out[f"{what}, {'idle 50 ms before' if gap else 'back to back'}"] = stats(ms)
    finally:
        cg.remove()
        sb.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=20, help="hello worlds per server and kind")
    p.add_argument("--spawns", type=int, default=50, help="processes per step")
    p.add_argument("--gocache-dir", default=str(ROOT / ".cache" / "gocache"))
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()
    gocache = Path(args.gocache_dir).resolve()
    results: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0))}
    results["per_process_ms"] = asyncio.run(per_process(args.spawns, gocache))
    for name, s in results["per_process_ms"].items():
        print(f"{name:40s} p50 {s['p50']:7.2f} ms  p90 {s['p90']:7.2f} ms  min {s['min']:7.2f}")
    results["cgroup_join_ms"] = join_cost(args.spawns)
    for name, s in results["cgroup_join_ms"].items():
        print(f"{name:40s} p50 {s['p50']:7.2f} ms  p90 {s['p90']:7.2f} ms  min {s['min']:7.2f}")
    if not args.skip_e2e:
        results["end_to_end_ms"] = measure_end_to_end(args.runs, gocache)
        for mode, kinds in results["end_to_end_ms"].items():
            for kind, s in kinds.items():
                print(f"hello world, sandbox {mode:5s} {kind:16s} p50 {s['p50']:7.1f} ms  "
                      f"p90 {s['p90']:7.1f} ms  (n={s['n']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
