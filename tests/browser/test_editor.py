"""The browser editor, end to end: real headless Chromium against a real gofiddle server."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "screenshot.png"
DONE_MS = 120_000  # a cold build cache in CI compiles the standard library first

HELLO = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello, browser")\n}\n'

STREAMING = """package main

import (
	"fmt"
	"time"
)

func main() {
	fmt.Println("first line")
	time.Sleep(1500 * time.Millisecond)
	fmt.Println("second line")
}
"""

COMPILE_ERROR = """package main

import "fmt"

func main() {
	fmt.Println("before")
	fmt.Println(undefinedName)
}
"""

ECHO = """package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

func main() {
	sc := bufio.NewScanner(os.Stdin)
	n := 0
	for sc.Scan() {
		n++
		fmt.Println("echo:", strings.ToUpper(sc.Text()))
	}
	fmt.Println("lines:", n)
}
"""

LONG = """package main

import (
	"fmt"
	"time"
)

func main() {
	for i := 0; i < 90; i++ {
		fmt.Println("tick", i)
		time.Sleep(100 * time.Millisecond)
	}
}
"""


# ------------------------------------------------------------------ helpers
def open_editor(page: Any, base: str, path: str = "/") -> None:
    page.goto(base + path)
    page.wait_for_selector(".cm-editor")
    wait_connected(page)


def wait_connected(page: Any) -> None:
    page.wait_for_function("document.querySelector('#conn').dataset.state === 'open'")


def get_code(page: Any) -> str:
    return page.evaluate("window.gofiddle.getText()")


def set_code(page: Any, source: str) -> None:
    """Replace the editor text the way a user would: select all, delete, type."""
    page.click(".cm-content")
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(source)
    assert get_code(page) == source


def click_run(page: Any) -> None:
    """Press Run and wait until the page has started that run (it may finish at once)."""
    before = int(page.evaluate("document.body.dataset.runs || '0'"))
    page.click("#run")
    page.wait_for_function("n => Number(document.body.dataset.runs || 0) > n", arg=before)


def wait_done(page: Any, timeout: int = DONE_MS) -> str:
    page.wait_for_function("document.body.dataset.phase === 'done'", timeout=timeout)
    return page.get_attribute("#status", "data-status") or ""


def describe(page: Any) -> str:
    """Page state for assertion messages."""
    return page.evaluate("""(() => ({
        phase: document.body.dataset.phase, status: document.querySelector('#status').textContent,
        output: window.gofiddle.output.text().slice(-2000),
        diagnostics: window.gofiddle.diagnostics.map(d => [d.file, d.line, d.col, d.message]),
    }))()""")


def wait_phase(page: Any, phase: str, timeout: int = DONE_MS) -> None:
    page.wait_for_function(f"document.body.dataset.phase === '{phase}'", timeout=timeout)


def output_text(page: Any) -> str:
    return page.evaluate("window.gofiddle.output.text()")


def wait_output(page: Any, needle: str, timeout: int = DONE_MS) -> None:
    page.wait_for_function(
        "needle => window.gofiddle.output.text().includes(needle)", arg=needle, timeout=timeout)


def editor_line_of(page: Any, selector: str) -> int:
    """1-based editor line holding the first element matching selector."""
    return page.evaluate(
        """sel => {
            const el = document.querySelector(sel);
            const view = window.gofiddle.editor.view;
            if (el.closest(".cm-content")) return view.state.doc.lineAt(view.posAtDOM(el)).number;
            const r = el.getBoundingClientRect();  // a gutter element: go by height
            const block = view.lineBlockAtHeight(r.top + r.height / 2 - view.documentTop);
            return view.state.doc.lineAt(block.from).number;
        }""",
        selector,
    )


def cursor_line(page: Any) -> int:
    return page.evaluate(
        "(() => { const s = window.gofiddle.editor.view.state;"
        " return s.doc.lineAt(s.selection.main.head).number; })()")


# ------------------------------------------------------------------ tests
def test_run_streams_output(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    assert page.title().startswith("gofiddle")
    assert page.is_hidden("#stop")
    set_code(page, STREAMING)
    click_run(page)
    assert page.is_visible("#stop")
    # the first line shows while the program is still running
    wait_output(page, "first line")
    assert page.evaluate("document.body.dataset.phase") == "run"
    assert "second line" not in output_text(page)
    assert re.match(r"\d+\.\d s", page.inner_text("#elapsed"))
    assert wait_done(page) == "ok"
    out = output_text(page)
    assert out.index("first line") < out.index("second line")
    assert "Program exited." in out
    assert page.inner_text("#status") == "Finished"
    assert "build" in page.inner_text("#timings")
    assert page.is_hidden("#stop")


def test_ctrl_enter_runs_and_stderr_is_marked(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, 'package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n'
                   '\tfmt.Println("to stdout")\n\tfmt.Fprintln(os.Stderr, "to stderr")\n'
                   '\tfmt.Println("\\x1b[31mred\\x1b[0m")\n\tos.Exit(3)\n}\n')
    page.keyboard.press("Control+Enter")
    assert wait_done(page) == "exit"
    assert page.inner_text("#output .stderr") == "to stderr\n"
    assert "to stdout" in page.inner_text("#output .stdout")
    assert page.inner_text("#output .ansi-red-fg") == "red"
    assert "status 3" in output_text(page)
    assert page.get_attribute("#status", "data-exit-code") == "3"


def test_compile_error_marks_the_line(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, COMPILE_ERROR)
    click_run(page)
    assert wait_done(page) == "build_failed", describe(page)
    page.wait_for_selector(".cm-lintRange-error")
    assert editor_line_of(page, ".cm-lintRange-error") == 7, describe(page)
    assert page.inner_text(".cm-lintRange-error") == "undefinedName", describe(page)
    page.wait_for_selector(".cm-lint-marker-error")
    assert editor_line_of(page, ".cm-lint-marker-error") == 7, describe(page)
    # hover shows the compiler's message
    box = page.locator(".cm-lintRange-error").bounding_box()
    for i in range(15):
        page.mouse.move(box["x"] + 10 + i, box["y"] + box["height"] / 2, steps=2)
        if page.locator(".cm-tooltip-lint").count():
            break
        page.wait_for_timeout(400)
    page.wait_for_selector(".cm-tooltip-lint")
    assert "undefined: undefinedName" in page.inner_text(".cm-tooltip-lint")
    # the list under the editor moves the cursor to the line
    assert page.is_visible("#diagnostics")
    item = page.locator("#diagnostics-list button").first
    assert "prog.go:7" in item.inner_text()
    assert "undefined: undefinedName" in item.inner_text()
    page.click(".cm-content >> text=package main")
    assert cursor_line(page) == 1
    item.click()
    assert cursor_line(page) == 7
    assert "undefined: undefinedName" in output_text(page)


def test_txtar_diagnostics_land_inside_their_file(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    source = ("-- go.mod --\nmodule example.com/m\n\ngo 1.22\n"
              "-- main.go --\npackage main\n\nfunc main() {\n\thelper()\n}\n"
              "-- util.go --\npackage main\n\nfunc helper() {\n\tnotDefined()\n}\n")
    set_code(page, source)
    click_run(page)
    assert wait_done(page) == "build_failed"
    page.wait_for_selector(".cm-lintRange-error")
    # util.go line 4 is 4 lines below the `-- util.go --` marker (editor line 11)
    assert editor_line_of(page, ".cm-lintRange-error") == 15
    assert page.inner_text(".cm-lintRange-error") == "notDefined"


def test_vet_findings_are_marked(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Printf("%d\\n", "x")\n}\n')
    click_run(page)
    assert wait_done(page) == "vet_failed", describe(page)
    page.wait_for_selector(".cm-lintRange-warning, .cm-lintRange-error")
    assert editor_line_of(page, ".cm-lintRange-warning, .cm-lintRange-error") == 6
    assert "Printf" in page.inner_text("#diagnostics-list")
    assert "vet" in page.inner_text("#output").lower()


def test_stdin_round_trip(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, ECHO)
    assert page.is_disabled("#stdin")
    click_run(page)
    # typed before the program starts: held and sent when it runs
    page.wait_for_selector("#stdin:not([disabled])")
    page.fill("#stdin", "early bird")
    page.press("#stdin", "Enter")
    wait_phase(page, "run")
    wait_output(page, "echo: EARLY BIRD")
    page.fill("#stdin", "hello gopher")
    page.press("#stdin", "Enter")
    wait_output(page, "echo: HELLO GOPHER")
    assert page.input_value("#stdin") == ""
    page.click("#stdin-eof")
    assert wait_done(page, 30_000) == "ok"
    out = output_text(page)
    assert "lines: 2" in out
    assert page.inner_text("#output .stdin").startswith("early bird")
    assert page.is_disabled("#stdin")


def test_stop_cancels_a_running_program(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, LONG)
    click_run(page)
    wait_output(page, "tick 3")
    t0 = time.monotonic()
    page.click("#stop")
    assert wait_done(page, 10_000) == "cancelled"
    assert time.monotonic() - t0 < 5
    assert page.inner_text("#status") == "Cancelled"
    assert page.is_hidden("#stop")
    assert "tick 89" not in output_text(page)
    # the session is still usable
    set_code(page, HELLO)
    click_run(page)
    assert wait_done(page) == "ok"
    assert "hello, browser" in output_text(page)


def test_share_then_open_the_link(server: Any, new_page: Any) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    open_editor(page, server.url)
    marker = uuid.uuid4().hex[:12]
    source = HELLO.replace("hello, browser", f"shared {marker}")
    set_code(page, source)
    page.click("#share")
    page.wait_for_function("document.querySelector('#share-url').value.includes('/p/')")
    url = page.input_value("#share-url")
    assert re.search(r"/p/[A-Za-z0-9_-]{10,16}$", url), url
    assert page.evaluate("navigator.clipboard.readText()") == url
    assert "copied" in page.inner_text("#share-msg")

    other = new_page()
    other.goto(url)
    other.wait_for_selector(".cm-editor")
    assert get_code(other) == source
    assert marker in other.title() or "gofiddle" in other.title()
    # the raw source is served too
    assert httpx.get(url + ".go").text == source
    # and the embed page shows the same code, without the header chrome
    embed = new_page()
    embed.goto(url.replace("/p/", "/embed/"))
    embed.wait_for_selector(".cm-editor")
    assert get_code(embed) == source
    assert embed.locator("#share").count() == 0
    assert embed.locator("#run").is_visible()


def test_unknown_snippet_is_a_404_page(server: Any, new_page: Any) -> None:
    page = new_page()
    resp = page.goto(server.url + "/p/NoSuchSnippet1")
    assert resp is not None and resp.status == 404
    assert "not found" in page.inner_text("h1").lower()
    assert page.locator("a[href='/']").count() >= 1
    # Chromium logs the 404 of the document itself as a console error: expected here
    page.errors[:] = [e for e in page.errors if "404" not in e]


def test_queue_position_is_shown(start_server: Any, new_page: Any) -> None:
    srv = start_server(workers=1)
    pages = [new_page(), new_page(), new_page()]
    for p in pages:
        open_editor(p, srv.url)
        set_code(p, LONG)
    first, second, third = pages
    click_run(first)
    wait_output(first, "tick 1")
    click_run(second)
    second.wait_for_selector("#queue:not([hidden])")
    click_run(third)
    third.wait_for_selector("#queue:not([hidden])")
    assert second.inner_text("#queue").startswith("Next in line")
    assert third.inner_text("#queue").startswith("2nd in line")
    assert re.search(r"about \d+ (s|min)", third.inner_text("#queue"))
    assert third.inner_text("#status").startswith("Queued")
    # the first one stops: everyone moves up
    first.click("#stop")
    assert wait_done(first, 10_000) == "cancelled"
    wait_output(second, "tick 1")
    assert second.is_hidden("#queue")
    third.wait_for_function(
        "document.querySelector('#queue').textContent.startsWith('Next in line')")
    # leaving the queue works too
    third.click("#stop")
    assert wait_done(third, 10_000) == "cancelled"
    second.click("#stop")
    assert wait_done(second, 10_000) == "cancelled"


def test_dark_theme_toggle_persists(server: Any, new_page: Any) -> None:
    page = new_page(color_scheme="light")
    open_editor(page, server.url)
    assert page.get_attribute("html", "data-theme") == "light"
    editor_bg = "getComputedStyle(document.querySelector('.cm-editor')).backgroundColor"
    light_bg = page.evaluate(editor_bg)
    page.click("#theme")
    assert page.get_attribute("html", "data-theme") == "dark"
    assert page.get_attribute("#theme", "aria-pressed") == "true"
    dark_bg = page.evaluate(editor_bg)
    assert dark_bg != light_bg
    assert luminance(dark_bg) < 0.2 < luminance(light_bg)
    page.reload()
    page.wait_for_selector(".cm-editor")
    assert page.get_attribute("html", "data-theme") == "dark"
    page.click("#theme")
    assert page.get_attribute("html", "data-theme") == "light"


def test_theme_follows_the_system_by_default(server: Any, new_page: Any) -> None:
    page = new_page(color_scheme="dark")
    open_editor(page, server.url)
    assert page.get_attribute("html", "data-theme") == "dark"
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert luminance(bg) < 0.2


def luminance(css: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_code_survives_reload_and_snippets_win(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    mine = HELLO.replace("hello, browser", "my draft")
    set_code(page, mine)
    page.wait_for_timeout(400)  # the draft is saved after a short pause
    page.reload()
    page.wait_for_selector(".cm-editor")
    assert get_code(page) == mine
    # a snippet link shows the snippet, not the draft
    snippet = HELLO.replace("hello, browser", "from a link")
    snippet_id = httpx.post(server.url + "/share", content=snippet.encode()).text.strip()
    page.goto(f"{server.url}/p/{snippet_id}")
    page.wait_for_selector(".cm-editor")
    assert get_code(page) == snippet


def test_reconnect_keeps_the_code(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    source = HELLO.replace("hello, browser", "after reconnect")
    set_code(page, source)
    page.evaluate("window.gofiddle.conn.ws.close()")
    page.wait_for_function("document.querySelector('#conn').dataset.state !== 'open'")
    wait_connected(page)
    assert get_code(page) == source
    click_run(page)
    assert wait_done(page) == "ok"
    assert "after reconnect" in output_text(page)


def test_format_button_and_shortcut(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, 'package main\nimport "fmt"\nfunc main(){\nfmt.Println( "x" )\n}\n')
    page.click("#format")
    page.wait_for_function("window.gofiddle.getText().includes('\\tfmt.Println(\"x\")')")
    formatted = 'package main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("x")\n}\n'
    assert get_code(page) == formatted
    page.click(".cm-content")
    page.keyboard.press("Control+z")  # formatting is one undoable change
    page.wait_for_function("window.gofiddle.getText().includes('fmt.Println( \"x\" )')")
    page.click(".cm-content")
    page.keyboard.press("Shift+Alt+KeyF")
    page.wait_for_function("window.gofiddle.getText().includes('\\tfmt.Println(\"x\")')")
    # a syntax error is marked instead
    set_code(page, "package main\n\nfunc main() {\n\tx :=\n}\n")
    page.click("#format")
    page.wait_for_selector(".cm-lint-marker-error")
    assert get_code(page) == "package main\n\nfunc main() {\n\tx :=\n}\n"


def test_examples_all_run(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    values = page.eval_on_selector_all("#examples option", "os => os.map(o => o.value)")
    values = [v for v in values if v]
    assert len(values) >= 9
    for value in values:
        page.select_option("#examples", value)
        assert page.input_value("#examples") == ""  # the menu resets for the next pick
        click_run(page)
        if value == "stdin":
            wait_phase(page, "run")
            page.fill("#stdin", "hi")
            page.press("#stdin", "Enter")
            page.click("#stdin-eof")
        status = wait_done(page)
        assert status == "ok", f"example {value}: {status}\n{output_text(page)}"
    # loading an example is undoable
    page.click(".cm-content")
    page.keyboard.press("Control+z")
    assert "ticker" in get_code(page).lower()


def test_vim_toggle(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, HELLO)
    page.click("#vim")
    page.wait_for_function("document.body.dataset.vim === 'on'")
    assert page.get_attribute("#vim", "aria-pressed") == "true"
    page.click(".cm-content")
    page.keyboard.press("Escape")
    page.keyboard.press("g")
    page.keyboard.press("g")
    page.keyboard.press("d")
    page.keyboard.press("d")  # vim: delete the first line
    assert not get_code(page).startswith("package main")
    page.reload()
    page.wait_for_selector(".cm-editor")
    page.wait_for_function("window.gofiddle.editor.vimOn === true")
    page.click("#vim")
    assert page.get_attribute("#vim", "aria-pressed") == "false"


def test_big_output_stays_fast(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    set_code(page, 'package main\n\nimport (\n\t"fmt"\n\t"strings"\n)\n\nfunc main() {\n'
                   '\tline := strings.Repeat("x", 40)\n'
                   '\tfor i := 0; i < 20000; i++ {\n'
                   '\t\tfmt.Printf("%05d %s\\n", i, line)\n\t}\n}\n')
    click_run(page)
    t0 = time.monotonic()
    wait_phase(page, "run")
    # the page keeps answering while about 1 MB streams in
    worst = 0.0
    while page.evaluate("document.body.dataset.phase") != "done":
        s = time.monotonic()
        page.evaluate("1")
        worst = max(worst, time.monotonic() - s)
        if time.monotonic() - t0 > 60:
            break
    assert wait_done(page) == "ok"
    assert worst < 1.0, f"page blocked for {worst:.2f} s"
    assert time.monotonic() - t0 < 30
    out = output_text(page)
    assert "19999 " in out
    assert len(out) > 900_000


def test_phone_layout_and_keyboard(server: Any, new_page: Any) -> None:
    page = new_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    open_editor(page, server.url)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for sel in ("#run", "#format", "#share", "#theme", ".cm-editor", "#output", "#stdin"):
        box = page.locator(sel).bounding_box()
        assert box is not None, sel
        assert box["x"] >= 0 and box["x"] + box["width"] <= 391, sel
    # every toolbar control is reachable with Tab and has an accessible name
    page.focus("#run")
    names = []
    for _ in range(8):
        names.append(page.evaluate(
            "(() => { const e = document.activeElement;"
            " return e.id + ':' + (e.getAttribute('aria-label') || e.textContent.trim()); })()"))
        page.keyboard.press("Tab")
    ids = [n.split(":")[0] for n in names]
    for wanted in ("run", "format", "share", "examples", "theme", "vim"):
        assert wanted in ids, names
    assert all(n.split(":", 1)[1] for n in names), names
    # focus is visible
    page.focus("#run")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def test_escape_then_tab_leaves_the_editor(server: Any, new_page: Any) -> None:
    page = new_page()
    open_editor(page, server.url)
    page.click(".cm-content")
    before = get_code(page)
    page.keyboard.press("Tab")  # Tab indents inside the editor...
    assert get_code(page) != before
    assert page.evaluate("!!document.activeElement.closest('.cm-editor')")
    page.keyboard.press("Escape")  # ...but Escape then Tab moves on
    page.keyboard.press("Tab")
    assert not page.evaluate("!!document.activeElement.closest('.cm-editor')")


def test_screenshot(server: Any, new_page: Any) -> None:
    """The README's picture: the editor after running the goroutines example."""
    page = new_page(viewport={"width": 1280, "height": 720}, color_scheme="light")
    open_editor(page, server.url)
    page.select_option("#examples", "goroutines")
    click_run(page)
    assert wait_done(page) == "ok"
    page.evaluate("""(() => {
        const view = window.gofiddle.editor.view;
        const line = view.state.doc.line(5);
        view.dispatch({ selection: { anchor: line.to } });
        view.scrollDOM.scrollTo(0, 0);
    })()""")
    page.mouse.move(0, 0)
    page.wait_for_timeout(100)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))
    assert SCREENSHOT.stat().st_size > 10_000
