"""Shared fixtures: a real gofiddle server in a subprocess, and a WebSocket client."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

ROOT = Path(__file__).resolve().parent.parent
GOCACHE = Path(os.environ.get("GOFIDDLE_TEST_GOCACHE", ROOT / ".cache" / "gocache"))
IN_CI = bool(os.environ.get("CI"))
READY_TIMEOUT = 600.0  # a cold cache in CI compiles the warm packages first

HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello, world")\n}\n'


def need(tool: str) -> None:
    """Missing tools fail in CI (the suite must really run there) and skip elsewhere."""
    if shutil.which(tool) is None:
        if IN_CI:
            pytest.fail(f"{tool} is required in CI but not installed")
        pytest.skip(f"{tool} not installed")


def default_sandbox() -> str:
    wanted = os.environ.get("GOFIDDLE_TEST_SANDBOX")
    if wanted:
        return wanted
    if shutil.which("bwrap") or IN_CI:
        return "bwrap"
    return "none"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerHandle:
    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    log_path: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def launch(tmp: Path, *, wait_ready: bool = True, data_dir: Path | None = None,
           env: dict[str, str] | None = None, **settings: Any) -> ServerHandle:
    """`data_dir` reuses a directory (restart tests); by default each server gets its own.
    `env` adds variables to the server process's environment (e.g. a secret that sandboxed
    programs must not be able to read)."""
    port = free_port()
    data_dir = data_dir if data_dir is not None else tmp / f"data-{port}"
    GOCACHE.mkdir(parents=True, exist_ok=True)
    # every test client is 127.0.0.1: per-address limits are raised unless a test sets them
    opts: dict[str, Any] = {"sandbox": default_sandbox(), "workers": 2,
                            "runs_per_minute": 100000, "shares_per_minute": 100000,
                            "max_sessions_per_client": 1000}
    opts.update(settings)
    args = [sys.executable, "-m", "gofiddle", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--data-dir", str(data_dir),
            "--gocache-dir", str(GOCACHE)]
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            args += [flag, str(value)]
    log_path = tmp / f"server-{port}.log"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("GOFIDDLE_")}
    server_env.update(env or {})
    proc = subprocess.Popen(args, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            env=server_env, cwd=ROOT)
    handle = ServerHandle(proc, port, data_dir, log_path, opts)
    if wait_ready:
        wait_until_ready(handle)
    return handle


def wait_until_ready(handle: ServerHandle, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if handle.proc.poll() is not None:
            raise RuntimeError(f"server exited with {handle.proc.returncode}:\n{handle.log()}")
        try:
            r = httpx.get(handle.url + "/readyz", timeout=2)
            if r.status_code == 200:
                return
            state = r.json()
            if state.get("warm_error"):
                raise RuntimeError(f"warmup failed: {state['warm_error']}")
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop()
    raise RuntimeError(f"server not ready in {timeout} s:\n{handle.log()}")


@pytest.fixture(scope="session")
def server_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture
def start_server(server_tmp: Path) -> Iterator[Any]:
    """Factory: start_server(workers=1, queue_size=2, ...) -> ServerHandle, stopped after."""
    started: list[ServerHandle] = []

    def factory(**settings: Any) -> ServerHandle:
        handle = launch(server_tmp, **settings)
        started.append(handle)
        return handle

    yield factory
    for h in started:
        h.stop()


@pytest.fixture(scope="session")
def server(server_tmp: Path) -> Iterator[ServerHandle]:
    handle = launch(server_tmp)
    yield handle
    handle.stop()


class Client:
    """A minimal protocol client for tests."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.hello: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str) -> Client:
        ws = await websockets.connect(url, max_size=None)
        c = cls(ws)
        c.hello = await c.recv()
        assert c.hello["type"] == "hello"
        return c

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 60.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until(self, kind: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Frames up to and including the first of type `kind`."""
        frames = []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            frame = await self.recv(max(0.01, left))
            frames.append(frame)
            if frame["type"] == kind:
                return frames

    async def run(self, source: str, id: str = "r1", timeout: float = 60.0,
                  **fields: Any) -> list[dict[str, Any]]:
        await self.send({"type": "run", "id": id, "source": source, **fields})
        return await self.until("done", timeout)

    async def close(self) -> None:
        await self.ws.close()


def done_of(frames: list[dict[str, Any]]) -> dict[str, Any]:
    dones = [f for f in frames if f["type"] == "done"]
    assert len(dones) == 1, frames
    return dones[0]


def stdout_of(frames: list[dict[str, Any]], stream: str = "stdout") -> str:
    return "".join(f["data"] for f in frames if f["type"] == "output" and f["stream"] == stream)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def leftovers(server: ServerHandle) -> list[int]:
    """Processes a job started that are still alive: descendants of the server, plus
    orphans that escaped the tree (setsid + parent exit) recognised by their command line:
    the sandboxed binary is /prog, and every job path lies under the data dir."""
    found = set(processes_under(server.pid))
    marker = str(server.data_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == server.pid:
            continue
        argv = _cmdline(int(entry.name))
        if not argv:
            continue
        if argv[0] == "/prog" and _other_servers_job(int(entry.name), server.pid):
            continue  # another test session's server runs jobs on this machine too
        if argv[0] == "/prog" or any(marker in a for a in argv):
            try:
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                found.add(int(entry.name))
    return sorted(found)


def _other_servers_job(pid: int, server_pid: int) -> bool:
    """True when pid sits in the job cgroup of another gofiddle server (cgroup paths
    are gofiddle/<server pid>-<start time>/<job>); a process in none is counted."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    owners = {part.split("-", 1)[0] for line in text.splitlines()
              for part in line.split("/gofiddle/")[1:]}
    return bool(owners) and str(server_pid) not in owners


def settle(server: ServerHandle, within: float = 1.0) -> list[int]:
    """leftovers() once they had `within` seconds to die (SIGKILL is asynchronous)."""
    deadline = time.monotonic() + within
    while (found := leftovers(server)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def describe(pids: list[int]) -> str:
    return "; ".join(f"{p}: {' '.join(_cmdline(p))[:300]}" for p in pids)


def processes_under(pid: int) -> list[int]:
    """Every live descendant of pid (the server): user programs and the toolchain."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields_ = stat.rsplit(")", 1)[1].split()
        if fields_[0] == "Z":
            continue
        children.setdefault(int(fields_[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out
