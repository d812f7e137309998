"""The build fast path: for one `package main` that imports only the standard library, call
the compiler, linker and vet tool directly instead of `go build` / `go vet`.

`go build` of hello world spends most of its 0.25 s in the go command itself (loading
packages, hashing inputs, consulting the cache); the compile is ~10 ms and the link ~50 ms.
The fast path replays exactly what `go build -trimpath -tags timetzdata -ldflags=-s -w`
would run for such a package, using an import config of standard-library export data that
`go list -export` resolved from the shared build cache, and vet configs with the facts
`go vet` recorded for those packages.

Everything here is pure: deciding whether a snippet qualifies (`analyze`), and turning
`go list` / `go vet -x` output into an `StdIndex`. Running the tools is pipeline.py's job,
always inside the sandbox.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from . import source

# What the fast path guarantees to reproduce; part of the binary cache key, so bump it
# whenever the flags or the way they are derived change.
IDENTITY = "fast-v1"

# Build-tag suffixes of file names (x_linux.go, x_arm64.go): go/build would include or
# drop such files by GOOS/GOARCH. The fast path does not evaluate them: it falls back.
_GOOS = frozenset(
    "aix android darwin dragonfly freebsd hurd illumos ios js linux nacl netbsd openbsd "
    "plan9 solaris wasip1 windows zos".split())
_GOARCH = frozenset(
    "386 amd64 amd64p32 arm armbe arm64 arm64be loong64 mips mipsle mips64 mips64le "
    "mips64p32 mips64p32le ppc ppc64 ppc64le riscv riscv64 s390 s390x sparc sparc64 "
    "wasm".split())

# Directives that change what go build does beyond compile+link of the listed files.
_DIRECTIVES = re.compile(r"^\s*//\s*(?:go:build|\+build)\b|//go:(?:embed|debug)\b",
                         re.MULTILINE)
_MODULE_LINE = re.compile(r"^module\s+(\"?)([A-Za-z0-9._~/-]+)\1\s*$")
_GO_LINE = re.compile(r"^go\s+(\d+)\.(\d+)(?:\.(\d+))?\s*$")
_IDENT = re.compile(r"[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*")

# modinfo framing written by cmd/go (modload.ModInfoProg): runtime/debug.ReadBuildInfo
# finds the text between these 16-byte markers.
_INFO_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")
_INFO_END = bytes.fromhex("f932433186182072008242104116d8f2")
_GOARCH_LEVEL = {"amd64": "GOAMD64=v1", "arm64": "GOARM64=v8.0"}


# The single-spawn helper: without a shell in the sandbox, this is what chains compile and
# link (and runs vet beside them) in one sandboxed process tree. Built at warm-up with the
# fast path itself; the pipeline writes its steps (argv, env) as JSON.
HELPER_SOURCE = """// fastbuild: compile, then link, with vet beside them, in one sandboxed
// process tree; prints what each printed as one JSON object.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

const outputCap = 1 << 20

type step struct {
	Argv []string `json:"argv"`
	Env  []string `json:"env"`
}

type plan struct {
	Compile step  `json:"compile"`
	Link    step  `json:"link"`
	Vet     *step `json:"vet"`
}

type result struct {
	RC     int    `json:"rc"`
	Output string `json:"output"` // stdout and stderr interleaved, as go build shows them
	Stdout string `json:"stdout"`
	Stderr string `json:"stderr"`
	Ms     int64  `json:"ms"`
}

type capped struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (c capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := outputCap - c.buf.Len(); room > 0 {
		if len(p) > room {
			c.buf.Write(p[:room])
		} else {
			c.buf.Write(p)
		}
	}
	return len(p), nil
}

func run(ctx context.Context, s step, split bool) result {
	start := time.Now()
	cmd := exec.CommandContext(ctx, s.Argv[0], s.Argv[1:]...)
	cmd.Env = s.Env
	var mu sync.Mutex
	var all, out, errb bytes.Buffer
	if split {
		cmd.Stdout, cmd.Stderr = capped{&mu, &out}, capped{&mu, &errb}
	} else {
		cmd.Stdout = capped{&mu, &all}
		cmd.Stderr = cmd.Stdout
	}
	rc := 0
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			rc = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				rc = 128 + int(ws.Signal())
			}
		} else {
			rc = 127
			all.WriteString(err.Error() + "\\n")
			errb.WriteString(err.Error() + "\\n")
		}
	}
	return result{rc, all.String(), out.String(), errb.String(), time.Since(start).Milliseconds()}
}

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		os.Stderr.WriteString(err.Error() + "\\n")
		os.Exit(2)
	}
	var p plan
	if err := json.Unmarshal(data, &p); err != nil {
		os.Stderr.WriteString(err.Error() + "\\n")
		os.Exit(2)
	}
	res := map[string]result{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var vet result
	var wg sync.WaitGroup
	if p.Vet != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vet = run(ctx, *p.Vet, true)
		}()
	}
	res["compile"] = run(context.Background(), p.Compile, false)
	if res["compile"].RC == 0 {
		res["link"] = run(context.Background(), p.Link, false)
	} else {
		cancel() // a package that does not compile is not vetted
	}
	wg.Wait()
	if p.Vet != nil && res["compile"].RC == 0 {
		res["vet"] = vet
	}
	json.NewEncoder(os.Stdout).Encode(res)
}
"""


class NotEligible(Exception):
    """The fast path cannot prove it handles this snippet: use go build."""


@dataclass(frozen=True)
class FastPlan:
    module: str
    go_version: str  # as in go.mod: "1.27" or "1.27.1"
    lang: str  # -lang for the compiler: "go1.27"
    files: tuple[str, ...]  # sorted, as go build orders GoFiles
    imports: tuple[str, ...]  # sorted, deduplicated, as written


# ---- eligibility -----------------------------------------------------------------


def _skip_space(text: str, i: int) -> int:
    """Skip blanks, newlines, semicolons and comments."""
    n = len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n;":
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j + 1
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise NotEligible("unterminated comment")
            i = j + 2
        else:
            break
    return i


def _string(text: str, i: int) -> tuple[str, int]:
    if text.startswith("`", i):
        j = text.find("`", i + 1)
        if j < 0:
            raise NotEligible("unterminated import path")
        return text[i + 1:j], j + 1
    if text.startswith('"', i):
        j = i + 1
        while j < len(text) and text[j] not in '"\n\\':
            j += 1
        if j >= len(text) or text[j] != '"':
            # escapes in import paths are legal Go but never useful: let go build judge
            raise NotEligible("unusual import path literal")
        return text[i + 1:j], j + 1
    raise NotEligible("could not read the import declarations")


def _import_spec(text: str, i: int, out: list[str]) -> int:
    m = _IDENT.match(text, i)
    if m:
        i = m.end()
    elif text.startswith(".", i):
        i += 1
    i = _skip_space_inline(text, i)
    path, i = _string(text, i)
    out.append(path)
    return i


def _skip_space_inline(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def parse_header(text: str) -> tuple[str, list[str]]:
    """The package name and import paths of one Go file, or NotEligible when the header
    is anything but plain (go build then reports whatever is wrong with it)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    i = _skip_space(text, 0)
    m = _IDENT.match(text, i)
    if not m or m[0] != "package":
        raise NotEligible("no package clause")
    i = _skip_space_inline(text, i + len("package"))
    m = _IDENT.match(text, i)
    if not m:
        raise NotEligible("no package name")
    name = m[0]
    i = m.end()
    imports: list[str] = []
    while True:
        i = _skip_space(text, i)
        m = _IDENT.match(text, i)
        if not m or m[0] != "import":
            return name, imports
        i = _skip_space(text, m.end())
        if text.startswith("(", i):
            i += 1
            while True:
                i = _skip_space(text, i)
                if text.startswith(")", i):
                    i += 1
                    break
                if i >= len(text):
                    raise NotEligible("unterminated import block")
                i = _import_spec(text, i, imports)
        else:
            i = _import_spec(text, i, imports)


def _gomod(text: str, toolchain_minor: str) -> tuple[str, str]:
    """(module path, go version) of a go.mod that has nothing but those two lines."""
    module = version = ""
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        m = _MODULE_LINE.match(line)
        if m and not module:
            module = m[2]
            continue
        g = _GO_LINE.match(line)
        if g and not version:
            # another language version means other -lang semantics and GODEBUG defaults
            if f"{g[1]}.{g[2]}" != toolchain_minor:
                raise NotEligible("go.mod asks for another language version")
            version = line.split()[1]
            continue
        raise NotEligible("go.mod has more than module and go lines")
    if not module or not version:
        raise NotEligible("go.mod lacks a module or go line")
    return module, version


def _filename_ok(name: str) -> bool:
    if "/" in name or not name.endswith(".go") or name.endswith("_test.go"):
        return False
    if name.startswith(("_", ".")):
        return False
    parts = name[:-3].split("_")
    return not (len(parts) > 1 and (parts[-1] in _GOOS or parts[-1] in _GOARCH))


def analyze(files: source.Files, toolchain_minor: str) -> FastPlan:
    """Return the plan, or raise NotEligible with the reason."""
    go_files = []
    module = version = ""
    for name, body in files.files.items():
        if name == "go.mod":
            module, version = _gomod(body, toolchain_minor)
        elif _filename_ok(name):
            go_files.append(name)
        else:
            raise NotEligible(f"{name}: not a plain top-level Go file")
    if not go_files:
        raise NotEligible("no Go files")
    if not module:
        raise NotEligible("no go.mod")
    imports: set[str] = set()
    for name in go_files:
        body = files.files[name]
        if _DIRECTIVES.search(body):
            raise NotEligible(f"{name}: build constraints, embed or debug directives")
        pkg, imps = parse_header(body)
        if pkg != "main":
            raise NotEligible(f"{name}: package {pkg}, not main")
        imports.update(imps)
    if "C" in imports:
        raise NotEligible("cgo")
    major, minor = version.split(".")[:2]
    return FastPlan(module, version, f"go{major}.{minor}", tuple(sorted(go_files)),
                    tuple(sorted(imports)))


def is_public_std(path: str) -> bool:
    """A standard-library path a user program may import (no internal, vendor or cmd)."""
    parts = PurePosixPath(path).parts
    if not parts or "." in parts[0] or parts[0] in ("cmd", "vendor"):
        return False
    return "internal" not in parts


# ---- the index of standard-library export data and vet facts ----------------------


@dataclass
class StdIndex:
    export: dict[str, str]  # import path -> export data file in the build cache
    imports: dict[str, tuple[str, ...]]  # import path -> its direct imports
    # from the config go vet wrote for a program importing every indexed package
    vet_map: dict[str, str] = field(default_factory=dict)  # ImportMap
    vet_file: dict[str, str] = field(default_factory=dict)  # PackageFile
    vet_std: dict[str, bool] = field(default_factory=dict)  # Standard
    vet_facts: dict[str, str] = field(default_factory=dict)  # PackageVetx
    generation: int = 0

    def closure(self, roots: Iterable[str]) -> list[str]:
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            todo.extend(self.imports.get(p, ()))
        return sorted(seen)

    def missing_build(self, plan: FastPlan) -> list[str]:
        """Imports the build cannot take from the index."""
        return [p for p in plan.imports
                if p != "unsafe" and not (is_public_std(p) and p in self.export)]

    def can_vet(self, plan: FastPlan) -> bool:
        return all(p in self.vet_map for p in (*plan.imports, "runtime"))

    def link_files(self, plan: FastPlan) -> list[str]:
        return [p for p in self.closure([*plan.imports, "runtime"]) if p != "unsafe"]


def parse_list(text: str) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """`go list -e -export -deps -f '{{.ImportPath}}\\t{{.Export}}\\t{{if .Error}}E{{end}}
    \\t{{join .Imports " "}}'` output."""
    export: dict[str, str] = {}
    imports: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or parts[2]:
            continue
        path, file, _, deps = parts
        imports[path] = tuple(deps.split())
        if file:
            export[path] = file
    return export, imports


_VET_CFG = re.compile(r"^cat >\S*vet\.cfg << 'EOF' # internal\n(.*?)\nEOF$",
                      re.MULTILINE | re.DOTALL)


def parse_vet_x(text: str, module: str) -> dict[str, Any] | None:
    """The vet config `go vet -x` wrote for the package `module` (not a facts-only run)."""
    for m in _VET_CFG.finditer(text):
        try:
            cfg = json.loads(m[1])
        except ValueError:
            continue
        if isinstance(cfg, dict) and cfg.get("ImportPath") == module and not cfg.get("VetxOnly"):
            return cfg
    return None


# ---- what the tools get ------------------------------------------------------------


def compile_importcfg(index: StdIndex, plan: FastPlan) -> str:
    # as go build: the direct imports and runtime, which every main package links
    wanted = sorted({*plan.imports, "runtime"} - {"unsafe"})
    return "# import config\n" + "".join(f"packagefile {p}={index.export[p]}\n"
                                         for p in wanted)


def go_quote(data: bytes) -> str:
    """A Go double-quoted string literal of arbitrary bytes (strconv.Unquote reads it)."""
    out = ['"']
    for b in data:
        if b == 0x22:
            out.append('\\"')
        elif b == 0x5C:
            out.append("\\\\")
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    out.append('"')
    return "".join(out)


def modinfo(plan: FastPlan, goarch: str, goos: str) -> str:
    """The build info go build embeds (runtime/debug.ReadBuildInfo): with -trimpath it
    records neither -ldflags nor paths."""
    level = _GOARCH_LEVEL[goarch]
    info = (f"path\t{plan.module}\nmod\t{plan.module}\t(devel)\t\n"
            "build\t-buildmode=exe\nbuild\t-compiler=gc\nbuild\t-tags=timetzdata\n"
            f"build\t-trimpath=true\nbuild\tCGO_ENABLED=0\nbuild\tGOARCH={goarch}\n"
            f"build\tGOOS={goos}\nbuild\t{level}\n")
    return go_quote(_INFO_START + info.encode() + _INFO_END)


def link_importcfg(index: StdIndex, plan: FastPlan, goarch: str, goos: str) -> str:
    lines = [f"modinfo {modinfo(plan, goarch, goos)}\n"]
    lines += [f"packagefile {p}={index.export[p]}\n" for p in index.link_files(plan)]
    return "# import config\n" + "".join(lines)


def vet_config(index: StdIndex, plan: FastPlan, src: str, vetx_out: str) -> str:
    """What go vet writes for a main package of the module root (cmd/go vetConfig)."""
    deps = sorted({*plan.imports, "runtime"})
    files = [f"{src}/{n}" for n in plan.files]
    cfg = {
        "ID": plan.module,
        "Compiler": "gc",
        "Dir": src,
        "ImportPath": plan.module,
        "GoFiles": files,
        "NonGoFiles": [],
        "IgnoredFiles": [],
        "Module": {"Path": plan.module, "Version": "", "Replace": None, "Time": None,
                   "Main": True, "Indirect": False, "Dir": src, "GoMod": f"{src}/go.mod",
                   "GoVersion": plan.go_version, "Error": None},
        "ImportMap": {p: index.vet_map[p] for p in deps},
        "PackageFile": _pick(index.vet_file, deps, index.vet_map),
        "Standard": _pick(index.vet_std, deps, index.vet_map),
        "PackageVetx": _pick(index.vet_facts, deps, index.vet_map),
        "VetxOnly": False,
        "VetxOutput": vetx_out,
        "GoVersion": "go" + plan.go_version,
        "FixArchive": "",
        "SucceedOnTypecheckFailure": False,
    }
    return json.dumps(cfg, indent="\t")


def _pick(table: dict[str, Any], deps: Iterable[str], import_map: dict[str, str]
          ) -> dict[str, Any]:
    # tables other than ImportMap are keyed by package path, not import path
    paths = [import_map[d] for d in deps]
    return {p: table[p] for p in sorted(paths) if p in table}


def needed_files(index: StdIndex, plan: FastPlan, vet: bool) -> list[str]:
    """Cache files this run reads: all must exist, or the index is stale."""
    files = [index.export[p] for p in index.link_files(plan)]
    if vet:
        paths = [index.vet_map[d] for d in (*plan.imports, "runtime")]
        files += [t[p] for p in paths for t in (index.vet_file, index.vet_facts) if p in t]
    return files
