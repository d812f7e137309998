"""Issue 5: `format` (gofmt, and standard-library import fixing) and `check` (type errors
while typing) over the WebSocket, plus the import-block editing on its own."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import HELLO, Client
from gofiddle import stdimports
from gofiddle.toolchain import Toolchain


async def ask(url: str, frame: dict[str, Any], answer: str) -> dict[str, Any]:
    c = await Client.connect(url)
    try:
        await c.send(frame)
        got = (await c.until(answer))[-1]
    finally:
        await c.close()
    assert got["id"] == frame["id"]
    return got


async def fmt(url: str, src: str, imports: bool = True) -> dict[str, Any]:
    return await ask(url, {"type": "format", "id": "f", "source": src, "imports": imports},
                     "formatted")


async def check(url: str, src: str) -> list[dict[str, Any]]:
    return (await ask(url, {"type": "check", "id": "c", "source": src}, "checked"))["diagnostics"]


# ---- format --------------------------------------------------------------------


async def test_format_plain(server):
    got = await fmt(server.ws_url,
                    "package main\nfunc main() {\nprintln( 1 )\n}\n", imports=False)
    assert got["source"] == "package main\n\nfunc main() {\n\tprintln(1)\n}\n"
    assert got["diagnostics"] == []


async def test_format_syntax_error_keeps_source(server):
    src = "package main\n\nfunc main() {\n\tprintln(1\n}\n"
    got = await fmt(server.ws_url, src)
    assert got["source"] == src
    first = got["diagnostics"][0]
    assert first["file"] == "prog.go" and first["line"] == 4 and first["severity"] == "error"


async def test_imports_added_and_dropped(server):
    src = ('package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\n'
           'func main() {\n\tfmt.Println(strings.ToUpper("hi"))\n}\n')
    got = await fmt(server.ws_url, src)
    assert got["diagnostics"] == []
    assert got["source"] == ('package main\n\nimport (\n\t"fmt"\n\t"strings"\n)\n\n'
                             'func main() {\n\tfmt.Println(strings.ToUpper("hi"))\n}\n')


async def test_imports_without_any_import_decl(server):
    got = await fmt(server.ws_url, 'package main\n\nfunc main() { fmt.Println(1) }\n')
    assert got["source"] == 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(1) }\n'


async def test_imports_single_decl_becomes_block(server):
    got = await fmt(server.ws_url, 'package main\n\nimport "fmt" // printing\n\n'
                                   'func main() { fmt.Println(sort.IsSorted(nil)) }\n')
    assert got["source"] == ('package main\n\nimport (\n\t"fmt" // printing\n\t"sort"\n)\n\n'
                             'func main() { fmt.Println(sort.IsSorted(nil)) }\n')


async def test_imports_named_dot_blank_untouched(server):
    src = ('package main\n\nimport (\n\t_ "embed"\n\t. "math"\n\t"os"\n\tstr "strings"\n)\n\n'
           "func main() {}\n")
    got = await fmt(server.ws_url, src)
    # only the plain unused "os" goes; the compiler also flags `. "math"` and
    # `str "strings"`, but a name is a deliberate choice
    assert got["source"] == src.replace('\t"os"\n', "")


async def test_imports_only_removed_leaves_no_empty_block(server):
    got = await fmt(server.ws_url, 'package main\n\nimport "os"\n\nfunc main() {}\n')
    assert got["source"] == "package main\n\nfunc main() {}\n"


@pytest.mark.parametrize(("use", "path"), [
    ("rand.Intn(3)", "math/rand"),
    ("rand.Read(nil)", "math/rand"),
    ("template.New(\"x\")", "text/template"),
    ("template.HTML(\"x\")", "html/template"),
    ("json.Marshal(1)", "encoding/json"),
    ("slog.Info(\"x\")", "log/slog"),
    ("utf8.RuneLen('x')", "unicode/utf8"),
])
async def test_imports_choose_the_right_package(server, use, path):
    got = await fmt(server.ws_url, f"package main\n\nfunc main() {{ _ = {use} }}\n")
    assert f'import "{path}"\n' in got["source"], got


async def test_imports_leave_undefined_variables_alone(server):
    # `strings` here is a variable the user forgot to declare, not a package
    src = "package main\n\nfunc main() {\n\tprintln(strings)\n}\n"
    got = await fmt(server.ws_url, src)
    assert got["source"] == src


async def test_imports_in_txtar_per_file(server):
    src = ("package main\n\nimport \"os\"\n\nfunc main() { fmt.Println(util.Up(\"a\")) }\n"
           "-- util/util.go --\npackage util\n\nfunc Up(s string) string "
           "{ return strings.ToUpper(s) }\n"
           "-- go.mod --\nmodule play\n")
    got = await fmt(server.ws_url, src)
    assert got["diagnostics"] == []
    # the implicit prog.go stays header-less; util.go gets its own import; go.mod as is;
    # `util` is not a standard package, so it is left for the author
    assert got["source"] == (
        "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(util.Up(\"a\")) }\n"
        "-- util/util.go --\npackage util\n\nimport \"strings\"\n\n"
        "func Up(s string) string { return strings.ToUpper(s) }\n"
        "-- go.mod --\nmodule play\n")


async def test_imports_off_changes_nothing_but_layout(server):
    src = 'package main\n\nimport "os"\n\nfunc main() { fmt.Println(1) }\n'
    got = await fmt(server.ws_url, src, imports=False)
    assert got["source"] == src


# ---- check ---------------------------------------------------------------------


async def test_check_type_error_on_the_right_line(server):
    src = ('package main\n\nimport "fmt"\n\nfunc main() {\n\tvar s string = 1\n'
           "\tfmt.Println(s)\n}\n")
    items = await check(server.ws_url, src)
    assert len(items) == 1
    assert items[0]["file"] == "prog.go" and items[0]["line"] == 6 and items[0]["col"] == 17
    assert items[0]["severity"] == "error" and "cannot use 1" in items[0]["message"]


async def test_check_clean_program(server):
    assert await check(server.ws_url, HELLO) == []


async def test_check_txtar_names_as_written(server):
    src = ("-- main.go --\npackage main\n\nfunc main() { f() }\n"
           "-- lib.go --\npackage main\n\nfunc f() {\n\tvar s string = 1\n\t_ = s\n}\n"
           "-- lib_test.go --\npackage main\n\nimport \"testing\"\n\n"
           "func TestF(t *testing.T) {\n\tvar n int = \"x\"\n\t_ = n\n}\n"
           "-- sub/sub.go --\npackage sub\n\nfunc G() int { return \"s\" }\n")
    items = await check(server.ws_url, src)
    where = sorted((i["file"], i["line"]) for i in items)
    assert where == [("lib.go", 4), ("lib_test.go", 6), ("sub/sub.go", 3)], items


async def test_check_implicit_prog_go(server):
    src = ("package main\n\nfunc main() {\n\tundefinedThing()\n}\n"
           "-- other.go --\npackage main\n")
    items = await check(server.ws_url, src)
    assert [(i["file"], i["line"]) for i in items] == [("prog.go", 4)]


# ---- the pieces, without a server ----------------------------------------------


def test_std_index():
    index = stdimports.build_index(Toolchain.locate().goroot)
    assert index.by_name["strings"] == ("strings",)
    assert index.by_name["rand"][0] == "math/rand"
    assert index.by_name["template"][0] == "text/template"
    assert "internal" not in " ".join(index.paths)
    assert not any(p.startswith(("cmd/", "vendor/")) or "testdata" in p for p in index.paths)
    assert index.resolve("template", {"HTML"}) == "html/template"
    assert index.resolve("rand", {"Intn"}) == "math/rand"
    assert index.resolve("nosuchpkg") is None


def test_parse_imports_skips_comments_and_strings():
    src = ('// Package doc mentions import "x".\n/* import "y"\n*/\npackage main // c\n\n'
           'import (\n\t"fmt"\n\tstr "strings"\n\t. "math"\n)\nimport _ "embed"\n\n'
           'var s = `\nimport "z"\n`\n')
    info = stdimports.parse_imports(src)
    assert info is not None and info.package_line == 4
    assert [(s.name, s.path, s.line) for s in info.specs()] == [
        (None, "fmt", 7), ("str", "strings", 8), (".", "math", 9), ("_", "embed", 11)]


def test_edit_imports_cases():
    block = 'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {}\n'
    assert stdimports.edit_imports(block, remove=[(5, "os")]) == (
        'package main\n\nimport (\n\t"fmt"\n)\n\nfunc main() {}\n')
    assert stdimports.edit_imports(block, remove=[(4, "fmt"), (5, "os")]) == (
        "package main\n\n\nfunc main() {}\n")
    assert stdimports.edit_imports(block, add=["bytes"]) == (
        'package main\n\nimport (\n\t"bytes"\n\t"fmt"\n\t"os"\n)\n\nfunc main() {}\n')
    # a path already imported is not added twice; a wrong line removes nothing
    assert stdimports.edit_imports(block, add=["fmt"], remove=[(9, "os")]) == block
    none = "package main\n\nfunc main() {}\n"
    assert stdimports.edit_imports(none, add=["fmt", "os"]) == (
        'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {}\n')


def test_selector_detection_uses_byte_columns():
    line = '\ts := "é世"; _ = strings.ToUpper(s)\n'
    text = "package main\n" + line
    col = len(line[: line.index("strings")].encode()) + 1
    assert stdimports._selector_at(text, 2, col, "strings") == "ToUpper"
    assert stdimports._selector_at(text, 2, col + 1, "strings") is None
