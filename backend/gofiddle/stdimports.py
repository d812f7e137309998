"""Add missing and drop unused standard-library imports, without goimports and without
the network.

The compiler already knows what is wrong (`undefined: strings`, `"os" imported and not
used`); this module only needs to know which import path a package name stands for and
how to edit an import block. Edits are textual on gofmt output, and the caller runs
gofmt again afterwards, which sorts the block.

Only standard-library paths are ever added or removed: third-party code cannot be
fetched here anyway, and a snippet's own packages are better left to its author.
Named, dot and blank imports are never touched, even when unused: the name is a
deliberate choice that a tool should not second-guess.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import source, toolchain

if TYPE_CHECKING:
    from .pipeline import Pipeline

# Which package wins when several standard packages share a name and the symbols used
# do not settle it. These are the ones programs mean far more often.
PREFERRED: dict[str, str] = {
    "rand": "math/rand",
    "template": "text/template",
    "json": "encoding/json",
    "pprof": "runtime/pprof",
    "scanner": "text/scanner",
}

# Directories that never hold an importable, user-facing package.
_SKIP_PARTS = frozenset({"internal", "vendor", "testdata"})
# Package names that appear in GOROOT/src but are not real imports.
_SKIP_NAMES = frozenset({"main", "documentation", "builtin"})

_PACKAGE_RE = re.compile(rb"^package\s+([A-Za-z_]\w*)", re.MULTILINE)
_UNDEFINED_RE = re.compile(r"^undefined: ([A-Za-z_]\w*)$")
_UNUSED_RE = re.compile(r'^"([^"]+)" imported and not used$')
_IDENT_RE = re.compile(rb"[A-Za-z_]\w*")
_SINGLE_DECL_RE = re.compile(r'^import\s+(?:[\w.]+\s+)?"[^"]*"\s*(?://.*)?$')


# ---- the standard-library index -----------------------------------------------------


@dataclass(frozen=True)
class StdIndex:
    goroot: Path
    # package name -> import paths, most likely first
    by_name: dict[str, tuple[str, ...]]

    @property
    def paths(self) -> frozenset[str]:
        return frozenset(p for ps in self.by_name.values() for p in ps)

    def resolve(self, name: str, symbols: Iterable[str] = ()) -> str | None:
        """The import path `name` most likely means, given the selectors used on it
        (`rand.Intn` -> math/rand, `template.HTML` -> html/template)."""
        candidates = self.by_name.get(name)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        wanted = set(symbols)
        if wanted:
            scored = [(len(wanted & exports(self.goroot, p)), -i, p)
                      for i, p in enumerate(candidates)]
            best = max(scored)
            # a tie on symbols falls back to the preference order
            if best[0] > 0:
                return best[2]
        return candidates[0]


def _package_name(directory: Path, files: list[str]) -> str | None:
    """The package a directory holds: the majority package clause of its non-test
    files (generator scripts with `package main` next to the real files are skipped)."""
    votes: Counter[str] = Counter()
    for name in files:
        if not name.endswith(".go") or name.endswith("_test.go"):
            continue
        try:
            with open(directory / name, "rb") as f:
                head = f.read(16384)
        except OSError:
            continue
        m = _PACKAGE_RE.search(head)
        if m:
            pkg = m.group(1).decode()
            if pkg not in _SKIP_NAMES:
                votes[pkg] += 1
    return votes.most_common(1)[0][0] if votes else None


def _rank(name: str, path: str) -> tuple[int, int, int, str]:
    preferred = PREFERRED.get(name)
    return (0 if path == preferred else 1, path.count("/"), len(path), path)


@functools.lru_cache(maxsize=4)
def build_index(goroot: Path) -> StdIndex:
    """Scan GOROOT/src once per process (about 2000 files, well under a second)."""
    src = goroot / "src"
    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src).as_posix()
        if rel != ".":
            parts = rel.split("/")
            if parts[0] == "cmd" or any(p in _SKIP_PARTS or p.startswith((".", "_"))
                                        for p in parts):
                dirnames[:] = []
                continue
        dirnames.sort()
        if rel == ".":
            continue
        name = _package_name(Path(dirpath), filenames)
        if name is not None:
            found.setdefault(name, []).append(rel)
    by_name = {n: tuple(sorted(ps, key=lambda p, n=n: _rank(n, p))) for n, ps in found.items()}
    return StdIndex(goroot, by_name)


_DECL_RE = re.compile(r"^(?:func|type|var|const)\s+([A-Z]\w*)", re.MULTILINE)
_GROUP_RE = re.compile(r"^(?:type|var|const)\s*\(\n(.*?)^\)", re.MULTILINE | re.DOTALL)
_GROUP_NAMES_RE = re.compile(r"^\t([A-Z]\w*(?:\s*,\s*[A-Za-z_]\w*)*)", re.MULTILINE)


@functools.lru_cache(maxsize=64)
def exports(goroot: Path, path: str) -> frozenset[str]:
    """Exported top-level names of a standard package, by pattern rather than by
    parsing: only used to choose between packages of the same name, where a rough
    answer is plenty (and the standard library is gofmt-clean)."""
    directory = goroot / "src" / path
    names: set[str] = set()
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        return frozenset()
    for entry in entries:
        if not entry.endswith(".go") or entry.endswith("_test.go"):
            continue
        try:
            text = (directory / entry).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        names.update(_DECL_RE.findall(text))
        for group in _GROUP_RE.findall(text):
            for m in _GROUP_NAMES_RE.findall(group):
                names.update(n.strip() for n in m.split(",") if n.strip()[:1].isupper())
    return frozenset(names)


# ---- reading an import block -----------------------------------------------------


@dataclass
class ImportSpec:
    name: str | None  # None for a plain import; "_", "." or an identifier otherwise
    path: str
    line: int  # 1-based line of the path literal


@dataclass
class ImportDecl:
    line: int  # line of the `import` keyword
    end_line: int  # line of `)` or of the single spec
    paren: bool
    specs: list[ImportSpec] = field(default_factory=list)


@dataclass
class FileImports:
    package_line: int
    decls: list[ImportDecl]

    def specs(self) -> Iterator[ImportSpec]:
        for d in self.decls:
            yield from d.specs


@dataclass(frozen=True)
class _Tok:
    kind: str  # ident, string, op
    value: str
    line: int


def _tokens(text: str) -> Iterator[_Tok]:
    """Just enough of Go's lexer to walk the package clause and the import decls:
    comments are skipped, string literals kept whole, newlines counted."""
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r\ufeff":
            i += 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            line += text.count("\n", i, j)
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            yield _Tok("string", text[i:j + 1], line)
            i = j + 1
        elif c == "`":
            j = text.find("`", i + 1)
            j = n if j < 0 else j + 1
            yield _Tok("string", text[i:j], line)
            line += text.count("\n", i, j)
            i = j
        elif c.isalpha() or c == "_":
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            yield _Tok("ident", text[i:j], line)
            i = j
        else:
            yield _Tok("op", c, line)
            i += 1


def _unquote(literal: str) -> str:
    # import paths are plain ASCII in practice; escapes in them are not worth decoding
    return literal[1:-1]


def parse_imports(text: str) -> FileImports | None:
    """The package clause and import decls of a syntactically valid Go file, or None
    if the file does not start the way Go files must."""
    toks = _tokens(text)

    def next_tok() -> _Tok | None:
        return next(toks, None)

    t = next_tok()
    if t is None or t.value != "package":
        return None
    name = next_tok()
    if name is None or name.kind != "ident":
        return None
    info = FileImports(package_line=name.line, decls=[])
    t = next_tok()
    while t is not None:
        if t.kind == "op" and t.value == ";":
            t = next_tok()
            continue
        if t.value != "import" or t.kind != "ident":
            break
        start = t.line
        t = next_tok()
        if t is not None and t.kind == "op" and t.value == "(":
            decl = ImportDecl(start, start, True)
            spec_name: str | None = None
            while (t := next_tok()) is not None and not (t.kind == "op" and t.value == ")"):
                if t.kind == "string":
                    decl.specs.append(ImportSpec(spec_name, _unquote(t.value), t.line))
                    spec_name = None
                elif t.kind == "ident" or t.value == ".":
                    spec_name = t.value
            if t is None:
                return None
            decl.end_line = t.line
            info.decls.append(decl)
            t = next_tok()
            continue
        spec_name = None
        if t is not None and (t.kind == "ident" or t.value == "."):
            spec_name = t.value
            t = next_tok()
        if t is None or t.kind != "string":
            return None
        info.decls.append(ImportDecl(start, t.line, False,
                                     [ImportSpec(spec_name, _unquote(t.value), t.line)]))
        t = next_tok()
    return info


# ---- editing -------------------------------------------------------------------


def edit_imports(text: str, add: Iterable[str] = (), remove: Iterable[tuple[int, str]] = ()
                 ) -> str:
    """Return `text` with the plain imports at (line, path) in `remove` deleted and the
    paths in `add` added. Expects gofmt output (one spec per line inside a block); the
    result is valid Go but needs gofmt again to be sorted."""
    info = parse_imports(text)
    if info is None:
        return text
    text = _remove(text, info, set(remove))
    additions = list(dict.fromkeys(add))
    if not additions:
        return text
    info = parse_imports(text)
    if info is None:
        return text
    have = {s.path for s in info.specs() if s.name is None}
    additions = [p for p in additions if p not in have]
    if not additions:
        return text
    return _add(text, info, additions)


def _remove(text: str, info: FileImports, remove: set[tuple[int, str]]) -> str:
    if not remove:
        return text
    lines = text.splitlines(keepends=True)
    # lines shared by several decls (`import "a"; import "b"`) are left alone: deleting
    # the line would take the neighbour with it
    owners = Counter(ln for d in info.decls for ln in range(d.line, d.end_line + 1))
    per_line = Counter(s.line for s in info.specs())
    drop: set[int] = set()  # 1-based line numbers
    for decl in info.decls:
        span = range(decl.line, decl.end_line + 1)
        doomed = [s for s in decl.specs if s.name is None and (s.line, s.path) in remove]
        if not doomed:
            continue
        if len(doomed) == len(decl.specs):
            # a lone spec, or a block left empty (goimports drops `import ()` too)
            if all(owners[ln] == 1 for ln in span):
                drop.update(span)
            continue
        drop.update(s.line for s in doomed
                    if per_line[s.line] == 1 and s.line not in (decl.line, decl.end_line))
    return "".join(ln for i, ln in enumerate(lines, start=1) if i not in drop)


def _quoted(path: str) -> str:
    return '"' + path + '"'


def _add(text: str, info: FileImports, paths: list[str]) -> str:
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    block = next((d for d in info.decls if d.paren), None)
    if block is not None:
        # into the first group of the block; gofmt sorts it there
        at = block.line  # insert after the `import (` line
        new = [f"\t{_quoted(p)}\n" for p in paths]
        return "".join(lines[:at] + new + lines[at:])
    single = next((d for d in info.decls if d.line == d.end_line), None)
    if single is not None and _single_line_decl(lines[single.line - 1]):
        # `import "fmt"` becomes a block, as goimports would write it
        spec = lines[single.line - 1].rstrip("\r\n")[len("import"):].strip()
        new = ["import (\n", f"\t{spec}\n", *(f"\t{_quoted(p)}\n" for p in paths), ")\n"]
        return "".join(lines[:single.line - 1] + new + lines[single.line:])
    at = info.decls[-1].end_line if info.decls else info.package_line
    if len(paths) == 1:
        new = ["\n", f"import {_quoted(paths[0])}\n"]
    else:
        new = ["\n", "import (\n", *(f"\t{_quoted(p)}\n" for p in paths), ")\n"]
    return "".join(lines[:at] + new + lines[at:])


def _single_line_decl(line: str) -> bool:
    """`import "x"` or `import n "x"` alone on its line (a trailing comment is fine)."""
    return _SINGLE_DECL_RE.match(line.rstrip("\r\n")) is not None


# ---- deciding what to change -------------------------------------------------------


@dataclass
class Plan:
    add: dict[str, list[str]] = field(default_factory=dict)  # file -> paths
    remove: dict[str, set[tuple[int, str]]] = field(default_factory=dict)  # file -> specs

    def __bool__(self) -> bool:
        return any(self.add.values()) or any(self.remove.values())


def _selector_at(text: str, line: int, col: int, name: str) -> str | None:
    """The `Sym` of `name.Sym` at a compiler position (1-based line, byte column), or
    None when `name` is not used as a package qualifier there."""
    lines = text.split("\n")
    if not 0 < line <= len(lines) or col < 1:
        return None
    raw = lines[line - 1].encode("utf-8")
    at = col - 1
    if raw[at:at + len(name)] != name.encode() or raw[at + len(name):at + len(name) + 1] != b".":
        return None
    if at > 0 and (raw[at - 1:at].isalnum() or raw[at - 1:at] in (b"_", b".")):
        return None
    m = _IDENT_RE.match(raw, at + len(name) + 1)
    return m.group(0).decode() if m else ""


def plan(diagnostics: Iterable[dict[str, object]], files: dict[str, str],
         index: StdIndex) -> Plan:
    """Turn compiler diagnostics into import edits per file."""
    std = index.paths
    wanted: dict[str, dict[str, set[str]]] = {}  # file -> package name -> selectors
    out = Plan()
    for d in diagnostics:
        file = str(d.get("file") or "")
        if file not in files or not file.endswith(".go"):
            continue
        message = str(d.get("message") or "").split("\n", 1)[0]
        line = int(d.get("line") or 0)  # type: ignore[call-overload]
        col = int(d.get("col") or 0)  # type: ignore[call-overload]
        m = _UNUSED_RE.match(message)
        if m:
            if m.group(1) in std:
                out.remove.setdefault(file, set()).add((line, m.group(1)))
            continue
        m = _UNDEFINED_RE.match(message)
        if m and m.group(1) in index.by_name:
            symbol = _selector_at(files[file], line, col, m.group(1))
            if symbol is not None:
                wanted.setdefault(file, {}).setdefault(m.group(1), set()).add(symbol)
    for file, names in wanted.items():
        paths = [index.resolve(name, syms) for name, syms in sorted(names.items())]
        out.add[file] = [p for p in paths if p]
    return out


# ---- running it ------------------------------------------------------------------


Diagnostic = dict[str, Any]
Gofmt = Callable[[str], Awaitable["str | None"]]


async def typecheck(pipeline: Pipeline, text: str, *, all_errors: bool = True
                    ) -> list[Diagnostic]:
    """`go list -e -export` over the snippet, sandboxed like every toolchain run: the
    compiler's type errors without linking or running anything. File names are the
    ones the user wrote. `all_errors` lifts the compiler's stop-after-ten limit, so one
    pass sees every missing import."""
    try:
        async with pipeline.open_workspace(text, "build") as ws:
            argv = pipeline.tools.check_cmd()
            extra = ["-gcflags=-e"] if all_errors else []
            if any(n.endswith("_test.go") for n in ws.files.files):
                # without -test, go list never compiles _test.go files
                extra.append("-test")
            at = argv.index("list") + 1 if "list" in argv else len(argv) - 1
            argv = argv[:at] + extra + argv[at:]
            wall = pipeline.s.check_seconds
            run = await pipeline.run_tool(argv, ws, wall)
            items = toolchain.parse_check(run.stdout, str(ws.src), ws.files.display)
            if not items and run.returncode != 0:
                items = toolchain.parse_text(run.stderr, str(ws.src), ws.files.display)
            reason = pipeline.tool_failure("the type check", run, wall)
            if reason:
                items.append(toolchain.diagnostic(reason))
            return items
    except source.BuildRefused as e:
        return [toolchain.diagnostic(str(e), e.file, e.line)]


def join_txtar(files: dict[str, str]) -> str:
    """Every file under an explicit header, so parsing it back gives the same names."""
    return "".join(f"-- {name} --\n{body}" for name, body in files.items())


async def fix_imports(files: dict[str, str], pipeline: Pipeline, gofmt: Gofmt
                      ) -> dict[str, str]:
    """`files` (already gofmt-clean) with standard-library imports added and dropped as
    the compiler asks. A file whose edit does not gofmt cleanly is returned unchanged,
    and so is everything when the type check cannot run."""
    goroot = pipeline.tools.goroot
    index = await asyncio.to_thread(build_index, goroot)
    diagnostics = await typecheck(pipeline, join_txtar(files))
    todo = plan(diagnostics, files, index)
    if not todo:
        return files
    out = dict(files)
    for name, body in files.items():
        add = todo.add.get(name, [])
        remove = todo.remove.get(name, set())
        if not add and not remove:
            continue
        edited = edit_imports(body, add, remove)
        if edited == body:
            continue
        formatted = await gofmt(edited)
        if formatted is not None:
            out[name] = formatted
    return out
