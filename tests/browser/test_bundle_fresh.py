"""The committed bundle in static/ must be exactly what `npm run build` makes from frontend/.

Rebuild with:  cd frontend && npm ci && npm run build
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRONTEND = ROOT / "frontend"
STATIC = ROOT / "static"
IN_CI = bool(os.environ.get("CI"))


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is required in CI to check the bundle")
        pytest.skip(f"{tool} not installed")
    return path


def _installed_matches_lock() -> bool:
    """node_modules holds exactly the versions package-lock.json names."""
    lock = json.loads((FRONTEND / "package-lock.json").read_text())
    for path, meta in lock.get("packages", {}).items():
        if not path or meta.get("optional"):  # other platforms' esbuild binaries
            continue
        pkg = FRONTEND / path / "package.json"
        if not pkg.is_file():
            return False
        if json.loads(pkg.read_text()).get("version") != meta.get("version"):
            return False
    return True


@pytest.fixture(scope="module")
def node_modules() -> None:
    _need("node")
    npm = _need("npm")
    if (FRONTEND / "node_modules").is_dir() and _installed_matches_lock():
        return
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=FRONTEND, check=True,
                   timeout=600)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_static_bundle_is_fresh(node_modules: None, tmp_path: Path) -> None:
    out = tmp_path / "static"
    subprocess.run([shutil.which("node") or "node", "build.mjs", "--outdir", str(out)],
                   cwd=FRONTEND, check=True, timeout=300, capture_output=True)
    built = _files(out)
    committed = _files(STATIC)
    assert "app.js" in built and "app.css" in built
    missing = sorted(set(built) - set(committed))
    extra = sorted(set(committed) - set(built))
    changed = sorted(n for n in set(built) & set(committed) if built[n] != committed[n])
    assert not (missing or extra or changed), (
        "static/ is stale; run `cd frontend && npm ci && npm run build`\n"
        f"missing: {missing}\nextra: {extra}\nchanged: {changed}")


def test_build_is_deterministic(node_modules: None, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        subprocess.run(["node", "build.mjs", "--outdir", str(out)], cwd=FRONTEND, check=True,
                       timeout=300, capture_output=True)
        outs.append(_files(out))
    assert outs[0] == outs[1]


def test_bundle_makes_no_external_requests() -> None:
    """No CDN, no web fonts: nothing in the bundle or the templates loads from off-site."""
    for p in sorted(STATIC.rglob("*.js")):
        text = p.read_text(errors="replace")
        for host in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr", "unpkg.com", "cdnjs"):
            assert host not in text, (p, host)
    styles = [p.read_text() for p in STATIC.rglob("*.css")]
    pages = [p.read_text() for p in (ROOT / "backend" / "gofiddle" / "templates").glob("*.html")]
    for text in styles:
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", text)
        assert "@import" not in text
    for text in pages:
        assert not re.search(r"(src|href)=[\"'](https?:)?//", text)


def test_frontend_unit_tests(node_modules: None) -> None:
    """The DOM-free modules (txtar mapping, status text, reconnect) under node --test."""
    files = sorted(str(p) for p in (FRONTEND / "test").glob("*.test.mjs"))
    assert files
    proc = subprocess.run(["node", "--test", *files], cwd=FRONTEND, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
