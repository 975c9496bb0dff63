"""A terminal view of the debug websocket (``tracker.debug``).

``inspect`` connects to a running ``DebugServer`` and draws one table per
snapshot: every actor with its state and sub-state, mailbox depth, peak and
capacity, restarts, last error and busiest counters, plus the cloud's next
connection attempt and the last few bus events.  The table is a
``rich.table.Table``: in live mode (``out`` is a terminal) a
``rich.live.Live`` display redraws it in place on each snapshot; otherwise
each snapshot's table is printed as plain text, and ``once`` prints one
table without escape codes and returns.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from trio_websocket import ConnectionClosed, open_websocket_url

# How many counters per actor, and how many recent events, the view shows.
COUNTERS = 3
EVENTS = 8
# The widest the state column grows before it wraps, and the last-error
# column before it is cut.
STATE_WIDTH = 40
ERROR_WIDTH = 30


def _state(actor: dict[str, Any]) -> str:
    # The firmware's STATE_ and SUB_STATE_ prefixes carry no information here.
    state = str(actor.get("state", "?")).removeprefix("STATE_")
    sub = actor.get("sub_state")
    if sub is None:
        return state
    return f"{state} / {str(sub).removeprefix('SUB_STATE_')}"


def _mailbox(actor: dict[str, Any]) -> str:
    mbox = actor.get("mailbox") or {}
    depth, peak = mbox.get("depth", "?"), mbox.get("peak", "?")
    text = f"{depth}/{peak}/{mbox.get('capacity', '?')}"
    if mbox.get("overflows"):
        text += f" !{mbox['overflows']}"
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


def view(snapshot: dict[str, Any], status: str = "") -> RenderableType:
    """The rich renderable for one snapshot message (and a status line).

    Cell text is wrapped in ``Text`` so that brackets in actor data (errors,
    events) are shown as they are, never read as rich markup.
    """
    reboots = snapshot.get("reboots", [])
    parts: list[RenderableType] = [
        Text.assemble(
            ("tracker debug", "bold"),
            f"  t={snapshot.get('t', 0.0):.1f}  "
            f"boot {snapshot.get('boot', '?')}  reboots {len(reboots)}  "
            f"cloud next attempt: {_next_attempt(snapshot)}",
        )
    ]
    if reboots:
        last = reboots[-1]
        parts.append(Text(f"last reboot: {last.get('reason')} ({last.get('cause')})"))
    actors = snapshot.get("actors", ())
    if not actors:
        parts.append(Text("(no device booted)"))
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False)
    # One line per actor where the width allows: the last error is cut
    # to ERROR_WIDTH; state, error and counters wrap when the terminal is
    # narrow (name, mailbox and restarts are cut only as a last resort).
    table.add_column("ACTOR", no_wrap=True)
    table.add_column("STATE / SUB-STATE", max_width=STATE_WIDTH)
    table.add_column("MBOX d/p/cap", no_wrap=True)
    table.add_column("RST", no_wrap=True, justify="right")
    table.add_column("LAST ERROR", max_width=ERROR_WIDTH)
    table.add_column("COUNTERS", min_width=16)
    for actor in actors:
        error = Text(str(actor.get("last_error") or ""))
        error.truncate(ERROR_WIDTH, overflow="ellipsis")
        table.add_row(
            Text(str(actor.get("name", "?"))),
            Text(_state(actor)),
            Text(_mailbox(actor)),
            Text(str(actor.get("restarts", 0))),
            error,
            Text(_counters(actor)),
            style="red" if error else None,
        )
    parts.append(table)
    recent = snapshot.get("recent", [])[-EVENTS:]
    if recent:
        parts.append(Text("recent events", "bold"))
        events = Table.grid(padding=(0, 2))
        events.add_column(justify="right", no_wrap=True)
        events.add_column(overflow="ellipsis", no_wrap=True)
        for event in recent:
            events.add_row(f"{event.get('t', 0.0):.3f}", Text(str(event.get("event"))))
        parts.append(Padding(events, (0, 0, 0, 2)))
    if status:
        parts.append(Text(status.rstrip("\n")))
    return Group(*parts)


def render(snapshot: dict[str, Any], *, width: int = 120, color: bool = False) -> str:
    """The table for one snapshot message, ``width`` columns wide.

    With ``color`` off the text has no escape codes at all.
    """
    console = Console(
        file=io.StringIO(),
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        highlight=False,
        markup=False,
        emoji=False,
        legacy_windows=False,
    )
    with console.capture() as capture:
        console.print(view(snapshot))
    # Rich pads every line to the full width; the padding says nothing.
    return "".join(line.rstrip() + "\n" for line in capture.get().splitlines())


async def inspect(
    url: str, *, once: bool = False, out: TextIO | None = None
) -> dict[str, Any] | None:
    """Show the debug websocket at ``url`` until it closes.

    Returns the last snapshot received (``None`` if none came).  When ``out``
    is a terminal (and not ``once``), the table is redrawn in place with
    ``rich.live.Live``; otherwise (a pipe, a file, ``TERM=dumb``) each
    snapshot's table is printed as plain text.  With ``once``, prints the
    first snapshot's table, without escape codes, and returns.

    Raises:
      OSError, trio_websocket.HandshakeError: the server cannot be reached.
    """
    out = sys.stdout if out is None else out
    if not once and out.isatty():
        console = Console(file=out, highlight=False, markup=False, emoji=False)
        # A dumb terminal (TERM=dumb) cannot redraw in place: Live would show
        # nothing until the end, so it gets the plain printing below.
        if not console.is_dumb_terminal:
            # Redrawn by hand on each snapshot: no refresh thread under Trio.
            with Live(console=console, auto_refresh=False) as live:
                return await _follow(url, once=False, out=out, live=live)
    return await _follow(url, once=once, out=out, live=None)


async def _follow(
    url: str, *, once: bool, out: TextIO, live: Live | None
) -> dict[str, Any] | None:
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
                    if live is not None:
                        live.update(view(message, status), refresh=True)
                    else:
                        width = shutil.get_terminal_size().columns
                        out.write(render(message, width=width) + status)
                        out.flush()
                    if once:
                        return last
                case "ack":
                    status = f"ack: {message.get('cmd')}\n"
                case "error":
                    status = f"error: {message.get('message')}\n"
