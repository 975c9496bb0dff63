"""What every asyncio library we run under trio-asyncio needs from us.

gmqtt, aiocoap and amqtt are asyncio code; each session of theirs runs in
its own ``trio_asyncio.open_loop()``.  Two things are the same for all of
them:

* Crossing into asyncio happens once per operation, through
  ``aio_as_trio(helper)(args)``: the helper's synchronous set-up then runs
  inside an asyncio task (``run_aio``).  ``trio_asyncio`` patches asyncio
  when it is imported, so it is imported here only when a session runs.
* trio-asyncio's default exception handler re-raises what a library
  reports through ``loop.call_exception_handler`` (a failed callback, a
  peer's bad handshake) into the loop's nursery, which would take the whole
  session down for one bad packet.  ``asyncio_error_logger`` builds a
  handler that logs instead, as plain asyncio would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]


async def run_aio(loop: Any, helper: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """Run one asyncio-flavoured helper in ``loop``, from Trio."""
    from trio_asyncio import aio_as_trio  # type: ignore[import-untyped]

    return await aio_as_trio(helper, loop=loop)(*args)


def asyncio_error_logger(
    prefix: str,
    *,
    actor: str,
    level: str = "error",
    quiet: tuple[type[BaseException], ...] = (),
) -> ExceptionHandler:
    """A loop exception handler that logs ``<prefix>_asyncio_error``.

    Cancellations (the loop's shutdown cancelling a library's futures) are
    logged at debug as ``<prefix>_asyncio_cancelled``; exceptions of the
    ``quiet`` types (a peer's failure, not ours) at info as
    ``<prefix>_peer_error``.
    """
    log = structlog.get_logger(actor=actor)

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = context.get("message")
        if isinstance(exc, asyncio.CancelledError):
            log.debug(f"{prefix}_asyncio_cancelled", message=message)
        elif quiet and isinstance(exc, quiet):
            log.info(f"{prefix}_peer_error", error=str(exc))
        else:
            log.log(
                _LEVELS[level],
                f"{prefix}_asyncio_error",
                message=message,
                exc_info=exc if isinstance(exc, BaseException) else None,
            )

    return handle


_LEVELS = {"warning": 30, "error": 40}
