"""Issue 6: the build fast path (compile/link/vet called directly) gives the same results as
go build + go vet, program for program, and falls back to go build for what it does not
handle. Two real servers, one with the fast path and one without, run the same corpus."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import GOCACHE, HELLO, Client, ServerHandle, done_of, launch, stdout_of
from gofiddle import fastpath, source, toolchain
from gofiddle.config import Settings

aio = pytest.mark.asyncio(loop_scope="session")


def prog(body: str, imports: str = "fmt") -> str:
    imps = "".join(f'\t"{i}"\n' for i in imports.split())
    return f"package main\n\nimport (\n{imps})\n\n{body}"


# name -> (source, stdin or None); every program here qualifies for the fast path
CORPUS: dict[str, tuple[str, str | None]] = {
    "hello": (HELLO, None),
    "goroutines": (prog(
        "func main() {\n\tvar wg sync.WaitGroup\n\tresults := make([]int, 8)\n"
        "\tfor i := range 8 {\n\t\twg.Add(1)\n\t\tgo func() {\n\t\t\tdefer wg.Done()\n"
        "\t\t\tresults[i] = i * i\n\t\t}()\n\t}\n\twg.Wait()\n\tch := make(chan int)\n"
        "\tgo func() { defer close(ch); for _, r := range results { ch <- r } }()\n"
        "\tsum := 0\n\tfor v := range ch {\n\t\tsum += v\n\t}\n\tfmt.Println(results, sum)\n}\n",
        "fmt sync"), None),
    "generics": (prog(
        "type Number interface{ ~int | ~float64 }\n\n"
        "func Sum[T Number](xs ...T) T {\n\tvar s T\n\tfor _, x := range xs {\n\t\ts += x\n"
        "\t}\n\treturn s\n}\n\ntype Stack[T any] struct{ items []T }\n\n"
        "func (s *Stack[T]) Push(v T) { s.items = append(s.items, v) }\n\n"
        "func main() {\n\tfmt.Println(Sum(1, 2, 3), Sum(1.5, 2.25))\n\tvar s Stack[string]\n"
        "\ts.Push(\"a\")\n\ts.Push(\"b\")\n\tfmt.Println(s.items, slices.Max([]int{3, 9, 2}))\n}\n",
        "fmt slices"), None),
    "closures": (prog(
        "func counter() func() int {\n\tn := 0\n\treturn func() int { n++; return n }\n}\n\n"
        "func main() {\n\tc := counter()\n\tc()\n\tc()\n\tfmt.Println(c())\n"
        "\tvar fs []func() int\n\tfor i := 0; i < 3; i++ {\n"
        "\t\tfs = append(fs, func() int { return i })\n\t}\n"
        "\tfor _, f := range fs {\n\t\tfmt.Print(f(), \" \")\n\t}\n\tfmt.Println()\n}\n"), None),
    "errors": (prog(
        "var ErrNotFound = errors.New(\"not found\")\n\n"
        "type MyErr struct{ Code int }\n\nfunc (e *MyErr) Error() string "
        "{ return fmt.Sprintf(\"code %d\", e.Code) }\n\n"
        "func find() error { return fmt.Errorf(\"find: %w\", ErrNotFound) }\n\n"
        "func main() {\n\terr := find()\n\tfmt.Println(err, errors.Is(err, ErrNotFound))\n"
        "\tvar me *MyErr\n\tw := fmt.Errorf(\"wrap: %w\", &MyErr{42})\n"
        "\tfmt.Println(errors.As(w, &me), me.Code)\n}\n", "errors fmt"), None),
    "syntax_error": ("package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"x\"\n}\n",
                     None),
    "type_error": (prog("func main() {\n\tvar n int = \"seven\"\n\tfmt.Println(n + 1.5)\n}\n"),
                   None),
    "unused_import": (prog("func main() {\n\tfmt.Println(1)\n}\n", "fmt os strings"), None),
    "unused_var": (prog("func main() {\n\tx := 1\n\ty := 2\n\tfmt.Println(y)\n}\n"), None),
    "undefined": (prog("func main() {\n\tfmt.Println(nope, alsoNope())\n}\n"), None),
    "no_main": ("package main\n\nfunc helper() {}\n", None),
    "panic": (prog("func main() {\n\tfmt.Println(\"before\")\n\tvar xs []int\n"
                   "\tidx := 5\n\tfmt.Println(xs[idx])\n}\n"), None),
    "exit3": (prog("func main() {\n\tfmt.Fprintln(os.Stderr, \"oops\")\n\tos.Exit(3)\n}\n",
                   "fmt os"), None),
    "tzdata": (prog(
        "func main() {\n\tloc, err := time.LoadLocation(\"America/New_York\")\n"
        "\tif err != nil {\n\t\tfmt.Println(\"error:\", err)\n\t\treturn\n\t}\n"
        "\tt := time.Date(2024, 7, 4, 12, 0, 0, 0, time.UTC)\n"
        "\tfmt.Println(t.In(loc).Format(time.RFC1123Z))\n}\n", "fmt time"), None),
    "stdin": (prog(
        "func main() {\n\ts := bufio.NewScanner(os.Stdin)\n\tn := 0\n\tfor s.Scan() {\n"
        "\t\tn++\n\t\tfmt.Println(n, strings.ToUpper(s.Text()))\n\t}\n}\n",
        "bufio fmt os strings"), "alpha\nbeta\ngamma\n"),
    "large_output": (prog(
        "func main() {\n\tfor i := 0; i < 20000; i++ {\n"
        "\t\tfmt.Printf(\"%05d %s\\n\", i, \"abcdefghijklmnopqrstuvwxyz\")\n\t}\n}\n"), None),
    "build_info": (prog(
        "func main() {\n\tbi, ok := debug.ReadBuildInfo()\n\tfmt.Println(ok)\n"
        "\tif ok {\n\t\tfmt.Print(bi.String())\n\t}\n"
        "\tfmt.Printf(\"%q\\n\", runtime.GOROOT())\n}\n",
        "fmt runtime runtime/debug"), None),
    "vet_printf": (prog("func main() {\n\tfmt.Printf(\"%d\\n\", \"s\")\n}\n"), None),
    "vet_copylock": (prog(
        "type T struct{ mu sync.Mutex }\n\nfunc show(t T) { fmt.Println(&t.mu != nil) }\n\n"
        "func main() {\n\tvar t T\n\tshow(t)\n}\n", "fmt sync"), None),
    "multi_file": ("-- prog.go --\n" + prog("func main() {\n\tfmt.Println(greet(\"class\"))\n}\n")
                   + "-- greet.go --\npackage main\n\nimport \"strings\"\n\n"
                   "func greet(n string) string { return \"hi \" + strings.ToUpper(n) }\n", None),
    "multi_file_error": ("-- prog.go --\n" + prog("func main() {\n\tfmt.Println(greet(1))\n}\n")
                         + "-- greet.go --\npackage main\n\n"
                         "func greet(n string) string { return n }\n", None),
    "unsafe": (prog("type P struct {\n\ta int8\n\tb int64\n}\n\n"
                    "func main() {\n"
                    "\tfmt.Println(unsafe.Sizeof(P{}), unsafe.Alignof(int64(0)))\n}\n",
                    "fmt unsafe"), None),
    "user_gomod": ("-- go.mod --\nmodule example.com/hi\n\ngo 1.27\n-- main.go --\n" + prog(
        "func main() {\n\tvar p *int\n\tfmt.Println(*p)\n}\n"), None),
    "custom_panic": (prog("func main() {\n\tpanic(errors.New(\"boom\"))\n}\n", "errors"), None),
}

FAST_LINKED = {"hello", "goroutines", "generics", "closures", "errors", "panic", "exit3",
               "tzdata", "stdin", "large_output", "build_info", "multi_file", "unsafe",
               "user_gomod", "custom_panic"}


@pytest.fixture(scope="module")
def trio(server_tmp: Path) -> Iterator[tuple[ServerHandle, ServerHandle, ServerHandle]]:
    """(fast path in one spawn, fast path with a spawn per tool, go build only); no binary
    cache, so every run really builds."""
    started: list[ServerHandle] = []
    try:
        for fast, single in ((True, True), (True, False), (False, True)):
            started.append(launch(server_tmp, binary_cache_entries=0, fast_path=fast,
                                  fast_single_spawn=single))
        yield started[0], started[1], started[2]
    finally:
        for h in started:
            h.stop()


@pytest.fixture(scope="module")
def pair(trio: tuple[ServerHandle, ServerHandle, ServerHandle]
         ) -> tuple[ServerHandle, ServerHandle]:
    return trio[0], trio[2]


async def run_one(url: str, src: str, stdin: str | None, **fields: Any) -> list[dict[str, Any]]:
    c = await Client.connect(url)
    try:
        await c.send({"type": "run", "id": "c", "source": src, **fields})
        if stdin is not None:
            await c.send({"type": "stdin", "id": "c", "data": stdin})
            await c.send({"type": "stdin", "id": "c", "eof": True})
        return await c.until("done", timeout=120)
    finally:
        await c.close()


def summary(frames: list[dict[str, Any]]) -> dict[str, Any]:
    done = done_of(frames)
    return {
        "phases": [f["phase"] for f in frames if f["type"] == "started"],
        "diagnostics": [(f["phase"], f["items"]) for f in frames if f["type"] == "diagnostics"],
        "stdout": stdout_of(frames),
        "stderr": stdout_of(frames, "stderr"),
        "status": done["status"],
        "exit_code": done.get("exit_code"),
        "message": done.get("message"),
    }


def link_count(server: ServerHandle) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gofiddle_phase_duration_seconds_count") and 'phase="link"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@aio
@pytest.mark.parametrize("vet", [True, False])
async def test_corpus_identical_on_both_paths(trio, vet):
    fast, spawns, slow = trio
    before = link_count(fast), link_count(spawns)
    names = sorted(CORPUS)
    results: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for name in names:
        src, stdin = CORPUS[name]
        a, a2, b = await asyncio.gather(run_one(fast.ws_url, src, stdin, vet=vet),
                                        run_one(spawns.ws_url, src, stdin, vet=vet),
                                        run_one(slow.ws_url, src, stdin, vet=vet))
        results[name] = (summary(a), summary(b))
        assert summary(a2) == summary(a), f"{name}: one spawn per tool differs"
    for name, (a, b) in results.items():
        assert a == b, f"{name}: fast path\n{a}\n!= go build\n{b}"
    # the fast server really took the fast path for every program that links
    linked = {n for n in FAST_LINKED if not (vet and n.startswith("vet_"))}
    assert link_count(fast) - before[0] >= len(linked)
    assert link_count(spawns) - before[1] >= len(linked)
    assert link_count(slow) == 0
    # and the results are what they should be, not merely equal
    r = {n: a for n, (a, _) in results.items()}
    assert r["hello"]["stdout"] == "hello, world\n" and r["hello"]["status"] == "ok"
    assert r["goroutines"]["stdout"] == "[0 1 4 9 16 25 36 49] 140\n"
    assert r["closures"]["stdout"] == "3\n0 1 2 \n"
    assert r["tzdata"]["stdout"] == "Thu, 04 Jul 2024 08:00:00 -0400\n"
    assert r["stdin"]["stdout"] == "1 ALPHA\n2 BETA\n3 GAMMA\n"
    assert r["exit3"]["status"] == "exit" and r["exit3"]["exit_code"] == 3
    assert r["panic"]["status"] == "exit" and "index out of range" in r["panic"]["stderr"]
    assert "play/prog.go:" in r["panic"]["stderr"]  # -trimpath: the module path, not a dir
    assert r["large_output"]["stdout"].count("\n") == 20000
    assert "build\t-trimpath=true" in r["build_info"]["stdout"]
    assert r["build_info"]["stdout"].endswith('""\n')  # no GOROOT baked in
    assert r["unsafe"]["stdout"] == "16 8\n"
    for name in ("syntax_error", "type_error", "unused_import", "unused_var", "undefined",
                 "no_main", "multi_file_error"):
        assert r[name]["status"] == "build_failed", (name, r[name])
        assert r[name]["diagnostics"][0][0] == "build"
    assert r["unused_import"]["diagnostics"][0][1][0]["message"] == '"os" imported and not used'
    assert {(i["line"], i["col"]) for i in r["unused_import"]["diagnostics"][0][1]} == {
        (5, 2), (6, 2)}
    if vet:
        assert r["vet_printf"]["status"] == "vet_failed"
        assert r["vet_copylock"]["status"] == "vet_failed"
        assert r["vet_printf"]["phases"] == ["build", "vet"]
    else:
        assert r["vet_printf"]["status"] == "ok"


@aio
@pytest.mark.parametrize("mode", ["vet", "build"])
async def test_other_modes_identical(pair, mode):
    fast, slow = pair
    for name in ("hello", "vet_printf", "type_error", "multi_file"):
        src, _ = CORPUS[name]
        a, b = await asyncio.gather(run_one(fast.ws_url, src, None, mode=mode),
                                    run_one(slow.ws_url, src, None, mode=mode))
        assert summary(a) == summary(b), name


@aio
async def test_fallbacks_still_work(pair):
    """What the fast path refuses goes to go build, with go build's results."""
    fast, _ = pair
    cases = {
        "build tag": ("//go:build linux\n\n" + HELLO, "ok"),
        "test program": ('package main\n\nimport "testing"\n\n'
                         "func TestX(t *testing.T) {}\n", "ok"),
        "sub-package": ("-- go.mod --\nmodule m\n\ngo 1.27\n-- main.go --\npackage main\n\n"
                        "import \"m/p\"\n\nfunc main() { p.Hi() }\n"
                        "-- p/p.go --\npackage p\n\nimport \"fmt\"\n\n"
                        "func Hi() { fmt.Println(\"hi\") }\n", "ok"),
        "internal import": ('package main\n\nimport _ "internal/abi"\n\nfunc main() {}\n',
                            "build_failed"),
        "non-std import": ('package main\n\nimport _ "example.com/nope"\n\nfunc main() {}\n',
                           "build_failed"),
        "old go.mod": ("-- go.mod --\nmodule m\n\ngo 1.21\n-- main.go --\n" + HELLO, "ok"),
        "embed": ('package main\n\nimport _ "embed"\n\n//go:embed data.txt\nvar s string\n\n'
                  "func main() { print(s) }\n-- data.txt --\nhello\n", "ok"),
    }
    for name, (src, status) in cases.items():
        frames = await run_one(fast.ws_url, src, None)
        assert done_of(frames)["status"] == status, (name, frames)


@aio
async def test_std_package_outside_the_warm_set_joins_the_fast_path(pair):
    fast, slow = pair
    src = prog("func main() {\n\tr := ring.New(3)\n\th := fnv.New32a()\n"
               "\th.Write([]byte(\"x\"))\n\tfmt.Println(r.Len(), h.Sum32())\n}\n",
               "container/ring fmt hash/fnv")
    expected = summary(await run_one(slow.ws_url, src, None))
    before = link_count(fast)
    first = summary(await run_one(fast.ws_url, src, None))
    assert first == expected and first["stdout"] == "3 4245442695\n"
    assert link_count(fast) == before  # not indexed yet: go build
    # go build put them in the cache; a background refresh indexes them
    deadline = asyncio.get_running_loop().time() + 60
    while link_count(fast) == before:
        assert asyncio.get_running_loop().time() < deadline, "never took the fast path"
        await asyncio.sleep(0.5)
        assert summary(await run_one(fast.ws_url, src, None)) == expected


def linked_copy(src: Path, dst: Path) -> Path:
    """A copy of the build cache to damage: hard links where the file system allows (go
    never writes a cache file in place), a real copy elsewhere."""
    if not dst.exists():
        if subprocess.run(["cp", "-al", str(src), str(dst)]).returncode != 0:
            subprocess.run(["rm", "-rf", str(dst)], check=True)
            subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def remove_export(cache: Path, tmp: Path, package: str) -> None:
    """Delete the export data file go build (and so the fast path) uses for `package`."""
    tools = toolchain.Toolchain.locate()
    config_dir = tmp / "goconfig-trim"
    tools.write_config(config_dir)
    env = tools.env(Settings(), cache, config_dir)
    argv = [*tools.list_export_cmd([]), package]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=tmp)
    export, _ = fastpath.parse_list(out.stdout)
    Path(export[package]).unlink()


@aio
async def test_vanished_export_file_falls_back_and_recovers(server_tmp):
    """The build cache is trimmed under the index: that run uses go build, the index is
    rebuilt, and later runs are fast again. A hard-linked copy of the test cache keeps the
    shared one intact."""
    cache = linked_copy(GOCACHE, server_tmp / "gocache-trim")
    srv = launch(server_tmp, binary_cache_entries=0, gocache_dir=cache)
    try:
        src = prog("func main() {\n\tfmt.Println(\"still here\")\n}\n")
        before = link_count(srv)
        assert summary(await run_one(srv.ws_url, src, None))["stdout"] == "still here\n"
        assert link_count(srv) == before + 1
        remove_export(cache, server_tmp, "fmt")
        frames = await run_one(srv.ws_url, src, None)
        assert summary(frames)["stdout"] == "still here\n"
        assert link_count(srv) == before + 1  # that run went to go build
        deadline = asyncio.get_running_loop().time() + 60
        while link_count(srv) == before + 1:
            assert asyncio.get_running_loop().time() < deadline, "fast path never came back"
            await asyncio.sleep(0.5)
            assert summary(await run_one(srv.ws_url, src, None))["status"] == "ok"
    finally:
        srv.stop()


# ---- eligibility, without a server -------------------------------------------------


def plan_of(text: str) -> fastpath.FastPlan:
    files = source.prepare(source.parse(text, max_files=20), go_version="go1.27.3", test=False)
    return fastpath.analyze(files, "1.27")


def test_analyze_reads_imports():
    p = plan_of('package main\n\n// c\nimport (\n\t"fmt" // x\n\tstr "strings"\n\t. "math"\n'
                '\t_ `os`\n)\nimport "sort"; import /* y */ "io"\n\nfunc main() {}\n')
    assert p.imports == ("fmt", "io", "math", "os", "sort", "strings")
    assert p.module == "play" and p.lang == "go1.27" and p.files == ("prog.go",)


@pytest.mark.parametrize("text, reason", [
    ("//go:build ignore\n\npackage main\n", "build constraints"),
    ("// +build linux\n\npackage main\n", "build constraints"),
    ('package main\n\nimport "C"\n', "cgo"),
    ("package foo\n", "not main"),
    ('package main\n\nimport "fmt\\x41"\n', "literal"),
    ("-- go.mod --\nmodule m\n\ngo 1.26\n-- a.go --\npackage main\n", "language version"),
    ("-- go.mod --\nmodule m\n\ngo 1.27\n\nrequire x.y/z v1.0.0\n-- a.go --\npackage main\n",
     "more than module"),
    ("-- a_windows.go --\npackage main\n-- b.go --\npackage main\n", "not a plain"),
    ("-- a.go --\npackage main\n-- sub/b.go --\npackage b\n", "not a plain"),
    ("-- a.go --\npackage main\n-- x.s --\nTEXT\n", "not a plain"),
    ("package main\n\n//go:debug panicnil=1\nfunc main() {}\n", "debug"),
    ("/* never closed\npackage main\n", "comment"),
])
def test_analyze_refuses(text, reason):
    with pytest.raises(fastpath.NotEligible, match=re.escape(reason)):
        plan_of(text)


def test_modinfo_quoting_round_trips():
    p = plan_of(HELLO)
    quoted = fastpath.modinfo(p, "amd64", "linux")
    assert quoted.startswith('"0w\\xaf\\x0c') and quoted.endswith('\\xd8\\xf2"')
    assert "path\\x09play\\x0amod\\x09play\\x09(devel)\\x09\\x0a" in quoted
