"""The LwM2M client backend: registration, timing, Send, server requests.

Timing runs in virtual time against a fake of our ``CoapSession``
interface; the end-to-end tests run the cloud actor against the sandbox
LwM2M server over real UDP on loopback, without autojump.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from backends.coap_transport import CoapRequest, CoapResponse, CoapSettings
from backends.errors import (
    BackendBroken,
    BackendBusy,
    BackendNotConnected,
    BackendTimeout,
)
from backends.lwm2m import (
    Lwm2mBackend,
    Lwm2mSettings,
    Lwm2mState,
    decode_send,
    lwm2m_backend,
)
from protocols import wrapper as wrap
from protocols.base import Payload
from protocols.json_data import Battery
from protocols.lwm2m_codec import Lwm2mCodec
from protocols.lwm2m_formats import (
    ContentFormat,
    Path,
    Record,
    encode_senml_cbor,
    encode_tlv,
)
from protocols.lwm2m_objects import ObjectStore
from protocols.peripherals import AgnssRequest, PgpsRequest
from tests.test_lwm2m_codec import GNSS, ROAM

ENDPOINT = "urn:imei:352656100000010"
LOCATION = ("rd", "a1")
# The first update is due this long after a registration (3600 - 60 s).
FIRST_UPDATE = 3540.0


# --------------------------------------------------------------------------
# A fake of our CoapSession interface, and the server behind it


@attrs.frozen
class Call:
    """One request the client made, at virtual time ``t``."""

    t: float
    method: str
    path: str
    query: tuple[str, ...]
    payload: bytes
    content_format: int | None


Responder = Callable[[Call], CoapResponse | None]


@attrs.define(eq=False)
class FakeServer:
    """Answers the client's requests; ``None`` from ``answer`` means silence."""

    answer: Responder | None = None
    start_error: Exception | None = None
    calls: list[Call] = attrs.field(factory=list)
    notified: list[str] = attrs.field(factory=list)
    sessions: list[FakeSession] = attrs.field(factory=list)

    def session(self, settings: CoapSettings, handler: Any) -> FakeSession:
        session = FakeSession(self, settings, handler)
        self.sessions.append(session)
        return session

    def respond(self, call: Call) -> CoapResponse | None:
        if self.answer is not None:
            return self.answer(call)
        return default_answer(call)

    def requests(self, method: str | None = None) -> list[Call]:
        return [c for c in self.calls if method is None or c.method == method]

    def updates(self) -> list[Call]:
        return [c for c in self.calls if c.method == "POST" and c.path == "/rd/a1"]


def default_answer(call: Call) -> CoapResponse:
    if call.path == "/rd" and call.method == "POST":
        return CoapResponse("2.01", location_path=LOCATION)
    if call.method == "DELETE":
        return CoapResponse("2.02")
    return CoapResponse("2.04")


@attrs.define(eq=False)
class FakeSession:
    server: FakeServer
    settings: CoapSettings
    handler: Any
    closed: trio.Event = attrs.field(factory=trio.Event)
    lost: bool = False
    _stop: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self.server.start_error is not None:
            raise self.server.start_error
        task_status.started()
        try:
            await self._stop.wait()
        finally:
            self.closed.set()  # cancelled or closed: the context shuts down
        if self.lost:
            raise BackendBroken("DTLS session lost")

    def lose(self) -> None:
        """The DTLS session breaks (``run`` raises, as CoapSession does)."""
        self.lost = True
        self._stop.set()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: tuple[str, ...] | list[str] = (),
        payload: bytes = b"",
        content_format: int | None = None,
        accept: int | None = None,
        confirmable: bool = True,
    ) -> CoapResponse:
        call = Call(
            trio.current_time(), method, path, tuple(query), payload, content_format
        )
        self.server.calls.append(call)
        response = self.server.respond(call)
        if response is None:
            await trio.sleep(self.settings.request_timeout)
            raise BackendTimeout(f"{method} {path}: no response")
        return response

    def notify(self, path_prefix: str, *, include_ancestors: bool = False) -> None:
        self.server.notified.append(path_prefix)

    async def aclose(self) -> None:
        self._stop.set()


@attrs.define(eq=False)
class Client:
    backend: Lwm2mBackend
    server: FakeServer
    events: list[tuple[float, wrap.WrapperEvent]]

    def kinds(self) -> list[type[wrap.WrapperEvent]]:
        return [type(e) for _, e in self.events]

    def times(self, kind: type[wrap.WrapperEvent]) -> list[float]:
        return [t for t, e in self.events if isinstance(e, kind)]

    async def connected(self) -> float:
        await self.backend.connect()
        await trio.testing.wait_all_tasks_blocked()
        assert self.backend.state is Lwm2mState.CONNECTED
        return trio.current_time()

    async def request(self, method: str, path: str, **kwargs: Any) -> CoapResponse:
        request = CoapRequest(
            method=method,
            path=tuple(path.strip("/").split("/")) if path.strip("/") else (),
            query=(),
            payload=kwargs.pop("payload", b""),
            content_format=kwargs.pop("content_format", None),
            accept=kwargs.pop("accept", None),
            observe=kwargs.pop("observe", None),
            remote="coap://127.0.0.1:5683",
        )
        return await self.backend._handle_request(request)


async def start_client(
    nursery: trio.Nursery, server: FakeServer | None = None, **settings: Any
) -> Client:
    server = server or FakeServer()
    settings.setdefault("server_uri", "coaps://127.0.0.1:5684")
    settings.setdefault("psk", bytes(range(16)))
    backend = Lwm2mBackend(
        Lwm2mSettings(endpoint=ENDPOINT, **settings),
        Lwm2mCodec(ObjectStore()),
        session_factory=server.session,
    )
    events: list[tuple[float, wrap.WrapperEvent]] = []
    backend.init(lambda e: events.append((trio.current_time(), e)))
    await nursery.start(backend.run)
    return Client(backend, server, events)


# --------------------------------------------------------------------------
# Registration and its timing (virtual time)


async def test_register_query_links_and_psk(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    assert client.kinds() == [wrap.WrapperConnecting, wrap.WrapperConnected]
    (register,) = client.server.requests("POST")
    assert register.path == "/rd"
    assert register.query == (f"ep={ENDPOINT}", "lt=43200", "lwm2m=1.1", "b=U", "Q")
    assert register.content_format == ContentFormat.LINK_FORMAT
    links = register.payload.decode()
    for link in ("</3/0>", "</4/0>", "</6/0>", "</50009/0>", "</33625/0>", "</1/0>"):
        assert link in links
    assert "</0/" not in links  # the Security object is never registered
    settings = client.server.sessions[0].settings
    assert settings.psk_identity == ENDPOINT.encode()
    assert settings.psk == bytes(range(16))
    assert client.backend.snapshot()["location"] == "/rd/a1"


async def test_updates_before_the_period_runs_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    t0 = await client.connected()
    await trio.sleep(3 * FIRST_UPDATE + 10)
    times = [c.t - t0 for c in client.server.updates()]
    assert times == [FIRST_UPDATE, 2 * FIRST_UPDATE, 3 * FIRST_UPDATE]
    assert all(c.query == () and c.payload == b"" for c in client.server.updates())
    assert client.kinds() == [wrap.WrapperConnecting, wrap.WrapperConnected]


async def test_short_lifetime_caps_the_update_period(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery, lifetime=300)
    t0 = await client.connected()
    await trio.sleep(500)
    assert [c.t - t0 for c in client.server.updates()] == [240.0, 480.0]
    assert client.server.requests("POST")[0].query[1] == "lt=300"


async def test_lifetime_forced_back_and_announced(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    t0 = await client.connected()
    store = client.backend.store
    # The server shortens the lifetime: the next update says so.
    await trio.sleep(100)
    response = await client.request(
        "PUT", "/1/0/1", payload=b"600", content_format=ContentFormat.TEXT
    )
    assert response.code == "2.04"
    await trio.testing.wait_all_tasks_blocked()
    (update,) = client.server.updates()
    assert (update.t - t0, update.query) == (100.0, ("lt=600",))
    # Updates now come every 540 s; after a re-registration the firmware
    # forces the server's lifetime back to the configured one.
    client.server.answer = lambda c: (
        CoapResponse("4.04") if c.path == "/rd/a1" else default_answer(c)
    )
    await trio.sleep(541)
    assert [c.t - t0 for c in client.server.updates()] == [100.0, 640.0]
    assert store.get("/1/0/1") == 43200
    # That registration said lt=600; the next update (540 s on) carries
    # the lifetime forced back, and then the period is the usual one.
    client.server.answer = None
    await trio.sleep(540 + FIRST_UPDATE)
    updates = client.server.updates()[-2:]
    assert [(c.t - t0, c.query) for c in updates] == [
        (640.0 + 540, ("lt=43200",)),
        (640.0 + 540 + FIRST_UPDATE, ()),
    ]
    # The Registration Update Trigger sends one at once.
    assert (await client.request("POST", "/1/0/8")).code == "2.04"
    await trio.testing.wait_all_tasks_blocked()
    assert client.server.updates()[-1].t == trio.current_time()


async def test_failed_update_registers_again(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    t0 = await client.connected()
    client.server.answer = lambda c: (
        CoapResponse("4.04") if c.path == "/rd/a1" else default_answer(c)
    )
    await trio.sleep(FIRST_UPDATE + 1)
    registrations = [c for c in client.server.calls if c.path == "/rd"]
    assert [c.t - t0 for c in registrations] == [0.0, FIRST_UPDATE]
    assert client.backend.state is Lwm2mState.CONNECTED
    assert wrap.WrapperDisconnected not in client.kinds()
    assert client.times(wrap.WrapperConnected) == [t0, t0 + FIRST_UPDATE]


async def test_update_timeout_then_refused_registration_disconnects(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    t0 = await client.connected()
    client.server.answer = lambda c: (
        None if c.path == "/rd/a1" else CoapResponse("4.03")
    )
    await trio.sleep(FIRST_UPDATE + 100)
    # The update goes unanswered for request_timeout (93 s): REG_TIMEOUT,
    # a new registration is refused: REGISTRATION_FAILURE.
    assert client.backend.state is Lwm2mState.DISCONNECTED
    (t_disconnected,) = client.times(wrap.WrapperDisconnected)
    assert t_disconnected - t0 == FIRST_UPDATE + 93.0
    _, last = client.events[-1]
    assert isinstance(last, wrap.WrapperDisconnected)
    assert "re-registration failed" in last.reason
    assert client.server.sessions[0].closed.is_set()
    await client.backend.connect()  # DISCONNECTED again: a new attempt works


async def test_refused_registration_is_a_disconnection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = FakeServer(answer=lambda c: CoapResponse("4.00"))
    client = await start_client(nursery, server)
    await client.backend.connect()
    await trio.testing.wait_all_tasks_blocked()
    assert client.kinds() == [wrap.WrapperConnecting, wrap.WrapperDisconnected]
    _, last = client.events[-1]
    assert isinstance(last, wrap.WrapperDisconnected)
    assert "registration failed" in last.reason
    assert client.backend.state is Lwm2mState.DISCONNECTED


async def test_session_that_cannot_start_is_a_disconnection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = FakeServer(start_error=BackendTimeout("no DTLS handshake answer"))
    client = await start_client(nursery, server)
    await client.backend.connect()
    await trio.testing.wait_all_tasks_blocked()
    assert client.kinds() == [wrap.WrapperConnecting, wrap.WrapperDisconnected]
    assert server.calls == []


async def test_lost_session_is_a_network_error(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    client.server.sessions[0].lose()
    await trio.testing.wait_all_tasks_blocked()
    assert client.kinds()[-1] is wrap.WrapperError
    assert client.backend.state is Lwm2mState.DISCONNECTED


async def test_disconnect_deregisters(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    await client.backend.disconnect()
    (delete,) = client.server.requests("DELETE")
    assert delete.path == "/rd/a1"
    assert client.kinds()[-1] is wrap.WrapperDisconnected
    assert client.server.sessions[0].closed.is_set()
    assert client.backend.state is Lwm2mState.DISCONNECTED
    await trio.sleep(2 * FIRST_UPDATE)
    assert client.server.updates() == []  # nothing after de-registration


async def test_failed_deregistration_is_an_error(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    client.server.answer = lambda c: CoapResponse("4.04")
    await client.backend.disconnect()
    assert client.kinds()[-2:] == [wrap.WrapperDisconnected, wrap.WrapperError]


async def test_connect_refusals(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery, FakeServer(answer=lambda c: None))
    await client.backend.connect()
    with pytest.raises(BackendBusy):
        await client.backend.connect()
    await client.backend.disconnect()  # abandons the hanging attempt
    assert client.backend.state is Lwm2mState.DISCONNECTED
    assert wrap.WrapperDisconnected not in client.kinds()


BOOTSTRAP_URI = "coaps://127.0.0.1:5694"


async def bootstrap_request(
    client: Client, method: str, path: str, records: list[Record] | None = None
) -> CoapResponse:
    """A request from the bootstrap server (the first session)."""
    handler = client.server.sessions[0].handler
    payload = b"" if records is None else encode_senml_cbor(records)
    return await handler(
        CoapRequest(
            method=method,
            path=tuple(p for p in path.split("/") if p),
            query=(),
            payload=payload,
            content_format=None if records is None else ContentFormat.SENML_CBOR,
            accept=None,
            observe=None,
            remote=BOOTSTRAP_URI,
        )
    )


def rec(path: str, value: Any) -> Record:
    return Record(Path.parse(path), value)


SERVER_ACCOUNT = [
    rec("/0/1/0", "coap://127.0.0.1:5683"),
    rec("/0/1/1", False),
    rec("/0/1/2", 3),
    rec("/0/1/10", 101),
]
SERVER_INSTANCE = [rec("/1/0/0", 101), rec("/1/0/1", 600), rec("/1/0/7", "U")]


async def test_bootstrap_then_register(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery, bootstrap=True, server_uri=BOOTSTRAP_URI)
    await client.backend.connect()
    await trio.testing.wait_all_tasks_blocked()
    (request,) = client.server.calls
    assert (request.method, request.path) == ("POST", "/bs")
    assert request.query == (f"ep={ENDPOINT}", "pct=112")
    bootstrap_session = client.server.sessions[0].settings
    assert bootstrap_session.uri == BOOTSTRAP_URI
    assert bootstrap_session.psk_identity == ENDPOINT.encode()
    # Finish before anything usable was written: 4.06, still waiting.
    assert (await bootstrap_request(client, "POST", "/bs")).code == "4.06"
    assert (await bootstrap_request(client, "DELETE", "/")).code == "2.02"
    assert client.backend.store.get("/0/0/1") is True  # its own account stays
    assert (await bootstrap_request(client, "PUT", "/0/1", SERVER_ACCOUNT)).code == (
        "2.04"
    )
    assert (await bootstrap_request(client, "PUT", "/1/0", SERVER_INSTANCE)).code == (
        "2.04"
    )
    refused = await bootstrap_request(client, "PUT", "/3/0", [rec("/3/0/0", "x")])
    assert refused.code == "4.05"
    read = await bootstrap_request(client, "GET", "/0/1")  # not Discover
    assert read.code == "4.05"
    assert (await bootstrap_request(client, "POST", "/bs")).code == "2.04"
    await trio.testing.wait_all_tasks_blocked()
    # Then the registration, with the account and lifetime written.
    assert client.server.sessions[0].closed.is_set()
    assert client.server.sessions[1].settings.uri == "coap://127.0.0.1:5683"
    register = client.server.calls[-1]
    assert register.path == "/rd" and "lt=600" in register.query
    assert client.kinds() == [wrap.WrapperConnecting, wrap.WrapperConnected]
    assert client.backend.store.get("/1/0/1") == 43200  # forced back
    assert client.backend.counters["bootstraps"] == 1


async def test_bootstrap_without_finish_is_a_disconnection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery, bootstrap=True, server_uri=BOOTSTRAP_URI)
    t0 = trio.current_time()
    await client.backend.connect()
    await trio.sleep(200)
    (t_disconnected,) = client.times(wrap.WrapperDisconnected)
    assert t_disconnected - t0 == 120.0
    _, last = client.events[-1]
    assert isinstance(last, wrap.WrapperDisconnected)
    assert "bootstrap failed" in last.reason
    assert len(client.server.sessions) == 1  # never reached a server


async def test_refused_registration_sends_back_to_bootstrap(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    server = FakeServer(
        answer=lambda c: CoapResponse("4.03") if c.path == "/rd" else default_answer(c)
    )
    client = await start_client(
        nursery, server, bootstrap=True, server_uri=BOOTSTRAP_URI
    )
    await client.backend.connect()
    await trio.testing.wait_all_tasks_blocked()
    await bootstrap_request(client, "PUT", "/0/1", SERVER_ACCOUNT)
    await bootstrap_request(client, "PUT", "/1/0", SERVER_INSTANCE)
    await bootstrap_request(client, "POST", "/bs")
    await trio.testing.wait_all_tasks_blocked()
    assert client.kinds()[-1] is wrap.WrapperDisconnected
    store = client.backend.store
    assert store.instances(0) == [0] and store.instances(1) == []
    await client.backend.connect()
    await trio.testing.wait_all_tasks_blocked()
    assert client.server.calls[-1].path == "/bs"  # bootstrapping again


async def test_queue_mode_sleeps_after_30_s_without_traffic(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    backend = client.backend
    await trio.sleep(29.5)
    assert not backend.sleeping
    await trio.sleep(1)
    assert backend.sleeping
    await backend.data_send(Payload(paths=("/3/0/0",)), True, 0)
    await trio.testing.wait_all_tasks_blocked()
    assert not backend.sleeping
    await trio.sleep(20)
    await client.request("GET", "/3/0/0")  # a server request keeps it awake
    await trio.sleep(29)
    assert not backend.sleeping
    await trio.sleep(2)
    assert backend.sleeping
    assert backend.snapshot()["sleeping"] is True


# --------------------------------------------------------------------------
# Send, assistance, server requests (virtual time, fake session)


async def test_send_posts_senml_cbor_of_the_paths(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    backend = client.backend
    with pytest.raises(BackendNotConnected):
        await backend.data_send(Payload(paths=("/3/0/7",)), True, 0)
    await client.connected()
    codec = backend.lwm2m_codec
    payload = codec.encode_regular(bat=Battery(64, 1_700_000_000_000), roam=ROAM)
    await backend.data_send(payload, True, 0)
    await trio.testing.wait_all_tasks_blocked()
    (send,) = [c for c in client.server.calls if c.path == "/dp"]
    assert send.method == "POST"
    assert send.content_format == ContentFormat.SENML_CBOR
    values = {str(r.path): r.value for r in decode_send(send.payload)}
    assert values["/3/0/7/0"] == 64
    assert values["/3/0/13"] == ROAM.timestamp // 1000
    assert values["/4/0/8"] == ROAM.cell_id
    assert values["/4/0/1/1"] == 7
    assert not any(p.startswith("/6") for p in values)
    assert backend.counters["sends"] == 1


async def test_one_assistance_request_in_flight(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    backend = client.backend
    await client.connected()
    codec = backend.lwm2m_codec
    agnss = codec.encode_agnss_request(
        AgnssRequest(data_flags=0x01, sv_mask_ephe=0, sv_mask_alm=0), ROAM
    )
    await backend.agnss_request_send(agnss, True, 0)
    pgps = codec.encode_pgps_request(
        PgpsRequest(
            prediction_count=42,
            prediction_period_min=240,
            gps_day=17000,
            gps_time_of_day=0,
        )
    )
    await backend.pgps_request_send(pgps, True, 0)
    await trio.testing.wait_all_tasks_blocked()
    sends = [c for c in client.server.calls if c.path == "/dp"]
    assert len(sends) == 1  # P-GPS waits for the A-GNSS result
    assert {str(r.path): r.value for r in decode_send(sends[0].payload)}[
        "/33625/0/0"
    ] == 0
    # The server answers: data, then the result code.
    data = encode_senml_cbor(
        [
            Record(Path.parse("/33625/0/6"), b"\x01agnss"),
            Record(Path.parse("/33625/0/7"), 0),
        ]
    )
    response = await client.request(
        "POST", "/33625/0", payload=data, content_format=ContentFormat.SENML_CBOR
    )
    assert response.code == "2.04"
    await trio.testing.wait_all_tasks_blocked()
    received = [
        e for _, e in client.events if isinstance(e, wrap.WrapperAgnssDataReceived)
    ]
    assert [e.data for e in received] == [b"\x01agnss"]
    sends = [c for c in client.server.calls if c.path == "/dp"]
    assert len(sends) == 2
    second = {str(r.path): r.value for r in decode_send(sends[1].payload)}
    assert second["/33625/0/0"] == 1 and second["/33625/0/2"] == 42
    # Now P-GPS is in flight: its data goes to the P-GPS sink.
    await client.request(
        "POST",
        "/33625/0",
        payload=encode_senml_cbor([Record(Path.parse("/33625/0/6"), b"pgps")]),
        content_format=ContentFormat.SENML_CBOR,
    )
    assert isinstance(client.events[-1][1], wrap.WrapperPgpsDataReceived)


async def test_server_requests_get_lwm2m_codes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    read = await client.request("GET", "/3/0/0")
    assert (read.code, read.payload) == ("2.05", b"Nordic Semiconductor ASA")
    assert read.content_format == ContentFormat.TEXT
    tlv = await client.request("GET", "/50009/0", accept=ContentFormat.TLV)
    assert tlv.code == "2.05" and tlv.content_format == ContentFormat.TLV
    assert (await client.request("GET", "/3/0/0", accept=9999)).code == "4.06"
    assert (await client.request("GET", "/12345/0")).code == "4.04"
    assert (await client.request("GET", "/3/0/77")).code == "4.04"
    assert (await client.request("GET", "/abc")).code == "4.04"
    read_only = await client.request(
        "PUT", "/3/0/0", payload=b"x", content_format=ContentFormat.TEXT
    )
    assert read_only.code == "4.05"
    bad_tlv = await client.request(
        "PUT", "/50009/0/2", payload=b"\xc8\x02", content_format=ContentFormat.TLV
    )
    assert bad_tlv.code == "4.00"
    bad_senml = await client.request(
        "POST", "/50009/0", payload=b"\x9f", content_format=ContentFormat.SENML_CBOR
    )
    assert bad_senml.code == "4.00"
    unknown_format = await client.request(
        "PUT", "/50009/0/2", payload=b"60", content_format=1234
    )
    assert unknown_format.code == "4.15"
    no_format = await client.request("PUT", "/50009/0/2", payload=b"60")
    assert no_format.code == "4.00"
    assert (await client.request("DELETE", "/3/0")).code == "4.05"
    assert (await client.request("POST", "/3303")).code == "4.05"
    assert client.backend.store.get("/50009/0/2") == 300
    discover = await client.request("GET", "/3303", accept=ContentFormat.LINK_FORMAT)
    assert discover.code == "2.05"
    assert b"</3303/0/5700>" in discover.payload


async def test_config_write_reboot_and_observe(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client = await start_client(nursery)
    await client.connected()
    payload = encode_tlv(
        [Record(Path.parse("/50009/0/2"), 60), Record(Path.parse("/50009/0/0"), True)],
        Path.parse("/50009/0"),
        client.backend.store.type_of,
    )
    response = await client.request(
        "POST", "/50009/0", payload=payload, content_format=ContentFormat.TLV
    )
    assert response.code == "2.04"
    (received,) = [
        e for _, e in client.events if isinstance(e, wrap.WrapperDataReceived)
    ]
    config = client.backend.codec.decode_config(received.data, _default_config())
    assert (config.active_wait_timeout, config.active_mode) == (60, False)
    assert "/50009/0/2" in client.server.notified
    invalid = await client.request(
        "PUT", "/50009/0/2", payload=b"0", content_format=ContentFormat.TEXT
    )
    assert invalid.code == "4.00"
    assert client.backend.store.get("/50009/0/2") == 60
    assert (
        len([e for _, e in client.events if isinstance(e, wrap.WrapperDataReceived)])
        == 1
    )
    assert (await client.request("POST", "/3/0/4")).code == "2.04"
    assert client.kinds()[-1] is wrap.WrapperRebootRequest


def _default_config() -> Any:
    from protocols.config import DeviceConfig

    return DeviceConfig()


def test_factory_warns_on_the_default_key_and_provisions_it() -> None:
    from tracker.config import DEFAULT_LWM2M_PSK, Lwm2mConfig

    with capture_logs() as logs:
        backend = lwm2m_backend(Lwm2mConfig(), endpoint=ENDPOINT)
    assert backend.settings.endpoint == ENDPOINT
    assert backend.settings.psk == bytes.fromhex(DEFAULT_LWM2M_PSK)
    assert backend.store.get("/0/0/5") == backend.settings.psk
    assert backend.store.get("/0/0/3") == ENDPOINT.encode()
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["lwm2m_default_psk"]
    assert "production" in warnings[0]["message"]

    with capture_logs() as logs:
        custom = lwm2m_backend(
            Lwm2mConfig(psk="aa" * 16, provision_credentials=False),
            endpoint="tracker-7",
        )
    assert custom.settings.endpoint == "tracker-7"
    assert custom.store.get("/0/0/5") == b""  # left to the modem
    assert [e for e in logs if e["log_level"] == "warning"] == []


# --------------------------------------------------------------------------
# End to end: the cloud actor, this backend and the sandbox LwM2M server
# over real UDP on loopback (no autojump: real sockets).


@attrs.define(eq=False)
class Device:
    """The cloud and data actors on a bus, with this backend."""

    bus: Any
    backend: Lwm2mBackend
    server: Any
    seen: list[Any]

    def names(self) -> list[str]:
        return [e.spec_name for e in self.seen]

    changed: trio.Event = attrs.field(factory=trio.Event)

    def record(self, event: Any) -> None:
        self.seen.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, spec_name: str, count: int = 1) -> None:
        with trio.fail_after(10):
            while self.names().count(spec_name) < count:
                await self.changed.wait()


async def start_device(nursery: trio.Nursery, *, lifetime: int = 43200) -> Device:
    from actors.backoff import SEED_TABLE, ReconnectBackoff
    from actors.cloud import CloudActor
    from actors.data import DataActor
    from actors.runtime import Bus
    from protocols.modem import ModemInitialized, ModemLteConnected
    from sandbox.lwm2m_server import LocalLwm2mServer, Lwm2mServerSettings

    server = LocalLwm2mServer(Lwm2mServerSettings(coap_port=0))
    await nursery.start(server.run)
    backend = Lwm2mBackend(
        Lwm2mSettings(
            server_uri=f"coap://127.0.0.1:{server.coap_port}",
            endpoint=ENDPOINT,
            psk=bytes(range(16)),
            request_timeout=5.0,
            lifetime=lifetime,
        ),
        Lwm2mCodec(ObjectStore()),
    )
    bus = Bus()
    cloud = CloudActor(bus, backend=backend, backoff=ReconnectBackoff(SEED_TABLE, 10))
    data = DataActor(bus, codec=backend.codec, flavour=None)
    await nursery.start(backend.run)
    await nursery.start(cloud.run)
    await nursery.start(data.run)
    device = Device(bus, backend, server, [])
    bus.taps.append(device.record)
    bus.publish(ModemInitialized())
    bus.publish(ModemLteConnected())
    await device.wait_for("CLOUD_EVT_CONNECTED")
    return device


async def test_end_to_end_update_before_the_lifetime_runs_out(
    nursery: trio.Nursery,
) -> None:
    """A 62 s lifetime: the update goes 60 s early (2 s in), in real time."""
    device = await start_device(nursery, lifetime=62)
    server = device.server
    registered = server.registrations[ENDPOINT]
    assert registered.lifetime == 62
    updated = await server.wait_for("updated", ENDPOINT)
    assert 1.5 <= updated.time - registered.registered_at <= 4.0
    renewed = server.registrations[ENDPOINT]
    assert renewed.location == registered.location
    assert renewed.expires_at - updated.time == pytest.approx(62, abs=0.5)
    await device.backend.disconnect()
    await server.wait_for("deregistered", ENDPOINT)
    assert ENDPOINT not in server.registrations


async def test_end_to_end_register_send_and_configure(nursery: trio.Nursery) -> None:
    from protocols.data import DataSend
    from sandbox.lwm2m_server import EventKind

    device = await start_device(nursery)
    server, backend = device.server, device.backend
    registration = server.registrations[ENDPOINT]
    assert registration.lifetime == 43200
    assert registration.queue_mode is True
    assert registration.location == backend.snapshot()["location"].split("/")[-1]

    # A regular update arrives with the right paths and values.
    since = server.next_seq
    payload = backend.lwm2m_codec.encode_regular(
        bat=Battery(55, 1_700_000_000_000), roam=ROAM
    )
    device.bus.publish(DataSend(payload))
    with trio.fail_after(10):
        event = await server.wait_for(EventKind.SEND, ENDPOINT, since=since)
    sent = {str(r.path): r.value for r in event.records}
    assert sent["/3/0/7/0"] == 55
    assert sent["/4/0/8"] == ROAM.cell_id
    assert sent["/4/0/0"] == 7
    assert "/6/0/0" not in sent

    # A server write to 50009: CLOUD_EVT_CONFIG_RECEIVED, then applied.
    code = await server.write(
        ENDPOINT,
        "/50009/0",
        [
            Record(Path.parse("/50009/0/2"), 45),
            Record(Path.parse("/50009/0/0"), True),
        ],
    )
    assert code == "2.04"
    await device.wait_for("DATA_EVT_CONFIG_READY")
    (received,) = [e for e in device.seen if e.spec_name == "CLOUD_EVT_CONFIG_RECEIVED"]
    assert received.config.active_wait_timeout == 45
    assert received.config.active_mode is False
    read = await server.read(ENDPOINT, "/50009/0/2")
    assert [r.value for r in read] == [45]

    # An invalid one is refused whole; nothing reaches the actors.
    code = await server.write(
        ENDPOINT,
        "/50009/0",
        [
            Record(Path.parse("/50009/0/1"), 30),
            Record(Path.parse("/50009/0/4"), 0),
        ],
    )
    assert code == "4.00"
    assert [r.value for r in await server.read(ENDPOINT, "/50009/0/1")] == [300]
    assert device.names().count("CLOUD_EVT_CONFIG_RECEIVED") == 1


async def test_end_to_end_bad_requests_and_reboot(nursery: trio.Nursery) -> None:
    import aiocoap

    from sandbox.lwm2m_server import Lwm2mRequestError

    device = await start_device(nursery)
    server = device.server

    # Malformed TLV and SenML: 4.00, and the client keeps serving.
    for fmt, body in (
        (ContentFormat.TLV, b"\xc8\x02"),
        (ContentFormat.SENML_CBOR, b"\x9f\x01"),
        (ContentFormat.SENML_JSON, b'[{"n":"/50009/0/2","v":'),
    ):
        response = await server._request(
            ENDPOINT,
            aiocoap.PUT,
            Path.parse("/50009/0"),
            payload=body,
            content_format=fmt,
        )
        assert str(response.code).startswith("4.00"), (fmt, response.code)
    with pytest.raises(Lwm2mRequestError) as unknown:
        await server.read(ENDPOINT, "/12345/0")
    assert unknown.value.code == "4.04"
    with pytest.raises(Lwm2mRequestError) as no_resource:
        await server.read(ENDPOINT, "/3/0/99")
    assert no_resource.value.code == "4.04"
    code = await server.write(
        ENDPOINT, "/3/0/0", [Record(Path.parse("/3/0/0"), "Evil Corp")]
    )
    assert code == "4.05"
    (manufacturer,) = await server.read(ENDPOINT, "/3/0/0")
    assert manufacturer.value == "Nordic Semiconductor ASA"

    # Reboot execute: the cloud actor asks for a reboot.
    assert await server.execute(ENDPOINT, "/3/0/4") == "2.04"
    await device.wait_for("CLOUD_EVT_REBOOT_REQUEST")
    assert device.backend.state is Lwm2mState.CONNECTED


async def test_end_to_end_observe_and_send_notification(
    nursery: trio.Nursery,
) -> None:
    from protocols.data import DataSend

    device = await start_device(nursery)
    server, backend = device.server, device.backend
    observation = await server.observe(ENDPOINT, "/6/0/0")
    assert [r.value for r in observation.initial] == [0.0]
    payload = backend.lwm2m_codec.encode_regular(gnss=GNSS)
    device.bus.publish(DataSend(payload))
    with trio.fail_after(10):
        records = await observation.notifications.receive()
    assert [(str(r.path), r.value) for r in records] == [("/6/0/0", GNSS.pvt.latitude)]


async def test_end_to_end_over_dtls_with_psk(nursery: trio.Nursery) -> None:
    from sandbox.lwm2m_server import (
        EventKind,
        LocalLwm2mServer,
        Lwm2mServerSettings,
    )

    key = bytes(range(16))
    server = LocalLwm2mServer(
        Lwm2mServerSettings(coap_port=None, coaps_port=0, psk={ENDPOINT.encode(): key})
    )
    await nursery.start(server.run)
    client = await start_client(
        nursery,
        _RealSessions(),
        server_uri=f"coaps://127.0.0.1:{server.coaps_port}",
        psk=key,
        request_timeout=10.0,
    )
    connected = trio.Event()
    client.backend.init(
        lambda e: connected.set() if isinstance(e, wrap.WrapperConnected) else None
    )
    await client.backend.connect()
    with trio.fail_after(20):
        registered = await server.wait_for(EventKind.REGISTERED, ENDPOINT)
        await connected.wait()
    assert registered.registration is not None
    assert registered.registration.identity == ENDPOINT.encode()
    assert client.backend.state is Lwm2mState.CONNECTED
    (manufacturer,) = await server.read(ENDPOINT, "/3/0/0")
    assert manufacturer.value == "Nordic Semiconductor ASA"
    await client.backend.disconnect()
    assert ENDPOINT not in server.registrations


class _RealSessions(FakeServer):
    """``start_client``'s server argument, handing out real CoapSessions."""

    def session(self, settings: CoapSettings, handler: Any) -> Any:
        from backends.coap_transport import CoapSession

        return CoapSession(settings, handler)


async def test_firmware_object_is_built_in(
    nursery: trio.Nursery, tmp_path: Any, autojump_clock: trio.testing.MockClock
) -> None:
    from state.firmware import FirmwareStore
    from tracker.config import Lwm2mConfig

    server = FakeServer()
    backend = lwm2m_backend(
        Lwm2mConfig(server_uri="coap://127.0.0.1:5683"),
        endpoint=ENDPOINT,
        firmware=FirmwareStore(tmp_path / "firmware", default_version="1.0.0"),
        session_factory=server.session,
    )
    assert backend.fota is not None
    events: list[wrap.WrapperEvent] = []
    backend.init(events.append)
    await nursery.start(backend.run)
    await backend.connect()
    await trio.testing.wait_all_tasks_blocked()
    (register,) = server.requests("POST")
    assert "</5/0>" in register.payload.decode()
    assert backend.store.get("/5/0/3") == 0  # Idle
