"""Integration tests of backends.coap_transport against real CoAP peers.

No autojump clock here: real sockets on loopback (STYLE P10), every test
bounded by ``trio.fail_after`` in real time.  Peers: libcoap's
``coap-server-openssl`` and ``coap-client-openssl``, aiocoap itself (a second
context: the observer, and the DTLS server that sends requests back over the
session our client opened), and small Trio UDP sockets that never answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import sniffio
import trio

from backends.coap_transport import (
    CoapRequest,
    CoapResponse,
    CoapSession,
    CoapSettings,
    split_path,
)
from backends.errors import (
    BackendBroken,
    BackendClosed,
    BackendConnectError,
    BackendRefused,
    BackendTimeout,
)
from tests.coap_peers import (
    TEST_IDENTITY,
    TEST_PSK,
    LibcoapServer,
    free_port_pair,
    open_aiocoap_peer,
    run_coap_client,
    running_libcoap_server,
)

LIMIT = 15.0
"""Real-time bound of each test, in seconds."""


@pytest.fixture
def coap_server(tmp_path: Path) -> Iterator[LibcoapServer]:
    """A running coap-server-openssl (CoAP on a port, DTLS-PSK on the next)."""
    with running_libcoap_server(tmp_path / "coap-server") as server:
        yield server


@attrs.define
class Recorder:
    """A handler that records requests and serves ``values`` by path."""

    values: dict[tuple[str, ...], bytes] = attrs.field(factory=dict)
    seen: list[CoapRequest] = attrs.field(factory=list)
    libraries: list[str] = attrs.field(factory=list)
    fail: bool = False

    async def __call__(self, request: CoapRequest) -> CoapResponse:
        self.libraries.append(sniffio.current_async_library())
        await trio.lowlevel.checkpoint()  # a real Trio await in the handler
        self.seen.append(request)
        if self.fail:
            raise RuntimeError("handler bug")
        if request.method == "PUT":
            self.values[request.path] = request.payload
            return CoapResponse("2.04")
        value = self.values.get(request.path)
        if value is None:
            return CoapResponse("4.04")
        return CoapResponse("2.05", value, content_format=0)

    def renders(self, path: tuple[str, ...]) -> int:
        return sum(1 for r in self.seen if r.path == path and r.method == "GET")


async def black_hole() -> tuple[trio.socket.SocketType, int]:
    """A bound UDP socket on 127.0.0.1 that never answers."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


def dtls_settings(uri: str, **overrides: Any) -> CoapSettings:
    values: dict[str, Any] = {
        "uri": uri,
        "psk_identity": TEST_IDENTITY,
        "psk": TEST_PSK,
        "handshake_timeout": 3.0,
        "request_timeout": 5.0,
    } | overrides
    return CoapSettings(**values)


class TestSettings:
    @pytest.mark.parametrize(
        "uri", ["http://127.0.0.1", "coap://", "coap://h:99999", "coap://h/x"]
    )
    def test_bad_uri_is_named(self, uri: str) -> None:
        with pytest.raises(ValueError, match="CoAP server URI") as caught:
            CoapSettings(uri)
        assert repr(uri) in str(caught.value)

    def test_coaps_needs_a_psk(self) -> None:
        with pytest.raises(ValueError, match="PSK identity and a key"):
            CoapSettings("coaps://127.0.0.1", psk_identity=b"ep")

    def test_psk_lengths_tinydtls_cannot_take_are_refused(self) -> None:
        with pytest.raises(ValueError, match="PSK is 17 bytes; tinydtls takes"):
            CoapSettings("coaps://h", psk_identity=b"ep", psk=b"k" * 17)
        with pytest.raises(ValueError, match="identity is 33 bytes"):
            CoapSettings("coaps://h", psk_identity=b"e" * 33, psk=b"k")

    def test_default_ports_and_timeouts(self) -> None:
        plain = CoapSettings("coap://example.com")
        secure = CoapSettings("coaps://example.com", psk_identity=b"e", psk=b"k")
        assert (plain.port, secure.port) == (5683, 5684)
        assert (plain.secure, secure.secure) == (False, True)
        assert (plain.ack_timeout, plain.request_timeout) == (4.0, 93.0)

    def test_split_path(self) -> None:
        assert split_path("/3/0/1") == ("3", "0", "1")
        assert split_path("rd") == ("rd",)
        assert split_path("/") == ()


class TestPlainCoap:
    async def test_get_and_put_against_libcoap(
        self, coap_server: LibcoapServer
    ) -> None:
        session = CoapSession(CoapSettings(coap_server.uri, request_timeout=5.0))
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                banner = await session.request("GET", "/")
                created = await session.request(
                    "PUT", "/tracker", payload=b"42", content_format=0
                )
                read = await session.request("GET", "/tracker")
                unconfirmed = await session.request(
                    "GET", "/tracker", confirmable=False
                )
                missing = await session.request("GET", "/nothing/here")
                await session.aclose()
        assert banner.code == "2.05" and b"libcoap" in banner.payload
        assert created.code == "2.01"
        assert (read.code, read.payload) == ("2.05", b"42")
        assert (unconfirmed.code, unconfirmed.payload) == ("2.05", b"42")
        assert missing.code == "4.04" and not missing.successful

    async def test_unreachable_port_is_a_connect_error(self) -> None:
        port = free_port_pair()  # nothing listens there: ICMP port unreachable
        session = CoapSession(CoapSettings(f"coap://127.0.0.1:{port}"))
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                started = time.monotonic()
                with pytest.raises(BackendConnectError, match="unreachable") as err:
                    await session.request("GET", "/")
                await session.aclose()
        assert type(err.value) is BackendConnectError
        assert time.monotonic() - started < 2.0

    async def test_no_response_is_a_timeout(self) -> None:
        sock, port = await black_hole()
        settings = CoapSettings(f"coap://127.0.0.1:{port}", request_timeout=0.5)
        session = CoapSession(settings)
        with sock, trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                with pytest.raises(BackendTimeout, match="no response within 0.5 s"):
                    await session.request("GET", "/rd")
                await session.aclose()


class TestDtls:
    async def test_psk_handshake_and_round_trip_with_libcoap(
        self, coap_server: LibcoapServer
    ) -> None:
        session = CoapSession(dtls_settings(coap_server.coaps_uri))
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                banner = await session.request("GET", "/")
                created = await session.request("PUT", "/cfg", payload=b"on")
                read = await session.request("GET", "/cfg")
                await session.aclose()
        assert banner.code == "2.05" and b"libcoap" in banner.payload
        assert created.code == "2.01"
        assert (read.code, read.payload) == ("2.05", b"on")
        server_log = coap_server.log_text()
        assert f"got psk_identity: '{TEST_IDENTITY.decode()}'" in server_log
        # One handshake for the whole session: every request used it.
        assert server_log.count("SSL_accept:SSLv3/TLS read finished") == 1

    async def test_wrong_key_is_refused_then_right_key_works(
        self, coap_server: LibcoapServer
    ) -> None:
        wrong = CoapSession(dtls_settings(coap_server.coaps_uri, psk=b"not the key"))
        with trio.fail_after(LIMIT):
            started = time.monotonic()
            with pytest.raises(BackendRefused) as refused:
                await wrong.run()  # fails before it has started
            elapsed = time.monotonic() - started
            await wrong.aclose()
            await wrong.aclose()  # idempotent
            with pytest.raises(BackendClosed):
                await wrong.request("GET", "/")

            right = CoapSession(dtls_settings(coap_server.coaps_uri))
            async with trio.open_nursery() as nursery:
                await nursery.start(right.run)
                banner = await right.request("GET", "/")
                await right.aclose()
        message = str(refused.value)
        assert "DTLS handshake" in message and "PSK identity" in message
        assert TEST_IDENTITY.decode() in message
        assert refused.value.permanent
        assert 3.0 <= elapsed < 3.0 + 2.0
        assert banner.code == "2.05"

    async def test_silent_server_is_a_handshake_timeout(self) -> None:
        sock, port = await black_hole()
        session = CoapSession(
            dtls_settings(f"coaps://127.0.0.1:{port}", handshake_timeout=1.0)
        )
        with sock, trio.fail_after(LIMIT):
            with pytest.raises(BackendTimeout, match="no answer within 1.0 s"):
                await session.run()

    async def test_unreachable_dtls_port_is_a_connect_error(self) -> None:
        port = free_port_pair()
        session = CoapSession(dtls_settings(f"coaps://127.0.0.1:{port}"))
        with trio.fail_after(LIMIT):
            started = time.monotonic()
            with pytest.raises(BackendConnectError, match="unreachable") as err:
                await session.run()
        assert type(err.value) is BackendConnectError
        assert time.monotonic() - started < 2.0

    async def test_server_gone_breaks_the_session(
        self, coap_server: LibcoapServer
    ) -> None:
        session = CoapSession(dtls_settings(coap_server.coaps_uri))
        with trio.fail_after(LIMIT):
            with pytest.RaisesGroup(
                pytest.RaisesExc(BackendBroken, match="DTLS session was lost")
            ):
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.run)
                    assert (await session.request("GET", "/")).code == "2.05"
                    coap_server.stop()
                    with pytest.raises(BackendBroken, match="unreachable"):
                        await session.request("GET", "/")
        assert session.broken

    async def test_close_notify_from_the_server_breaks_the_session(self) -> None:
        async with open_aiocoap_peer(dtls_psk=(TEST_IDENTITY, TEST_PSK)) as peer:
            session = CoapSession(dtls_settings(peer.uri))
            with trio.fail_after(LIMIT):
                with pytest.RaisesGroup(
                    pytest.RaisesExc(BackendBroken, match="close_notify")
                ):
                    async with trio.open_nursery() as nursery:
                        await nursery.start(session.run)
                        await session.request("POST", "/rd")
                        peer.close_session((await peer.wait_received()).remote)
                        # run() ends with the session; no request outlives it.
                        await trio.sleep_forever()
                with pytest.raises(BackendBroken, match="close_notify"):
                    await session.request("POST", "/rd/1")
        assert len(peer.received) == 1


class TestIncomingRequests:
    async def test_libcoap_client_reaches_the_trio_handler(
        self, coap_server: LibcoapServer
    ) -> None:
        handler = Recorder({("3", "0", "0"): b"Nordic"})
        session = CoapSession(CoapSettings(coap_server.uri), handler)
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                ours = f"coap://127.0.0.1:{session.local_port}"
                read = await run_coap_client(f"{ours}/3/0/0")
                write = await run_coap_client(
                    "-m", "put", "-e", "20", "-t", "0", f"{ours}/1/0/1"
                )
                handler.fail = True
                failed = await run_coap_client(f"{ours}/3/0/0")
                handler.fail = False
                # Still serving after a failed handler.
                again = await run_coap_client(f"{ours}/1/0/1")
                await session.aclose()
        assert read.returncode == 0 and read.stdout.strip() == b"Nordic"
        assert write.returncode == 0
        assert handler.values[("1", "0", "1")] == b"20"
        put = handler.seen[1]
        assert (put.method, put.path, put.content_format) == ("PUT", ("1", "0", "1"), 0)
        assert put.remote.startswith("coap://127.0.0.1:")
        assert b"5.00" in failed.stderr + failed.stdout
        assert again.stdout.strip() == b"20"
        assert set(handler.libraries) == {"trio"}

    async def test_dtls_server_sends_requests_over_our_session(self) -> None:
        handler = Recorder({("3", "0", "0"): b"Nordic"})
        async with open_aiocoap_peer(dtls_psk=(TEST_IDENTITY, TEST_PSK)) as peer:
            uri = peer.uri
            session = CoapSession(dtls_settings(uri), handler)
            with trio.fail_after(LIMIT):
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.run)
                    registered = await session.request(
                        "POST", "/rd", query=("ep=test", "lt=43200"), payload=b"</3/0>"
                    )
                    received = await peer.wait_received()
                    read = await peer.request_back(received.remote, "GET", "/3/0/0")
                    write = await peer.request_back(
                        received.remote, "PUT", "/50009/0/1", b"true"
                    )
                    update = await session.request("POST", "/rd/1")
                    await session.aclose()
        assert registered.code == "2.01"
        assert registered.location_path == ("rd", "1")
        assert (received.method, received.path) == ("POST", ("rd",))
        assert read == ("2.05", b"Nordic")
        assert write[0] == "2.04"
        assert handler.values[("50009", "0", "1")] == b"true"
        assert handler.seen[0].remote == uri
        # The later request used the same session: the peer saw one sender.
        assert update.code == "2.01"
        assert peer.received[1].remote is received.remote


class TestObserve:
    async def test_notify_sends_the_handlers_new_value(self) -> None:
        handler = Recorder({("3", "0"): b"v1", ("4", "0"): b"w1"})
        session = CoapSession(CoapSettings("coap://127.0.0.1:9"), handler)
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                ours = f"coap://127.0.0.1:{session.local_port}"
                async with open_aiocoap_peer() as peer:
                    async with (
                        peer.observe(f"{ours}/3/0") as device,
                        peer.observe(f"{ours}/4/0") as cell,
                    ):
                        assert await device.receive() == b"v1"
                        assert await cell.receive() == b"w1"
                        assert session.observation_count == 2
                        handler.values[("3", "0")] = b"v2"
                        session.notify("/3")  # a prefix of /3/0
                        assert await device.receive() == b"v2"
                        handler.values[("4", "0")] = b"w2"
                        session.notify("/4/0/7", include_ancestors=True)
                        assert await cell.receive() == b"w2"
                        with pytest.raises(trio.WouldBlock):
                            device.receive_nowait()
                await session.aclose()
        registrations = [r for r in handler.seen if r.observe == 0]
        assert {r.path for r in registrations} == {("3", "0"), ("4", "0")}
        # The registration and one notification each, rendered as plain GETs.
        assert handler.renders(("3", "0")) == 2
        assert handler.renders(("4", "0")) == 2
        assert [r.observe for r in handler.seen if r.path == ("3", "0")] == [0, None]

    async def test_observe_over_dtls(self) -> None:
        handler = Recorder({("3", "0", "9"): b"87"})
        async with open_aiocoap_peer(dtls_psk=(TEST_IDENTITY, TEST_PSK)) as peer:
            session = CoapSession(dtls_settings(peer.uri), handler)
            with trio.fail_after(LIMIT):
                async with trio.open_nursery() as nursery:
                    await nursery.start(session.run)
                    await session.request("POST", "/rd")
                    remote = (await peer.wait_received()).remote
                    async with peer.observe("/3/0/9", remote=remote) as battery:
                        assert await battery.receive() == b"87"
                        handler.values[("3", "0", "9")] = b"86"
                        session.notify("/3/0/9")
                        assert await battery.receive() == b"86"
                    await session.aclose()
        assert handler.renders(("3", "0", "9")) == 2


class TestLifecycle:
    async def test_request_outside_run_is_closed(self) -> None:
        session = CoapSession(CoapSettings("coap://127.0.0.1:9"))
        with pytest.raises(BackendClosed, match="not open"):
            await session.request("GET", "/")
        with pytest.raises(ValueError, match="unknown CoAP method"):
            await session.request("BREW", "/")
        session.notify("/")  # harmless before run
        with trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                assert session.local_port
                await session.aclose()
        assert session.local_port is None
        with pytest.raises(BackendClosed, match="not open"):
            await session.request("GET", "/")
        with pytest.raises(RuntimeError, match="runs only once"):
            await session.run()

    async def test_closed_before_run_does_not_start(self) -> None:
        session = CoapSession(CoapSettings("coap://127.0.0.1:9"))
        await session.aclose()
        with pytest.raises(BackendClosed, match="closed before it ran"):
            await session.run()

    async def test_cancelling_run_mid_request_leaves_nothing(self) -> None:
        sock, port = await black_hole()
        session = CoapSession(CoapSettings(f"coap://127.0.0.1:{port}"))
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await session.request("GET", "/slow")
            except BackendClosed as exc:
                outcome.append(exc)

        with sock, trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                run_scope = trio.CancelScope()
                await nursery.start(_run_in, session, run_scope)
                loop = session._loop
                nursery.start_soon(ask)
                await sock.recv(2048)  # the request is on the wire
                started = time.monotonic()
                run_scope.cancel()
            elapsed = time.monotonic() - started
        assert elapsed < 1.0
        assert len(outcome) == 1
        assert loop is not None
        assert not [t for t in asyncio.all_tasks(loop) if not t.done()]

    async def test_asyncio_side_cancellation_is_a_closed_error(self) -> None:
        sock, port = await black_hole()
        session = CoapSession(CoapSettings(f"coap://127.0.0.1:{port}"))

        def cancel_every_task() -> None:
            # Something on the asyncio side cancels tasks Trio knows nothing of.
            for task in asyncio.all_tasks():
                task.cancel()

        with sock, trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                await nursery.start(session.run)
                async with trio.open_nursery() as requests:

                    async def ask() -> None:
                        with pytest.raises(BackendClosed, match="session closed"):
                            await session.request("GET", "/slow")

                    requests.start_soon(ask)
                    await sock.recv(2048)
                    session._loop.call_soon(cancel_every_task)
                # The session survives it and still closes cleanly.
                await session.aclose()

    async def test_cancelling_during_the_handshake_returns_promptly(self) -> None:
        sock, port = await black_hole()
        session = CoapSession(
            dtls_settings(f"coaps://127.0.0.1:{port}", handshake_timeout=10.0)
        )
        with sock, trio.fail_after(LIMIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(session.run)
                await sock.recv(2048)  # the ClientHello
                loop = session._loop
                started = time.monotonic()
                nursery.cancel_scope.cancel()
            elapsed = time.monotonic() - started
        assert elapsed < 1.0
        assert loop is not None
        assert not [t for t in asyncio.all_tasks(loop) if not t.done()]


async def _run_in(
    session: CoapSession,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        await session.run(task_status=task_status)
