"""Running the matrix-js-sdk scripts in tests/js (and tests/js-legacy) from pytest.

Without `node` (or the npm packages) a test skips, except in CI (`CI` set),
where it fails. `make test` installs the packages (`npm ci` in each directory).
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
# matrix-js-sdk 26 with libolm: the library of Element Web 1.11 (tests/test_legacy_client.py).
LEGACY_JS_DIR = Path(__file__).resolve().parent / "js-legacy"
SCRIPT_TIMEOUT = 120


def node_or_skip(package: str = "matrix-js-sdk", js_dir: Path = JS_DIR) -> str:
    """The node binary, once `package` is installed under `js_dir`/node_modules."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed (needed for the matrix-js-sdk tests)"
    elif not (js_dir / "node_modules" / package).is_dir():
        where = f"tests/{js_dir.name}"
        problem = f"{where}/node_modules is missing: run `make test` or `npm ci` in {where}"
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)
    assert node is not None
    return node


def run_script(node: str, script: str, *args: str, js_dir: Path = JS_DIR) -> dict[str, Any]:
    """Run a script; return the JSON of its last `RESULT {...}` line (it must exit 0)."""
    try:
        proc = subprocess.run(
            [node, str(js_dir / script), *args],
            cwd=js_dir,
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
