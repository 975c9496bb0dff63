"""Real CoAP peers for the CoAP transport's integration tests.

``LibcoapServer`` runs libcoap's ``coap-server-openssl`` (Debian
``libcoap3-bin``) on 127.0.0.1: plain CoAP on ``port`` and CoAP over DTLS
with a PSK on ``port + 1`` (libcoap's rule), with dynamic resources (``-d``:
a PUT creates one) and a verbose log that names the PSK identity each
handshake used.  ``run_coap_client`` runs ``coap-client-openssl`` once, for
example against our own session's port.

libcoap's tools cannot originate requests over a DTLS session that a client
opened, nor observe from a test's schedule, so ``AiocoapPeer`` is a second
aiocoap endpoint in its own trio-asyncio loop: a plain CoAP peer that
observes, or a DTLS-PSK server (aiocoap's ``tinydtls_server``) that sends
requests back to a client over the session that client opened.

The fixture ``coap_server`` is defined here for ``tests/conftest.py`` to
register; a test module can wrap ``running_libcoap_server`` in its own.  A
missing binary fails the test with the Debian package's name: these tests
must not silently skip.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio

START_TIMEOUT: Final = 10.0
"""Seconds coap-server-openssl may take to answer its first ping."""

CLIENT_TIMEOUT: Final = 10
"""Seconds coap-client-openssl waits for a response (its ``-B``)."""

_POLL_INTERVAL: Final = 0.05

_PORT_RANGE: Final = (20000, 60000)
"""Where to look for two consecutive free ports."""

TEST_PSK: Final = b"secretPSK-012345"
"""The key the test server and the right-key clients use (16 bytes, the
firmware's key length and tinydtls' maximum)."""

TEST_IDENTITY: Final = b"urn:imei:350000000000001"
"""A PSK identity shaped like the firmware's LwM2M endpoint name."""


def find_libcoap(name: str) -> str:
    """Return the path of a libcoap tool, or fail the test."""
    found = shutil.which(name)
    if found is None and os.access(f"/usr/bin/{name}", os.X_OK):
        found = f"/usr/bin/{name}"
    if found is None:
        pytest.fail(
            f"{name} is not installed: the CoAP integration tests need it in "
            "PATH or /usr/bin (Debian: apt-get install -y libcoap3-bin)",
            pytrace=False,
        )
    return found


def _free(port: int) -> bool:
    """Whether ``port`` binds for UDP and TCP on 127.0.0.1 (libcoap takes
    both)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_pair() -> int:
    """A port whose successor is free too, for UDP and TCP on 127.0.0.1."""
    for _ in range(200):
        port = _PORT_RANGE[0] + secrets.randbelow(_PORT_RANGE[1] - _PORT_RANGE[0])
        if _free(port) and _free(port + 1):
            return port
    raise RuntimeError("no two consecutive free loopback ports")


def coap_ping(port: int, timeout: float = 0.2) -> bool:
    """Send a CoAP ping (empty CON) to 127.0.0.1:port; true on its RST."""
    mid = secrets.randbelow(0x10000)
    ping = bytes([0x40, 0x00]) + mid.to_bytes(2, "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(ping, ("127.0.0.1", port))
        try:
            reply, _ = sock.recvfrom(64)
        except (TimeoutError, ConnectionRefusedError):
            return False
    # RST (type 3), empty, same message id.
    return len(reply) >= 4 and reply[0] >> 4 & 3 == 3 and reply[2:4] == ping[2:4]


@attrs.define(eq=False)
class LibcoapServer:
    """One ``coap-server-openssl`` process on 127.0.0.1.

    ``port`` serves plain CoAP, ``dtls_port`` (``port + 1``) CoAP over
    DTLS with the PSK ``key`` for any identity.  Resources: ``/`` (a banner)
    and ``/time`` built in, plus up to 10 created by PUT.
    """

    directory: Path
    binary: str
    key: bytes = TEST_PSK
    port: int = attrs.field(factory=free_port_pair)
    process: subprocess.Popen[bytes] | None = None

    @property
    def dtls_port(self) -> int:
        """The DTLS port: libcoap serves coaps on ``port + 1``."""
        return self.port + 1

    @property
    def uri(self) -> str:
        """The plain CoAP URI of the server."""
        return f"coap://127.0.0.1:{self.port}"

    @property
    def coaps_uri(self) -> str:
        """The CoAP over DTLS URI of the server."""
        return f"coaps://127.0.0.1:{self.dtls_port}"

    @property
    def log_file(self) -> Path:
        """The server's stdout and stderr (its log at level 7)."""
        return self.directory / "coap-server.log"

    def start(self) -> None:
        """Spawn the server and block until it answers a CoAP ping."""
        with self.log_file.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "-A", "127.0.0.1",
                    "-p", str(self.port),
                    "-k", self.key.decode(),
                    "-d", "10",
                    # Level 7 logs each handshake's PSK identity.
                    "-v", "7",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not coap_ping(self.port):
            if self.process.poll() is not None:
                pytest.fail(
                    f"coap-server-openssl exited with {self.process.returncode}:"
                    f"\n{self.log_text()}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(f"coap-server-openssl did not answer on {self.port}")
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """Kill the server (it has no state worth a polite exit)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_text(self) -> str:
        """The server's log so far, or "" before it started."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextmanager
def running_libcoap_server(directory: Path) -> Iterator[LibcoapServer]:
    """Start coap-server-openssl logging into ``directory``; kill it at exit."""
    directory.mkdir(exist_ok=True)
    server = LibcoapServer(directory, find_libcoap("coap-server-openssl"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def coap_server(tmp_path: Path) -> Iterator[LibcoapServer]:
    """A running coap-server-openssl (CoAP and DTLS-PSK); killed at teardown."""
    with running_libcoap_server(tmp_path / "coap-server") as server:
        yield server


async def run_coap_client(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``coap-client-openssl ARGS`` to completion; capture its output."""
    binary = find_libcoap("coap-client-openssl")
    with trio.fail_after(CLIENT_TIMEOUT + 5):
        return await trio.run_process(
            [binary, "-B", str(CLIENT_TIMEOUT), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


# ---------------------------------------------------------------------------
# aiocoap as a second peer (asyncio-flavoured inside, Trio-flavoured outside)


@attrs.define(eq=False)
class Received:
    """A request the peer received, and where from (the aiocoap remote)."""

    method: str
    path: tuple[str, ...]
    payload: bytes
    remote: Any


@attrs.define(eq=False)
class AiocoapPeer:
    """An aiocoap context in its own trio-asyncio loop.

    As a server (``open_aiocoap_peer(dtls_psk=...)``) it answers every
    request with 2.01 (Location-Path ``rd/1``) and records it in
    ``received``; ``request_back`` then sends a request over the session
    that request came on.
    """

    loop: Any
    context: Any = None
    received: list[Received] = attrs.field(factory=list)
    port: int = 0
    secure: bool = False
    _arrived: trio.Event = attrs.field(factory=trio.Event)

    @property
    def uri(self) -> str:
        """Where the peer listens; aiocoap's DTLS server takes ``port + 1``."""
        if self.secure:
            return f"coaps://127.0.0.1:{self.port + 1}"
        return f"coap://127.0.0.1:{self.port}"

    async def wait_received(self, count: int = 1) -> Received:
        """Wait until ``count`` requests arrived; return the last."""
        while len(self.received) < count:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self.received[count - 1]

    async def request(
        self, method: str, uri: str, payload: bytes = b""
    ) -> tuple[str, bytes]:
        """Send a request to ``uri``; return (code, payload)."""
        from trio_asyncio import aio_as_trio

        result: tuple[str, bytes] = await aio_as_trio(
            self._aio_request, loop=self.loop
        )(method, uri, payload)
        return result

    async def request_back(
        self, remote: Any, method: str, path: str, payload: bytes = b""
    ) -> tuple[str, bytes]:
        """Send a request to ``remote`` (a received request's sender)."""
        from trio_asyncio import aio_as_trio

        result: tuple[str, bytes] = await aio_as_trio(
            self._aio_request_back, loop=self.loop
        )(remote, method, path, payload)
        return result

    def close_session(self, remote: Any) -> None:
        """Close the DTLS session ``remote`` came on (a close_notify alert)."""
        remote._dtls_socket.close(remote._dtls_session)

    @asynccontextmanager
    async def observe(
        self, uri: str, *, remote: Any = None
    ) -> AsyncIterator[trio.MemoryReceiveChannel[bytes]]:
        """Observe ``uri``; yield a channel of the payloads (first included).

        With ``remote`` (a received request's sender), ``uri`` is just the
        path, observed over the session that request came on.
        """
        send, receive = trio.open_memory_channel[bytes](16)
        from trio_asyncio import aio_as_trio

        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await aio_as_trio(self._aio_observe, loop=self.loop)(uri, remote, send)

            nursery.start_soon(run)
            try:
                yield receive
            finally:
                nursery.cancel_scope.cancel()

    async def _aio_request(
        self, method: str, uri: str, payload: bytes
    ) -> tuple[str, bytes]:
        import aiocoap

        message = aiocoap.Message(
            code=getattr(aiocoap.Code, method), uri=uri, payload=payload
        )
        response = await self.context.request(message).response
        return response.code.dotted, bytes(response.payload)

    async def _aio_request_back(
        self, remote: Any, method: str, path: str, payload: bytes
    ) -> tuple[str, bytes]:
        import aiocoap

        message = aiocoap.Message(
            code=getattr(aiocoap.Code, method),
            uri_path=tuple(path.strip("/").split("/")),
            payload=payload,
        )
        message.remote = remote
        response = await self.context.request(message).response
        return response.code.dotted, bytes(response.payload)

    async def _aio_observe(
        self, uri: str, remote: Any, send: trio.MemorySendChannel[bytes]
    ) -> None:
        import aiocoap

        if remote is None:
            message = aiocoap.Message(code=aiocoap.GET, uri=uri, observe=0)
        else:
            path = tuple(uri.strip("/").split("/"))
            message = aiocoap.Message(code=aiocoap.GET, uri_path=path, observe=0)
            message.remote = remote
        request = self.context.request(message)
        first = await request.response
        send.send_nowait(bytes(first.payload))
        async for notification in request.observation:
            send.send_nowait(bytes(notification.payload))


class _RecordingSite:
    """Builds the peer's catch-all resource (aiocoap imported lazily)."""

    @staticmethod
    def build(peer: AiocoapPeer) -> Any:
        import aiocoap
        import aiocoap.resource

        class Site(  # type: ignore[misc]
            aiocoap.resource.Resource, aiocoap.resource.PathCapable
        ):
            async def render(self, request: Any) -> Any:
                peer.received.append(
                    Received(
                        str(request.code),
                        tuple(request.opt.uri_path),
                        bytes(request.payload),
                        request.remote,
                    )
                )
                peer._arrived.set()
                return aiocoap.Message(code=aiocoap.CREATED, location_path=("rd", "1"))

        return Site()


@asynccontextmanager
async def open_aiocoap_peer(
    *, dtls_psk: tuple[bytes, bytes] | None = None
) -> AsyncIterator[AiocoapPeer]:
    """An aiocoap peer on 127.0.0.1 (a free port), plain or DTLS-PSK server.

    ``dtls_psk`` is ``(identity, key)``: the peer then serves coaps:// with
    that one PSK.  Leaves its loop after shutting the context down.
    """
    import trio_asyncio

    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_ignore_asyncio_error)
        peer = AiocoapPeer(loop, port=free_port_pair(), secure=dtls_psk is not None)
        from trio_asyncio import aio_as_trio

        await aio_as_trio(_aio_open_peer, loop=loop)(peer, dtls_psk)
        try:
            yield peer
        finally:
            with trio.move_on_after(5, shield=True):
                await aio_as_trio(peer.context.shutdown, loop=loop)()


async def _aio_open_peer(
    peer: AiocoapPeer, dtls_psk: tuple[bytes, bytes] | None
) -> None:
    import aiocoap
    from aiocoap.credentials import DTLS, CredentialsMap

    site = _RecordingSite.build(peer)
    if dtls_psk is None:
        peer.context = await aiocoap.Context.create_server_context(
            site, bind=("127.0.0.1", peer.port), transports=["udp6"]
        )
        return
    identity, key = dtls_psk
    credentials = CredentialsMap()
    credentials["coaps://*"] = DTLS(psk=key, client_identity=identity)
    peer.context = await aiocoap.Context.create_server_context(
        site,
        bind=("127.0.0.1", peer.port),
        transports=["tinydtls_server"],
        server_credentials=credentials,
    )
    # aiocoap 0.4.17's DTLS server does not recognise its own DTLS addresses
    # as remotes (it checks for plain-UDP addresses), so it could not send a
    # request back over a session a client opened.  This instance does.
    from aiocoap.transports.tinydtls_server import _AddressDTLS

    interface = peer.context.request_interfaces[0].token_interface.message_interface
    server_socket = interface._pool

    async def recognize_remote(remote: Any) -> bool:
        return isinstance(remote, _AddressDTLS) and remote._protocol is server_socket

    interface.recognize_remote = recognize_remote


def _ignore_asyncio_error(
    loop: asyncio.AbstractEventLoop, context: dict[str, Any]
) -> None:
    # The peer is test scaffolding: aiocoap's shutdown noise is not a failure.
    pass
