"""User source: single file or txtar archive, validated before anything touches disk.

Mirrors the Go playground's txtar handling: text before the first `-- name --` line is
`prog.go`, at most `max_files` files, names relative and tame. Nothing is ever written
outside the job directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .protocol import BAD_REQUEST, ProtocolError

DEFAULT_FILE = "prog.go"
MAX_NAME_CHARS = 200
MAX_NAME_DEPTH = 10

_MARKER = re.compile(r"^-- (.+?) --\r?$", re.MULTILINE)
_NAME_CHARS = re.compile(r"^[A-Za-z0-9_.+-]+$")
_MAIN_FUNC = re.compile(r"^func\s+main\s*\(\s*\)", re.MULTILINE)
_TEST_FUNC = re.compile(r"^func\s+(Test|Example|Fuzz)[A-Z0-9_]?\w*\s*\(", re.MULTILINE)
_LOCAL_REPLACE = re.compile(r"=>\s*(\.{1,2}(/|\s|$)|/|[A-Za-z]:\\)", re.MULTILINE)
_GO_LINE = re.compile(r"^go\s+(\S+)", re.MULTILINE)
_TOOLCHAIN_LINE = re.compile(r"^toolchain\s+(\S+)", re.MULTILINE)


class SourceError(ProtocolError):
    """Bad input shape (file names, count): a `bad_request`."""

    def __init__(self, message: str) -> None:
        super().__init__(BAD_REQUEST, message)


class BuildRefused(Exception):
    """Input the hermetic build will not try (local replace, ...): a `build_failed`."""

    def __init__(self, message: str, file: str = "go.mod", line: int = 0) -> None:
        super().__init__(message)
        self.file = file
        self.line = line


@dataclass
class Files:
    files: dict[str, str]
    # name on disk -> name the user wrote (tests are renamed to *_test.go)
    display: dict[str, str] = field(default_factory=dict)

    def shown(self, name: str) -> str:
        return self.display.get(name, name)


def split_txtar(source: str) -> list[tuple[str, str]]:
    """Split txtar text into (name, content) pairs; a leading comment becomes prog.go."""
    marks = list(_MARKER.finditer(source))
    if not marks:
        return [(DEFAULT_FILE, source)]
    out: list[tuple[str, str]] = []
    head = source[: marks[0].start()]
    if head.strip():
        out.append((DEFAULT_FILE, head))
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(source)
        body = source[m.end():end]
        if body.startswith("\r\n"):
            body = body[2:]
        elif body.startswith("\n"):
            body = body[1:]
        out.append((m.group(1).strip(), body))
    return out


def validate_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_CHARS:
        raise SourceError(f"file name {name[:40]!r} must be 1 to {MAX_NAME_CHARS} characters")
    if name.startswith("/") or "\\" in name:
        raise SourceError(f"file name {name!r} must be a relative path with '/' separators")
    parts = PurePosixPath(name).parts
    if len(parts) > MAX_NAME_DEPTH:
        raise SourceError(f"file name {name!r} is nested deeper than {MAX_NAME_DEPTH} levels")
    for part in parts:
        if part in (".", "..") or part.startswith(".") or not _NAME_CHARS.match(part):
            raise SourceError(
                f"file name {name!r} is not allowed: use letters, digits, '_', '-', '.', '+', "
                "no '..' and no hidden files"
            )
    if PurePosixPath(name).as_posix() != name:
        raise SourceError(f"file name {name!r} is not in canonical form")
    return name


def parse(source: str, *, max_files: int) -> Files:
    pairs = split_txtar(source)
    if len(pairs) > max_files:
        raise SourceError(f"{len(pairs)} files; at most {max_files} are allowed")
    files: dict[str, str] = {}
    for name, body in pairs:
        validate_name(name)
        if name in files:
            raise SourceError(f"file {name!r} appears twice")
        files[name] = body
    # a directory and a file of the same name cannot both exist
    for name in files:
        for parent in PurePosixPath(name).parents:
            if str(parent) in files:
                raise SourceError(f"{str(parent)!r} is both a file and a directory")
    if not any(n.endswith(".go") for n in files):
        raise SourceError("no .go file in the source")
    return Files(files)


def go_minor(version: str) -> str:
    """'go1.27.3' -> '1.27'."""
    m = re.match(r"(?:go)?(\d+)\.(\d+)", version)
    return f"{m.group(1)}.{m.group(2)}" if m else "1.27"


def check_go_mod(text: str) -> None:
    m = _LOCAL_REPLACE.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        raise BuildRefused(
            "go.mod: 'replace' with a local path is not allowed here; the build only sees "
            "the files of this snippet and the standard library", "go.mod", line)


def is_test_program(files: Files) -> bool:
    """True when no top-level file has func main but some file has Test/Example/Fuzz funcs
    (the Go playground's rule)."""
    top = [(n, b) for n, b in files.files.items() if n.endswith(".go") and "/" not in n]
    if any(_MAIN_FUNC.search(b) for n, b in top if not n.endswith("_test.go")):
        return False
    return any(_TEST_FUNC.search(b) for _, b in top)


def prepare(files: Files, *, go_version: str, test: bool) -> Files:
    """Add go.mod if missing; for tests, rename top-level files with tests to *_test.go."""
    out = dict(files.files)
    display: dict[str, str] = {}
    if "go.mod" in out:
        check_go_mod(out["go.mod"])
    else:
        out["go.mod"] = f"module play\n\ngo {go_minor(go_version)}\n"
    if test:
        for name in list(out):
            if "/" in name or not name.endswith(".go") or name.endswith("_test.go"):
                continue
            if _TEST_FUNC.search(out[name]):
                renamed = name[:-3] + "_test.go"
                if renamed in out:
                    continue
                out[renamed] = out.pop(name)
                display[renamed] = name
    return Files(out, display)


def write(files: Files, root: Path) -> None:
    root = root.resolve()
    for name, body in files.files.items():
        path = (root / name).resolve()
        # validate_name already forbids escapes; this is the belt to its braces
        if root not in path.parents:
            raise SourceError(f"file name {name!r} escapes the job directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8", newline="") as f:
            f.write(body)
