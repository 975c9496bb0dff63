"""A terminal view of the debug websocket (``tracker.debug``).

``inspect`` connects to a running ``DebugServer`` and draws one table per
snapshot: every actor with its state and sub-state, mailbox depth, peak and
capacity, restarts, last error and busiest counters, plus the cloud's next
connection attempt and the last few bus events.  In live mode each snapshot
clears the screen (plain ANSI) and redraws; ``once`` prints one table
without escape codes and returns.

Plain ANSI and ``shutil.get_terminal_size`` only, so the view adds no
dependency.
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import Any, TextIO

from trio_websocket import ConnectionClosed, open_websocket_url

# Clear the screen and move the cursor home.
CLEAR = "\x1b[2J\x1b[H"
BOLD = "\x1b[1m"
RED = "\x1b[31m"
RESET = "\x1b[0m"
# How many counters per actor, and how many recent events, the view shows.
COUNTERS = 3
EVENTS = 8
# Column headers; every column but the last is as wide as its widest cell
# (up to its cap), and the last takes what is left of the terminal.
COLUMNS = (
    "ACTOR", "STATE / SUB-STATE", "MBOX d/p/cap", "RST", "LAST ERROR", "COUNTERS"
)
CAPS = (12, 40, 16, 4, 30, 0)
# The last column is never narrower than this.
MIN_LAST = 16


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text.ljust(width)
    return text[: max(width - 1, 0)] + "…"


def _state(actor: dict[str, Any]) -> str:
    # The firmware's STATE_ and SUB_STATE_ prefixes carry no information here.
    state = str(actor.get("state", "?")).removeprefix("STATE_")
    sub = actor.get("sub_state")
    if sub is None:
        return state
    return f"{state} / {str(sub).removeprefix('SUB_STATE_')}"


def _mailbox(actor: dict[str, Any]) -> str:
    box = actor.get("mailbox") or {}
    text = f"{box.get('depth', '?')}/{box.get('peak', '?')}/{box.get('capacity', '?')}"
    if box.get("overflows"):
        text += f" !{box['overflows']}"
    return text


def _counters(actor: dict[str, Any]) -> str:
    counters = actor.get("counters") or {}
    busiest = sorted(counters.items(), key=lambda kv: (-kv[1], kv[0]))[:COUNTERS]
    return " ".join(f"{name}={count}" for name, count in busiest)


def _next_attempt(snapshot: dict[str, Any]) -> str:
    for actor in snapshot.get("actors", ()):
        if actor.get("name") == "cloud":
            at = (actor.get("extra") or {}).get("next_attempt_at")
            if at is None:
                return "none scheduled"
            return f"in {at - snapshot.get('t', 0.0):.1f} s"
    return "no cloud actor"


def render(snapshot: dict[str, Any], *, width: int = 120, color: bool = False) -> str:
    """The table for one snapshot message, ``width`` columns wide."""
    bold, red, reset = (BOLD, RED, RESET) if color else ("", "", "")
    rows = [
        [
            str(actor.get("name", "?")),
            _state(actor),
            _mailbox(actor),
            str(actor.get("restarts", 0)),
            str(actor.get("last_error") or ""),
            _counters(actor),
        ]
        for actor in snapshot.get("actors", ())
    ]
    widths = [
        min(cap, max([len(header), *(len(row[i]) for row in rows)]))
        for i, (header, cap) in enumerate(zip(COLUMNS[:-1], CAPS))
    ]
    widths.append(max(MIN_LAST, width - sum(widths) - 2 * len(widths)))
    reboots = snapshot.get("reboots", [])
    lines = [
        f"{bold}tracker debug{reset}  t={snapshot.get('t', 0.0):.1f}  "
        f"boot {snapshot.get('boot', '?')}  reboots {len(reboots)}  "
        f"cloud next attempt: {_next_attempt(snapshot)}",
    ]
    if reboots:
        last = reboots[-1]
        lines.append(f"last reboot: {last.get('reason')} ({last.get('cause')})")
    if not rows:
        lines.append("(no device booted)")
    header = "  ".join(_fit(h, w) for h, w in zip(COLUMNS, widths)).rstrip()
    lines.append(bold + header + reset)
    for row in rows:
        text = "  ".join(_fit(c, w) for c, w in zip(row, widths)).rstrip()
        lines.append(f"{red}{text}{reset}" if row[4] else text)
    recent = snapshot.get("recent", [])[-EVENTS:]
    if recent:
        lines.append(f"{bold}recent events{reset}")
        for event in recent:
            lines.append(
                _fit(f"  {event.get('t', 0.0):10.3f}  {event.get('event')}", width)
                .rstrip()
            )
    return "\n".join(lines) + "\n"


async def inspect(
    url: str, *, once: bool = False, out: TextIO | None = None
) -> dict[str, Any] | None:
    """Show the debug websocket at ``url`` until it closes.

    Returns the last snapshot received (``None`` if none came).  With
    ``once``, prints the first snapshot's table, without escape codes, and
    returns.

    Raises:
      OSError, trio_websocket.HandshakeError: the server cannot be reached.
    """
    out = sys.stdout if out is None else out
    live = not once and out.isatty()
    last: dict[str, Any] | None = None
    status = ""
    async with open_websocket_url(url) as ws:
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed:
                return last
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            match message.get("type"):
                case "snapshot":
                    last = message
                    width = shutil.get_terminal_size().columns
                    table = render(message, width=width, color=live)
                    out.write((CLEAR if live else "") + table + status)
                    out.flush()
                    if once:
                        return last
                case "ack":
                    status = f"ack: {message.get('cmd')}\n"
                case "error":
                    status = f"error: {message.get('message')}\n"
