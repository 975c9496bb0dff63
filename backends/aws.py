"""AWS IoT Core, as the firmware's ``aws_iot_integration.c`` uses it.

One MQTT 3.1.1 session over mutual TLS per connection attempt
(``backends.mqtt_transport``), with the topics of ``wire.md`` §2 and the
event map of ``asset_tracker_v2.md`` §8.3:

* after CONNACK two SUBSCRIBE packets: the application topics (QoS 0)
  ``$aws/things/<id>/shadow/get/accepted/desired/cfg``, ``<id>/agnss``,
  ``<id>/pgps``, then the library's shadow topics (QoS 1)
  ``$aws/things/<id>/shadow/get/rejected``, ``$aws/things/<id>/shadow/update/delta``;
* ``WrapperConnected`` once both SUBACKs are in, then an empty payload to
  ``$aws/things/<id>/shadow/get`` (the library's automatic shadow request);
* incoming ``<id>/agnss`` → ``WrapperAgnssDataReceived``, ``<id>/pgps`` →
  ``WrapperPgpsDataReceived``, any other topic → ``WrapperDataReceived``;
  PUBACK → ``WrapperDataAck`` with the caller's message id; PINGRESP →
  ``WrapperPingAck``; a lost connection → ``WrapperDisconnected``.

``legacy_topics`` selects the topic names of older NCS (before 2.5):
``<id>/ncellmeas`` for cloud location and ``<id>/agps/get`` / ``<id>/agps``
for A-GNSS.

The backend never retries: a failed attempt is logged and reported as
``WrapperDisconnected``; the cloud actor's backoff decides when to call
``connect()`` again.

FOTA: with an ``AwsFota`` (``backends.aws_fota``) the session also runs the
AWS IoT Jobs client of ``wire.md`` §6.1 in a per-connection nursery; its
messages (``$aws/things/<id>/jobs/…``) go to it instead of the data path,
and its QoS 1 PUBACKs are swallowed here.  A disconnect cancels the
download; the client's state carries over to the next connection.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import attrs
import structlog
import trio

from backends.aws_fota import AwsFota
from backends.base import CloudBackend, Emit
from backends.errors import (
    BackendBusy,
    BackendError,
    BackendNotConnected,
    BackendRefused,
    BackendTimeout,
)
from backends.mqtt_transport import (
    MqttDisconnected,
    MqttMessage,
    MqttPingResp,
    MqttPubAck,
    MqttSession,
    MqttSettings,
    open_mqtt_session,
)
from protocols import wrapper as wrap
from protocols.base import Payload
from protocols.codec import CloudCodec
from protocols.json_codec import Flavour, JsonCodec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from state.firmware import FirmwareStore

# Not bound at import time: see the note in backends.mqtt_transport.
log = structlog.get_logger(actor="aws")


@attrs.frozen
class AwsTopics:
    """Every topic the backend uses, built once from the client id."""

    shadow_get: str
    shadow_update: str
    shadow_get_accepted_desired_cfg: str
    shadow_get_rejected: str
    shadow_update_delta: str
    batch: str
    messages: str
    cloud_location: str
    agnss_request: str
    agnss: str
    pgps_request: str
    pgps: str
    memfault: str

    @classmethod
    def build(cls, client_id: str, *, legacy: bool = False) -> AwsTopics:
        """The topics of ``wire.md`` §2.2 (older NCS names when ``legacy``)."""
        shadow = f"$aws/things/{client_id}/shadow"
        agnss = f"{client_id}/agps" if legacy else f"{client_id}/agnss"
        return cls(
            shadow_get=f"{shadow}/get",
            shadow_update=f"{shadow}/update",
            shadow_get_accepted_desired_cfg=f"{shadow}/get/accepted/desired/cfg",
            shadow_get_rejected=f"{shadow}/get/rejected",
            shadow_update_delta=f"{shadow}/update/delta",
            batch=f"{client_id}/batch",
            messages=f"{client_id}/messages",
            cloud_location=(
                f"{client_id}/ncellmeas" if legacy else f"{client_id}/ground-fix"
            ),
            agnss_request=f"{agnss}/get",
            agnss=agnss,
            pgps_request=f"{client_id}/pgps/get",
            pgps=f"{client_id}/pgps",
            memfault=f"{client_id}/memfault",
        )

    def application_subscriptions(self) -> list[tuple[str, int]]:
        """The integration layer's list (QoS 0)."""
        return [
            (self.shadow_get_accepted_desired_cfg, 0),
            (self.agnss, 0),
            (self.pgps, 0),
        ]

    def library_subscriptions(self) -> list[tuple[str, int]]:
        """The AWS IoT library's shadow list (QoS 1)."""
        return [(self.shadow_get_rejected, 1), (self.shadow_update_delta, 1)]


@attrs.define(eq=False)
class _Attempt:
    """One connection attempt and, once it is up, its session."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event = attrs.field(factory=trio.Event)
    session: MqttSession | None = None
    connected: bool = False
    # MQTT packet id -> the caller's (QoS library) message id.
    pending: dict[int, int] = attrs.field(factory=dict)
    # PUBACKs read before publish() returned their packet id to the sender.
    early_acks: set[int] = attrs.field(factory=set)
    # Packet ids of the backend's own QoS 1 publishes (the Jobs client).
    internal: set[int] = attrs.field(factory=set)


class AwsIotBackend(CloudBackend):
    """AWS IoT Core over MQTT with mutual TLS (module docstring)."""

    sends_object_paths: ClassVar[bool] = False
    config_before_connected: ClassVar[bool] = False
    handles_agnss_itself: ClassVar[bool] = False

    def __init__(
        self,
        client_id: str,
        settings: MqttSettings,
        legacy_topics: bool = False,
        *,
        fota: AwsFota | None = None,
        firmware: FirmwareStore | None = None,
        http_ca_file: Path | None = None,
    ) -> None:
        if settings.client_id != client_id:
            raise ValueError(
                f"the MQTT client id {settings.client_id!r} is not the thing "
                f"name {client_id!r}; AWS binds the connection to the thing name"
            )
        self.client_id = client_id
        self.settings = settings
        self.legacy_topics = legacy_topics
        self.topics = AwsTopics.build(client_id, legacy=legacy_topics)
        self.codec: CloudCodec = JsonCodec(Flavour.AWS)
        self.last_failure: str | None = None
        self._emit: Emit | None = None
        self._nursery: trio.Nursery | None = None
        self._attempt: _Attempt | None = None
        if fota is None and firmware is not None:
            fota = AwsFota(client_id, firmware, http_ca_file=http_ca_file)
        self.fota = fota

    # -- the wrapper API ----------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the session tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._attempt = None

    def init(self, emit: Emit) -> None:
        """Remember where events go (the client id is fixed at construction)."""
        self._emit = emit

    async def connect(self) -> None:
        """Start a connection attempt; its outcome arrives as an event."""
        if self._attempt is not None:
            if self._attempt.connected:
                raise BackendBusy("already connected")
            raise BackendBusy("a connection attempt is in progress")
        if self._nursery is None:
            raise RuntimeError("the backend is not running (run not started)")
        attempt = _Attempt()
        self._attempt = attempt
        self._send_event(wrap.WrapperConnecting())
        self._nursery.start_soon(self._attempt_task, attempt)

    async def disconnect(self) -> None:
        """Abandon the attempt or close the session.

        Emits ``WrapperDisconnected`` only if the session was up; waits for
        the graceful close (bounded by the transport's grace period).
        """
        attempt = self._attempt
        if attempt is None:
            return
        self._attempt = None
        attempt.scope.cancel()
        if attempt.connected:
            attempt.connected = False
            log.info("aws_disconnect_requested", client_id=self.client_id)
            self._send_event(wrap.WrapperDisconnected("disconnect requested"))
        await attempt.done.wait()

    def cloud_location_response_wait(self) -> bool:
        """AWS never answers location requests to the device."""
        return False

    async def state_get(self, ack: bool, message_id: int) -> None:
        """Request the shadow: an empty payload to the shadow GET topic."""
        await self._publish(self.topics.shadow_get, Payload(), ack, message_id)

    async def state_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Report the configuration to the shadow."""
        await self._publish(self.topics.shadow_update, payload, ack, message_id)

    async def data_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Report the newest samples to the shadow."""
        await self._publish(self.topics.shadow_update, payload, ack, message_id)

    async def batch_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send buffered samples to ``<id>/batch``."""
        await self._publish(self.topics.batch, payload, ack, message_id)

    async def ui_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send a button press or an impact to ``<id>/messages``."""
        await self._publish(self.topics.messages, payload, ack, message_id)

    async def cloud_location_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send cells / access points to ``<id>/ground-fix`` (or ``ncellmeas``)."""
        await self._publish(self.topics.cloud_location, payload, ack, message_id)

    async def agnss_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send an A-GNSS request to ``<id>/agnss/get`` (or ``agps/get``)."""
        await self._publish(self.topics.agnss_request, payload, ack, message_id)

    async def pgps_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send a P-GPS request to ``<id>/pgps/get``."""
        await self._publish(self.topics.pgps_request, payload, ack, message_id)

    async def memfault_data_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send Memfault chunks to ``<id>/memfault``."""
        await self._publish(self.topics.memfault, payload, ack, message_id)

    def snapshot(self) -> dict[str, object]:
        """Connection details for the debug view."""
        attempt = self._attempt
        return {
            "kind": "aws",
            "connected": attempt is not None and attempt.connected,
            "connecting": attempt is not None and not attempt.connected,
            "client_id": self.client_id,
            "broker": f"{self.settings.host}:{self.settings.port}",
            "legacy_topics": self.legacy_topics,
            "last_failure": self.last_failure,
            "fota": None if self.fota is None else self.fota.state,
        }

    # -- the session task -----------------------------------------------------

    async def _attempt_task(self, attempt: _Attempt) -> None:
        reason: str | None = None
        try:
            with attempt.scope:
                try:
                    async with open_mqtt_session(self.settings) as session:
                        reason = await self._serve(session, attempt)
                except BackendError as exc:
                    reason = self._failed(exc, attempt)
        finally:
            was_connected = attempt.connected
            attempt.connected = False
            attempt.session = None
            attempt.done.set()
            current = self._attempt is attempt
            if current:
                self._attempt = None
            # A cancelled attempt (disconnect, shutdown) reports nothing: the
            # caller emitted what was due.
            if current and reason is not None:
                if not was_connected:
                    self.last_failure = reason
                self._send_event(wrap.WrapperDisconnected(reason))

    async def _serve(self, session: MqttSession, attempt: _Attempt) -> str:
        topics = self.topics
        await self._subscribe(session, topics.application_subscriptions())
        await self._subscribe(session, topics.library_subscriptions())
        attempt.session = session
        attempt.connected = True
        self.last_failure = None
        log.info(
            "aws_connected",
            client_id=self.client_id,
            broker=f"{self.settings.host}:{self.settings.port}",
        )
        self._send_event(wrap.WrapperConnected())
        # CONFIG_AWS_IOT_AUTO_DEVICE_SHADOW_REQUEST: ask for the shadow.
        await session.publish(topics.shadow_get, b"", 0)
        async with trio.open_nursery() as connection_nursery:
            if self.fota is not None:
                await connection_nursery.start(
                    self.fota.serve,
                    functools.partial(self._publish_internal, attempt),
                    session_subscribe(self, session),
                    self._send_event,
                )
            reason = await self._read(session, attempt)
            connection_nursery.cancel_scope.cancel(reason=reason)
        return reason

    async def _read(self, session: MqttSession, attempt: _Attempt) -> str:
        while True:
            try:
                event = await session.incoming.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                reason = "connection closed"
                log.info("aws_disconnected", reason=reason)
                return reason
            match event:
                case MqttMessage(topic=topic, payload=data):
                    self._dispatch_message(topic, data)
                case MqttPubAck(message_id=mid):
                    self._acknowledged(attempt, mid)
                case MqttPingResp():
                    self._send_event(wrap.WrapperPingAck())
                case MqttDisconnected(reason=lost):
                    log.info("aws_disconnected", reason=lost)
                    return f"connection lost: {lost}"

    async def _subscribe(
        self, session: MqttSession, topics: list[tuple[str, int]]
    ) -> None:
        granted = await session.subscribe(topics)
        for (topic, _qos), code in zip(topics, granted, strict=False):
            if code == 0x80:
                # The firmware carries on too; only this topic stays silent.
                log.warning("aws_subscription_refused", topic=topic)

    def _dispatch_message(self, topic: str, data: bytes) -> None:
        if self.fota is not None and self.fota.handles(topic):
            self.fota.deliver(topic, data)
        elif topic == self.topics.agnss:
            self._send_event(wrap.WrapperAgnssDataReceived(data))
        elif topic == self.topics.pgps:
            self._send_event(wrap.WrapperPgpsDataReceived(data))
        else:
            self._send_event(wrap.WrapperDataReceived(data, topic))

    def _acknowledged(self, attempt: _Attempt, mid: int) -> None:
        if mid in attempt.internal:
            attempt.internal.discard(mid)
            return
        message_id = attempt.pending.pop(mid, None)
        if message_id is None:
            # publish() has not returned this packet id to its sender yet.
            attempt.early_acks.add(mid)
            return
        self._send_event(wrap.WrapperDataAck(message_id))

    def _failed(self, exc: BackendError, attempt: _Attempt) -> str:
        broker = f"{self.settings.host}:{self.settings.port}"
        if attempt.connected:
            reason = f"connection lost: {exc}"
            log.info("aws_disconnected", reason=reason)
            return reason
        if isinstance(exc, BackendRefused):
            text = str(exc)
            if "TLS" in text:
                cause = "TLS refused (bad or foreign client certificate?)"
            elif "CONNACK 4" in text or "CONNACK 5" in text:
                cause = "bad credentials (not authorised)"
            else:
                cause = "refused"
            reason = f"connection refused: {text}"
            log.warning(
                "aws_connect_refused",
                broker=broker,
                cause=cause,
                reason=text,
                permanent=exc.permanent,
            )
        elif isinstance(exc, BackendTimeout):
            reason = f"connection timed out: {exc}"
            log.warning("aws_connect_timeout", broker=broker, reason=str(exc))
        else:
            reason = f"connection failed: {exc}"
            log.warning("aws_connect_failed", broker=broker, reason=str(exc))
        return reason

    # -- helpers ----------------------------------------------------------------

    async def _publish(
        self, topic: str, payload: Payload, ack: bool, message_id: int
    ) -> None:
        attempt = self._attempt
        session = None if attempt is None else attempt.session
        if attempt is None or session is None or not attempt.connected:
            raise BackendNotConnected(f"publish to {topic} while disconnected")
        qos = 1 if ack else 0
        mid = await session.publish(topic, payload.data, qos)
        log.debug(
            "aws_published",
            topic=topic,
            qos=qos,
            message_id=message_id,
            packet_id=mid,
        )
        if qos == 1:
            if mid in attempt.early_acks:
                attempt.early_acks.discard(mid)
                self._send_event(wrap.WrapperDataAck(message_id))
            else:
                attempt.pending[mid] = message_id

    async def _publish_internal(
        self, attempt: _Attempt, topic: str, data: bytes
    ) -> None:
        """QoS 1 publish whose PUBACK nobody waits for (Jobs updates)."""
        session = attempt.session
        if session is None:
            raise BackendNotConnected(f"publish to {topic} while disconnected")
        mid = await session.publish(topic, data, 1)
        if mid in attempt.early_acks:
            attempt.early_acks.discard(mid)
        else:
            attempt.internal.add(mid)

    def _send_event(self, event: wrap.WrapperEvent) -> None:
        if self._emit is None:
            raise RuntimeError("the backend was not initialised (init not called)")
        self._emit(event)


def session_subscribe(
    backend: AwsIotBackend, session: MqttSession
) -> Callable[[Sequence[tuple[str, int]]], Awaitable[None]]:
    """``backend._subscribe`` bound to ``session``, for the Jobs client."""

    async def subscribe(topics: Sequence[tuple[str, int]]) -> None:
        await backend._subscribe(session, list(topics))

    return subscribe
