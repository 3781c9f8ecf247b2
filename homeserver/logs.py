"""Logging set-up: one line per event to stdout, with secrets scrubbed.

Tokens never belong in a log line; as a second line of defence, anything shaped
like a JWT, a refresh token or a bearer credential is masked before writing.
"""

from __future__ import annotations

import re
import sys
import time
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)

from homeserver.errors import ServiceUnavailable, StorageFull

_SECRET_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*"),  # JWTs
    re.compile(r"hsr_[A-Za-z0-9_\-]+"),  # refresh tokens
    re.compile(r"(?i)(bearer\s+)\S+"),
    re.compile(
        r"(?i)((?:access_token|refresh_token|password|client_secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
    ),
]


def scrub(text: str) -> str:
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "<redacted>", text)
    return text


class ScrubbingObserver:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.get("log_time", time.time())))
        namespace = event.get("log_namespace", "-")
        line = f"{stamp} {level.name.upper() if level else 'INFO'} {namespace}: {scrub(text)}\n"
        self.out.write(line)
        self.out.flush()


def setup_logging(level: str = "INFO", out: IO[str] | None = None) -> None:
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(level.lower()))
    observer = FilteringLogObserver(ScrubbingObserver(out or sys.stdout), [predicate])  # type: ignore[arg-type,list-item]
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)  # type: ignore[list-item]


def log_failure(logger: Logger, format: str, **kwargs: Any) -> None:
    """Log the exception being handled, from an `except` block of code that retries it.

    A database outage (`ServiceUnavailable`: DatabaseUnavailable, CommitOutcomeUnknown) or a
    full disk (`StorageFull`, logged once by homeserver/disk_full.py) is logged as one warning
    line: every consumer and job retries it, and a traceback per retry would bury the log
    while it lasts. Anything else keeps its traceback.
    """
    error = sys.exc_info()[1]
    if isinstance(error, ServiceUnavailable | StorageFull):
        logger.warn(format + ": {outage}", outage=str(error), **kwargs)
    else:
        logger.failure(format, **kwargs)
