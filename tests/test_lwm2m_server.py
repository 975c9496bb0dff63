"""The local LwM2M server (sandbox/lwm2m_server.py).

Rules, expiry and the queue-mode hold are tested through ``handle()`` in
virtual time, without sockets.  Everything else runs on loopback with real
UDP sockets and the real clock (STYLE P10): aiocoap under trio-asyncio as
the client (plain and DTLS-PSK), with a small site that answers the
server's management requests, and libcoap's ``coap-client-openssl`` as a
peer we did not write.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiocoap
import aiocoap.resource
import attrs
import pytest
import trio
import trio.testing

from protocols.lwm2m_formats import (
    ContentFormat,
    Path,
    Record,
    decode_senml_cbor,
    encode_senml_cbor,
    encode_senml_json,
)
from sandbox.lwm2m_server import (
    EventKind,
    LocalLwm2mServer,
    Lwm2mRegistry,
    Lwm2mRequest,
    Lwm2mRequestError,
    Lwm2mServerError,
    Lwm2mServerSettings,
    Lwm2mUnreachable,
    NotRegistered,
    Peer,
    _Refused,
)

ENDPOINT = "urn:imei:351358815340515"
KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
# coap-client 4.3.1 takes its key as text (-k), so its client has another.
TEXT_ENDPOINT = "urn:imei:351358815340516"
TEXT_KEY = b"a-printable-key!"
LINKS = b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</6/0>,</50009/0>'
REGISTER_QUERY = (f"ep={ENDPOINT}", "lt=43200", "lwm2m=1.1", "b=U")
# Real-socket exchanges on loopback answer in milliseconds.
LIMIT = 10.0

COAP_CLIENT = shutil.which("coap-client-openssl")


def _path(text: str) -> Path:
    return Path.parse(text)


# ---------------------------------------------------------------------------
# Without sockets: handle() and the registry


PEER = Peer(scheme="coap", address="127.0.0.1:40000")


def register_request(*query: str, payload: bytes = LINKS) -> Lwm2mRequest:
    return Lwm2mRequest(
        method="POST",
        path=("rd",),
        query=query,
        payload=payload,
        content_format=ContentFormat.LINK_FORMAT,
    )


@pytest.fixture
async def offline(nursery: trio.Nursery) -> LocalLwm2mServer:
    """A server with no listener: requests come through ``handle()``."""
    server = LocalLwm2mServer(Lwm2mServerSettings(coap_port=None, coaps_port=None))
    await nursery.start(server.run)
    return server


@pytest.mark.parametrize(
    ("query", "payload", "code", "needle"),
    [
        ((), LINKS, "4.00", "no endpoint name"),
        (("ep=",), LINKS, "4.00", "needs a value"),
        (("ep=a", "ep=b"), LINKS, "4.00", "repeated"),
        (("ep=a", "lt=abc"), LINKS, "4.00", "lt='abc'"),
        (("ep=a", "lt=0"), LINKS, "4.00", "lt='0'"),
        (("ep=a", "b=X"), LINKS, "4.00", "binding"),
        (("ep=a", "Q=1"), LINKS, "4.00", "Q takes no value"),
        (("ep=a", "lwm2m=one"), LINKS, "4.00", "malformed"),
        (("ep=a", "lwm2m=2.0"), LINKS, "4.12", "not supported"),
        (("ep=a",), b"", "4.00", "no object links"),
        (("ep=a",), b"</3/0", "4.00", "do not parse"),
        (("ep=a",), b"</3/0/1>", "4.00", "do not parse"),
        (("ep=a",), b"\xff</3/0>", "4.00", "UTF-8"),
    ],
)
async def test_bad_registrations_are_refused_with_a_reason(
    offline: LocalLwm2mServer,
    query: tuple[str, ...],
    payload: bytes,
    code: str,
    needle: str,
) -> None:
    reply = offline.handle(register_request(*query, payload=payload), PEER)
    assert reply.code == code
    assert needle in reply.diagnostic
    assert offline.registrations == {}
    assert list(offline.history) == []


async def test_registration_parameters_are_recorded(offline: LocalLwm2mServer) -> None:
    reply = offline.handle(
        register_request(f"ep={ENDPOINT}", "lt=300", "lwm2m=1.1", "b=U", "Q", "x=y"),
        PEER,
    )
    assert reply.code == "2.01"
    assert reply.location[0] == "rd" and len(reply.location) == 2
    registration = offline.registrations[ENDPOINT]
    assert registration.location == reply.location[1]
    assert (registration.lifetime, registration.binding) == (300, "U")
    assert registration.queue_mode and registration.lwm2m_version == "1.1"
    assert registration.root_attributes == {"rt": "oma.lwm2m", "ct": "112"}
    assert [str(path) for path, _ in registration.links] == [
        "/1/0",
        "/3/0",
        "/6/0",
        "/50009/0",
    ]
    assert registration.expires_at == registration.registered_at + 300


async def test_a_second_registration_replaces_the_first(
    offline: LocalLwm2mServer,
) -> None:
    first = offline.handle(register_request(f"ep={ENDPOINT}"), PEER)
    second = offline.handle(register_request(f"ep={ENDPOINT}"), PEER)
    assert first.location != second.location
    stale = Lwm2mRequest(method="POST", path=tuple(first.location))
    assert offline.handle(stale, PEER).code == "4.04"
    assert (
        offline.handle(
            Lwm2mRequest(method="POST", path=tuple(second.location)), PEER
        ).code
        == "2.04"
    )


async def test_other_methods_and_paths(offline: LocalLwm2mServer) -> None:
    assert offline.handle(Lwm2mRequest(method="GET", path=("rd",)), PEER).code == (
        "4.05"
    )
    assert offline.handle(Lwm2mRequest(method="POST", path=("x",)), PEER).code == (
        "4.04"
    )
    assert (
        offline.handle(Lwm2mRequest(method="DELETE", path=("rd", "nope")), PEER).code
        == "4.04"
    )


async def test_update_of_a_1_0_binding_sets_queue_mode(
    offline: LocalLwm2mServer,
) -> None:
    reply = offline.handle(register_request("ep=old", "lwm2m=1.0", "b=U"), PEER)
    assert not offline.registrations["old"].queue_mode
    update = Lwm2mRequest(method="POST", path=tuple(reply.location), query=("b=UQ",))
    assert offline.handle(update, PEER).code == "2.04"
    assert offline.registrations["old"].queue_mode
    assert offline.registrations["old"].binding == "UQ"


async def test_send_rules(offline: LocalLwm2mServer) -> None:
    pack = encode_senml_cbor([Record(_path("/3/0/9"), 87)])

    def send(content_format: int | None, payload: bytes, peer: Peer = PEER) -> str:
        request = Lwm2mRequest(
            method="POST", path=("dp",), payload=payload, content_format=content_format
        )
        return offline.handle(request, peer).code

    assert send(112, pack) == "4.04"  # not registered
    offline.handle(register_request(f"ep={ENDPOINT}"), PEER)
    assert send(112, pack) == "2.04"
    assert send(112, b"\x9f") == "4.00"
    assert send(None, pack) == "4.00"
    assert send(11542, pack) == "4.15"
    assert send(112, encode_senml_cbor([])) == "4.00"
    other = Peer(scheme="coap", address="127.0.0.1:40001")
    assert send(112, pack, other) == "4.04"
    assert offline.sends[ENDPOINT]["/3/0/9"].value == 87
    assert [e.kind for e in offline.history] == ["registered", "send"]


def test_registry_expiry_given_a_clock_value() -> None:
    registry = Lwm2mRegistry(expiry_grace=2.0)
    registration, previous = registry.register(
        register_request("ep=a", "lt=60"), PEER, 100.0
    )
    assert previous is None
    assert registry.next_expiry() == 162.0
    assert registry.expire(161.9) == []
    assert registry.expire(162.0) == [registration]
    assert registry.registrations == {}
    assert registry.by_location(registration.location) is None
    assert registry.next_expiry() == float("inf")


def test_updates_and_deletes_over_dtls_must_come_from_the_same_identity() -> None:
    registry = Lwm2mRegistry()
    owner = Peer(scheme="coaps", address="127.0.0.1:1", identity=b"a")
    registration, _ = registry.register(register_request("ep=a"), owner, 0.0)
    thief = Peer(scheme="coaps", address="127.0.0.1:2", identity=b"b")
    for peer in (thief, PEER):
        with pytest.raises(_Refused) as refused:
            registry.deregister(registration.location, peer)
        assert refused.value.code == "4.03"
    assert registry.deregister(registration.location, owner) == registration
    with pytest.raises(_Refused) as refused:
        registry.register(register_request("ep=a"), thief, 0.0)
    assert refused.value.code == "4.03"


async def test_registration_expires_after_its_lifetime(
    offline: LocalLwm2mServer, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    reply = offline.handle(register_request("ep=a", "lt=60"), PEER)
    await trio.sleep(50)
    update = Lwm2mRequest(method="POST", path=tuple(reply.location))
    assert offline.handle(update, PEER).code == "2.04"
    await trio.sleep(59.9)
    assert "a" in offline.registrations
    event = await offline.wait_for(EventKind.EXPIRED, "a")
    assert event.time == pytest.approx(start + 110)
    assert "a" not in offline.registrations
    assert offline.handle(update, PEER).code == "4.04"


async def test_queue_mode_requests_wait_for_the_client(
    offline: LocalLwm2mServer, autojump_clock: trio.testing.MockClock
) -> None:
    reply = offline.handle(register_request("ep=q", "Q"), PEER)
    assert offline.is_reachable("q")
    await trio.sleep(30)
    assert not offline.is_reachable("q")
    outcome: list[BaseException] = []

    async def read() -> None:
        try:
            await offline.read("q", "/3/0/1")
        except Exception as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.sleep(1000)
        assert outcome == []  # held
        update = Lwm2mRequest(method="POST", path=tuple(reply.location))
        offline.handle(update, PEER)
    # Released, then the request had no transport to go out on.
    assert len(outcome) == 1 and isinstance(outcome[0], Lwm2mUnreachable)

    async with trio.open_nursery() as nursery:
        await trio.sleep(31)
        nursery.start_soon(read)
        await trio.sleep(5)
        deregister = Lwm2mRequest(method="DELETE", path=tuple(reply.location))
        assert offline.handle(deregister, PEER).code == "2.02"
    assert isinstance(outcome[1], NotRegistered)


async def test_wait_for_sees_past_events_and_new_ones(
    offline: LocalLwm2mServer, autojump_clock: trio.testing.MockClock
) -> None:
    offline.handle(register_request("ep=a"), PEER)
    first = await offline.wait_for("registered", "a")
    since = offline.next_seq
    async with trio.open_nursery() as nursery:

        async def later() -> None:
            await trio.sleep(5)
            offline.handle(register_request("ep=a"), PEER)

        nursery.start_soon(later)
        second = await offline.wait_for("registered", "a", since=since)
    assert second.seq > first.seq
    assert second.time == first.time + 5
    with trio.move_on_after(100):
        await offline.wait_for("registered", "a", predicate=lambda e: e.seq > 99)
        pytest.fail("no such event")


# ---------------------------------------------------------------------------
# Real sockets: an aiocoap client under trio-asyncio


def _psk_settings() -> Lwm2mServerSettings:
    return Lwm2mServerSettings(
        coap_port=0,
        coaps_port=0,
        psk={
            ENDPOINT.encode(): KEY,
            TEXT_ENDPOINT.encode(): TEXT_KEY,
            b"intruder": b"intruder-key",
        },
    )


@pytest.fixture
async def server(nursery: trio.Nursery) -> LocalLwm2mServer:
    """The server on loopback, coap and coaps on free ports."""
    server = LocalLwm2mServer(_psk_settings())
    await nursery.start(server.run)
    assert server.coap_port and server.coaps_port
    return server


@attrs.frozen
class Response:
    code: str
    location: tuple[str, ...]
    payload: bytes
    content_format: int | None


async def _aio_client(
    transports: list[str],
    credentials: dict[str, Any],
    site: aiocoap.resource.Site | None,
) -> aiocoap.Context:
    context = await aiocoap.Context.create_client_context(transports=transports)
    context.client_credentials.load_from_dict(credentials)
    context.serversite = site
    return context


async def _aio_request(
    context: aiocoap.Context, message: aiocoap.Message
) -> aiocoap.Message:
    response: aiocoap.Message = await context.request(message).response
    return response


async def _aio_call(function: Callable[[], None]) -> None:
    function()


@attrs.define
class CoapTestClient:
    """An aiocoap client context in its own trio-asyncio loop.

    aiocoap's DTLS client keeps its connections in a weak pool: an idle
    connection nobody references is collected and its session reset, and
    the server's requests over it then go nowhere.  ``remotes`` holds every
    peer the client has talked to, as a device holds its session.
    """

    loop: Any
    context: aiocoap.Context
    base: str
    remotes: list[Any] = attrs.field(factory=list)

    async def request(
        self,
        method: aiocoap.numbers.codes.Code,
        path: str,
        *,
        query: tuple[str, ...] = (),
        payload: bytes = b"",
        content_format: int | None = None,
    ) -> Response:
        from trio_asyncio import aio_as_trio

        message = aiocoap.Message(code=method, uri=self.base + path, payload=payload)
        if query:
            message.opt.uri_query = query
        if content_format is not None:
            message.opt.content_format = content_format
        with trio.fail_after(LIMIT):
            response = await aio_as_trio(_aio_request, loop=self.loop)(
                self.context, message
            )
        self.remotes.append(response.remote)
        cf = response.opt.content_format
        return Response(
            code=response.code.dotted,
            location=tuple(response.opt.location_path),
            payload=response.payload,
            content_format=None if cf is None else int(cf),
        )

    async def register(self, *query: str, payload: bytes = LINKS) -> Response:
        return await self.request(
            aiocoap.POST,
            "/rd",
            query=query,
            payload=payload,
            content_format=ContentFormat.LINK_FORMAT,
        )

    async def call(self, function: Callable[[], None]) -> None:
        """Run ``function`` in the asyncio context (e.g. updated_state)."""
        from trio_asyncio import aio_as_trio

        await aio_as_trio(_aio_call, loop=self.loop)(function)


@asynccontextmanager
async def coap_client(
    base: str,
    *,
    identity: bytes | None = None,
    key: bytes = KEY,
    site: aiocoap.resource.Site | None = None,
) -> AsyncIterator[CoapTestClient]:
    import trio_asyncio
    from trio_asyncio import aio_as_trio

    credentials: dict[str, Any] = {}
    transports = ["udp6"]
    if identity is not None:
        transports = ["tinydtls"]
        credentials[base + "/*"] = {
            "dtls": {
                "psk": {"hex": key.hex()},
                "client-identity": {"hex": identity.hex()},
            }
        }
    async with trio_asyncio.open_loop() as loop:
        context = await aio_as_trio(_aio_client, loop=loop)(
            transports, credentials, site
        )
        try:
            yield CoapTestClient(loop, context, base)
        finally:
            with trio.move_on_after(5, shield=True):
                await aio_as_trio(context.shutdown, loop=loop)()


def coap_base(server: LocalLwm2mServer) -> str:
    return f"coap://127.0.0.1:{server.coap_port}"


def coaps_base(server: LocalLwm2mServer) -> str:
    return f"coaps://127.0.0.1:{server.coaps_port}"


class _Value(aiocoap.resource.ObservableResource):
    """A device resource: GET (observable), PUT and POST are recorded."""

    def __init__(self, path: str, value: Any) -> None:
        super().__init__()
        self.path = _path(path)
        self.value = value
        self.writes: list[tuple[str, int | None, bytes]] = []
        self.observers = 0

    def update_observation_count(self, newcount: int) -> None:
        self.observers = newcount

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        accept = request.opt.accept
        if accept is not None and int(accept) == ContentFormat.TEXT:
            return aiocoap.Message(
                payload=str(self.value).encode(), content_format=ContentFormat.TEXT
            )
        if accept is not None and int(accept) != ContentFormat.SENML_CBOR:
            return aiocoap.Message(code=aiocoap.NOT_ACCEPTABLE)
        payload = encode_senml_cbor([Record(self.path, self.value)])
        return aiocoap.Message(payload=payload, content_format=ContentFormat.SENML_CBOR)

    async def render_put(self, request: aiocoap.Message) -> aiocoap.Message:
        cf = request.opt.content_format
        self.writes.append(("PUT", None if cf is None else int(cf), request.payload))
        return aiocoap.Message(code=aiocoap.CHANGED)

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        cf = request.opt.content_format
        self.writes.append(("POST", None if cf is None else int(cf), request.payload))
        return aiocoap.Message(code=aiocoap.CHANGED)


def device_site() -> tuple[aiocoap.resource.Site, dict[str, _Value]]:
    resources = {
        "/3/0/1": _Value("/3/0/1", "Thingy:91"),
        "/3/0/4": _Value("/3/0/4", ""),
        "/3/0/13": _Value("/3/0/13", 1700000000),
        "/1/0/1": _Value("/1/0/1", 43200),
    }
    site = aiocoap.resource.Site()
    for path, resource in resources.items():
        site.add_resource(path.strip("/").split("/"), resource)
    return site, resources


async def test_register_update_deregister_over_coap(
    server: LocalLwm2mServer,
) -> None:
    async with coap_client(coap_base(server)) as client:
        created = await client.register(*REGISTER_QUERY, "Q")
        assert created.code == "2.01"
        assert created.location[0] == "rd" and len(created.location) == 2
        registration = server.registrations[ENDPOINT]
        assert registration.location == created.location[1]
        assert registration.lifetime == 43200 and registration.queue_mode
        assert registration.scheme == "coap"
        assert registration.remote.startswith("127.0.0.1:")
        event = await server.wait_for(EventKind.REGISTERED, ENDPOINT)
        assert event.registration == registration

        location = "/" + "/".join(created.location)
        updated = await client.request(aiocoap.POST, location, query=("lt=120",))
        assert updated.code == "2.04"
        assert server.registrations[ENDPOINT].lifetime == 120
        bad = await client.request(aiocoap.POST, location, query=("lt=x",))
        assert bad.code == "4.00" and b"lt='x'" in bad.payload

        deleted = await client.request(aiocoap.DELETE, location)
        assert deleted.code == "2.02"
        assert ENDPOINT not in server.registrations
        gone = await client.request(aiocoap.POST, location)
        assert gone.code == "4.04"
    kinds = [event.kind for event in server.history]
    assert kinds == ["registered", "updated", "deregistered"]


async def test_bad_registrations_over_coap_get_4_00(
    server: LocalLwm2mServer,
) -> None:
    async with coap_client(coap_base(server)) as client:
        missing_ep = await client.register("lt=60")
        bad_lifetime = await client.register("ep=x", "lt=-1")
        bad_links = await client.register("ep=x", payload=b"<not links")
    assert (missing_ep.code, bad_lifetime.code, bad_links.code) == ("4.00",) * 3
    assert b"no endpoint name" in missing_ep.payload
    assert server.registrations == {}


async def test_send_senml_cbor_updates_the_shadow(server: LocalLwm2mServer) -> None:
    records = [
        Record(_path("/3/0/7/0"), 3800),
        Record(_path("/6/0/0"), 63.42, time=1700000000),
        Record(_path("/6/0/1"), 10.39, time=1700000000),
    ]
    async with coap_client(coap_base(server)) as client:
        unregistered = await client.request(
            aiocoap.POST,
            "/dp",
            payload=encode_senml_cbor(records),
            content_format=ContentFormat.SENML_CBOR,
        )
        assert unregistered.code == "4.04"
        assert (await client.register(*REGISTER_QUERY)).code == "2.01"
        sent = await client.request(
            aiocoap.POST,
            "/dp",
            payload=encode_senml_cbor(records),
            content_format=ContentFormat.SENML_CBOR,
        )
        assert sent.code == "2.04"
        newer = [Record(_path("/3/0/7/0"), 3700)]
        sent = await client.request(
            aiocoap.POST,
            "/dp",
            payload=encode_senml_json(newer),
            content_format=ContentFormat.SENML_JSON,
        )
        assert sent.code == "2.04"
        malformed = await client.request(
            aiocoap.POST,
            "/dp",
            payload=b"\xa1\x00",
            content_format=ContentFormat.SENML_CBOR,
        )
        assert malformed.code == "4.00"
    shadow = server.sends[ENDPOINT]
    assert shadow["/3/0/7/0"].value == 3700
    assert shadow["/6/0/0"] == records[1]
    event = await server.wait_for(EventKind.SEND, ENDPOINT)
    assert list(event.records) == records


async def test_read_write_execute_observe_toward_the_client(
    server: LocalLwm2mServer,
) -> None:
    site, resources = device_site()
    async with coap_client(coap_base(server), site=site) as client:
        assert (await client.register(*REGISTER_QUERY)).code == "2.01"
        with trio.fail_after(LIMIT):
            model = await server.read(ENDPOINT, "/3/0/1")
            as_text = await server.read(ENDPOINT, "/3/0/1", accept=ContentFormat.TEXT)
            with pytest.raises(Lwm2mRequestError) as refused:
                await server.read(ENDPOINT, "/3/0/1", accept=ContentFormat.TLV)
            with pytest.raises(Lwm2mRequestError) as missing:
                await server.read(ENDPOINT, "/3/0/99")
            written = await server.write(
                ENDPOINT, "/1/0/1", [Record(_path("/1/0/1"), 3600)]
            )
            as_text_write = await server.write(
                ENDPOINT,
                "/1/0/1",
                [Record(_path("/1/0/1"), 60)],
                fmt=ContentFormat.TEXT,
            )
            executed = await server.execute(ENDPOINT, "/3/0/4", b"5")
        assert model == [Record(_path("/3/0/1"), "Thingy:91")]
        assert as_text == [Record(_path("/3/0/1"), "Thingy:91")]
        assert refused.value.code == "4.06"
        assert missing.value.code == "4.04"
        assert (written, as_text_write, executed) == ("2.04", "2.04", "2.04")
        method, cf, payload = resources["/1/0/1"].writes[0]
        assert (method, cf) == ("PUT", ContentFormat.SENML_CBOR)
        assert decode_senml_cbor(payload) == [Record(_path("/1/0/1"), 3600)]
        assert resources["/1/0/1"].writes[1] == ("PUT", ContentFormat.TEXT, b"60")
        assert resources["/3/0/4"].writes == [("POST", ContentFormat.TEXT, b"5")]

        with trio.fail_after(LIMIT):
            observation = await server.observe(ENDPOINT, "/3/0/13")
        assert observation.initial == [Record(_path("/3/0/13"), 1700000000)]
        clock = resources["/3/0/13"]
        assert clock.observers == 1
        for value in (1700000010, 1700000020):
            clock.value = value
            await client.call(clock.updated_state)
            with trio.fail_after(LIMIT):
                notification = await observation.notifications.receive()
            assert notification == [Record(_path("/3/0/13"), value)]
        event = await server.wait_for(EventKind.NOTIFICATION, ENDPOINT)
        assert event.path == _path("/3/0/13")
        with trio.fail_after(LIMIT):
            await server.cancel_observe(observation)
        # Cancelled proactively: the device forgot its observer at once.
        assert clock.observers == 0
        assert not observation.active
        async for _ in observation.notifications:
            pytest.fail("a notification after the cancel")


async def test_deregistration_ends_the_observations(server: LocalLwm2mServer) -> None:
    site, _resources = device_site()
    async with coap_client(coap_base(server), site=site) as client:
        created = await client.register(*REGISTER_QUERY)
        with trio.fail_after(LIMIT):
            observation = await server.observe(ENDPOINT, "/3/0/13")
        location = "/" + "/".join(created.location)
        assert (await client.request(aiocoap.DELETE, location)).code == "2.02"
        with trio.fail_after(LIMIT):
            async for _ in observation.notifications:
                pytest.fail("a notification after the deregistration")
        assert not observation.active


async def test_requests_to_an_unknown_endpoint_fail(server: LocalLwm2mServer) -> None:
    with pytest.raises(NotRegistered):
        await server.read("nobody", "/3/0/1")
    with pytest.raises(ValueError, match="resource"):
        await server.execute(ENDPOINT, "/3/0")


async def test_a_short_lifetime_expires_on_the_real_clock(
    server: LocalLwm2mServer,
) -> None:
    async with coap_client(coap_base(server)) as client:
        assert (await client.register("ep=brief", "lt=1")).code == "2.01"
    start = trio.current_time()
    with trio.fail_after(3):
        event = await server.wait_for(EventKind.EXPIRED, "brief")
    assert 0.5 < event.time - start <= 1.5
    assert "brief" not in server.registrations


async def test_queue_mode_read_is_held_until_the_client_updates(
    nursery: trio.Nursery,
) -> None:
    # A short window keeps this real-clock test under a second.
    server = LocalLwm2mServer(Lwm2mServerSettings(coap_port=0, queue_uptime=0.3))
    await nursery.start(server.run)
    site, _resources = device_site()
    async with coap_client(coap_base(server), site=site) as client:
        created = await client.register(*REGISTER_QUERY, "Q")
        await trio.sleep(0.4)
        assert not server.is_reachable(ENDPOINT)
        results: list[list[Record]] = []
        done = trio.Event()

        async def read() -> None:
            results.append(await server.read(ENDPOINT, "/3/0/1"))
            done.set()

        async with trio.open_nursery() as readers:
            readers.start_soon(read)
            await trio.sleep(0.3)
            assert results == []
            location = "/" + "/".join(created.location)
            assert (await client.request(aiocoap.POST, location)).code == "2.04"
            with trio.fail_after(LIMIT):
                await done.wait()
    assert results == [[Record(_path("/3/0/1"), "Thingy:91")]]


async def test_a_client_that_went_away_is_unreachable(
    server: LocalLwm2mServer,
) -> None:
    async with coap_client(coap_base(server)) as client:
        assert (await client.register(*REGISTER_QUERY)).code == "2.01"
    # Its socket is closed: the ICMP error ends the exchange at once.
    with trio.fail_after(LIMIT), pytest.raises(Lwm2mUnreachable, match=ENDPOINT):
        await server.read(ENDPOINT, "/3/0/1")


class _Silent(aiocoap.resource.Resource):
    """A resource that never answers (aiocoap acknowledges the request)."""

    def __init__(self) -> None:
        super().__init__()
        # Set from the asyncio context: trio-asyncio runs it in Trio's thread.
        self.reached = trio.Event()

    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        self.reached.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def test_stopping_the_server_fails_a_pending_read() -> None:
    server = LocalLwm2mServer(Lwm2mServerSettings(coap_port=0))
    site = aiocoap.resource.Site()
    silent = _Silent()
    site.add_resource(["3", "0", "1"], silent)
    outcome: list[Exception] = []

    async def read() -> None:
        try:
            await server.read(ENDPOINT, "/3/0/1")
        except Exception as exc:
            outcome.append(exc)

    async with trio.open_nursery() as readers:
        async with trio.open_nursery() as serving:
            await serving.start(server.run)
            async with coap_client(coap_base(server), site=site) as client:
                assert (await client.register(*REGISTER_QUERY)).code == "2.01"
                readers.start_soon(read)
                with trio.fail_after(LIMIT):
                    await silent.reached.wait()
                serving.cancel_scope.cancel()
    assert len(outcome) == 1 and isinstance(outcome[0], Lwm2mUnreachable)
    assert "LibraryShutdown" in str(outcome[0])


async def test_a_port_in_use_is_named() -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as taken:
        await taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        server = LocalLwm2mServer(Lwm2mServerSettings(coap_port=port))
        with pytest.raises(Lwm2mServerError, match=f"127.0.0.1:{port}"):
            await server.run()


# ---------------------------------------------------------------------------
# DTLS with PSK


async def test_dtls_registration_and_a_read_in_the_same_session(
    server: LocalLwm2mServer,
) -> None:
    site, _resources = device_site()
    async with coap_client(
        coaps_base(server), identity=ENDPOINT.encode(), site=site
    ) as client:
        created = await client.register(*REGISTER_QUERY)
        assert created.code == "2.01"
        registration = server.registrations[ENDPOINT]
        assert registration.scheme == "coaps"
        assert registration.identity == ENDPOINT.encode()
        with trio.fail_after(LIMIT):
            model = await server.read(ENDPOINT, "/3/0/1")
        assert model == [Record(_path("/3/0/1"), "Thingy:91")]
        sent = await client.request(
            aiocoap.POST,
            "/dp",
            payload=encode_senml_cbor([Record(_path("/3/0/9"), 80)]),
            content_format=ContentFormat.SENML_CBOR,
        )
        assert sent.code == "2.04"
        assert server.sends[ENDPOINT]["/3/0/9"].value == 80
        location = "/" + "/".join(created.location)
        assert (await client.request(aiocoap.DELETE, location)).code == "2.02"


async def test_dtls_identity_must_be_the_endpoint_name(
    server: LocalLwm2mServer,
) -> None:
    async with coap_client(
        coaps_base(server), identity=b"intruder", key=b"intruder-key"
    ) as client:
        refused = await client.register(*REGISTER_QUERY)
    assert refused.code == "4.03"
    assert b"intruder" in refused.payload
    assert server.registrations == {}


# ---------------------------------------------------------------------------
# libcoap's coap-client as the peer


async def coap_client_cli(*args: str, wait: int = 5) -> str:
    """Run coap-client (giving up after ``wait`` s); its output."""
    assert COAP_CLIENT is not None
    with trio.fail_after(LIMIT):
        result = await trio.run_process(
            [COAP_CLIENT, "-B", str(wait), *args],
            capture_stdout=True,
            capture_stderr=True,
        )
    return (result.stdout + result.stderr).decode(errors="replace")


@pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl is missing")
async def test_libcoap_client_registers_and_sends_over_coap(
    server: LocalLwm2mServer,
) -> None:
    # Both runs from one local port, so the Send comes from the registered
    # address.
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as probe:
        await probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    base = coap_base(server)
    await coap_client_cli(
        "-p", port, "-m", "post", "-t", "40", "-e", LINKS.decode(),
        f"{base}/rd?ep=libcoap&lt=60&lwm2m=1.1&b=U",
    )  # fmt: skip
    registration = server.registrations["libcoap"]
    assert registration.remote == f"127.0.0.1:{port}"
    assert registration.lifetime == 60
    pack = encode_senml_json([Record(_path("/3/0/9"), 55)]).decode()
    await coap_client_cli(
        "-p", port, "-m", "post", "-t", "110", "-e", pack, f"{base}/dp"
    )  # fmt: skip
    assert server.sends["libcoap"]["/3/0/9"].value == 55
    output = await coap_client_cli("-m", "post", "-e", "x", f"{base}/rd?lt=60")
    assert "4.00" in output


@pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl is missing")
async def test_libcoap_client_registers_over_dtls_psk(
    server: LocalLwm2mServer,
) -> None:
    base = coaps_base(server)
    key = TEXT_KEY.decode()
    output = await coap_client_cli(
        "-k", key, "-u", TEXT_ENDPOINT, "-m", "post", "-t", "40",
        "-e", LINKS.decode(), f"{base}/rd?ep={TEXT_ENDPOINT}&lt=60&lwm2m=1.1&b=U",
    )  # fmt: skip
    assert TEXT_ENDPOINT in server.registrations, output
    registration = server.registrations[TEXT_ENDPOINT]
    assert registration.identity == TEXT_ENDPOINT.encode()
    # Another run is another DTLS session: the identity names the client.
    pack = encode_senml_json([Record(_path("/3/0/9"), 42)]).decode()
    await coap_client_cli(
        "-k", key, "-u", TEXT_ENDPOINT, "-m", "post", "-t", "110",
        "-e", pack, f"{base}/dp",
    )  # fmt: skip
    assert server.sends[TEXT_ENDPOINT]["/3/0/9"].value == 42


@pytest.mark.skipif(COAP_CLIENT is None, reason="coap-client-openssl is missing")
async def test_libcoap_client_with_unknown_psk_gets_no_session(
    server: LocalLwm2mServer,
) -> None:
    base = coaps_base(server)
    query = f"{base}/rd?ep={TEXT_ENDPOINT}"
    unknown = await coap_client_cli(
        "-k", "key", "-u", "stranger", "-m", "post", "-t", "40",
        "-e", LINKS.decode(), query,
    )  # fmt: skip
    assert "alert" in unknown
    # A known identity with the wrong key fails its handshake; tinydtls
    # sends no alert, so the client gives up after its wait.
    await coap_client_cli(
        "-k", "not-the-key", "-u", TEXT_ENDPOINT, "-m", "post", "-t", "40",
        "-e", LINKS.decode(), query, wait=1,
    )  # fmt: skip
    assert server.registrations == {}
    assert list(server.history) == []
