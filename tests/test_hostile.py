"""Issue 3: hostile programs against a real server with the real sandbox (bwrap, seccomp,
cgroups, rlimits). Every case gets the outcome it must get, then a plain hello world on
the same session must still work, and nothing the job started may outlive it.

`pytest -s tests/test_hostile.py` prints one report line per case and a summary table.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    HELLO,
    IN_CI,
    ROOT,
    Client,
    ServerHandle,
    default_sandbox,
    describe,
    done_of,
    launch,
    settle,
    stdout_of,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

SECRET = "s3cr3t-0f-the-h0st-7f3a9c"  # in the server's environment only
RUN_SECONDS = 3
MEMORY = 128 << 20
OUTPUT = 64 << 10
STDIN = 64 << 10
FILE_BYTES = 8 << 20
TMP_BYTES = 16 << 20
PIDS = 64
# the program's whole environment: anything else leaked in from the host
PROGRAM_ENV = {"HOME", "TMPDIR", "GOMAXPROCS", "GOMEMLIMIT", "PATH", "TZ", "PWD"}


def _default_workers() -> int:
    from gofiddle.config import Settings

    return Settings().workers


@pytest.fixture(scope="module")
def hostile(server_tmp: Path) -> Iterator[ServerHandle]:
    """One server with small limits (fast cases) and a secret in its environment."""
    if default_sandbox() != "bwrap" and not IN_CI:
        pytest.skip("the hostile suite needs the bwrap sandbox (apt-get install bubblewrap)")
    handle = launch(
        server_tmp,
        # default workers, but at least two: the cross-job case runs two jobs at once
        workers=max(2, _default_workers()),
        run_seconds=RUN_SECONDS, run_memory_bytes=MEMORY, output_bytes=OUTPUT,
        stdin_bytes=STDIN, run_file_bytes=FILE_BYTES, run_tmp_bytes=TMP_BYTES,
        run_pids=PIDS,
        env={"SECRET_TOKEN": SECRET, "GOFIDDLE_PUBLIC_URL": f"http://{SECRET}.example"},
    )
    try:
        status = httpx.get(handle.url + "/readyz", timeout=5).json()["sandbox"]
        if status["mode"] != "bwrap" or not status["cgroups"]:
            msg = f"hostile suite needs sandbox bwrap with cgroups, server has {status}"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        yield handle
        # after the whole module: nothing of any job is left, processes or cgroups
        assert settle(handle, 2.0) == [], describe(settle(handle))
        assert cgroup_leaves(handle) == []
    finally:
        handle.stop()
        print_summary()


# ---- the report -------------------------------------------------------------------------

REPORT: list[tuple[str, str, str, str]] = []


def excerpt(text: str, n: int = 90) -> str:
    text = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return text if len(text) <= n else text[: n - 3] + "..."


def record(name: str, done: dict[str, Any], frames: list[dict[str, Any]],
           seconds: float) -> None:
    out = stdout_of(frames) + stdout_of(frames, "stderr")
    diags = [i["message"] for f in frames if f["type"] == "diagnostics" for i in f["items"]]
    status = done["status"] + (f" ({done['exit_code']})" if done.get("exit_code") else "")
    line = (name, f"{status}, {seconds:.1f} s", excerpt(done.get("message") or "", 70),
            excerpt(out or "; ".join(diags)))
    REPORT.append(line)
    print(f"\n[hostile] {name}: {line[1]}; message: {line[2]!r}; output: {line[3]!r}")


def print_summary() -> None:
    if not REPORT:
        return
    print("\n\n| case | outcome | message | output (excerpt) |\n|---|---|---|---|")
    for row in REPORT:
        print("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")


# ---- the cases --------------------------------------------------------------------------

def prog(imports: str, body: str, extra: str = "") -> str:
    lines = "".join(f'\t"{i}"\n' for i in imports.split())
    return f"package main\n\nimport (\n{lines})\n\n{extra}func main() {{\n{body}}}\n"


# try(what, err) prints one line per attempt: the outcome is in the output
TRY = ('func try(what string, err error) {\n\tif err != nil {\n'
       '\t\tfmt.Printf("%s: %v\\n", what, err)\n\t} else {\n'
       '\t\tfmt.Printf("%s: ok\\n", what)\n\t}\n}\n\n')

# the needle is assembled at run time, so the program's own binary does not contain it
SEARCH = '''func needle(rev string) string {
	b := []byte(rev)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}

// search walks the whole file tree for a file whose name or content holds s
func search(s string) []string {
	var found []string
	filepath.WalkDir("/", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if strings.Contains(p, s) {
			found = append(found, p)
		}
		// not d.Type(): bwrap's /dev/zero is a bind mount over a regular file, and
		// readdir reports the file underneath
		if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() && p != "/prog" {
			if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), s) {
				found = append(found, p)
			}
		}
		return nil
	})
	return found
}

'''


def rev(s: str) -> str:
    return s[::-1]


@dataclass
class Case:
    name: str
    source: str  # @PORT@, @DATA@, @ROOT@, @PID@ are filled in per server
    status: str
    message: tuple[str, ...] = ()  # each must be in done.message
    output: tuple[str, ...] = ()  # each must be in stdout+stderr (or diagnostics)
    absent: tuple[str, ...] = ()  # none may be anywhere in the frames
    exit_code: int | None = None
    max_seconds: float = 30.0
    check: Callable[[str], None] | None = None
    marks: tuple[Any, ...] = field(default=())


def _no_env_leak(out: str) -> None:
    env = {}
    for line in out.splitlines():
        if line.startswith("env "):
            key, _, value = line[4:].partition("=")
            env[key] = value
    assert set(env) == PROGRAM_ENV, (sorted(env), sorted(PROGRAM_ENV))
    assert env["PATH"] == "/" and env["HOME"] == env["PWD"] == "/tmp", env


def _count(out: str, needle: str, n: int) -> None:
    assert out.count(needle) == n, out


def _fd_count(out: str) -> None:
    # "opened 251 files: open /prog: too many open files"
    n = int(out.split("opened ", 1)[1].split()[0])
    assert 200 <= n < 256, n


def _only_own_tree(out: str) -> None:
    line = next(s for s in out.splitlines() if s.startswith("/: "))
    assert line == "/: [dev prog tmp]", line


CASES = [
    Case("infinite loop", "package main\n\nfunc main() {\n\tfor {\n\t}\n}\n",
         "timeout", (f"{RUN_SECONDS} s",)),
    Case("sleep forever",
         prog("fmt time", '\tfmt.Println("sleeping")\n\ttime.Sleep(time.Hour)\n'),
         "timeout", (f"{RUN_SECONDS} s", "wall-clock"), ("sleeping",)),
    Case("output flood",
         prog("fmt", '\tfor {\n\t\tfmt.Println("spam spam spam spam spam spam")\n\t}\n'),
         "output_limit", ("64 KiB",), ("spam",),
         check=lambda out: len(out.encode()) <= OUTPUT),
    Case("memory bomb",
         prog("fmt", "\tvar keep [][]byte\n\tfor i := 0; ; i++ {\n"
              "\t\tb := make([]byte, 16<<20)\n\t\tfor j := range b {\n\t\t\tb[j] = 1\n\t\t}\n"
              "\t\tkeep = append(keep, b)\n\t\tfmt.Println(\"allocated MiB:\", 16*(i+1))\n"
              "\t}\n"),
         "memory_limit", ("128 MiB",), ("allocated MiB: 16",)),
    Case("fork/exec bomb",
         prog("fmt os os/exec time",
              "\tfor i := 0; ; i++ {\n\t\tif err := exec.Command(os.Args[0]).Start(); "
              "err != nil {\n\t\t\tfmt.Println(\"fork failed after\", i, \"children:\", err)\n"
              "\t\t\ttime.Sleep(time.Hour)\n\t\t}\n\t}\n"),
         "timeout", (f"{RUN_SECONDS} s",), ("resource temporarily unavailable",)),
    # one goroutine per thread (paced): Go's fatal-error dump of ~60 goroutines fits the
    # output cap, so the status is the crash and the message names the pids limit
    Case("thread bomb",
         prog("fmt runtime syscall time",
              "\tfor i := 0; ; i++ {\n\t\tgo func() {\n\t\t\truntime.LockOSThread()\n"
              "\t\t\tsyscall.Select(0, nil, nil, nil, nil)\n\t\t}()\n"
              "\t\ttime.Sleep(time.Millisecond)\n"
              "\t\tif i%16 == 0 {\n\t\t\tfmt.Println(\"threads asked:\", i)\n\t\t}\n\t}\n"),
         "exit", (f"limit of {PIDS} processes/threads",),
         ("failed to create new OS thread",), exit_code=2),
    # unpaced, thousands of goroutines exist when thread creation fails, and the runtime's
    # dump of all of them runs into the output cap first
    Case("thread bomb (unpaced)",
         prog("runtime syscall",
              "\tfor {\n\t\tgo func() {\n\t\t\truntime.LockOSThread()\n"
              "\t\t\tsyscall.Select(0, nil, nil, nil, nil)\n\t\t}()\n\t}\n"),
         "output_limit", ("64 KiB",), ("failed to create new OS thread",)),
    Case("many goroutines",
         prog("fmt time",
              "\tfor i := 0; ; i++ {\n\t\tgo func() {\n\t\t\ttime.Sleep(time.Hour)\n\t\t}()\n"
              "\t\tif i%100000 == 0 {\n\t\t\tfmt.Println(\"goroutines:\", i)\n\t\t}\n\t}\n"),
         "memory_limit", ("128 MiB",)),
    Case("deep recursion",
         prog("fmt", "\tfmt.Println(f(0))\n",
              "func f(n int) int {\n\tvar pad [1024]byte\n\tpad[n%1024] = byte(n)\n"
              "\treturn f(n+1) + int(pad[(n+1)%1024])\n}\n\n"),
         "memory_limit", ("128 MiB",)),
    Case("dial the server's own port",
         prog("fmt net time", '\t_, err := net.DialTimeout("tcp", "127.0.0.1:@PORT@", '
              "2*time.Second)\n\tfmt.Println(\"dial:\", err)\n"),
         "ok", output=("connection refused",)),
    Case("dial an outside address",
         prog("fmt net time", '\t_, err := net.DialTimeout("tcp", "1.1.1.1:443", '
              "2*time.Second)\n\tfmt.Println(\"dial:\", err)\n"),
         "ok", output=("network is unreachable",)),
    Case("DNS lookup",
         prog("fmt net", '\taddrs, err := net.LookupHost("example.com")\n'
              '\tfmt.Println("addrs:", len(addrs), "err:", err)\n'),
         "ok", output=("addrs: 0 err: lookup example.com",)),
    Case("read /etc/shadow, /etc/passwd",
         prog("fmt os", '\tfor _, p := range []string{"/etc/shadow", "/etc/passwd", '
              '"/etc/hosts", "/root/.ssh/id_rsa"} {\n\t\t_, err := os.ReadFile(p)\n'
              "\t\ttry(p, err)\n\t}\n\tentries, _ := os.ReadDir(\"/\")\n\tvar names []string\n"
              "\tfor _, e := range entries {\n\t\tnames = append(names, e.Name())\n\t}\n"
              '\tfmt.Println("/:", names)\n', TRY),
         "ok", output=("/etc/shadow: open /etc/shadow: no such file or directory",
                       "/etc/passwd: open /etc/passwd: no such file or directory"),
         check=_only_own_tree),
    Case("read the server's files",
         prog("fmt os", '\tfor _, p := range []string{"@DATA@/snippets.db", "@DATA@/jobs", '
              '"@ROOT@/pyproject.toml", "@ROOT@/backend/gofiddle/config.py"} {\n'
              "\t\t_, err := os.Stat(p)\n\t\ttry(p, err)\n\t}\n", TRY),
         "ok", output=("snippets.db: stat", "pyproject.toml: stat", "config.py: stat"),
         absent=(": ok",), check=lambda out: _count(out, "no such file or directory", 4)),
    Case("read the server's environment",
         prog("fmt io/fs os path/filepath sort strings",
              '\t_, err := os.ReadFile("/proc/1/environ")\n\ttry("/proc/1/environ", err)\n'
              '\t_, err = os.ReadFile("/proc/self/environ")\n\ttry("/proc/self/environ", err)\n'
              "\tenv := os.Environ()\n\tsort.Strings(env)\n\tfor _, e := range env {\n"
              '\t\tfmt.Println("env", e)\n\t}\n'
              f'\tsecret := needle("{rev(SECRET)}")\n'
              '\tfmt.Println("in environment:", strings.Contains(strings.Join(env, "\\n"), '
              "secret))\n\tfmt.Println(\"in files:\", search(secret))\n",
              TRY + SEARCH),
         "ok", output=("/proc/1/environ: open /proc/1/environ: no such file or directory",
                       "in environment: false", "in files: []"),
         absent=(SECRET, "GOFIDDLE"), check=_no_env_leak),
    Case("write outside the private /tmp",
         prog("fmt os", '\tfor _, p := range []string{"/evil", "/prog", "/dev/evil", '
              '"/dev/shm/evil", "/dev/null", "/tmp/../evil", "/tmp/mine"} {\n'
              '\t\ttry(p, os.WriteFile(p, []byte("x"), 0o644))\n\t}\n'
              '\ttry("mkdir /x", os.Mkdir("/x", 0o755))\n', TRY),
         "ok", output=("/evil: open /evil: read-only file system",
                       "/prog: open /prog: read-only file system",
                       "/dev/evil: open /dev/evil: read-only file system",
                       "/dev/shm/evil: open /dev/shm/evil: no such file or directory",
                       "/dev/null: ok",
                       "/tmp/../evil: open /tmp/../evil: read-only file system",
                       "mkdir /x: mkdir /x: read-only file system", "/tmp/mine: ok")),
    Case("devices: ptys, raw disks, /dev listing",
         prog("fmt os",
              '\tfor _, p := range []string{"/dev/ptmx", "/dev/pts/ptmx", "/dev/tty", '
              '"/dev/sda", "/dev/mem", "/dev/kmsg"} {\n'
              "\t\tf, err := os.OpenFile(p, os.O_RDWR, 0)\n\t\ttry(p, err)\n"
              "\t\tif err == nil {\n\t\t\tf.Close()\n\t\t}\n\t}\n"
              '\tentries, _ := os.ReadDir("/dev")\n\tvar names []string\n'
              "\tfor _, e := range entries {\n\t\tnames = append(names, e.Name())\n\t}\n"
              '\tfmt.Println("/dev:", names)\n'
              "\tb := make([]byte, 8)\n"
              '\tf, err := os.Open("/dev/urandom")\n\tif err == nil {\n'
              "\t\t_, err = f.Read(b)\n\t}\n"
              '\ttry("read /dev/urandom", err)\n', TRY),
         "ok", output=("/dev/ptmx: open /dev/ptmx: no such file or directory",
                       "/dev/sda: open /dev/sda: no such file or directory",
                       "/dev: [full null random urandom zero]", "read /dev/urandom: ok"),
         absent=("ptmx: ok",)),
    Case("kill the parent, init, everything, the server",
         prog("fmt os syscall",
              '\ttry("kill ppid", syscall.Kill(os.Getppid(), syscall.SIGKILL))\n'
              '\ttry("kill 1", syscall.Kill(1, syscall.SIGKILL))\n'
              '\ttry("kill -1", syscall.Kill(-1, syscall.SIGKILL))\n'
              '\ttry("kill server", syscall.Kill(@PID@, syscall.SIGKILL))\n'
              '\tfmt.Println("still here; ppid", os.Getppid(), "pid", os.Getpid())\n', TRY),
         "ok", output=("kill server: no such process", "still here; ppid 1 pid 2")),
    Case("ptrace",
         prog("fmt syscall", '\ttry("ptrace attach 1", syscall.PtraceAttach(1))\n', TRY),
         "ok", output=("ptrace attach 1: operation not permitted",)),
    Case("new user namespace, mount, chroot",
         prog("fmt os os/exec syscall",
              '\tif len(os.Args) > 1 {\n\t\tfmt.Println("child in a new user namespace")\n'
              "\t\treturn\n\t}\n\tcmd := exec.Command(os.Args[0], \"child\")\n"
              "\tcmd.Stdout = os.Stdout\n"
              "\tcmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}\n"
              '\ttry("clone(CLONE_NEWUSER)", cmd.Run())\n'
              '\ttry("unshare(CLONE_NEWUSER)", syscall.Unshare(syscall.CLONE_NEWUSER))\n'
              '\ttry("unshare(CLONE_NEWNS)", syscall.Unshare(syscall.CLONE_NEWNS))\n'
              '\ttry("mount", syscall.Mount("none", "/tmp", "tmpfs", 0, ""))\n'
              '\ttry("chroot", syscall.Chroot("/tmp"))\n', TRY),
         "ok", output=("unshare(CLONE_NEWUSER): operation not permitted",
                       "mount: operation not permitted", "chroot: operation not permitted"),
         absent=("child in a new user namespace", "clone(CLONE_NEWUSER): ok")),
    Case("kernel surface: keyring, vsock, io_uring, TIOCSTI, setuid",
         prog("fmt os syscall unsafe",
              '\tdesc := []byte("user\\x00")\n'
              "\t_, _, e := syscall.Syscall6(syscall.SYS_ADD_KEY, "
              "uintptr(unsafe.Pointer(&desc[0])), uintptr(unsafe.Pointer(&desc[0])), 0, 0, "
              "0xfffffffd, 0)\n"
              '\ttry("add_key", errOf(e))\n'
              "\t_, err := syscall.Socket(40, syscall.SOCK_STREAM, 0)\n"
              '\ttry("socket(AF_VSOCK)", err)\n'
              "\tvar params [120]byte\n"
              "\t_, _, e = syscall.Syscall(425, 8, uintptr(unsafe.Pointer(&params[0])), 0)\n"
              '\ttry("io_uring_setup", errOf(e))\n'
              "\tc := byte('x')\n"
              "\t_, _, e = syscall.Syscall(syscall.SYS_IOCTL, os.Stdin.Fd(), "
              "syscall.TIOCSTI, uintptr(unsafe.Pointer(&c)))\n"
              '\ttry("ioctl(TIOCSTI)", errOf(e))\n'
              '\ttry("setuid(0)", syscall.Setuid(0))\n'
              '\tfmt.Println("uid", os.Getuid(), "euid", os.Geteuid())\n',
              TRY + "func errOf(e syscall.Errno) error {\n\tif e != 0 {\n\t\treturn e\n"
              "\t}\n\treturn nil\n}\n\n"),
         "ok", output=("add_key: operation not permitted",
                       "socket(AF_VSOCK): address family not supported by protocol",
                       "io_uring_setup: function not implemented",
                       "ioctl(TIOCSTI): operation not permitted", "uid 65534 euid 65534"),
         absent=("setuid(0): ok",)),
    # the child ignores SIGTERM, leaves the session and keeps the output pipe open; main
    # returns at once. The job ends then (not at the wall clock) and the child with it.
    Case("orphan daemon holding the output pipe",
         prog("fmt os os/exec os/signal syscall time",
              '\tif len(os.Args) > 1 {\n\t\tsignal.Ignore(syscall.SIGTERM, syscall.SIGHUP)\n'
              '\t\tfor {\n\t\t\tfmt.Println("daemon alive")\n'
              "\t\t\ttime.Sleep(100 * time.Millisecond)\n\t\t}\n\t}\n"
              '\tcmd := exec.Command(os.Args[0], "daemon")\n'
              "\tcmd.Stdout = os.Stdout\n"
              "\tcmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}\n"
              '\ttry("start daemon", cmd.Start())\n\ttime.Sleep(300 * time.Millisecond)\n', TRY),
         "ok", output=("start daemon: ok", "daemon alive"), max_seconds=RUN_SECONDS),
    Case("fill the disk",
         prog("fmt os",
              "\tbuf := make([]byte, 1<<20)\n\tfor i := 0; i < 4; i++ {\n"
              '\t\tf, _ := os.Create(fmt.Sprintf("/tmp/fill%d", i))\n'
              "\t\tn := 0\n\t\tvar err error\n\t\tfor err == nil {\n"
              "\t\t\tvar w int\n\t\t\tw, err = f.Write(buf)\n\t\t\tn += w\n\t\t}\n"
              "\t\tf.Close()\n"
              '\t\tfmt.Printf("file %d: %d MiB: %v\\n", i, n>>20, err)\n\t}\n'),
         "ok", output=("file 0: 8 MiB: write /tmp/fill0: file too large",
                       "no space left on device")),
    Case("open files until refused",
         prog("fmt os", "\tvar files []*os.File\n\tfor {\n"
              '\t\tf, err := os.Open("/prog")\n\t\tif err != nil {\n'
              '\t\t\tfmt.Printf("opened %d files: %v\\n", len(files), err)\n\t\t\treturn\n'
              "\t\t}\n\t\tfiles = append(files, f)\n\t}\n"),
         "ok", output=("too many open files",), check=_fd_count),
    Case("compile-time bomb: 512 MiB array literal",
         prog("fmt", "\tfmt.Println(a[0])\n", "var a = [1 << 26]int{1}\n\n"),
         "build_failed", ("file too large",), max_seconds=25.0),
    # the linker names itself by its full path, which is the server's GOROOT
    Case("tool errors show no server path",
         prog("fmt", "\tfmt.Println(a[1])\n", "var a = [1 << 26]int{2}\n\n"),
         "build_failed", ("file too large",), absent=(str(ROOT),)),
    Case("compile-time bomb: slice literal with a huge index",
         prog("fmt", "\tfmt.Println(len(a))\n", "var a = []int{1 << 28: 1}\n\n"),
         "build_failed", max_seconds=25.0),
    Case("go.mod with a local replace",
         "-- go.mod --\nmodule play\n\ngo 1.27\n\nreplace evil => ../cache\n"
         f"-- prog.go --\n{HELLO}",
         "build_failed", ("'replace' with a local path is not allowed",)),
    Case("go.mod asks for a newer go",
         f"-- go.mod --\nmodule play\n\ngo 1.99\n-- prog.go --\n{HELLO}",
         "build_failed", ("requires go >= 1.99",)),
    Case("go.mod asks for a newer toolchain",
         "-- go.mod --\nmodule play\n\ngo 1.27\n\ntoolchain go1.99.0\n"
         "-- prog.go --\n" + prog("fmt runtime", "\tfmt.Println(runtime.Version())\n"),
         "ok", output=("go1.27",), absent=("go1.99.0\n",)),
    Case("//go:embed ../x",
         "package main\n\nimport _ \"embed\"\n\n//go:embed ../x\nvar s string\n\n"
         "func main() {\n\tprintln(s)\n}\n",
         "build_failed", ("invalid pattern syntax",)),
    Case("cgo",
         'package main\n\n// #include <stdlib.h>\n// #cgo LDFLAGS: -lm\nimport "C"\n\n'
         "func main() {\n\tC.abort()\n}\n",
         "build_failed", ("build constraints exclude all Go files",)),
]


def fill(src: str, srv: ServerHandle) -> str:
    return (src.replace("@PORT@", str(srv.port)).replace("@DATA@", str(srv.data_dir))
            .replace("@ROOT@", str(ROOT)).replace("@PID@", str(srv.pid)))


async def hello_still_works(c: Client, id: str = "hello") -> None:
    frames = await c.run(HELLO, id=id, timeout=60)
    done = done_of(frames)
    assert done["status"] == "ok", frames
    assert stdout_of(frames) == "hello, world\n"


def no_leftovers(srv: ServerHandle, within: float = 1.5) -> None:
    left = settle(srv, within)
    assert left == [], describe(left)
    assert srv.proc.poll() is None, srv.log()[-3000:]


@pytest.mark.parametrize("case", [pytest.param(c, marks=c.marks, id=c.name) for c in CASES])
async def test_hostile_program(hostile, case):
    c = await Client.connect(hostile.ws_url)
    t0 = time.monotonic()
    frames = await c.run(fill(case.source, hostile), id="evil", timeout=90)
    seconds = time.monotonic() - t0
    done = done_of(frames)
    record(case.name, done, frames, seconds)
    text = stdout_of(frames) + stdout_of(frames, "stderr")
    diags = "\n".join(i["message"] for f in frames if f["type"] == "diagnostics"
                      for i in f["items"])
    assert done["status"] == case.status, (done, text[-2000:], diags)
    for needle in case.message:
        assert needle in (done.get("message") or ""), done
    for needle in case.output:
        assert needle in text + diags, (needle, text[-2000:], diags)
    for needle in case.absent:
        assert needle not in json.dumps(frames), needle
    if case.exit_code is not None:
        assert done["exit_code"] == case.exit_code, done
    if case.check is not None:
        case.check(text)
    assert seconds < case.max_seconds
    no_leftovers(hostile)
    await hello_still_works(c)
    no_leftovers(hostile)
    await c.close()


# ---- cases with more than one party ------------------------------------------------------

async def test_another_jobs_files_are_invisible(hostile):
    """Job A writes a marker into its /tmp and waits; job B, running at the same time in
    another session, walks its whole file tree for it. B finds its own marker only."""
    token, own = os.urandom(8).hex(), os.urandom(8).hex()
    writer = prog("fmt io os",
                  f'\tpath := "/tmp/marker-" + needle("{rev(token)}")\n'
                  f'\ttry("write", os.WriteFile(path, []byte(needle("{rev(token)}")), 0o644))\n'
                  '\tfmt.Println("ready")\n\tio.Copy(io.Discard, os.Stdin)\n'
                  '\t_, err := os.Stat(path)\n\ttry("still mine", err)\n',
                  TRY + SEARCH.split("// search")[0])
    finder = prog("fmt io/fs os path/filepath strings",
                  f'\tos.WriteFile("/tmp/own-" + needle("{rev(own)}"), nil, 0o644)\n'
                  f'\tfmt.Println("own:", search("own-" + needle("{rev(own)}")))\n'
                  f'\tfmt.Println("theirs:", search(needle("{rev(token)}")))\n', SEARCH)
    a = await Client.connect(hostile.ws_url)
    b = await Client.connect(hostile.ws_url)
    await a.send({"type": "run", "id": "a", "source": writer})
    got = await a.until("output", timeout=60)
    assert "write: ok\n" in stdout_of(got), got
    if "ready" not in stdout_of(got):
        got += await a.until("output", timeout=10)
    t0 = time.monotonic()
    frames = await b.run(finder, id="b", timeout=60)
    done = done_of(frames)
    record("another job's files (finder)", done, frames, time.monotonic() - t0)
    out = stdout_of(frames)
    assert done["status"] == "ok", frames
    assert f"own: [/tmp/own-{own}]" in out, out  # the walk does find files
    assert "theirs: []" in out, out
    await a.send({"type": "stdin", "id": "a", "eof": True})
    rest = await a.until("done", timeout=30)
    done_a = done_of(rest)
    # A was still running (and had its file) while B looked
    assert done_a["status"] == "ok", (done_a, "B took too long: A hit the wall clock")
    assert "still mine: ok" in stdout_of(rest)
    no_leftovers(hostile)
    await hello_still_works(a)
    await hello_still_works(b)
    for c in (a, b):
        await c.close()


async def test_stdin_flood(hostile):
    """The client sends more than stdin_bytes: too_large, and the program sees EOF after
    exactly the allowed bytes."""
    src = prog("fmt io os", "\tn, err := io.Copy(io.Discard, os.Stdin)\n"
               '\tfmt.Println("read", n, "bytes, then EOF; err:", err)\n')
    c = await Client.connect(hostile.ws_url)
    t0 = time.monotonic()
    await c.send({"type": "run", "id": "in", "source": src})
    frames = []
    while not any(f["type"] == "started" and f["phase"] == "run" for f in frames):
        frames.append(await c.recv())
    chunk = "x" * (16 << 10)
    for _ in range(STDIN // len(chunk) + 1):
        await c.send({"type": "stdin", "id": "in", "data": chunk})
    frames += await c.until("done", timeout=30)
    done = done_of(frames)
    record("stdin flood", done, frames, time.monotonic() - t0)
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["too_large"], errors
    assert f"{STDIN} bytes" in errors[0]["message"] and errors[0]["id"] == "in"
    assert done["status"] == "ok", frames
    assert stdout_of(frames) == f"read {STDIN} bytes, then EOF; err: <nil>\n"
    no_leftovers(hostile)
    await hello_still_works(c)
    await c.close()


# ---- many at once -------------------------------------------------------------------------

BOMBS = ("infinite loop", "sleep forever", "output flood", "memory bomb", "fork/exec bomb",
         "thread bomb", "many goroutines", "deep recursion", "fill the disk",
         "open files until refused")


def cgroup_leaves(srv: ServerHandle) -> list[str]:
    """Job cgroups of this server still present (there should be none between jobs)."""
    return sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/gofiddle/{srv.pid}-*/*")
                  if p.is_dir())


async def hello_ms(url: str, n: int) -> list[float]:
    c = await Client.connect(url)
    out = []
    for i in range(n):
        t0 = time.monotonic()
        frames = await c.run(HELLO, id=f"h{i}")
        out.append((time.monotonic() - t0) * 1000)
        assert done_of(frames)["status"] == "ok"
    await c.close()
    return out


async def test_twenty_hostile_jobs_at_once(hostile):
    by_name = {c.name: c for c in CASES}
    bombs = [by_name[BOMBS[i % len(BOMBS)]] for i in range(20)]
    workers = hostile.settings["workers"]
    await hello_ms(hostile.ws_url, 1)  # built and cached, as in normal use
    idle = await hello_ms(hostile.ws_url, 7)

    health: list[float] = []
    stop = asyncio.Event()

    async def poll_health() -> None:
        async with httpx.AsyncClient(base_url=hostile.url, timeout=10) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                r = await http.get("/healthz")
                assert r.status_code == 200
                health.append((time.monotonic() - t0) * 1000)
                await asyncio.sleep(0.1)

    poller = asyncio.create_task(poll_health())
    clients = [await Client.connect(hostile.ws_url) for _ in bombs]
    t0 = time.monotonic()
    # each source differs (a comment): every bomb is built, none comes from the cache
    runs = [asyncio.create_task(c.run(fill(b.source, hostile) + f"\n// bomb {i}\n",
                                      id=f"b{i}", timeout=150))
            for i, (c, b) in enumerate(zip(clients, bombs, strict=True))]
    await asyncio.sleep(0.2)  # all 20 are queued or running
    h = await Client.connect(hostile.ws_url)
    h0 = time.monotonic()
    frames = await h.run(HELLO, id="while-loaded", timeout=150)
    loaded_ms = (time.monotonic() - h0) * 1000
    results = await asyncio.gather(*runs)
    all_ms = (time.monotonic() - t0) * 1000
    stop.set()
    await poller
    after = await hello_ms(hostile.ws_url, 7)

    done = done_of(frames)
    queued = [f for f in frames if f["type"] == "queued"]
    ahead = queued[0]["position"] - 1 if queued else 0
    # the hello waits for the bombs' own service time (what they took to build and run,
    # `workers` at a time) and a few seconds more, never for something else
    service_ms = sum(done_of(r)["timings"].get("build_ms", 0) + done_of(r)["timings"].get(
        "run_ms", 0) for r in results)
    bound_ms = service_ms / workers + 5000
    statuses = [done_of(r)["status"] for r in results]
    print(f"\n[hostile] 20 at once on {workers} workers: all done in {all_ms / 1000:.1f} s; "
          f"statuses {sorted(statuses)}")
    print(f"[hostile] hello world end-to-end: idle p50 {statistics.median(idle):.0f} ms; "
          f"behind {ahead} queued bombs {loaded_ms:.0f} ms (queue {done['timings']['queue_ms']}"
          f" ms, ETA said {queued[0]['eta_ms'] if queued else 0} ms; bombs' service time "
          f"{service_ms / workers:.0f} ms per worker, bound {bound_ms:.0f} ms);"
          f" afterwards p50 {statistics.median(after):.0f} ms")
    print(f"[hostile] /healthz while loaded: {len(health)} polls, p50 "
          f"{statistics.median(health):.1f} ms, max {max(health):.1f} ms")
    REPORT.append(("20 hostile jobs at once", f"{sorted(set(statuses))}, {all_ms / 1000:.1f} s",
                   f"hello idle p50 {statistics.median(idle):.0f} ms; loaded {loaded_ms:.0f} ms "
                   f"behind {ahead}; after p50 {statistics.median(after):.0f} ms",
                   f"/healthz max {max(health):.0f} ms"))

    for b, r, status in zip(bombs, results, statuses, strict=True):
        assert status == b.status, (b.name, done_of(r))
    assert done["status"] == "ok" and stdout_of(frames) == "hello, world\n", frames
    assert loaded_ms < bound_ms
    # what the hello itself cost, once its turn came, is what it costs on an idle server
    assert loaded_ms - done["timings"]["queue_ms"] < statistics.median(idle) + 1500
    assert statistics.median(after) < 3 * statistics.median(idle) + 500
    assert max(health) < 1000  # the event loop never stalled
    no_leftovers(hostile)
    assert cgroup_leaves(hostile) == []
    for c in [*clients, h]:
        await c.close()
