"""Logging set-up: structlog, with Trio's clock in every line.

Every line carries two clocks. ``timestamp`` is the wall clock (ISO 8601,
UTC); ``t`` is `trio.current_time`, rounded to milliseconds, present only
when the line is logged inside a Trio run. Under the ``autojump_clock``
fixture ``t`` is the exact virtual time, so a test can assert that the
second connection attempt was logged at ``t == 32.0``.

Actors log through `get_logger`, which binds the actor's name; context
bound with `structlog.contextvars` (a connection attempt, a message id) is
merged into every line, and Trio copies it into the tasks an actor spawns.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Final, TextIO, cast

import structlog
import trio

if TYPE_CHECKING:
    from structlog.typing import (
        EventDict,
        FilteringBoundLogger,
        Processor,
        WrappedLogger,
    )


__all__ = ["LEVELS", "add_trio_time", "configure_logging", "get_logger"]

#: The accepted level names, mapped to the `logging` numbers structlog uses.
LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FORMATS: Final = ("auto", "json", "console")


def add_trio_time(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> EventDict:
    """Add ``t``, the Trio clock in seconds, when called inside a Trio run.

    Outside Trio (start-up, tests without a run) the key is left out.
    """
    try:
        now = trio.current_time()
    except RuntimeError:  # not inside trio.run()
        return event_dict
    event_dict["t"] = round(now, 3)
    return event_dict


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _LibraryLogBridge(logging.Handler):
    """Hands the standard library's log records (aiocoap, amqtt, asyncio)
    to structlog, so that they come out in the same format and stream as
    ours instead of as bare lines from logging's last-resort handler."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a library's bad format string: keep the raw text
            message = str(record.msg)
        logger = structlog.get_logger(actor=record.name.split(".")[0])
        details: dict[str, Any] = {"logger": record.name, "message": message}
        if record.exc_info:
            details["exc_info"] = record.exc_info
        logger.log(record.levelno, "library_log", **details)


def configure_logging(
    level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process.

    It can be called again (tests do); loggers from `get_logger` follow the
    newest configuration because nothing is cached.

    Args:
        level: The lowest level written: "debug", "info", "warning" or
            "error".
        fmt: "json" for one JSON object per line, "console" for people, or
            "auto": console when ``stream`` is a terminal, JSON otherwise.
        stream: Where lines are written; standard error by default.

    Raises:
        ValueError: ``level`` or ``fmt`` is not one of the names above.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}, expected one of {list(LEVELS)}")
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}, expected one of {_FORMATS}")
    output = sys.stderr if stream is None else stream

    tty = _is_tty(output)
    # ConsoleRenderer formats exceptions itself (and warns when they arrive
    # preformatted), so format_exc_info only precedes the JSON renderer.
    if fmt == "console" or (fmt == "auto" and tty):
        tail: list[Processor] = [
            structlog.dev.ConsoleRenderer(
                colors=tty, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    else:
        tail = [
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_trio_time,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            *tail,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(output),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: their warnings and errors
    # join our lines (their INFO chatter stays out unless level is debug).
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _LibraryLogBridge)]:
        root.removeHandler(handler)
    root.addHandler(_LibraryLogBridge())
    root.setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def get_logger(actor: str) -> FilteringBoundLogger:
    """Return a logger whose every line carries ``actor=<actor>``.

    The logger is a lazy proxy: it reads structlog's configuration on each
    call, so one created at import time still obeys a later
    `configure_logging` or `structlog.testing.capture_logs`.
    """
    return cast("FilteringBoundLogger", structlog.get_logger(actor=actor))
