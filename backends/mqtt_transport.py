"""One MQTT 3.1.1 session over mutual TLS, for Trio, built on gmqtt.

Design
------
A session is single-use: ``open_mqtt_session()`` makes one connection
attempt, and when the connection ends, for whatever reason, the session is
over.  Reconnecting is the supervisor's job (its backoff table decides when),
so gmqtt must never reconnect on its own.

Each session opens its own ``trio_asyncio.open_loop()`` (STYLE P4): whatever
gmqtt leaves behind (keepalive timers, fire-and-forget futures) is cancelled
when the session's loop closes.  All calls into gmqtt go through small
asyncio-flavoured helpers (``_aio_*``), each called once per operation with
``aio_as_trio(helper, loop=...)(args)`` (P2).  gmqtt's callbacks run in the
asyncio context and only record state and post events (P6, P7).

What gmqtt 0.8 does that we undo or work around:

* It reconnects by itself after every lost connection and every transient
  CONNACK refusal, and ``reconnect_retries = 0`` still lets one through.
  ``_Client.reconnect()`` is a no-op, so nothing can; ``reconnect_retries``
  is 0 as well, in case a future gmqtt calls something else.
* ``connect()`` never returns when the connection is lost before CONNACK.
  With TLS 1.3 that is how a broker rejects a client certificate: the client
  finishes its handshake, sends CONNECT, and then reads an alert or a reset.
  ``_aio_connect`` races ``connect()`` against our ``on_disconnect`` and
  takes the TLS cause from the protocol's ``closed`` future.
* ``connect()`` has no timeout (P7); Trio's ``fail_after`` bounds it.
* ``publish()`` does not return the packet id, PUBACK and PINGRESP have no
  callback.  ``_Client.publish_qos()`` returns the id, and a hook around the
  package handler's ``_handle_packet`` posts ``MqttPubAck``/``MqttPingResp``.
* Its handler forces optimistic PUBACKs below MQTT 5, but checks the
  version when the client is built, before ``connect(version=MQTTv311)``
  sets it; so ``optimistic_acknowledgement=False`` holds for v3.1.1.  The
  session checks this at construction.
* trio-asyncio's default exception handler re-raises every error that
  asyncio would only log (a done-callback failing, a task exception never
  retrieved) into the loop's nursery, tearing the session down.  gmqtt's
  done-callbacks do fail, e.g. on a cancelled reconnect future, so the
  session installs a handler that logs instead.

The ``incoming`` channel
------------------------
Holds up to ``INCOMING_BUFFER`` events.  Messages are handed off with an
awaited send, one at a time in arrival order, and their PUBACK is sent only
after our Trio code has taken them from the channel (gmqtt's
``optimistic_acknowledgement=False``): a full channel withholds PUBACKs, and
the broker stops sending QoS 1 messages once its in-flight window is full.
``MqttPubAck``, ``MqttPingResp`` and ``MqttDisconnected`` are posted with
``send_nowait``; when the channel is full they are dropped, counted in
``MqttSession.dropped_events`` and logged.  After a broken connection the
send end is closed once the last pending hand-off is done, so a consumer
that misses ``MqttDisconnected`` still sees ``EndOfChannel``.

XXX: gmqtt keeps reading the socket whatever we do, and each PUBLISH it
reads becomes an on_message task waiting for its turn.  QoS 1 traffic is
bounded by the broker's in-flight window (Mosquitto: 20), but a QoS 0 flood
queues tasks without bound while the consumer is slow.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import gmqtt  # type: ignore[import-untyped]
import structlog
import trio
from gmqtt.mqtt.constants import MQTTCommands, MQTTv311  # type: ignore[import-untyped]
from gmqtt.mqtt.handler import MQTTConnectError  # type: ignore[import-untyped]

from backends.aio import asyncio_error_logger, run_aio
from backends.errors import (
    BackendBroken,
    BackendClosed,
    BackendConnectError,
    BackendError,
    BackendRefused,
    BackendTimeout,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence


# Not get_logger().bind(actor=...): bind() on the lazy proxy builds the
# logger at import time, frozen to the configuration of that moment, so a
# later configure_logging() or capture_logs() would not reach it.
log = structlog.get_logger(actor="mqtt")

INCOMING_BUFFER: Final = 16
"""Capacity of ``MqttSession.incoming`` (see the module docstring)."""

DISCONNECT_GRACE: Final = 2.0
"""Seconds the shielded graceful close may take before the transport is
aborted."""

PERMANENT_CONNACK_CODES: Final = frozenset({1, 2, 4, 5})
"""MQTT 3.1.1 CONNACK codes that retrying with the same client cannot fix."""

_CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


# ---------------------------------------------------------------------------
# Settings and events


@attrs.frozen(kw_only=True)
class MqttSettings:
    """Where and as whom to connect.

    ``cert_file`` holds the client certificate chain; ``key_file`` may be
    omitted when the key is in ``cert_file``.  Without ``cert_file`` no client
    certificate is sent (only useful to test the broker's refusal).
    """

    host: str
    port: int = 8883
    client_id: str
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 1200
    connect_timeout: float = 30.0
    clean_session: bool = True


@attrs.frozen(kw_only=True)
class MqttMessage:
    """A PUBLISH received from the broker."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


@attrs.frozen
class MqttPubAck:
    """The broker acknowledged our QoS 1 PUBLISH with this message id."""

    message_id: int


@attrs.frozen
class MqttPingResp:
    """The broker answered a keepalive PINGREQ."""


@attrs.frozen
class MqttDisconnected:
    """The connection was lost or closed by the broker; the session is over."""

    reason: str


MqttEvent: TypeAlias = MqttMessage | MqttPubAck | MqttPingResp | MqttDisconnected


@attrs.define(eq=False)
class MqttIncoming(trio.abc.ReceiveChannel[MqttEvent]):
    """The receive end of a session's events.

    A plain memory channel underneath, with one addition: taking a QoS 1
    ``MqttMessage`` out of it releases that message's PUBACK.
    """

    _recv: trio.MemoryReceiveChannel[MqttEvent]
    # QoS 1 messages in the channel, in channel order, with the future their
    # on_message task waits on before gmqtt sends the PUBACK.
    _receipts: deque[tuple[MqttMessage, asyncio.Future[None]]] = attrs.field(
        factory=deque, init=False
    )

    async def receive(self) -> MqttEvent:
        """Take the next event; raise ``EndOfChannel`` after the last one."""
        return self._taken(await self._recv.receive())

    def receive_nowait(self) -> MqttEvent:
        """Take the next event or raise ``trio.WouldBlock``."""
        return self._taken(self._recv.receive_nowait())

    def _taken(self, event: MqttEvent) -> MqttEvent:
        if self._receipts and self._receipts[0][0] is event:
            _message, receipt = self._receipts.popleft()
            if not receipt.done():
                receipt.set_result(None)
        return event

    def close(self) -> None:
        """Stop receiving; messages not yet taken are never acknowledged."""
        self._recv.close()

    async def aclose(self) -> None:
        """Like ``close()``, with a checkpoint."""
        await self._recv.aclose()

    def statistics(self) -> trio.MemoryChannelStatistics:
        """The underlying memory channel's statistics (for the debug view)."""
        return self._recv.statistics()


# ---------------------------------------------------------------------------
# gmqtt adaptation


class _Client(gmqtt.Client):  # type: ignore[misc]
    """gmqtt's client, made single-use and able to report packet ids."""

    async def reconnect(self, delay: bool = False) -> None:
        # gmqtt schedules this itself (fire-and-forget) after a lost
        # connection or a transient CONNACK refusal.  The handler was given
        # the bound method at construction, so this override catches every
        # path; our supervisor owns reconnection.
        log.debug("mqtt_reconnect_suppressed", client_id=self._client_id)

    def publish_qos(self, topic: str, payload: bytes, qos: int) -> int | None:
        """Send a PUBLISH and return its packet id (``None`` for QoS 0).

        Unlike ``Client.publish()`` the packet is not kept for replay: a
        session never reconnects, so nothing would ever replay it.
        """
        message = gmqtt.Message(topic, payload, qos=qos, retain=False)
        mid: int | None
        mid, _package = self._connection.publish(message)
        return mid


def _make_ssl_context(settings: MqttSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(settings.ca_file)
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if settings.cert_file is not None:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ValueError) as exc:
        raise BackendConnectError(f"cannot load the TLS credentials: {exc}") from exc
    return context


def _describe_loss(cause: BaseException | None) -> str:
    if cause is None:
        return "connection closed by the broker"
    if isinstance(cause, ssl.SSLError):
        return f"TLS error: {cause}"
    return f"{type(cause).__name__}: {cause}"


# gmqtt's done-callbacks call future.exception() on futures that the loop
# shutdown cancelled: those are logged at debug only.
_log_asyncio_error = asyncio_error_logger("mqtt", actor="mqtt")


# ---------------------------------------------------------------------------
# The session


@attrs.define(eq=False)
class MqttSession:
    """A connected MQTT session; create it with ``open_mqtt_session()``.

    ``incoming`` delivers ``MqttMessage``, ``MqttPubAck``, ``MqttPingResp``
    and ``MqttDisconnected`` events.  After a broken connection the channel
    ends (``EndOfChannel``) once the events before it are taken; ``publish``
    and ``subscribe`` then raise ``BackendBroken``.  After the context is left
    they raise ``BackendClosed``.
    """

    settings: MqttSettings
    incoming: MqttIncoming
    _incoming_send: trio.MemorySendChannel[MqttEvent]
    _loop: Any
    _ssl_context: ssl.SSLContext
    dropped_events: int = attrs.field(default=0, init=False)
    _client: _Client = attrs.field(init=False)
    _connected: bool = attrs.field(default=False, init=False)
    _closing: bool = attrs.field(default=False, init=False)
    _broken_reason: str | None = attrs.field(default=None, init=False)
    _connack_code: int | None = attrs.field(default=None, init=False)
    _lost_before_connack: asyncio.Future[BaseException | None] | None = attrs.field(
        default=None, init=False
    )
    # asyncio primitives bind to the running loop on first use (3.10+).
    _transport_closed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _handoff_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _handoffs_in_flight: int = attrs.field(default=0, init=False)
    # Running on_message tasks, with the receipt each QoS 1 one waits on.
    _message_tasks: dict[asyncio.Future[Any], asyncio.Future[None] | None] = (
        attrs.field(factory=dict, init=False)
    )
    _suback_waiters: dict[int, asyncio.Future[tuple[int, ...]]] = attrs.field(
        factory=dict, init=False
    )

    def __attrs_post_init__(self) -> None:
        client = _Client(
            self.settings.client_id,
            clean_session=self.settings.clean_session,
            optimistic_acknowledgement=False,
        )
        if client._package_handler._optimistic_acknowledgement:
            raise RuntimeError(  # pragma: no cover - a gmqtt upgrade did it
                "gmqtt would PUBACK messages before Trio has received them"
            )
        client.reconnect_retries = 0
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        self._install_packet_hook(client)
        self._client = client

    @property
    def broken(self) -> bool:
        """Whether the broker or the network ended the connection."""
        return self._broken_reason is not None

    # -- Trio-facing API ----------------------------------------------------

    async def publish(self, topic: str, payload: bytes, qos: int) -> int:
        """Send a PUBLISH; return its message id (0 for QoS 0).

        Returning means the packet was written to the TLS transport, not
        that it was delivered: for QoS 1 wait for the ``MqttPubAck`` with the
        returned id on ``incoming``.  A connection that broke but whose loss
        was not yet noticed swallows the packet silently.

        Raises:
            ValueError: ``qos`` is not 0 or 1.
            BackendBroken: the connection was lost.
            BackendClosed: the session context was left.

        Cancellation:
            The PUBLISH may or may not have been written; if it was, its
            ``MqttPubAck`` still arrives, under an id the caller never saw.

        Logging:
            ``mqtt_published`` at DEBUG.
        """
        if qos not in (0, 1):
            raise ValueError(f"QoS {qos} is not supported; use 0 or 1")
        # gmqtt's publish only writes to the transport and never awaits, so
        # it is called directly: a round trip into an asyncio task per
        # message (aio_as_trio) nearly halved the throughput (bench/).
        mid = self._publish_now(topic, payload, qos)
        await trio.lowlevel.checkpoint()
        log.debug("mqtt_published", topic=topic, qos=qos, message_id=mid)
        return mid

    async def subscribe(self, topics: Sequence[tuple[str, int]]) -> tuple[int, ...]:
        """Subscribe to ``(topic filter, QoS)`` pairs and wait for the SUBACK.

        Returns:
            The granted QoS per filter, in order; 0x80 means refused (the
            refusal is also logged).

        Raises:
            BackendBroken: the connection was lost before the SUBACK.
            BackendClosed: the session context was left.

        Cancellation:
            The SUBSCRIBE may already be on the wire; its SUBACK is then
            ignored.  Subscribing again is harmless.

        Logging:
            ``mqtt_subscribed`` at DEBUG, ``mqtt_subscription_refused`` at
            WARNING per refused filter.
        """
        self._check_usable()
        granted: tuple[int, ...] = await run_aio(
            self._loop, self._aio_subscribe, list(topics)
        )
        for (topic, _qos), code in zip(topics, granted, strict=False):
            if code >= 0x80:
                log.warning("mqtt_subscription_refused", topic=topic, code=code)
        log.debug("mqtt_subscribed", topics=[t for t, _ in topics], granted=granted)
        return granted

    def _check_usable(self) -> None:
        if self._closing:
            raise BackendClosed("the MQTT session is closed")
        if self._broken_reason is not None:
            raise BackendBroken(f"the MQTT connection is lost: {self._broken_reason}")

    # -- Connect and close (called by open_mqtt_session) --------------------

    async def _connect(self) -> None:
        settings = self.settings
        log.debug(
            "mqtt_connecting",
            host=settings.host,
            port=settings.port,
            client_id=settings.client_id,
        )
        try:
            with trio.fail_after(settings.connect_timeout):
                tls_version = await run_aio(self._loop, self._aio_connect)
        except trio.TooSlowError as exc:
            log.warning(
                "mqtt_connect_timeout",
                host=settings.host,
                port=settings.port,
                timeout=settings.connect_timeout,
            )
            raise BackendTimeout(
                f"no CONNACK from {settings.host}:{settings.port} within "
                f"{settings.connect_timeout} s"
            ) from exc
        except BackendRefused as exc:
            log.warning(
                "mqtt_connect_refused",
                host=settings.host,
                port=settings.port,
                reason=str(exc),
                permanent=exc.permanent,
            )
            raise
        except BackendConnectError as exc:
            log.warning(
                "mqtt_connect_failed",
                host=settings.host,
                port=settings.port,
                reason=str(exc),
            )
            raise
        log.info(
            "mqtt_connected",
            host=settings.host,
            port=settings.port,
            client_id=settings.client_id,
            tls=tls_version,
        )

    async def _close(self) -> None:
        self._closing = True
        with trio.move_on_after(DISCONNECT_GRACE, shield=True) as grace_scope:
            await run_aio(self._loop, self._aio_close)
        if grace_scope.cancelled_caught:
            log.warning("mqtt_close_timeout", grace=DISCONNECT_GRACE)
        # Normally done by _aio_close already.  A receipt left behind would
        # be resolved by a late receive() on a closed loop, which raises.
        self.incoming._receipts.clear()
        self._incoming_send.close()
        leftover = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
        if leftover:  # pragma: no cover - open_loop cancels them next
            log.warning("mqtt_tasks_left", tasks=[repr(t) for t in leftover])
        log.debug("mqtt_closed", client_id=self.settings.client_id)

    # -- asyncio-flavoured helpers ------------------------------------------

    async def _aio_connect(self) -> str | None:
        """Connect and wait for CONNACK; return the TLS version.

        Raises the ``Backend*`` error for every failure except the timeout,
        which the Trio side imposes by cancelling this helper.
        """
        settings = self.settings
        self._lost_before_connack = asyncio.get_running_loop().create_future()
        connect_task = asyncio.ensure_future(
            self._client.connect(
                settings.host,
                settings.port,
                ssl=self._ssl_context,
                keepalive=settings.keepalive,
                version=MQTTv311,
            )
        )
        connect_task.add_done_callback(_consume_outcome)
        try:
            await asyncio.wait(
                {connect_task, self._lost_before_connack},
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            # Still running: stuck on a CONNACK that will never come, or we
            # are being cancelled by the Trio deadline.
            connect_task.cancel()
        address = f"{settings.host}:{settings.port}"

        if connect_task.done() and not connect_task.cancelled():
            exc = connect_task.exception()
            if exc is not None:
                raise self._connect_error(exc, address) from exc
            if self._transport_closed.is_set():
                raise BackendConnectError(
                    f"{address} closed the connection right after CONNACK: "
                    f"{_describe_loss(self._loss_cause())}"
                )
            self._connected = True
            return self._tls_version()

        # The connection was lost before connect() returned.
        cause = self._lost_before_connack.result()
        if self._connack_code == 0:
            raise BackendConnectError(
                f"{address} closed the connection right after CONNACK: "
                f"{_describe_loss(cause)}"
            ) from cause
        if self._connack_code is not None:
            raise self._connack_refusal(address)
        if isinstance(cause, ssl.SSLError):
            raise BackendRefused(
                f"TLS: {address} refused the session: {cause}", permanent=True
            ) from cause
        # XXX: with TLS 1.3 a broker rejects the client certificate after our
        # handshake has completed, and the alert is often lost in a TCP reset
        # (our CONNECT was still unread).  A broker that just drops us before
        # CONNACK looks the same, so it is classified as a TLS refusal too.
        raise BackendRefused(
            f"TLS: {address} reset the session before CONNACK "
            f"({_describe_loss(cause)}); a TLS 1.3 broker rejects a client "
            "certificate this way",
            permanent=True,
        ) from cause

    def _connect_error(self, exc: BaseException, address: str) -> BackendError:
        if isinstance(exc, MQTTConnectError):
            if self._connack_code is None:  # pragma: no cover - hook missing
                self._connack_code = getattr(exc, "_code", None)
            return self._connack_refusal(address)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return BackendRefused(
                f"TLS: the certificate of {address} is not trusted: "
                f"{exc.verify_message}",
                permanent=True,
            )
        if isinstance(exc, ssl.SSLError):
            return BackendRefused(
                f"TLS handshake with {address} failed: {exc}", permanent=True
            )
        if isinstance(exc, OSError):
            return BackendConnectError(f"cannot connect to {address}: {exc}")
        return BackendConnectError(f"connect to {address} failed: {exc!r}")

    def _connack_refusal(self, address: str) -> BackendRefused:
        code = self._connack_code or 0
        reason = _CONNACK_REASONS.get(code, "unknown reason")
        return BackendRefused(
            f"{address} refused the connection (CONNACK {code}: {reason})",
            permanent=code in PERMANENT_CONNACK_CODES,
        )

    def _tls_version(self) -> str | None:
        ssl_object = self._client._connection._transport.get_extra_info("ssl_object")
        return None if ssl_object is None else str(ssl_object.version())

    def _publish_now(self, topic: str, payload: bytes, qos: int) -> int:
        self._check_usable()
        try:
            mid = self._client.publish_qos(topic, payload, qos)
        except OverflowError as exc:
            raise BackendError("no free MQTT packet id: too many unacked") from exc
        return 0 if mid is None else mid

    async def _aio_subscribe(self, topics: list[tuple[str, int]]) -> tuple[int, ...]:
        self._check_usable()
        subscriptions = [gmqtt.Subscription(topic, qos=qos) for topic, qos in topics]
        mid: int = self._client.subscribe(subscriptions)
        suback = asyncio.get_running_loop().create_future()
        self._suback_waiters[mid] = suback
        try:
            return await suback
        finally:
            self._suback_waiters.pop(mid, None)

    async def _aio_close(self) -> None:
        """Disconnect politely, end ``incoming`` and let hand-offs finish.

        The caller bounds this; when it is cancelled the transport is
        aborted in the ``finally``.
        """
        connection = self._client._connection
        try:
            # Messages already taken from ``incoming`` get their PUBACK out
            # before our DISCONNECT: their tasks only need a turn of the loop.
            releasing = [
                task
                for task, receipt in self._message_tasks.items()
                if receipt is not None and receipt.done()
            ]
            if releasing:
                await asyncio.wait(releasing)
            if connection is not None and not self._transport_closed.is_set():
                await self._client.disconnect()
        except Exception as exc:
            # gmqtt only suppresses resets; a TLS error when closing a
            # connection that is already dead is just as irrelevant.
            log.debug("mqtt_disconnect_error", error=repr(exc))
        finally:
            if connection is not None and not connection.is_closing():
                connection._transport.abort()
        # The transport is closed now, so the PUBACKs of messages that were
        # never taken from ``incoming`` go nowhere: release them all, fail
        # the pending hand-offs, and let those on_message tasks finish.
        for _message, receipt in self.incoming._receipts:
            if not receipt.done():
                receipt.set_result(None)
        self.incoming._receipts.clear()
        self._incoming_send.close()
        if self._message_tasks:
            await asyncio.wait(list(self._message_tasks))
        # One more turn so gmqtt's done-callbacks for those tasks run.
        await asyncio.sleep(0)

    # -- gmqtt callbacks (asyncio context) ----------------------------------

    def _install_packet_hook(self, client: _Client) -> None:
        # XXX: gmqtt 0.8 has no callback for CONNACK codes, PUBACK or
        # PINGRESP.  The package handler dispatches every packet through
        # _handle_packet, which an instance attribute can wrap.
        handler = client._package_handler
        handle_packet = handler._handle_packet

        def hooked(cmd: int, packet: bytes) -> None:
            handle_packet(cmd, packet)
            kind = cmd & 0xF0
            if kind == MQTTCommands.PUBACK:
                (mid,) = struct.unpack("!H", packet[:2])
                self._emit(MqttPubAck(mid))
            elif kind == MQTTCommands.PINGRESP:
                self._emit(MqttPingResp())
            elif kind == MQTTCommands.CONNACK and len(packet) >= 2:
                self._connack_code = packet[1]

        handler._handle_packet = hooked

    def _emit(self, event: MqttEvent) -> None:
        try:
            self._incoming_send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped_events += 1
            log.warning(
                "mqtt_event_dropped",
                kind=type(event).__name__,
                dropped_events=self.dropped_events,
            )
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            # Closing, or nobody is listening any more.
            self.dropped_events += 1
            log.debug("mqtt_event_dropped", kind=type(event).__name__, closed=True)

    async def _on_message(
        self,
        client: _Client,
        topic: str | bytes,
        payload: bytes,
        qos: int,
        properties: dict[str, Any],
    ) -> int:
        """Hand the message to Trio; gmqtt sends the PUBACK when we return.

        For QoS 1 we return only once the message was taken from
        ``incoming``, or once the transport is closed (the ack then goes
        nowhere).  Returns 0, gmqtt's reason code for success (a v3.1.1
        PUBACK carries none).  Never raises: a raise would surface in gmqtt's
        done-callback.
        """
        if isinstance(topic, bytes):
            topic = topic.decode("utf-8", errors="replace")
        event = MqttMessage(
            topic=topic,
            payload=bytes(payload),
            qos=qos,
            retain=bool(properties.get("retain", 0)),
        )
        receipt = asyncio.get_running_loop().create_future() if qos > 0 else None
        task = asyncio.current_task()
        assert task is not None
        # Forgotten only after gmqtt's own done-callback (added before this
        # first step) has written the PUBACK; _aio_close relies on that.
        self._message_tasks[task] = receipt
        task.add_done_callback(self._forget_message_task)
        self._handoffs_in_flight += 1
        try:
            # The lock is FIFO, so messages reach Trio in arrival order; the
            # Trio tasks behind trio_as_future would not keep that order.
            async with self._handoff_lock:
                delivered = await self._hand_off(event, receipt)
        finally:
            self._handoffs_in_flight -= 1
            self._maybe_end_incoming()
        if not delivered:
            self.dropped_events += 1
            log.warning("mqtt_message_undelivered", topic=topic, qos=qos)
            # Hold the PUBACK until the transport is gone.
            await self._transport_closed.wait()
        elif receipt is not None:
            await receipt
        return 0

    def _forget_message_task(self, task: asyncio.Future[Any]) -> None:
        self._message_tasks.pop(task, None)

    async def _hand_off(
        self, event: MqttMessage, receipt: asyncio.Future[None] | None
    ) -> bool:
        # The receipt is registered first: once the event is in the channel
        # the consumer may take it before this task runs again.
        receipts = self.incoming._receipts
        if receipt is not None:
            receipts.append((event, receipt))
        delivered = False
        try:
            try:
                self._incoming_send.send_nowait(event)
            except trio.WouldBlock:
                await self._loop.trio_as_future(self._incoming_send.send, event)
            delivered = True
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            # Not in the channel (failed or cancelled): a stale receipt at
            # the head would hold back every later one.
            if not delivered and receipt is not None and receipts:
                if receipts[-1][1] is receipt:
                    receipts.pop()
        return delivered

    def _on_subscribe(
        self,
        client: _Client,
        mid: int,
        granted: Sequence[int],
        properties: dict[str, Any],
    ) -> None:
        suback = self._suback_waiters.pop(mid, None)
        if suback is not None and not suback.done():
            suback.set_result(tuple(granted))

    def _on_disconnect(self, client: _Client, packet: object, *args: object) -> None:
        """Called by gmqtt from ``connection_lost`` (and after our close)."""
        cause = self._loss_cause()
        self._transport_closed.set()
        if not self._connected:
            lost = self._lost_before_connack
            if lost is not None and not lost.done():
                lost.set_result(cause)
            return
        if self._closing or self._broken_reason is not None:
            return
        reason = _describe_loss(cause)
        self._broken_reason = reason
        for suback in self._suback_waiters.values():
            if not suback.done():
                suback.set_exception(
                    BackendBroken(f"the MQTT connection is lost: {reason}")
                )
        log.info("mqtt_disconnected", reason=reason, client_id=self.settings.client_id)
        self._emit(MqttDisconnected(reason))
        self._maybe_end_incoming()

    def _loss_cause(self) -> BaseException | None:
        # The protocol's ``closed`` future holds the exception that
        # connection_lost() got; gmqtt passes on_disconnect nothing but b"".
        connection = self._client._connection
        if connection is None:
            return None
        closed = connection._protocol.closed
        if not closed.done() or closed.cancelled():
            return None
        cause: BaseException | None = closed.exception()
        return cause

    def _maybe_end_incoming(self) -> None:
        # No event can follow a broken connection's last hand-off.
        if self._broken_reason is not None and self._handoffs_in_flight == 0:
            self._incoming_send.close()


def _consume_outcome(task: asyncio.Future[Any]) -> None:
    # Keeps an abandoned task's exception from being reported as
    # "never retrieved".
    if not task.cancelled():
        task.exception()


@asynccontextmanager
async def open_mqtt_session(settings: MqttSettings) -> AsyncIterator[MqttSession]:
    """Connect to the broker and yield the session; disconnect on exit.

    The context opens its own trio-asyncio loop, so every asyncio task gmqtt
    starts ends with it.  Errors are raised bare, not in an exception group.

    Raises:
        BackendTimeout: no CONNACK within ``settings.connect_timeout``.
        BackendRefused: CONNACK refused (``permanent`` for codes 1, 2, 4, 5)
            or TLS refused (always ``permanent``; the message names the TLS
            cause).
        BackendConnectError: TCP connect failed, or the credentials could
            not be loaded.

    Cancellation:
        On exit, normal or cancelled, DISCONNECT is sent and the transport is
        closed under a shielded ``move_on_after(DISCONNECT_GRACE)``; if that
        runs out the transport is aborted.  Nothing survives the context:
        leaving the loop cancels any asyncio task still running.

    Logging:
        INFO ``mqtt_connected`` (with ``tls``), ``mqtt_disconnected`` (with
        ``reason``: the broker or the network ended the session).  WARNING
        ``mqtt_connect_refused`` (with ``reason`` and ``permanent``),
        ``mqtt_connect_timeout``, ``mqtt_connect_failed``,
        ``mqtt_event_dropped``, ``mqtt_message_undelivered``,
        ``mqtt_close_timeout``.  ERROR ``mqtt_asyncio_error`` (an asyncio
        callback failed; trio-asyncio would have re-raised it).  DEBUG
        ``mqtt_connecting``, ``mqtt_reconnect_suppressed``, ``mqtt_closed``.
    """
    import trio_asyncio

    ssl_context = _make_ssl_context(settings)
    # Sized and drained as described in the module docstring.
    incoming_send, incoming_recv = trio.open_memory_channel[MqttEvent](INCOMING_BUFFER)
    error: Exception | None = None
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(_log_asyncio_error)
        session = MqttSession(
            settings, MqttIncoming(incoming_recv), incoming_send, loop, ssl_context
        )
        # Exceptions are caught inside the loop and re-raised outside it;
        # open_loop's nurseries would wrap them in an ExceptionGroup.
        try:
            await session._connect()
            yield session
        except Exception as exc:
            error = exc
        finally:
            await session._close()
    if error is not None:
        raise error
