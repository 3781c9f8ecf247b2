"""The bench's profile summary counts what the server's threads spent, not their waits."""

from __future__ import annotations

from pathlib import Path

from bench.profiling import summarize

REACTOR = (
    "thread (1): MainThread;main (homeserver/cli.py:1);LeanEPollReactor.doPoll (homeserver/reactor.py:32)"
)
WORKER = "thread (2): postgres-0;Thread.run (threading.py:982);WorkerThreads._work (homeserver/threads.py:96)"


def test_samples_of_threads_waiting_are_left_out(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        f"{REACTOR} 70\n"  # the reactor in epoll_wait: idle
        f"{WORKER} 900\n"  # a database thread on its queue: idle
        f"{REACTOR};SyncService._compute (homeserver/core/sync.py:10) 20\n"
        f"{REACTOR};write_now (homeserver/api/http_server.py:186) 10\n"
    )
    summary = summarize(raw)
    assert summary.startswith("30 samples while busy")
    assert "970 samples of threads waiting" in summary
    assert "| `SyncService._compute (homeserver/core/sync.py)` | 66.7 % |" in summary
    assert "| `write_now (homeserver/api/http_server.py)` | 33.3 % |" in summary
    assert "`LeanEPollReactor.doPoll (homeserver/reactor.py)` | 100.0 %" in summary  # inclusive only
