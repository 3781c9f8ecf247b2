"""py-spy around a workload's load phase, and a short text summary of where the time went."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


def py_spy_binary() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


# Where a thread of ours waits: a sample whose deepest frame is one of these is the thread idle
# (in epoll_wait, or a worker thread on its queue), not time spent. py-spy's own idle check
# does not hold here: it reads the thread's state while it has the process stopped.
WAITS = ("LeanEPollReactor.doPoll (homeserver/reactor.py)", "WorkerThreads._work (homeserver/threads.py)")


class PySpy:
    """`py-spy record` on a pid until stop(); writes collapsed stacks to `output`.

    Blocking (py-spy stops the process for each sample): `--nonblocking` read the stacks
    while the process ran and put 68 % of the reactor's samples in `doPoll` itself, where
    `perf` on the same load found 80 % of its CPU in the interpreter (W2, 2026-12-07).
    The pauses slow the profiled run, which is why it is a run of its own."""

    def __init__(self, pid: int, output: Path, rate: int = 100) -> None:
        binary = py_spy_binary()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install -r bench/requirements.txt)")
        self.output = output
        self.rate = rate
        output.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
            + ["--threads", "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`, shortened to the project-relative path."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})"


def summarize(path: Path, top: int = 15) -> str:
    """Self and inclusive sample counts per function, as markdown."""
    if not path.exists():
        return f"(no profile at {path})"
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else ""
        if thread:
            frames = frames[1:]
        names = [_frame_name(f) for f in frames if f]
        if not names:
            continue
        if names[-1] in WAITS:
            waiting += count
            continue
        total += count
        by_thread[thread or "?"] += count
        self_counts[names[-1]] += count
        for name in set(names):
            inclusive[name] += count
    if not total:
        return "(empty profile)"

    def table(counter: Counter[str], title: str, keep: object = None) -> list[str]:
        rows = [f"| {title} | share of samples |", "|---|---|"]
        n = 0
        for name, count in counter.most_common():
            if keep is not None and not keep(name):  # type: ignore[operator]
                continue
            rows.append(f"| `{name}` | {100 * count / total:.1f} % |")
            n += 1
            if n >= top:
                break
        return rows

    lines = [
        f"{total} samples while busy (py-spy, 100 Hz; {waiting} samples of threads waiting in"
        " epoll or on their queue left out)",
        "",
    ]
    if len(by_thread) > 1:
        lines.append(
            "Threads: "
            + ", ".join(
                f"{t.split(' ')[0]} {t.split(' ')[1] if ' ' in t else ''} {100 * c / total:.0f} %"
                for t, c in by_thread.most_common(4)
            )
        )
        lines.append("")
    lines += table(self_counts, "self time (function)")
    lines.append("")
    lines += table(
        inclusive,
        "inclusive time (our code)",
        lambda name: "homeserver/" in name,
    )
    return "\n".join(lines)
