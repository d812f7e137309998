"""The command line: startup errors are one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys


def test_missing_bwrap_is_a_clear_startup_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gofiddle", "serve", "--port", "1",
                        "--bwrap-path", "/nonexistent/bwrap", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "apt-get install bubblewrap" in r.stderr and "Traceback" not in r.stderr


def test_sandbox_none_refuses_public_address(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gofiddle", "serve", "--sandbox", "none",
                        "--host", "0.0.0.0", "--port", "1", "--data-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "refusing" in r.stderr and "SANDBOX DISABLED" in r.stderr
