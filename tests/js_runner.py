"""Running the matrix-js-sdk scripts in tests/js from pytest.

Without `node` (or the npm packages) a test skips, except in CI (`CI` set),
where it fails. `make test` installs the packages (`npm ci` in tests/js).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"
SCRIPT_TIMEOUT = 120


def node_or_skip(package: str = "matrix-js-sdk") -> str:
    """The node binary, once `package` is installed under tests/js/node_modules."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed (needed for the matrix-js-sdk tests)"
    elif not (JS_DIR / "node_modules" / package).is_dir():
        problem = "tests/js/node_modules is missing: run `make test` or `npm ci` in tests/js"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    assert node is not None
    return node


def run_script(node: str, script: str, *args: str) -> dict[str, Any]:
    """Run a script; return the JSON of its last `RESULT {...}` line (it must exit 0)."""
    try:
        proc = subprocess.run(
            [node, str(JS_DIR / script), *args],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} timed out after {SCRIPT_TIMEOUT} s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0 and lines, detail
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result
