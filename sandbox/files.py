"""A minimal HTTP(S) file server on Trio, standing in for the FOTA bucket.

``GET /<name>`` serves ``directory/<name>`` with ``Content-Length``; a single
open range ``Range: bytes=N-`` gets ``206 Partial Content`` with a
``Content-Range``.  Anything else is 404 (missing file), 416 (range past the
end) or 405 (other methods).  One request per connection
(``Connection: close``), which keeps the h11 state machine trivial.

Test hooks, per served name:

* ``truncate_to[name] = N``: serve the file as if it had only N bytes (a
  complete, well-formed but short response);
* ``cuts[name] = [N, …]``: each request of ``name`` pops the first value
  and closes the connection after N body bytes, although the headers
  announced the full length (a broken download);
* ``stalls[name] = [N, …]``: likewise, but after N body bytes the
  connection stays open and silent until the server stops; ``stalled`` is
  set then (a download hanging while the device loses its connection).

``requests`` records ``(target, range header or None)`` per request.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

import attrs
import h11
import structlog
import trio

log = structlog.get_logger(actor="files")

CHUNK: Final = 16 * 1024
HANDSHAKE_TIMEOUT: Final = 10.0


class _BadRequest(Exception):
    pass


@attrs.define(eq=False)
class FileServer:
    """Serves ``directory`` over HTTP, or HTTPS with ``ssl_context``."""

    directory: Path
    ssl_context: ssl.SSLContext | None = None
    host: str = "127.0.0.1"
    truncate_to: dict[str, int] = attrs.field(factory=dict)
    cuts: dict[str, list[int]] = attrs.field(factory=dict)
    stalls: dict[str, list[int]] = attrs.field(factory=dict)
    stalled: trio.Event = attrs.field(factory=trio.Event)
    requests: list[tuple[str, str | None]] = attrs.field(factory=list)
    port: int | None = attrs.field(default=None, init=False)

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_context is None else "https"

    def url(self, name: str) -> str:
        """The URL of ``name`` (the server must be running)."""
        return f"{self.scheme}://{self.host}:{self.port}/{name}"

    async def run(
        self,
        *,
        port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled.

        ``task_status.started`` gets the bound port (also in ``self.port``).

        Cancellation: closes the listener and every open connection.

        Logging: ``files_served`` at DEBUG per request; ``files_request_failed``
        at DEBUG when a client misbehaves or goes away.
        """
        listeners = await trio.open_tcp_listeners(port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        transport: trio.abc.Stream = stream
        try:
            if self.ssl_context is not None:
                tls = trio.SSLStream(stream, self.ssl_context, server_side=True)
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    await tls.do_handshake()
                transport = tls
            await self._serve_one(transport)
        except (
            trio.BrokenResourceError,
            trio.TooSlowError,
            h11.ProtocolError,
            _BadRequest,
        ) as exc:
            log.debug("files_request_failed", error=repr(exc))
        finally:
            await trio.aclose_forcefully(transport)

    async def _serve_one(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        request = await self._read_request(conn, stream)
        target = request.target.decode("ascii", "replace")
        headers = {k.lower(): v for k, v in request.headers}
        range_header = headers.get(b"range")
        range_text = None if range_header is None else range_header.decode("latin-1")
        self.requests.append((target, range_text))
        name = target.lstrip("/")

        if request.method not in (b"GET", b"HEAD"):
            await self._simple(conn, stream, 405)
            return
        path = self.directory / name
        if "/" in name or name.startswith(".") or not name or not path.is_file():
            await self._simple(conn, stream, 404)
            return
        data = path.read_bytes()
        if name in self.truncate_to:
            data = data[: self.truncate_to[name]]
        start = 0
        status = 200
        extra: list[tuple[str, str]] = []
        if range_text is not None:
            start = _parse_range(range_text)
            if start >= len(data):
                await self._simple(
                    conn, stream, 416, [("Content-Range", f"bytes */{len(data)}")]
                )
                return
            status = 206
            content_range = f"bytes {start}-{len(data) - 1}/{len(data)}"
            extra.append(("Content-Range", content_range))
        body = data[start:]

        await self._send(
            conn,
            stream,
            h11.Response(
                status_code=status,
                headers=[
                    ("Content-Length", str(len(body))),
                    ("Content-Type", "application/octet-stream"),
                    ("Accept-Ranges", "bytes"),
                    ("Connection", "close"),
                    *extra,
                ],
            ),
        )
        log.debug("files_served", target=target, status=status, start=start)
        if request.method == b"HEAD":
            await self._send(conn, stream, h11.EndOfMessage())
            return
        cut = self.cuts.get(name)
        limit = cut.pop(0) if cut else None
        stall = self.stalls.get(name)
        stall_at = stall.pop(0) if stall else None
        if stall_at is not None:
            await stream.send_all(conn.send(h11.Data(data=body[:stall_at])) or b"")
            self.stalled.set()
            await trio.sleep_forever()
        if limit is not None:
            # Announced the full length, sends less: the client sees a
            # connection closed mid-body.
            body = body[:limit]
        for offset in range(0, len(body), CHUNK):
            chunk = body[offset : offset + CHUNK]
            await self._send(conn, stream, h11.Data(data=chunk))
        if limit is None:
            await self._send(conn, stream, h11.EndOfMessage())

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> h11.Request:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(CHUNK))
                continue
            if isinstance(event, h11.Request):
                return event
            raise _BadRequest(f"unexpected {event!r}")

    async def _send(
        self, conn: h11.Connection, stream: trio.abc.Stream, event: h11.Event
    ) -> None:
        data = conn.send(event)
        if data:
            await stream.send_all(data)

    async def _simple(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        status: int,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        await self._send(
            conn,
            stream,
            h11.Response(
                status_code=status,
                headers=[
                    ("Content-Length", "0"),
                    ("Connection", "close"),
                    *(headers or []),
                ],
            ),
        )
        await self._send(conn, stream, h11.EndOfMessage())


def _parse_range(text: str) -> int:
    unit, _, spec = text.partition("=")
    first, dash, last = spec.partition("-")
    valid = unit.strip() == "bytes" and dash and not last.strip()
    if not valid or not first.strip().isdigit():
        raise _BadRequest(f"unsupported range {text!r}")
    return int(first)
