"""Browser tests' shared harness: Debian's Chromium driven by playwright-core from Node.

- `ensure_chromium()` installs Debian's `chromium` and the emoji font
  `fonts-noto-color-emoji` with apt-get when missing (CI has none; it runs as root, as
  for coturn in tests/coturn.py).
- `browser_node()` is the node binary once tests/browser/node_modules is installed
  (`make unit` runs `npm ci` there from the committed lock file).
- `run_browser_script(script, *args)` runs a script of tests/browser/ (each one uses
  tests/browser/harness.mjs: the launch flags of REAL-PARTS.md, a static file server,
  esbuild) and returns the JSON of its `RESULT {...}` line.
- `run_asking_browser_script(script, *args, answer=...)` is the same for a script that
  needs something from the test mid-way (a mail the test's SMTP sink received): each stdout
  line `ASK <question>` gets one line on the script's stdin, `answer(question)`.
- `loopback_only_network()` moves the test's thread into a new network namespace that has nothing but `lo`; every process the test starts
  from then on (the homeserver, coturn, Node and Chromium) lives there, so WebRTC can only
  ever use loopback addresses, whatever interfaces the machine has. It needs root.

The smallest use, a template for page tests: tests/browser/smoke.mjs, run by
tests/test_browser_harness.py.

Without Chromium, node or the npm packages a test skips, except in CI (`CI` set), where it
fails.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = "/usr/bin/chromium"
# Emoji (reactions, in the docs' screenshots) render as empty boxes without a colour font.
EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
SCRIPT_TIMEOUT = 120

_apt_updated = False


def _missing(problem: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


def _apt_install(package: str) -> None:
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
        _apt_updated = True
    subprocess.run(
        [
            "apt-get",
            "-o",
            "DPkg::Lock::Timeout=600",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            package,
        ],
        capture_output=True,
        timeout=900,
        check=False,
        env=env,
    )


def ensure_chromium() -> str:
    """/usr/bin/chromium, installed from Debian when missing and possible."""
    can_install = os.geteuid() == 0 and shutil.which("apt-get")
    if not os.path.exists(CHROMIUM) and can_install:
        _apt_install("chromium")
    if not os.path.exists(EMOJI_FONT) and can_install:
        _apt_install("fonts-noto-color-emoji")
    if not os.path.exists(CHROMIUM):
        _missing("Chromium (Debian package chromium) is not installed and could not be")
    return CHROMIUM


def browser_node() -> str:
    """The node binary, once playwright-core and esbuild are in tests/browser/node_modules."""
    node = shutil.which("node")
    if node is None:
        _missing("node is not installed (needed for the browser tests)")
    assert node is not None
    for package in ("playwright-core", "esbuild"):
        if not (BROWSER_DIR / "node_modules" / package).is_dir():
            _missing("tests/browser/node_modules is missing: run `make unit` or `npm ci` in tests/browser")
    return node


def run_browser_script(script: str, *args: str, timeout: float = SCRIPT_TIMEOUT) -> dict[str, Any]:
    """Run a script of tests/browser/ with Chromium; the JSON of its last `RESULT {...}` line
    (it must exit 0)."""
    chromium = ensure_chromium()
    node = browser_node()
    try:
        proc = subprocess.run(
            [node, str(BROWSER_DIR / script), *args],
            cwd=BROWSER_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HS_CHROMIUM": chromium},
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{script} timed out after {timeout} s\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    detail = f"exit {proc.returncode}\nstdout:\n{proc.stdout[-5000:]}\nstderr:\n{proc.stderr[-8000:]}"
    assert proc.returncode == 0 and lines, detail
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def run_asking_browser_script(
    script: str, *args: str, answer: Callable[[str], str], timeout: float = SCRIPT_TIMEOUT
) -> dict[str, Any]:
    """`run_browser_script` for a script that asks: each stdout line `ASK <question>` is
    answered with one line on its stdin, `answer(question)` (which must not contain a newline)."""
    chromium = ensure_chromium()
    node = browser_node()
    proc = subprocess.Popen(
        [node, str(BROWSER_DIR / script), *args],
        cwd=BROWSER_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HS_CHROMIUM": chromium},
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    # Kills a script that hangs; reading its stdout then ends.
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    stdout: list[str] = []
    try:
        for line in proc.stdout:
            stdout.append(line)
            if line.startswith("ASK "):
                proc.stdin.write(answer(line[len("ASK ") :].strip()) + "\n")
                proc.stdin.flush()
        proc.wait()
    finally:
        timed_out = not watchdog.is_alive() and proc.returncode not in (0, 1)
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
    out, err = "".join(stdout), "".join(stderr)
    detail = f"exit {proc.returncode}\nstdout:\n{out[-5000:]}\nstderr:\n{err[-8000:]}"
    if timed_out:
        pytest.fail(f"{script} timed out after {timeout} s\n{detail}")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, detail
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


# A loopback-only network namespace for the calling thread -----------------------------------

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


@contextmanager
def loopback_only_network() -> Iterator[None]:
    """Run the block in a fresh network namespace holding only `lo` (up).

    Namespaces belong to threads: this thread, and every process it starts meanwhile, is in
    the new one; other threads keep the machine's network. On leaving, the thread goes back;
    the namespace goes away with the last process in it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(_CLONE_NEWNET) != 0:
            error = os.strerror(ctypes.get_errno())
            _missing(f"cannot make a network namespace ({error}): the browser call tests need root")
        try:
            _bring_loopback_up()
            yield
        finally:
            if libc.setns(original, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "could not return to the original network namespace")
    finally:
        os.close(original)


# The web client (web/) ---------------------------------------------------------------------

WEB_DIR = BROWSER_DIR.parent.parent / "web"


def _newest_source_mtime() -> float:
    sources = [WEB_DIR / name for name in ("index.html", "build.mjs", "package-lock.json", "tsconfig.json")]
    sources += [p for p in (WEB_DIR / "src").rglob("*") if p.is_file()]
    sources += [p for p in (WEB_DIR / "public").rglob("*") if p.is_file()]
    return max(p.stat().st_mtime for p in sources)


def built_web_client() -> Path:
    """web/dist, built with web/build.mjs first when missing or older than its sources (as
    `make web` does); needs web/node_modules (`make unit` runs `npm ci` there)."""
    node = browser_node()
    if not (WEB_DIR / "node_modules" / "matrix-js-sdk").is_dir():
        _missing("web/node_modules is missing: run `make unit` or `npm ci` in web")
    index = WEB_DIR / "dist" / "index.html"
    if not index.is_file() or index.stat().st_mtime < _newest_source_mtime():
        proc = subprocess.run([node, "build.mjs"], cwd=WEB_DIR, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"web/build.mjs failed:\n{proc.stdout}\n{proc.stderr}"
    return WEB_DIR / "dist"


def validated(pair: dict[str, Any]) -> bool:
    """The selected pair passed its connectivity checks. Chromium reports it "in-progress"
    again while a consent check is out, so that state counts once a check was answered."""
    return pair["state"] == "succeeded" or (pair["state"] == "in-progress" and pair["responsesReceived"] > 0)
