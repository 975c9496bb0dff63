"""The Bootstrap-Server role of the local LwM2M server, and our client's
bootstrap against it.

The rules of the Bootstrap-Request (``handle()``) and the account settings
are tested without sockets.  The rest runs on loopback with real UDP sockets
and the real clock (STYLE P10): the ``Lwm2mBackend`` built by
``lwm2m_backend`` with ``bootstrap = true`` asks one ``LocalLwm2mServer``
(the bootstrap server) for its account, which names another one (the LwM2M
server, on its own port and, over DTLS, with its own key), and registers
there.  Every wait is bounded by ``LIMIT``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiocoap
import aiocoap.resource
import attrs
import pytest
import trio
from aiocoap.numbers.codes import Code

from backends.lwm2m import Lwm2mBackend, Lwm2mState, lwm2m_backend
from protocols import wrapper as wrap
from protocols.lwm2m_formats import ContentFormat, Path, decode
from protocols.lwm2m_objects import ObjectStore
from sandbox.lwm2m_server import (
    BootstrapAccount,
    EventKind,
    LocalLwm2mServer,
    Lwm2mEvent,
    Lwm2mRequest,
    Lwm2mServerSettings,
    Peer,
)
from tracker.config import Lwm2mConfig

ENDPOINT = "urn:imei:351358815340515"
OTHER_ENDPOINT = "urn:imei:351358815340599"
# The key the device shares with the bootstrap server (its configured PSK)...
BOOTSTRAP_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
# ...and the one the bootstrap server hands out for the LwM2M server.
SERVER_KEY = bytes.fromhex("f0e1d2c3b4a5968778695a4b3c2d1e0f")
# Real-socket exchanges on loopback answer in milliseconds; a DTLS handshake
# in tens of them.
LIMIT = 15.0
# A lifetime no default has, so the registration proves where it came from.
LIFETIME = 600

PEER = Peer(scheme="coap", address="127.0.0.1:40000")


# ---------------------------------------------------------------------------
# Without sockets: the Bootstrap-Request and the settings


def bs_request(*query: str, method: str = "POST") -> Lwm2mRequest:
    return Lwm2mRequest(method=method, path=("bs",), query=query)


@pytest.fixture
async def offline(nursery: trio.Nursery) -> LocalLwm2mServer:
    """A bootstrap server with one account and no listener."""
    server = LocalLwm2mServer(
        Lwm2mServerSettings(
            coap_port=None,
            coaps_port=None,
            bootstrap={ENDPOINT: BootstrapAccount(server_uri="coap://127.0.0.1:1")},
        )
    )
    await nursery.start(server.run)
    return server


@pytest.mark.parametrize(
    ("query", "code", "needle"),
    [
        ((), "4.00", "no endpoint name"),
        (("ep=",), "4.00", "needs a value"),
        ((f"ep={ENDPOINT}", "pct=abc"), "4.00", "pct='abc'"),
        ((f"ep={ENDPOINT}", f"ep={ENDPOINT}"), "4.00", "repeated"),
        (("ep=nobody",), "4.00", "no bootstrap account for endpoint 'nobody'"),
    ],
)
async def test_bad_bootstrap_requests_are_refused(
    offline: LocalLwm2mServer, query: tuple[str, ...], code: str, needle: str
) -> None:
    reply = offline.handle(bs_request(*query), PEER)
    assert (reply.code, needle in reply.diagnostic) == (code, True)
    kinds = [event.kind for event in offline.history]
    assert EventKind.BOOTSTRAP_REQUESTED not in kinds


async def test_unknown_endpoint_is_recorded_and_other_methods_are_refused(
    offline: LocalLwm2mServer,
) -> None:
    offline.handle(bs_request("ep=nobody"), PEER)
    (event,) = offline.history
    assert (event.kind, event.endpoint) == (EventKind.BOOTSTRAP_FAILED, "nobody")
    assert "no bootstrap account" in event.detail
    assert offline.handle(bs_request(method="GET"), PEER).code == "4.05"
    post_below = Lwm2mRequest(method="POST", path=("bs", "x"), query=())
    assert offline.handle(post_below, PEER).code == "4.05"


async def test_dtls_identity_must_be_the_endpoint_name(
    offline: LocalLwm2mServer,
) -> None:
    thief = Peer(scheme="coaps", address="127.0.0.1:1", identity=b"someone-else")
    reply = offline.handle(bs_request(f"ep={ENDPOINT}"), thief)
    assert reply.code == "4.03"
    (event,) = offline.history
    assert event.kind is EventKind.BOOTSTRAP_FAILED


async def test_accepted_request_without_a_socket_fails_visibly(
    nursery: trio.Nursery,
) -> None:
    # The default account serves any endpoint; handle() without a remote
    # (no listener) answers 2.04, then the provisioning cannot go out.
    server = LocalLwm2mServer(
        Lwm2mServerSettings(
            coap_port=None,
            bootstrap_default=BootstrapAccount(server_uri="coap://127.0.0.1:1"),
        )
    )
    await nursery.start(server.run)
    reply = server.handle(bs_request(f"ep={OTHER_ENDPOINT}", "pct=11542"), PEER)
    assert reply.code == "2.04"
    with trio.fail_after(LIMIT):
        failed = await server.wait_for(EventKind.BOOTSTRAP_FAILED, OTHER_ENDPOINT)
    requested = next(
        e for e in server.history if e.kind is EventKind.BOOTSTRAP_REQUESTED
    )
    assert "11542" in requested.detail  # the client's pct, TLV, is honoured
    assert "not being served" in failed.detail


def test_account_records_by_security_mode() -> None:
    psk = BootstrapAccount(
        server_uri="coaps://example.org:5684",
        psk_key=SERVER_KEY,
        short_server_id=7,
        lifetime=LIFETIME,
    )
    written = {str(r.path): r.value for r in psk.security_records(ENDPOINT, 2)}
    assert written == {
        "/0/2/0": "coaps://example.org:5684",
        "/0/2/1": False,
        "/0/2/2": 0,
        "/0/2/3": ENDPOINT.encode(),
        "/0/2/4": b"",
        "/0/2/5": SERVER_KEY,
        "/0/2/10": 7,
    }
    server = {str(r.path): r.value for r in psk.server_records()}
    assert server == {"/1/0/0": 7, "/1/0/1": LIFETIME, "/1/0/6": True, "/1/0/7": "U"}
    nosec = BootstrapAccount(server_uri="coap://example.org", psk_key=b"unused")
    values = {str(r.path): r.value for r in nosec.security_records(ENDPOINT, 1)}
    assert (values["/0/1/2"], values["/0/1/3"], values["/0/1/5"]) == (3, b"", b"")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"server_uri": "http://example.org"}, "server_uri"),
        ({"server_uri": "coap://"}, "server_uri"),
        ({"server_uri": "coaps://example.org"}, "needs a psk_key"),
        ({"server_uri": "coap://h", "short_server_id": 0}, "short_server_id=0"),
        ({"server_uri": "coap://h", "lifetime": 0}, "lifetime=0"),
        ({"server_uri": "coap://h", "binding": "X"}, "binding"),
        ({"server_uri": "coap://h", "security_instance": -1}, "security_instance"),
        ({"server_uri": "coap://h", "psk_identity": b""}, "psk_identity"),
        ({"server_uri": "coap://h", "content_format": ContentFormat.TEXT}, "0"),
    ],
)
def test_bad_accounts_are_named(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        BootstrapAccount(**kwargs)


def test_bootstrap_settings_are_checked() -> None:
    with pytest.raises(TypeError, match="not a BootstrapAccount"):
        Lwm2mServerSettings(bootstrap={ENDPOINT: "coap://h"})  # type: ignore[dict-item]


# ---------------------------------------------------------------------------
# Real sockets: our client against the bootstrap server


@attrs.define(eq=False)
class Device:
    """The backend and the wrapper events it emitted."""

    backend: Lwm2mBackend
    events: list[wrap.WrapperEvent] = attrs.field(factory=list)
    changed: trio.Event = attrs.field(factory=trio.Event)

    def record(self, event: wrap.WrapperEvent) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, kind: type[wrap.WrapperEvent]) -> wrap.WrapperEvent:
        while True:
            for event in self.events:
                if isinstance(event, kind):
                    return event
            await self.changed.wait()

    def kinds(self) -> list[type[wrap.WrapperEvent]]:
        return [type(event) for event in self.events]


async def start_server(nursery: trio.Nursery, **settings: Any) -> LocalLwm2mServer:
    server = LocalLwm2mServer(Lwm2mServerSettings(**settings))
    await nursery.start(server.run)
    return server


@asynccontextmanager
async def device(bootstrap_uri: str) -> AsyncIterator[Device]:
    """The backend of ``[cloud.lwm2m]`` with ``bootstrap = true``, running."""
    backend = lwm2m_backend(
        Lwm2mConfig(server_uri=bootstrap_uri, bootstrap=True, psk=BOOTSTRAP_KEY.hex()),
        endpoint=ENDPOINT,
    )
    dev = Device(backend)
    backend.init(dev.record)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        yield dev
        nursery.cancel_scope.cancel()


async def bootstrap_outcome(
    server: LocalLwm2mServer, endpoint: str, since: int = 0
) -> Lwm2mEvent:
    """The first BOOTSTRAPPED or BOOTSTRAP_FAILED event of ``endpoint``."""
    outcome: list[Lwm2mEvent] = []

    async def wait(kind: EventKind, nursery: trio.Nursery) -> None:
        outcome.append(await server.wait_for(kind, endpoint, since=since))
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for kind in (EventKind.BOOTSTRAPPED, EventKind.BOOTSTRAP_FAILED):
            nursery.start_soon(wait, kind, nursery)
    return outcome[0]


def written(event: Lwm2mEvent) -> dict[str, object]:
    return {str(record.path): record.value for record in event.records}


@pytest.mark.parametrize(
    ("fmt", "instance"),
    [
        (None, 1),
        (ContentFormat.TLV, 1),
        (ContentFormat.SENML_JSON, 1),
        pytest.param(None, None, id="discover"),
    ],
)
async def test_bootstrap_over_coap_then_register(
    nursery: trio.Nursery, fmt: ContentFormat | None, instance: int | None
) -> None:
    lwm2m = await start_server(nursery, coap_port=0)
    server_uri = f"coap://127.0.0.1:{lwm2m.coap_port}"
    account = BootstrapAccount(
        server_uri=server_uri,
        lifetime=LIFETIME,
        short_server_id=3,
        content_format=fmt,
        security_instance=instance,
    )
    bootstrap = await start_server(nursery, coap_port=0, bootstrap={ENDPOINT: account})
    async with device(f"coap://127.0.0.1:{bootstrap.coap_port}") as dev:
        await dev.backend.connect()
        with trio.fail_after(LIMIT):
            done = await bootstrap_outcome(bootstrap, ENDPOINT)
            assert done.kind is EventKind.BOOTSTRAPPED, done.detail
            registered = await lwm2m.wait_for(EventKind.REGISTERED, ENDPOINT)
            await dev.wait_for(wrap.WrapperConnected)
        requested = bootstrap.history[0]
        assert requested.kind is EventKind.BOOTSTRAP_REQUESTED
        expected = fmt or ContentFormat.SENML_CBOR  # the client's pct=112
        assert str(int(expected)) in requested.detail
        # Discover (or the setting) leaves the bootstrap server's /0/0 alone.
        assert written(done)["/0/1/0"] == server_uri
        assert written(done)["/1/0/1"] == LIFETIME
        assert registered.registration is not None
        assert registered.registration.lifetime == LIFETIME
        assert registered.registration.scheme == "coap"
        assert ENDPOINT not in bootstrap.registrations
        store = dev.backend.store
        assert store.instances(0) == [0, 1]
        assert store.get("/0/0/1") is True  # the bootstrap account stays
        assert store.get("/0/1/0") == server_uri
        assert store.get("/0/1/1") is False
        assert store.get("/0/1/2") == 3  # NoSec
        assert store.get("/0/1/10") == 3
        assert store.get("/1/0/0") == 3
        assert dev.backend.state is Lwm2mState.CONNECTED
        assert dev.kinds() == [wrap.WrapperConnecting, wrap.WrapperConnected]
        assert dev.backend.counters["bootstraps"] == 1


async def test_bootstrap_over_dtls_hands_out_the_server_key(
    nursery: trio.Nursery,
) -> None:
    # The bootstrap server knows the device's configured key; the LwM2M
    # server only the key the bootstrap server writes.
    lwm2m = await start_server(
        nursery, coap_port=None, coaps_port=0, psk={ENDPOINT.encode(): SERVER_KEY}
    )
    server_uri = f"coaps://127.0.0.1:{lwm2m.coaps_port}"
    account = BootstrapAccount(
        server_uri=server_uri,
        psk_key=SERVER_KEY,
        lifetime=LIFETIME,
        security_instance=1,  # the client's Discover fails (see above)
    )
    bootstrap = await start_server(
        nursery,
        coap_port=None,
        coaps_port=0,
        psk={ENDPOINT.encode(): BOOTSTRAP_KEY},
        bootstrap={ENDPOINT: account},
    )
    async with device(f"coaps://127.0.0.1:{bootstrap.coaps_port}") as dev:
        await dev.backend.connect()
        with trio.fail_after(LIMIT):
            done = await bootstrap_outcome(bootstrap, ENDPOINT)
            assert done.kind is EventKind.BOOTSTRAPPED, done.detail
            registered = await lwm2m.wait_for(EventKind.REGISTERED, ENDPOINT)
            await dev.wait_for(wrap.WrapperConnected)
        registration = registered.registration
        assert registration is not None
        assert (registration.scheme, registration.identity) == (
            "coaps",
            ENDPOINT.encode(),
        )
        assert registration.lifetime == LIFETIME
        store = dev.backend.store
        assert store.get("/0/1/0") == server_uri
        assert store.get("/0/1/2") == 0  # PSK
        assert store.get("/0/1/3") == ENDPOINT.encode()
        assert store.get("/0/1/5") == SERVER_KEY
        assert store.get("/0/0/5") == BOOTSTRAP_KEY
        # The registered client is managed over its new DTLS session.
        (manufacturer,) = await lwm2m.read(ENDPOINT, "/3/0/0")
        assert manufacturer.value == "Nordic Semiconductor ASA"


async def test_unknown_endpoint_is_refused_and_the_client_disconnects(
    nursery: trio.Nursery,
) -> None:
    bootstrap = await start_server(
        nursery,
        coap_port=0,
        bootstrap={OTHER_ENDPOINT: BootstrapAccount(server_uri="coap://127.0.0.1:1")},
    )
    async with device(f"coap://127.0.0.1:{bootstrap.coap_port}") as dev:
        await dev.backend.connect()
        with trio.fail_after(LIMIT):
            failed = await bootstrap.wait_for(EventKind.BOOTSTRAP_FAILED, ENDPOINT)
            disconnected = await dev.wait_for(wrap.WrapperDisconnected)
        assert "no bootstrap account" in failed.detail
        assert isinstance(disconnected, wrap.WrapperDisconnected)
        assert "bootstrap failed" in disconnected.reason
        assert "4.00" in disconnected.reason
        assert dev.kinds() == [wrap.WrapperConnecting, wrap.WrapperDisconnected]
        assert dev.backend.state is Lwm2mState.DISCONNECTED
        # Nothing was sent to the client: its objects are as configured.
        assert [e.kind for e in bootstrap.history] == [EventKind.BOOTSTRAP_FAILED]
        assert dev.backend.store.instances(0) == [0]
        assert dev.backend.store.instances(1) == []
        # The cloud actor's next attempt (after its backoff) asks again.
        since = bootstrap.next_seq
        await dev.backend.connect()
        with trio.fail_after(LIMIT):
            await bootstrap.wait_for(EventKind.BOOTSTRAP_FAILED, since=since)
            while dev.kinds().count(wrap.WrapperDisconnected) < 2:
                await dev.changed.wait()


# ---------------------------------------------------------------------------
# Real sockets: a scripted aiocoap peer, to see each request and its answers


@attrs.frozen
class Seen:
    """One request the bootstrap server sent to the peer."""

    method: str
    path: str
    content_format: int | None
    accept: int | None
    payload: bytes


class _ScriptedClient(aiocoap.resource.Resource, aiocoap.resource.PathCapable):
    """Answers every request by ``answers`` (``(method, path)`` -> code, body);
    a DELETE is 2.02 and anything else 2.04 unless told otherwise.

    ``again``: a Bootstrap-Request sent (and answered) before the first
    Discover is answered, as a client that restarted its bootstrap would.
    """

    def __init__(self, answers: dict[tuple[str, str], tuple[str, bytes]]) -> None:
        super().__init__()
        self.answers = answers
        self.seen: list[Seen] = []
        self.context: aiocoap.Context | None = None
        self.again: aiocoap.Message | None = None

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        method = str(request.code.name)
        path = "/" + "/".join(request.opt.uri_path)
        cf, accept = request.opt.content_format, request.opt.accept
        self.seen.append(
            Seen(
                method,
                path,
                None if cf is None else int(cf),
                None if accept is None else int(accept),
                bytes(request.payload),
            )
        )
        again, self.again = self.again, None
        if again is not None and (method, path) == ("GET", "/0"):
            assert self.context is not None
            await self.context.request(again).response
        else:
            self.again = again
        default = "2.02" if method == "DELETE" else "2.04"
        code, body = self.answers.get((method, path), (default, b""))
        major, minor = code.split(".")
        answer = aiocoap.Message(code=Code((int(major) << 5) | int(minor)))
        answer.payload = body
        if body:
            answer.opt.content_format = ContentFormat.LINK_FORMAT
        return answer


async def _aio_client(site: _ScriptedClient) -> aiocoap.Context:
    context = await aiocoap.Context.create_client_context(transports=["udp6"])
    context.serversite = site
    site.context = context
    return context


async def _aio_request(
    context: aiocoap.Context, message: aiocoap.Message
) -> aiocoap.Message:
    response: aiocoap.Message = await context.request(message).response
    return response


async def scripted_bootstrap(
    server: LocalLwm2mServer,
    answers: dict[tuple[str, str], tuple[str, bytes]],
    *,
    pct: int = ContentFormat.SENML_CBOR,
    again: bool = False,
) -> tuple[_ScriptedClient, list[Lwm2mEvent]]:
    """Bootstrap-Request from a scripted peer; its requests and the outcomes
    (two with ``again``: the first bootstrap's, then the second's)."""
    import trio_asyncio
    from trio_asyncio import aio_as_trio

    def bootstrap_request() -> aiocoap.Message:
        message = aiocoap.Message(
            code=aiocoap.POST, uri=f"coap://127.0.0.1:{server.coap_port}/bs"
        )
        message.opt.uri_query = (f"ep={ENDPOINT}", f"pct={pct}")
        return message

    site = _ScriptedClient(answers)
    if again:
        site.again = bootstrap_request()
    outcomes: list[Lwm2mEvent] = []
    async with trio_asyncio.open_loop() as loop:
        context = await aio_as_trio(_aio_client, loop=loop)(site)
        try:
            with trio.fail_after(LIMIT):
                response = await aio_as_trio(_aio_request, loop=loop)(
                    context, bootstrap_request()
                )
                assert response.code.dotted == "2.04"
                while len(outcomes) < 1 + again:
                    since = outcomes[-1].seq + 1 if outcomes else 0
                    outcomes.append(await bootstrap_outcome(server, ENDPOINT, since))
        finally:
            with trio.move_on_after(5, shield=True):
                await aio_as_trio(context.shutdown, loop=loop)()
    return site, outcomes


async def test_bootstrap_sequence_seen_by_the_client(nursery: trio.Nursery) -> None:
    account = BootstrapAccount(
        server_uri="coaps://127.0.0.1:5684", psk_key=SERVER_KEY, lifetime=LIFETIME
    )
    server = await start_server(nursery, coap_port=0, bootstrap={ENDPOINT: account})
    # Discover: the client holds its bootstrap account and a stale /0/1.
    discover = ("2.05", b"</0>,</0/0>;ssid=9,</0/1>,</1>,</1/0>")
    site, (outcome,) = await scripted_bootstrap(
        server, {("GET", "/0"): discover}, pct=ContentFormat.TLV
    )
    assert outcome.kind is EventKind.BOOTSTRAPPED, outcome.detail
    assert [(s.method, s.path) for s in site.seen] == [
        ("DELETE", "/0"),
        ("DELETE", "/1"),
        ("GET", "/0"),
        ("PUT", "/0/2"),
        ("PUT", "/1/0"),
        ("POST", "/bs"),
    ]
    assert site.seen[2].accept == ContentFormat.LINK_FORMAT
    security, server_instance = site.seen[3], site.seen[4]
    assert (
        security.content_format == server_instance.content_format == (ContentFormat.TLV)
    )
    records = decode(
        security.payload, ContentFormat.TLV, Path(0, 2), ObjectStore().type_of
    )
    values = {str(r.path): r.value for r in records}
    assert values["/0/2/0"] == "coaps://127.0.0.1:5684"
    assert values["/0/2/5"] == SERVER_KEY
    assert values["/0/2/3"] == ENDPOINT.encode()
    assert written(outcome)["/0/2/1"] is False


@pytest.mark.parametrize(
    ("answers", "kind", "needle", "last"),
    [
        # A client without Bootstrap-Discover (LwM2M 1.0) gets /0/1.
        ({("GET", "/0"): ("4.05", b"")}, EventKind.BOOTSTRAPPED, "", "POST /bs"),
        (
            {("GET", "/0"): ("5.00", b"")},
            EventKind.BOOTSTRAP_FAILED,
            "Bootstrap-Discover /0 on 'urn:imei:351358815340515' answered 5.00",
            "GET /0",
        ),
        (
            {("GET", "/0"): ("2.05", b"</0/x>")},
            EventKind.BOOTSTRAP_FAILED,
            "named '/0/x', not an LwM2M path",
            "GET /0",
        ),
        (
            {("DELETE", "/1"): ("4.05", b"")},
            EventKind.BOOTSTRAP_FAILED,
            "Bootstrap-Delete /1",
            "DELETE /1",
        ),
        (
            {("GET", "/0"): ("2.05", b"</0/0>"), ("POST", "/bs"): ("4.06", b"")},
            EventKind.BOOTSTRAP_FAILED,
            "Bootstrap-Finish /bs",
            "POST /bs",
        ),
    ],
)
async def test_client_answers_decide_the_outcome(
    nursery: trio.Nursery,
    answers: dict[tuple[str, str], tuple[str, bytes]],
    kind: EventKind,
    needle: str,
    last: str,
) -> None:
    account = BootstrapAccount(server_uri="coap://127.0.0.1:5683")
    server = await start_server(nursery, coap_port=0, bootstrap_default=account)
    site, (outcome,) = await scripted_bootstrap(server, answers)
    assert outcome.kind is kind
    assert needle in outcome.detail
    # Nothing follows a failed step.
    assert f"{site.seen[-1].method} {site.seen[-1].path}" == last
    if kind is EventKind.BOOTSTRAPPED:
        assert ("PUT", "/0/1") in [(s.method, s.path) for s in site.seen]


async def test_a_new_bootstrap_request_replaces_the_one_in_progress(
    nursery: trio.Nursery,
) -> None:
    account = BootstrapAccount(server_uri="coap://127.0.0.1:5683")
    server = await start_server(nursery, coap_port=0, bootstrap_default=account)
    discover = ("2.05", b"</0/0>")
    site, (first, second) = await scripted_bootstrap(
        server, {("GET", "/0"): discover}, again=True
    )
    assert first.kind is EventKind.BOOTSTRAP_FAILED
    assert "replaced" in first.detail
    assert second.kind is EventKind.BOOTSTRAPPED
    steps = [f"{s.method} {s.path}" for s in site.seen]
    # The first bootstrap stopped at its Discover; the second ran whole, once.
    assert steps == [
        "DELETE /0", "DELETE /1", "GET /0",
        "DELETE /0", "DELETE /1", "GET /0", "PUT /0/1", "PUT /1/0", "POST /bs",
    ]  # fmt: skip
