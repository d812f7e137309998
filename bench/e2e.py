"""`gofiddle bench`: the playground against plain `go build`, on this machine, in one run.

(a) baseline: `go build` + exec of N distinct hello worlds, `cores` at a time, unsandboxed,
    on the shared warm GOCACHE;
(b) the same N programs through a real server's WebSocket API from C concurrent sessions
    (bwrap sandbox, default workers): throughput, end-to-end and queue-wait percentiles;
(c) latency on an idle server: a fresh hello world, and the same snippet again (cache hit);
(d) server RSS with 500 idle WebSocket sessions;
(e) the sandbox's cost: fresh hello world end to end, --sandbox bwrap vs --sandbox none.

Everything listens on and connects to 127.0.0.1 only; every phase is bounded in count and
time. Servers are child processes of this one and are stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from gofiddle.config import Settings

from .programs import distinct_hellos, expected_output

READY_SECONDS = 600.0  # a cold cache compiles the warm packages first
JOB_SECONDS = 120.0


def cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Average number of busy cores between two busy_jiffies() readings (everything on
    the machine: this benchmark, the server, and anything else running)."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return cores() * busy / total if total else float("nan")


def goroot() -> Path:
    import go  # type: ignore[import-untyped]

    return Path(os.path.dirname(go.__file__)).resolve()


# ---- (a) the baseline ----------------------------------------------------------------


def baseline(programs: list[str], parallel: int, gocache: Path, work: Path) -> dict[str, Any]:
    go = str(goroot() / "bin" / "go")
    env = {"PATH": f"{goroot() / 'bin'}:/usr/bin:/bin", "HOME": str(work),
           "GOCACHE": str(gocache), "GOTOOLCHAIN": "local", "GOENV": "off", "GOFLAGS": "",
           "GOPROXY": "off", "GOTELEMETRY": "off", "CGO_ENABLED": "0",
           "XDG_CONFIG_HOME": str(work / "config")}
    dirs = []
    for i, src in enumerate(programs):
        d = work / f"p{i}"
        d.mkdir(parents=True)
        (d / "go.mod").write_text("module hello\n\ngo 1.27\n")
        (d / "main.go").write_text(src)
        dirs.append(d)

    def one(d: Path) -> tuple[float, bool]:
        t0 = time.perf_counter()
        b = subprocess.run([go, "build", "-o", "prog", "."], cwd=d, env=env,
                           capture_output=True, timeout=JOB_SECONDS)
        ok = b.returncode == 0
        if ok:
            r = subprocess.run([str(d / "prog")], cwd=d, capture_output=True,
                               timeout=JOB_SECONDS)
            ok = r.returncode == 0 and r.stdout.decode() == expected_output(
                (d / "main.go").read_text())
        return time.perf_counter() - t0, ok

    # warm: the first build after a while may refresh cache metadata
    warm = work / "warm"
    warm.mkdir()
    (warm / "go.mod").write_text("module hello\n\ngo 1.27\n")
    (warm / "main.go").write_text(distinct_hellos(1, "warm")[0])
    subprocess.run([go, "build", "-o", "prog", "."], cwd=warm, env=env, capture_output=True,
                   timeout=JOB_SECONDS * 5)

    from concurrent.futures import ThreadPoolExecutor

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    j0 = busy_jiffies()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, dirs))
    wall = time.perf_counter() - t0
    j1 = busy_jiffies()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    lat = [t for t, _ in results]
    return {
        "jobs": len(programs), "parallel": parallel, "failed": sum(not ok for _, ok in results),
        "wall_s": wall, "throughput": len(programs) / wall,
        "cpu_ms_per_job": cpu * 1000 / len(programs),
        "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
        "busy_cores": busy_cores(j0, j1),
    }


# ---- a server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> tuple[float, float]:
        """(the server process itself, the children it waited for): /proc/PID/stat."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        own = (int(fields[11]) + int(fields[12])) / tick
        children = (int(fields[13]) + int(fields[14])) / tick
        return own, children

    def sandbox_cpu_seconds(self) -> float | None:
        """CPU of every sandboxed process tree the server started so far: the sandbox puts
        each in a cgroup under gofiddle/<server pid>-<start time>/, and cgroup CPU
        accounting is hierarchical (a removed child's usage stays in its parent)."""
        root = Path("/sys/fs/cgroup")
        for d in (*root.glob(f"cpuacct/gofiddle/{self.proc.pid}-*"),
                  *root.glob(f"cpu,cpuacct/gofiddle/{self.proc.pid}-*"),
                  *root.glob(f"gofiddle/{self.proc.pid}-*")):
            with contextlib.suppress(OSError, ValueError):
                if (d / "cpuacct.usage").exists():
                    return int((d / "cpuacct.usage").read_text()) / 1e9
                for line in (d / "cpu.stat").read_text().splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) / 1e6
        return None

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0


@contextlib.contextmanager
def server(work: Path, gocache: Path, sandbox: str, **extra: Any) -> Iterator[Server]:
    port = free_port()
    data = work / f"data-{sandbox}-{port}"
    log = work / f"server-{sandbox}-{port}.log"
    args = [sys.executable, "-m", "gofiddle", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data), "--gocache-dir", str(gocache),
            "--sandbox", sandbox, "--runs-per-minute", "1000000",
            "--max-sessions-per-client", "100000", "--log-level", "warning"]
    bools = {f.name for f in dataclasses.fields(Settings) if str(f.type) == "bool"}
    for k, v in extra.items():
        flag = k.replace("_", "-")
        if k in bools:
            args.append(f"--{flag}" if str(v).lower() in ("1", "true", "yes", "on")
                        else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(v)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOFIDDLE_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(srv.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in {READY_SECONDS} s")
            time.sleep(0.2)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ---- a WebSocket client --------------------------------------------------------------


@dataclass
class JobResult:
    latency: float
    done: dict[str, Any]
    position: int  # first queue position (1 = next to start)
    stdout: str = ""
    frames: list[dict[str, Any]] = field(default_factory=list)


async def connect(url: str) -> Any:
    ws = await websockets.connect(url, max_size=None, open_timeout=30)
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello", hello
    return ws


async def run_job(ws: Any, source: str, id: str) -> JobResult:
    t0 = time.perf_counter()
    await ws.send(json.dumps({"type": "run", "id": id, "source": source}))
    position = 0
    out: list[str] = []
    async with asyncio.timeout(JOB_SECONDS):
        while True:
            f = json.loads(await ws.recv())
            if f.get("id") != id:
                continue
            if f["type"] == "queued" and not position:
                position = f["position"]
            elif f["type"] == "output" and f["stream"] == "stdout":
                out.append(f["data"])
            elif f["type"] == "error":
                raise RuntimeError(f"server refused the run: {f}")
            elif f["type"] == "done":
                return JobResult(time.perf_counter() - t0, f, position, "".join(out))


async def throughput(srv: Server, programs: list[str], sessions: int,
                     workers: int) -> dict[str, Any]:
    todo: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, p in enumerate(programs):
        todo.put_nowait((i, p))
    results: list[JobResult] = []
    socks = [await connect(srv.ws) for _ in range(sessions)]

    async def session(ws: Any, n: int) -> None:
        while True:
            try:
                i, src = todo.get_nowait()
            except asyncio.QueueEmpty:
                return
            r = await run_job(ws, src, f"s{n}-{i}")
            r.frames = [{"expected": expected_output(src)}]
            results.append(r)

    cpu0, box0, j0 = srv.cpu_seconds(), srv.sandbox_cpu_seconds(), busy_jiffies()
    t0 = time.perf_counter()
    await asyncio.gather(*(session(ws, n) for n, ws in enumerate(socks)))
    wall = time.perf_counter() - t0
    cpu1, box1, j1 = srv.cpu_seconds(), srv.sandbox_cpu_seconds(), busy_jiffies()
    for ws in socks:
        await ws.close()
    thr = len(results) / wall
    lat = [r.latency for r in results]
    queue = [r.done["timings"]["queue_ms"] / 1000 for r in results]
    bad = [r for r in results
           if r.done["status"] != "ok" or r.stdout != r.frames[0]["expected"]]
    # a job's fair bound: the jobs ahead of it (queued ahead plus the running ones) at the
    # measured throughput, plus half a second
    within = sum(r.latency <= (max(0, r.position - 1) + workers) / thr + 0.5 for r in results)
    return {
        "jobs": len(results), "sessions": sessions, "failed": len(bad),
        "failed_examples": [r.done for r in bad[:3]],
        "wall_s": wall, "throughput": thr,
        "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
        "queue_p50_ms": pct(queue, 50) * 1000, "queue_p99_ms": pct(queue, 99) * 1000,
        "p99_target_ms": ((sessions - 1) / thr + 0.5) * 1000,
        "within_own_bound": within / max(1, len(results)),
        "cached": sum(bool(r.done.get("cached")) for r in results),
        # the Python server's own CPU; sandboxed tools are not all reaped into cutime
        "server_cpu_ms_per_job": (cpu1[0] - cpu0[0]) * 1000 / max(1, len(results)),
        "sandbox_cpu_ms_per_job": ((box1 - box0) * 1000 / max(1, len(results))
                                   if box0 is not None and box1 is not None else None),
        "busy_cores": busy_cores(j0, j1),
    }


async def sequential(srv: Server, programs: list[str]) -> list[JobResult]:
    ws = await connect(srv.ws)
    try:
        return [await run_job(ws, p, f"q{i}") for i, p in enumerate(programs)]
    finally:
        await ws.close()


async def idle_sessions(srv: Server, count: int) -> dict[str, Any]:
    before = srv.rss_kib()
    socks: list[Any] = []
    sem = asyncio.Semaphore(50)

    async def one() -> None:
        async with sem:
            socks.append(await connect(srv.ws))

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        await asyncio.sleep(1.0)  # let the server settle (buffers, GC)
        after = srv.rss_kib()
        active = srv.metric("gofiddle_sessions_active")
    finally:
        await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    return {"sessions": len(socks), "server_sessions_active": active,
            "rss_before_mib": before / 1024, "rss_mib": after / 1024,
            "per_session_kib": (after - before) / max(1, len(socks))}


def raise_nofile(want: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))


# ---- the whole run ---------------------------------------------------------------------


async def _server_phases(work: Path, gocache: Path, programs: list[str], sessions: int,
                         idle: int, repeats: int, options: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    workers = int(options.get("workers", cores()))
    with server(work, gocache, "bwrap", **options) as srv:
        # one run to take the server's first-job costs out of the measurement
        await sequential(srv, distinct_hellos(2, "warmup"))
        print(f"(b) {len(programs)} distinct hello worlds from {sessions} sessions ...",
              flush=True)
        out["server"] = await throughput(srv, programs, sessions, workers)
        print("(c) idle-server latency ...", flush=True)
        fresh = await sequential(srv, distinct_hellos(repeats))
        out["fresh"] = {"p50_ms": pct([r.latency for r in fresh], 50) * 1000,
                        "p99_ms": pct([r.latency for r in fresh], 99) * 1000,
                        "build_ms_p50": pct([r.done["timings"]["build_ms"] for r in fresh], 50),
                        "run_ms_p50": pct([r.done["timings"]["run_ms"] for r in fresh], 50),
                        "failed": sum(r.done["status"] != "ok" for r in fresh)}
        again = await sequential(srv, [programs[0]] * repeats)
        out["cached"] = {"p50_ms": pct([r.latency for r in again], 50) * 1000,
                         "p99_ms": pct([r.latency for r in again], 99) * 1000,
                         "hits": sum(bool(r.done.get("cached")) for r in again),
                         "runs": len(again)}
        print(f"(d) {idle} idle sessions ...", flush=True)
        out["idle"] = await idle_sessions(srv, idle)
    print("(e) the same fresh hello worlds with --sandbox none ...", flush=True)
    with server(work, gocache, "none", **options) as bare:
        await sequential(bare, distinct_hellos(2, "warmup"))
        plain = await sequential(bare, distinct_hellos(repeats))
    out["sandbox"] = {
        "bwrap_p50_ms": out["fresh"]["p50_ms"],
        "none_p50_ms": pct([r.latency for r in plain], 50) * 1000,
    }
    out["sandbox"]["added_ms"] = out["sandbox"]["bwrap_p50_ms"] - out["sandbox"]["none_p50_ms"]
    return out


def run(n: int = 64, sessions: int = 16, idle: int = 500, repeats: int = 25,
        gocache: Path | None = None, options: dict[str, str] | None = None) -> dict[str, Any]:
    """`options`: server settings for both servers (e.g. fast_path=false for "before")."""
    options = dict(options or {})
    gocache = (gocache or Path(".cache/gocache")).resolve()
    gocache.mkdir(parents=True, exist_ok=True)
    raise_nofile(idle * 2 + 256)
    work = Path(tempfile.mkdtemp(prefix="gofiddle-bench-"))
    programs = distinct_hellos(n)
    par = cores()
    print(f"gofiddle bench: {n} programs, {sessions} sessions, {par} cores, "
          f"GOCACHE {gocache}", flush=True)
    try:
        print(f"(a) go build + exec, {par} at a time ...", flush=True)
        result: dict[str, Any] = {"cores": par, "load_before": os.getloadavg(),
                                  "options": options}
        result["baseline"] = baseline(programs, par, gocache, work / "baseline")
        result.update(asyncio.run(_server_phases(work, gocache, programs, sessions, idle,
                                                 repeats, options)))
        result["ratio"] = result["server"]["throughput"] / result["baseline"]["throughput"]
        result["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(result)
    return result


def report(r: dict[str, Any]) -> None:
    b, s, f, c, i, x = (r["baseline"], r["server"], r["fresh"], r["cached"], r["idle"],
                        r["sandbox"])

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "MISSES target"

    print()
    print(f"machine: {r['cores']} cores, load average before {r['load_before'][0]:.2f}, "
          f"after {r['load_after'][0]:.2f}; server options {r['options'] or 'defaults'}")
    print(f"(a) go build + exec        {b['throughput']:6.2f} jobs/s   p50 {b['p50_ms']:6.0f} ms"
          f"  p99 {b['p99_ms']:6.0f} ms   {b['cpu_ms_per_job']:.0f} CPU-ms/job"
          f"   failed {b['failed']}   busy cores {b['busy_cores']:.2f}")
    print(f"(b) server, {s['sessions']} sessions     {s['throughput']:6.2f} jobs/s   "
          f"p50 {s['p50_ms']:6.0f} ms  p99 {s['p99_ms']:6.0f} ms   queue p50 "
          f"{s['queue_p50_ms']:.0f} ms p99 {s['queue_p99_ms']:.0f} ms   failed {s['failed']}"
          f"   busy cores {s['busy_cores']:.2f}")
    box = s["sandbox_cpu_ms_per_job"]
    print(f"    CPU per job: server process {s['server_cpu_ms_per_job']:.1f} ms + sandboxed "
          f"processes {box if box is not None else float('nan'):.1f} ms (cgroups)")
    if box is not None:
        total = s["server_cpu_ms_per_job"] + box
        print(f"    CPU-based ratio (baseline CPU/job / server CPU/job, i.e. on a machine "
              f"running nothing else): {b['cpu_ms_per_job'] / total:.2f}x")
    print(f"    ratio server/baseline  {r['ratio']:.2f}x  ({verdict(r['ratio'] >= 2.5)} >= 2.5x)")
    print(f"    p99 {s['p99_ms']:.0f} ms vs (jobs ahead {s['sessions'] - 1} / throughput) + 0.5 s"
          f" = {s['p99_target_ms']:.0f} ms ({verdict(s['p99_ms'] <= s['p99_target_ms'])}); "
          f"{s['within_own_bound'] * 100:.0f}% of jobs within their own bound")
    print(f"(c) fresh hello, idle      p50 {f['p50_ms']:6.1f} ms  p99 {f['p99_ms']:6.1f} ms"
          f"   (build+vet {f['build_ms_p50']:.0f} ms, run {f['run_ms_p50']:.0f} ms)  "
          f"{verdict(f['p50_ms'] < 150)} < 150 ms")
    print(f"    cached snippet         p50 {c['p50_ms']:6.1f} ms  p99 {c['p99_ms']:6.1f} ms"
          f"   hits {c['hits']}/{c['runs']}  {verdict(c['p50_ms'] < 30)} < 30 ms")
    print(f"(d) {i['sessions']} idle sessions       RSS {i['rss_mib']:.1f} MiB "
          f"(before {i['rss_before_mib']:.1f} MiB, {i['per_session_kib']:.1f} KiB/session)  "
          f"{verdict(i['rss_mib'] < 150)} < 150 MB")
    print(f"(e) sandbox cost           bwrap p50 {x['bwrap_p50_ms']:.1f} ms, none p50 "
          f"{x['none_p50_ms']:.1f} ms: +{x['added_ms']:.1f} ms per fresh hello world")
