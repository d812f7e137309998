"""Per-job cgroups: memory (swap included), pids and CPU limits, OOM and fork-limit
detection, and a sweep that kills whatever a job left behind.

Layout: ``<mount>/<name>/<instance>/<job>`` in every hierarchy used (v1) or in the single
cgroup2 tree (v2). ``instance`` is ``<pid>-<starttime>`` of the server that owns it, so
``cleanup_stale`` can tell leftovers of a crashed server from the live jobs of another
server running next to it (tests, a second worker) and never kills the latter.

All calls are synchronous sysfs writes of a few bytes; ``kill_all`` and ``remove`` may
sleep a few milliseconds while processes die, so async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
V1_REQUIRED = ("memory", "pids")
V1_OPTIONAL = ("cpu", "cpuacct")
V2_REQUIRED = ("memory", "pids")
V2_OPTIONAL = ("cpu",)
CFS_PERIOD_US = 100_000
KILL_TIMEOUT = 2.0
RMDIR_TIMEOUT = 1.0
_JOB_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_INSTANCE_RE = re.compile(r"^(\d+)-(\d+)$")

_last_reason = ""


def detect_reason() -> str:
    """Why the last ``CgroupManager.detect`` returned None ("" after a success)."""
    return _last_reason


@dataclass(frozen=True)
class CgroupLimits:
    memory_bytes: int
    pids: int
    cpu_cores: float | None = None  # CPU quota: 1.0 is one core, None is unlimited


# ---- small sysfs helpers --------------------------------------------------------------

def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    # one write() per value: cgroup files parse each write separately
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _keyed(path: Path, key: str) -> int | None:
    """The value of ``key N`` in a flat-keyed file (memory.events, pids.events, cpu.stat)."""
    text = _read(path)
    if text is None:
        return None
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            with contextlib.suppress(ValueError):
                return int(parts[1])
    return None


def _int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _starttime(pid: int) -> int | None:
    stat = _read(Path(f"/proc/{pid}/stat"))
    if stat is None:
        return None
    # comm may contain spaces and parentheses: fields restart after the last ')'
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def _instance_alive(instance: str) -> bool:
    m = _INSTANCE_RE.match(instance)
    if m is None:
        return False
    return _starttime(int(m.group(1))) == int(m.group(2))


def _cgroup_mounts() -> tuple[list[Path], dict[str, Path]]:
    """cgroup2 mount points, and the v1 mount point of each controller."""
    v2: list[Path] = []
    v1: dict[str, Path] = {}
    text = _read(Path(MOUNTINFO)) or ""
    for line in text.splitlines():
        pre, sep, post = line.partition(" - ")
        if not sep:
            continue
        fields, tail = pre.split(), post.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        # mountinfo escapes spaces and the like as octal
        mountpoint = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4]))
        if tail[0] == "cgroup2":
            v2.append(mountpoint)
        elif tail[0] == "cgroup":
            for opt in tail[2].split(","):
                v1.setdefault(opt, mountpoint)
    return v2, v1


def _pidfd_kill(pid: int, marker: str) -> None:
    """SIGKILL ``pid`` if it is (still) in a cgroup whose path ends with ``marker``.

    Pinning the process with a pidfd before checking membership means a pid reused by
    an unrelated process between reading cgroup.procs and killing is never signalled.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as e:
        if e.errno != errno.ENOSYS:
            return
        with contextlib.suppress(OSError):  # kernel < 5.3: best effort
            os.kill(pid, signal.SIGKILL)
        return
    try:
        text = _read(Path(f"/proc/{pid}/cgroup")) or ""
        if any(line.rstrip().endswith(marker) for line in text.splitlines()):
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(fd)


def _rmdir(path: Path, deadline: float) -> bool:
    """rmdir, retrying while the last killed processes leave (EBUSY)."""
    while True:
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                log.warning("cannot remove cgroup %s: %s", path, e)
                return False
        time.sleep(0.01)


# ---- one job's cgroup -------------------------------------------------------------------

class Cgroup:
    """The leaf of one job: one directory per hierarchy (v1) or a single one (v2)."""

    def __init__(self, version: int, dirs: dict[str, Path], marker: str,
                 on_remove: Callable[[str], None] | None = None) -> None:
        self.version = version
        self._dirs = dirs  # role (memory, pids, cpu, cpuacct) -> leaf directory
        self._marker = marker  # "/<instance>/<leaf>", the end of the path in /proc/PID/cgroup
        self._on_remove = on_remove
        self._unique = list(dict.fromkeys(dirs.values()))
        # Writing a pid to each of these moves it into the job in every hierarchy
        self.procs_files: list[str] = [str(d / "cgroup.procs") for d in self._unique]

    @property
    def name(self) -> str:
        return self._unique[0].name

    def _file(self, role: str, name: str) -> Path | None:
        d = self._dirs.get(role)
        return d / name if d is not None else None

    def has(self, role: str, name: str) -> bool:
        f = self._file(role, name)
        return f is not None and f.exists()

    def _keyed(self, role: str, name: str, key: str) -> int | None:
        f = self._file(role, name)
        return _keyed(f, key) if f is not None else None

    def pids(self) -> set[int]:
        out: set[int] = set()
        for f in self.procs_files:
            text = _read(Path(f)) or ""
            out.update(int(x) for x in text.split() if x.isdigit())
        return out

    def oom_killed(self) -> bool:
        if self.version == 1:
            n = self._keyed("memory", "memory.oom_control", "oom_kill")
        else:
            n = self._keyed("memory", "memory.events", "oom_kill")
        return bool(n)

    def pids_limit_hit(self) -> bool:
        # counts failed forks and thread creations (Go's "newosproc" errors) in this group
        return bool(self._keyed("pids", "pids.events", "max"))

    def memory_peak(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        f = self._file("memory", name)
        return _int(f) if f is not None else None

    def cpu_seconds(self) -> float | None:
        if self.version == 1:
            f = self._file("cpuacct", "cpuacct.usage")
            ns = _int(f) if f is not None else None
            return ns / 1e9 if ns is not None else None
        usec = self._keyed("cpuacct", "cpu.stat", "usage_usec")  # core file, no controller needed
        return usec / 1e6 if usec is not None else None

    def kill_all(self, timeout: float = KILL_TIMEOUT) -> None:
        """SIGKILL every process until the group is empty, or until ``timeout``."""
        if self.version == 2:
            with contextlib.suppress(OSError):  # cgroup.kill needs Linux 5.14
                _write(self._unique[0] / "cgroup.kill", "1")
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            pids = self.pids()
            if not pids:
                return
            # A fork racing with the sweep shows up in the next round; pids.max bounds
            # how many rounds that can take.
            for pid in pids:
                _pidfd_kill(pid, self._marker)
            if time.monotonic() > deadline:
                log.warning("cgroup %s still has processes %s after %.1fs",
                            self.name, sorted(pids), timeout)
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def remove(self) -> None:
        """Kill everything, then delete the group in every hierarchy. Idempotent, never raises."""
        try:
            self.kill_all()
        except Exception:
            log.exception("killing cgroup %s failed", self.name)
        deadline = time.monotonic() + RMDIR_TIMEOUT
        for d in self._unique:
            try:
                _rmdir(d, deadline)
            except Exception:
                log.exception("removing cgroup %s failed", d)
        if self._on_remove is not None:
            self._on_remove(self.name)

    def __repr__(self) -> str:
        return f"Cgroup(v{self.version}, {self._unique[0]})"


# ---- the manager ------------------------------------------------------------------------

class CgroupManager:
    """Creates job cgroups under ``<mount>/<name>/<instance>`` in each hierarchy it uses."""

    def __init__(self, version: int, instance_dirs: dict[str, Path],
                 controllers: Iterable[str]) -> None:
        self.version = version
        self._dirs = instance_dirs  # role -> this server's instance directory
        self.controllers = frozenset(controllers)
        self.instance = next(iter(instance_dirs.values())).name
        self._live: set[str] = set()
        self.root = self._describe()

    # ---- construction -----------------------------------------------------------------
    @classmethod
    def detect(cls, name: str = "gofiddle") -> CgroupManager | None:
        """A manager for this machine, or None (``detect_reason()`` says why)."""
        global _last_reason
        v2_mounts, v1_mounts = _cgroup_mounts()
        reasons: list[str] = []
        for mount in v2_mounts:
            available = set((_read(mount / "cgroup.controllers") or "").split())
            if not set(V2_REQUIRED) <= available:
                reasons.append(f"cgroup2 at {mount} lacks "
                               f"{', '.join(sorted(set(V2_REQUIRED) - available))}")
                continue
            try:
                mgr = cls.v2(mount, name)
            except OSError as e:
                reasons.append(f"cgroup2 at {mount} not usable: {e}")
                continue
            _last_reason = ""
            return mgr
        missing = [c for c in V1_REQUIRED if c not in v1_mounts]
        if missing:
            reasons.append(f"no cgroup v1 {' or '.join(missing)} hierarchy mounted")
        else:
            try:
                mgr = cls.v1(v1_mounts, name)
            except OSError as e:
                reasons.append(f"cgroup v1 not usable: {e}")
            else:
                _last_reason = ""
                return mgr
        _last_reason = "; ".join(reasons) or "no cgroup filesystem mounted"
        return None

    @classmethod
    def v1(cls, mounts: dict[str, Path], name: str = "gofiddle") -> CgroupManager:
        """Use the v1 hierarchies in ``mounts`` (controller -> mount point)."""
        roles = [r for r in (*V1_REQUIRED, *V1_OPTIONAL) if r in mounts]
        instance = _own_instance()
        dirs = {r: Path(mounts[r]) / name / instance for r in roles}
        for d in dict.fromkeys(dirs.values()):
            d.mkdir(parents=True, exist_ok=True)
        return cls(1, dirs, roles)

    @classmethod
    def v2(cls, mount: Path | str, name: str = "gofiddle", *,
           required: Iterable[str] = V2_REQUIRED) -> CgroupManager:
        """Use the cgroup2 tree at ``mount``; enables controllers down to the instance dir.

        Fails with EBUSY when ``mount`` is not the real root and holds processes (the
        "no internal processes" rule), e.g. a container's cgroup namespace root.
        """
        mount = Path(mount)
        available = set((_read(mount / "cgroup.controllers") or "").split())
        required = tuple(required)
        wanted = [c for c in (*required, *V2_OPTIONAL) if c in available]
        instance_dir = mount / name / _own_instance()
        enabled = set(wanted)
        # a controller reaches the leaves only if every level above enables it
        for parent in (mount, mount / name, instance_dir):
            parent.mkdir(exist_ok=True)
            enabled &= _enable_controllers(parent, wanted, required)
        roles = ("memory", "pids", "cpu", "cpuacct")
        return cls(2, dict.fromkeys(roles, instance_dir), enabled)

    def directories(self) -> list[Path]:
        """This server's instance directory in each hierarchy (jobs are made below)."""
        return list(dict.fromkeys(self._dirs.values()))

    def _describe(self) -> str:
        dirs = self.directories()
        if len(dirs) == 1:
            return str(dirs[0])
        # /sys/fs/cgroup/{memory,pids}/gofiddle/123-456
        base = {d.parent.parent.parent for d in dirs}
        tail = {f"{d.parent.name}/{d.name}" for d in dirs}
        if len(base) == 1 and len(tail) == 1:
            mounts = ",".join(d.parent.parent.name for d in dirs)
            return f"{base.pop()}/{{{mounts}}}/{tail.pop()}"
        return ", ".join(map(str, dirs))

    # ---- jobs -------------------------------------------------------------------------
    def create(self, job: str, limits: CgroupLimits) -> Cgroup:
        """A new, empty leaf with ``limits``; the leaf name is ``job`` (plus a suffix if taken)."""
        if not _JOB_RE.match(job):
            raise ValueError(f"invalid cgroup job name {job!r}")
        leaf = job
        while True:
            made: list[Path] = []
            try:
                for d in self.directories():
                    (d / leaf).mkdir()
                    made.append(d / leaf)
                break
            except BaseException as e:
                # all hierarchies or none: a half-made job would leak directories
                for p in made:
                    _rmdir(p, 0)
                if not isinstance(e, FileExistsError):
                    raise
                leaf = f"{job}~{secrets.token_hex(3)}"
        self._live.add(leaf)  # before anything can fail: cleanup_stale must not take it
        cg = Cgroup(self.version, {r: d / leaf for r, d in self._dirs.items()},
                    f"/{self.instance}/{leaf}", self._live.discard)
        try:
            self._apply(cg, limits)
        except BaseException:
            cg.remove()
            raise
        return cg

    def _apply(self, cg: Cgroup, limits: CgroupLimits) -> None:
        writes: list[tuple[str, str, str]] = []  # (role, file, value), in order
        if self.version == 1:
            mem = str(limits.memory_bytes)
            writes += [("memory", "memory.limit_in_bytes", mem)]
            # memsw must be >= the memory limit, so it goes second; it exists only with
            # swap accounting, and without it no swap is the best we can ask for
            if cg.has("memory", "memory.memsw.limit_in_bytes"):
                writes += [("memory", "memory.memsw.limit_in_bytes", mem)]
            else:
                writes += [("memory", "memory.swappiness", "0")]
            writes += [("pids", "pids.max", str(limits.pids))]
            if limits.cpu_cores is not None and "cpu" in self.controllers:
                writes += [("cpu", "cpu.cfs_period_us", str(CFS_PERIOD_US)),
                           ("cpu", "cpu.cfs_quota_us", str(_quota(limits.cpu_cores)))]
        else:
            if "memory" in self.controllers:
                writes += [("memory", "memory.max", str(limits.memory_bytes)),
                           # the whole job dies on OOM, not just its largest process
                           ("memory", "memory.oom.group", "1")]
                if cg.has("memory", "memory.swap.max"):
                    writes += [("memory", "memory.swap.max", "0")]
            if "pids" in self.controllers:
                writes += [("pids", "pids.max", str(limits.pids))]
            if limits.cpu_cores is not None and "cpu" in self.controllers:
                writes += [("cpu", "cpu.max", f"{_quota(limits.cpu_cores)} {CFS_PERIOD_US}")]
        for role, name, value in writes:
            path = cg._file(role, name)
            if path is not None:
                _write(path, value)

    # ---- housekeeping -----------------------------------------------------------------
    def cleanup_stale(self) -> int:
        """Kill and remove groups left by servers that are gone; returns how many leaves.

        Leaves of other live servers (another instance directory whose owner still runs)
        are left alone; so are this manager's own live jobs.
        """
        removed = 0
        for parent in dict.fromkeys(d.parent for d in self._dirs.values()):
            for inst in _subdirs(parent):
                if inst.name == self.instance:
                    for leaf in _subdirs(inst):
                        if leaf.name not in self._live:
                            removed += self._remove_leaf(inst.name, leaf.name)
                elif not _instance_alive(inst.name):
                    for leaf in _subdirs(inst):
                        removed += self._remove_leaf(inst.name, leaf.name)
                    self._remove_instance(inst.name)
        return removed

    def _remove_leaf(self, instance: str, leaf: str) -> int:
        dirs = {r: d.parent / instance / leaf for r, d in self._dirs.items()}
        dirs = {r: d for r, d in dirs.items() if d.is_dir()}
        if not dirs:
            return 0
        # anything nested deeper is not ours to keep either: remove bottom-up
        for d in dict.fromkeys(dirs.values()):
            for sub in sorted(_walk(d), key=lambda p: len(p.parts), reverse=True):
                Cgroup(self.version, {"": sub}, f"/{sub.name}").remove()
        Cgroup(self.version, dirs, f"/{instance}/{leaf}").remove()
        return 1

    def _remove_instance(self, instance: str) -> None:
        dirs = {r: d.parent / instance for r, d in self._dirs.items()}
        name = next(iter(self._dirs.values())).parent.name
        Cgroup(self.version, dirs, f"/{name}/{instance}").remove()

    def close(self) -> None:
        """Remove every job group of this server and the instance directory."""
        for leaf in list(self._live):
            self._remove_leaf(self.instance, leaf)
        self._live.clear()
        self.cleanup_stale()
        self._remove_instance(self.instance)

    def __repr__(self) -> str:
        return f"CgroupManager(v{self.version}, {self.root})"


def _own_instance() -> str:
    return f"{os.getpid()}-{_starttime(os.getpid()) or 0}"


def _quota(cores: float) -> int:
    return max(1000, int(cores * CFS_PERIOD_US))  # the kernel's minimum quota is 1 ms


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _walk(path: Path) -> list[Path]:
    """Every cgroup directory strictly below ``path``."""
    out: list[Path] = []
    for sub in _subdirs(path):
        out.append(sub)
        out.extend(_walk(sub))
    return out


def _enable_controllers(parent: Path, wanted: list[str], required: tuple[str, ...]) -> set[str]:
    """Enable ``wanted`` for the children of ``parent``; returns what is enabled.

    Optional controllers that refuse (cpu with realtime tasks around, say) are dropped;
    a required one that refuses raises.
    """
    control = parent / "cgroup.subtree_control"
    have = set((_read(control) or "").split())
    for c in wanted:
        if c in have:
            continue
        try:
            _write(control, f"+{c}")
            have.add(c)
        except OSError:
            if c in required:
                raise
    return have & set(wanted)
