"""Job cgroups with real cgroups and real processes (no mocks).

Every test works under its own group name, so a gofiddle server running on the same
machine (and its ``cleanup_stale``) is never touched, and vice versa.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from gofiddle.sandbox.cgroups import Cgroup, CgroupLimits, CgroupManager, detect_reason

MiB = 1 << 20
PYTHON = sys.executable


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def _name() -> str:
    return f"gofiddle-test-{os.getpid()}"


def _parents(mgr: CgroupManager) -> list[Path]:
    return [d.parent for d in mgr.directories()]


@pytest.fixture
def manager() -> Iterator[CgroupManager]:
    if os.geteuid() != 0:
        _unavailable("cgroup tests need root")
    mgr = CgroupManager.detect(_name())
    if mgr is None:
        _unavailable(f"cgroups unusable here: {detect_reason()}")
    assert mgr is not None
    parents = _parents(mgr)
    yield mgr
    mgr.close()
    for p in parents:  # <mount>/gofiddle-test-PID
        if p.exists():
            p.rmdir()


def spawn(cg: Cgroup, argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside ``cg`` the way the sandbox does: sh joins, then execs."""
    joins = " && ".join(f"echo $$ > {shlex.quote(f)}" for f in cg.procs_files)
    return subprocess.Popen(["/bin/sh", "-c", f"{joins} && exec {shlex.join(argv)}"], **kw)


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (dead, only waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def wait_for(cond: Callable[[], object], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_detect_reports_version_and_root(manager: CgroupManager) -> None:
    assert manager.version in (1, 2)
    assert _name() in manager.root
    assert detect_reason() == ""


def test_limits_are_written(manager: CgroupManager) -> None:
    cg = manager.create("limits", CgroupLimits(memory_bytes=64 * MiB, pids=12, cpu_cores=0.5))
    try:
        files = {Path(f).parent for f in cg.procs_files}
        text = {p.name: p.read_text().strip() for d in files for p in d.iterdir()
                if p.name in ("pids.max", "memory.limit_in_bytes", "memory.max",
                              "memory.memsw.limit_in_bytes", "memory.swap.max",
                              "cpu.cfs_quota_us", "cpu.max")}
        assert text["pids.max"] == "12"
        assert text.get("memory.limit_in_bytes", text.get("memory.max")) == str(64 * MiB)
        if "memory.memsw.limit_in_bytes" in text:
            assert text["memory.memsw.limit_in_bytes"] == str(64 * MiB)
        if "memory.swap.max" in text:
            assert text["memory.swap.max"] == "0"
        if "cpu" in manager.controllers:
            quota = text["cpu.cfs_quota_us"] if manager.version == 1 else text["cpu.max"].split()[0]
            assert quota == "50000"
    finally:
        cg.remove()


def test_memory_hog_is_oom_killed(manager: CgroupManager) -> None:
    cg = manager.create("hog", CgroupLimits(memory_bytes=64 * MiB, pids=16))
    try:
        # bytes * n writes every page, unlike bytearray(n) which may stay untouched
        p = spawn(cg, [PYTHON, "-c", "x = b'a' * (512 << 20); print('survived')"],
                  stdout=subprocess.PIPE)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == -signal.SIGKILL, out
        assert cg.oom_killed()
        assert not cg.pids_limit_hit()
        peak = cg.memory_peak()
        assert peak is not None and 32 * MiB < peak <= 64 * MiB
        cpu = cg.cpu_seconds()
        assert cpu is not None and cpu > 0
    finally:
        cg.remove()


def test_quiet_job_reports_no_limit_hit(manager: CgroupManager) -> None:
    cg = manager.create("quiet", CgroupLimits(memory_bytes=64 * MiB, pids=16))
    try:
        p = spawn(cg, ["/bin/true"])
        assert p.wait(timeout=10) == 0
        assert not cg.oom_killed()
        assert not cg.pids_limit_hit()
        assert cg.pids() == set()
    finally:
        cg.remove()


FORK_BOMB = """
import os, time
while True:
    try:
        os.fork()
    except OSError:
        time.sleep(0.001)
"""


def test_fork_bomb_hits_pids_limit_and_kill_all_empties_the_group(
        manager: CgroupManager) -> None:
    cg = manager.create("bomb", CgroupLimits(memory_bytes=256 * MiB, pids=32))
    try:
        # every process forks copies of itself forever and retries failed forks, so the
        # group stays at the limit with new processes racing the sweep
        p = spawn(cg, [PYTHON, "-c", FORK_BOMB])
        assert wait_for(cg.pids_limit_hit)
        seen = cg.pids()
        assert 1 < len(seen) <= 32
        started = time.monotonic()
        cg.kill_all()
        assert time.monotonic() - started < 2.0
        assert cg.pids() == set()
        p.wait(timeout=5)
        assert not any(alive(pid) for pid in seen)
    finally:
        cg.remove()


def test_kill_all_reaches_orphans_and_new_sessions(manager: CgroupManager) -> None:
    cg = manager.create("orphans", CgroupLimits(memory_bytes=64 * MiB, pids=16))
    try:
        # the parent exits at once: the sleepers are orphans in their own sessions,
        # out of reach of killpg on the original group
        p = spawn(cg, ["/bin/sh", "-c", "for i in 1 2 3; do setsid sleep 300 & done"])
        assert p.wait(timeout=10) == 0
        assert wait_for(lambda: len(cg.pids()) == 3)
        seen = cg.pids()
        cg.kill_all()
        assert cg.pids() == set()
        assert wait_for(lambda: not any(alive(pid) for pid in seen))
    finally:
        cg.remove()


def test_remove_leaves_no_directory_and_is_idempotent(manager: CgroupManager) -> None:
    cg = manager.create("gone", CgroupLimits(memory_bytes=64 * MiB, pids=8))
    p = spawn(cg, ["sleep", "300"])
    assert wait_for(lambda: p.pid in cg.pids())
    dirs = [Path(f).parent for f in cg.procs_files]
    assert all(d.is_dir() for d in dirs)
    cg.remove()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not any(d.exists() for d in dirs)
    cg.remove()  # again: no error
    assert cg.pids() == set()
    assert not cg.oom_killed() and cg.memory_peak() is None


def test_create_gives_unique_leaves(manager: CgroupManager) -> None:
    a = manager.create("same", CgroupLimits(memory_bytes=64 * MiB, pids=8))
    b = manager.create("same", CgroupLimits(memory_bytes=64 * MiB, pids=8))
    try:
        assert set(a.procs_files).isdisjoint(b.procs_files)
    finally:
        a.remove()
        b.remove()
    with pytest.raises(ValueError):
        manager.create("../escape", CgroupLimits(memory_bytes=64 * MiB, pids=8))


# A "server" in a child process: makes a job cgroup with a sleeper in it, prints the
# sleeper's pid, then waits to be killed (a crash) or to read a line (stays alive).
SERVER = textwrap.dedent("""
    import subprocess, sys
    from gofiddle.sandbox.cgroups import CgroupLimits, CgroupManager
    mgr = CgroupManager.detect(sys.argv[1])
    cg = mgr.create("job", CgroupLimits(memory_bytes=64 << 20, pids=8))
    joins = " && ".join(f"echo $$ > {f}" for f in cg.procs_files)
    p = subprocess.Popen(["/bin/sh", "-c", joins + " && exec sleep 300"],
                         start_new_session=True)
    while p.pid not in cg.pids():
        pass
    print(p.pid, mgr.instance, flush=True)
    sys.stdin.readline()
""")


def _start_server(name: str) -> tuple[subprocess.Popen[str], int, str]:
    srv = subprocess.Popen([PYTHON, "-c", SERVER, name], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    assert srv.stdout is not None
    pid, instance = srv.stdout.readline().split()
    return srv, int(pid), instance


def test_cleanup_stale_removes_leftovers_of_dead_servers_only(
        manager: CgroupManager, tmp_path: Path) -> None:
    mine = manager.create("mine", CgroupLimits(memory_bytes=64 * MiB, pids=8))
    my_sleeper = spawn(mine, ["sleep", "300"])
    crashed, crashed_pid, crashed_instance = _start_server(_name())
    live, live_pid, live_instance = _start_server(_name())
    try:
        crashed.kill()  # the server dies; its job and cgroups stay behind
        crashed.wait()
        assert alive(crashed_pid)
        parents = _parents(manager)
        assert all((p / crashed_instance / "job").is_dir() for p in parents)

        assert manager.cleanup_stale() == 1

        assert wait_for(lambda: not alive(crashed_pid))
        assert not any((p / crashed_instance).exists() for p in parents)
        # another live server's job and this manager's own job are untouched
        assert alive(live_pid)
        assert all((p / live_instance / "job").is_dir() for p in parents)
        assert my_sleeper.pid in mine.pids()
        assert manager.cleanup_stale() == 0
    finally:
        live.kill()
        live.wait()
        assert manager.cleanup_stale() == 1  # now the second server is gone too
        assert wait_for(lambda: not alive(live_pid))
        mine.remove()
        my_sleeper.wait(timeout=5)


def test_v2_kill_and_remove_on_a_controllerless_cgroup2(tmp_path: Path) -> None:
    """On hybrid v1 machines the cgroup2 tree has no controllers, but cgroup.kill,
    cgroup.procs and rmdir work: exercise the v2 paths there."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if " - cgroup2 " in line]
    if not mounts or os.geteuid() != 0:
        pytest.skip("no cgroup2 mount")
    try:
        mgr = CgroupManager.v2(mounts[0], _name(), required=())
    except OSError as e:
        pytest.skip(f"cgroup2 at {mounts[0]} not writable: {e}")
    try:
        assert mgr.version == 2
        cg = mgr.create("v2", CgroupLimits(memory_bytes=64 * MiB, pids=8))
        p = spawn(cg, ["/bin/sh", "-c", "for i in 1 2 3; do sleep 300 & done; wait"])
        assert wait_for(lambda: len(cg.pids()) == 4)
        seen = cg.pids()
        cg.kill_all()
        assert cg.pids() == set()
        assert p.wait(timeout=5) == -signal.SIGKILL
        assert wait_for(lambda: not any(alive(pid) for pid in seen))
        assert (cg.cpu_seconds() or 0) >= 0
        cg.remove()
        assert not any(Path(f).parent.exists() for f in cg.procs_files)
    finally:
        mgr.close()
        Path(mounts[0], _name()).rmdir()
