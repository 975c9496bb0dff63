"""The cloud actor: keeps the device connected to one cloud and feeds it.

State machine
-------------
The firmware's cloud module, transition for transition::

    STATE_LTE_INIT --MODEM_EVT_INITIALIZED--> STATE_LTE_DISCONNECTED
    STATE_LTE_DISCONNECTED --MODEM_EVT_LTE_CONNECTED--> STATE_LTE_CONNECTED
        (sub-state SUB_STATE_CLOUD_DISCONNECTED, first connection attempt)
    SUB_STATE_CLOUD_DISCONNECTED --CLOUD_EVT_CONNECTED--> SUB_STATE_CLOUD_CONNECTED
    SUB_STATE_CLOUD_CONNECTED --CLOUD_EVT_DISCONNECTED--> SUB_STATE_CLOUD_DISCONNECTED
        (next attempt in 1 s)
    STATE_LTE_CONNECTED --MODEM_EVT_LTE_DISCONNECTED--> STATE_LTE_DISCONNECTED
    any state --UTIL_EVT_SHUTDOWN_REQUEST--> STATE_SHUTDOWN

A message is handled by the sub-state's handler first, then by the parent
state's, then by the handler common to all states, as in the firmware.

Reconnection
------------
Each attempt is given the current delay of the backoff table to succeed:
``connect_check`` fires after that delay and, if the cloud is still not
connected, publishes ``CLOUD_EVT_CONNECTION_TIMEOUT``, whose handling makes
the next attempt.  When the attempts are exhausted the actor raises
``CLOUD_EVT_ERROR(-ENETUNREACH)`` and the util actor reboots the device.
The counter is reset on connection, on LTE loss, on a carrier FOTA and on an
nRF Cloud user-association request; a cloud drop is followed by an attempt
after 1 s.  See ``actors.backoff`` for the table.

Sends go through the QoS library (``actors.qos``): its announcements come
back to this mailbox as ``CloudDataSendQos``, which never leaves the actor.

Delivery reports (host only)
----------------------------
A payload may name the stored samples it carries (``Payload.sample_ids``).
Their fate goes back to the data actor as host-only events: an
acknowledged message, or a message without QoS once the backend took it,
raises ``CloudDataDelivered``; a message the QoS library gives up
(``expired``, ``pool_full``) raises ``CloudDataDropped`` with that reason;
a send that never reached the backend (dropped while offline, a failed
transmission of a message without QoS, a QoS-0 announcement while
disconnected) raises ``CloudDataUnsent``, and the data actor queues the
samples again, where the firmware would lose them.  A cloud that confirms
sends itself (LwM2M's Send, answered 2.04 by the server) reports each
outcome as ``WrapperSendResult``, turned into the same two events.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Callable
from typing import Any, ClassVar, Final

import attrs

from actors.backoff import ReconnectBackoff
from actors.qos import QosLibrary, QosPoolFull
from actors.runtime import Actor, Priority
from actors.timer import Timer
from backends.base import CloudBackend
from backends.errors import BackendError, BackendNotSupported
from protocols import wrapper as wrap
from protocols.app import UtilShutdownRequest
from protocols.base import Event, Module, Payload
from protocols.cloud import (
    CloudConfigEmpty,
    CloudConfigReceived,
    CloudConnected,
    CloudConnecting,
    CloudConnectionTimeout,
    CloudDataDelivered,
    CloudDataDropped,
    CloudDataSendQos,
    CloudDataUnsent,
    CloudDisconnected,
    CloudError,
    CloudFotaDone,
    CloudFotaError,
    CloudFotaStart,
    CloudLocationError,
    CloudLocationReceived,
    CloudLocationUnknown,
    CloudLteConnect,
    CloudLteDisconnect,
    CloudRebootRequest,
    CloudShutdownReady,
    CloudUserAssociated,
    CloudUserAssociationRequest,
)
from protocols.codec import (
    CodecNotSupported,
    ConfigDuplicate,
    ConfigEmpty,
    ConfigInvalid,
    LocationUnresolved,
    NotAConfigDocument,
    NothingToSend,
)
from protocols.config import DeviceConfig
from protocols.data import (
    DataCloudLocationDataSend,
    DataConfigGet,
    DataConfigInit,
    DataConfigReady,
    DataConfigSend,
    DataImpactDataSend,
    DataSend,
    DataSendBatch,
    DataUiDataSend,
)
from protocols.modem import (
    ModemCarrierFotaPending,
    ModemCarrierFotaStopped,
    ModemDynamicData,
    ModemInitialized,
    ModemLteConnected,
    ModemLteDisconnected,
)
from protocols.peripherals import (
    AgnssRequest,
    DebugEmulatorInitialized,
    DebugEmulatorNetworkConnected,
    DebugMemfaultDataReady,
    LocationAgnssNeeded,
    LocationPgpsNeeded,
)
from protocols.qos import MessageType, QosFlag, QosMessage

# After a cloud drop the first reconnection attempt comes this soon.
RECONNECT_AFTER_DROP: Final = 1.0
# After nRF Cloud user association the session is re-established this soon.
RECONNECT_AFTER_ASSOCIATION: Final = 5.0


class CloudState(enum.Enum):
    """The cloud module's super-states."""

    LTE_INIT = "STATE_LTE_INIT"
    LTE_DISCONNECTED = "STATE_LTE_DISCONNECTED"
    LTE_CONNECTED = "STATE_LTE_CONNECTED"
    SHUTDOWN = "STATE_SHUTDOWN"


class CloudSubState(enum.Enum):
    """The sub-states of ``STATE_LTE_CONNECTED``."""

    CLOUD_DISCONNECTED = "SUB_STATE_CLOUD_DISCONNECTED"
    CLOUD_CONNECTED = "SUB_STATE_CLOUD_CONNECTED"


# The wrapper call that transmits each kind of QoS message.
_SENDERS: Final = {
    MessageType.GENERIC: "data_send",
    MessageType.BATCH: "batch_send",
    MessageType.UI: "ui_send",
    MessageType.CLOUD_LOCATION: "cloud_location_send",
    MessageType.AGNSS_REQUEST: "agnss_request_send",
    MessageType.PGPS_REQUEST: "pgps_request_send",
    MessageType.CONFIG: "state_send",
    MessageType.MEMFAULT: "memfault_data_send",
}

# Data events and how they are queued (cloud_module.c, CLOUD_CONNECTED).
_DATA_SENDS: Final[dict[type[Event], tuple[MessageType, QosFlag]]] = {
    DataSend: (MessageType.GENERIC, QosFlag.ACK_DISABLED),
    DataSendBatch: (MessageType.BATCH, QosFlag.ACK_REQUIRED),
    DataUiDataSend: (MessageType.UI, QosFlag.ACK_REQUIRED),
    DataImpactDataSend: (MessageType.UI, QosFlag.ACK_REQUIRED),
    DataCloudLocationDataSend: (MessageType.CLOUD_LOCATION, QosFlag.ACK_REQUIRED),
    DataConfigSend: (MessageType.CONFIG, QosFlag.ACK_REQUIRED),
}


def _ignore_assistance(data: bytes) -> None:
    """Default sink for assistance data when no modem takes it."""


@attrs.define(eq=False)
class CloudActor(Actor):
    """The cloud module.

    Args:
      backend: the cloud to connect to.
      backoff: the reconnection table and retry limit.
      network_info: returns the modem's current network data, read when an
        A-GNSS request is built (the firmware reads ``modem_info`` then).
      agnss_sink, pgps_sink: take assistance data received from the cloud
        (the firmware hands it to the location library).
      confirm_image: marks the running firmware image as good; called once
        set-up succeeds, as the firmware does with MCUboot.
    """

    name: ClassVar[str] = "cloud"
    module: ClassVar[Module] = Module.CLOUD
    capacity: ClassVar[int] = 20  # CLOUD_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.CLOUD: Priority.FIRST,
        Module.UTIL: Priority.EARLY,
        Module.DATA: Priority.NORMAL,
        Module.APP: Priority.NORMAL,
        Module.MODEM: Priority.NORMAL,
        Module.LOCATION: Priority.NORMAL,
        Module.DEBUG: Priority.NORMAL,
    }
    error_event = CloudError

    backend: CloudBackend = attrs.field(kw_only=True)
    backoff: ReconnectBackoff = attrs.field(kw_only=True)
    network_info: Callable[[], ModemDynamicData | None] = attrs.field(
        kw_only=True, default=lambda: None
    )
    agnss_sink: Callable[[bytes], None] = attrs.field(
        kw_only=True, default=_ignore_assistance
    )
    pgps_sink: Callable[[bytes], None] = attrs.field(
        kw_only=True, default=_ignore_assistance
    )
    confirm_image: Callable[[], None] | None = attrs.field(kw_only=True, default=None)

    config: DeviceConfig = attrs.field(init=False, factory=DeviceConfig)
    agnss_buffered: AgnssRequest | None = attrs.field(init=False, default=None)
    connect_check: Timer = attrs.field(init=False)
    qos: QosLibrary = attrs.field(init=False)
    _cloud_state: CloudState = attrs.field(init=False, default=CloudState.LTE_INIT)
    _sub: CloudSubState = attrs.field(
        init=False, default=CloudSubState.CLOUD_DISCONNECTED
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.connect_check = self.timers.add("connect_check", self._on_connect_check)
        self.qos = QosLibrary(
            notify=lambda message: self.deliver(CloudDataSendQos(message)),
            removed=self._on_qos_removed,
        )
        self.qos.timer = self.timers.add("qos", self.qos.on_timer)
        self._set_state(CloudState.LTE_INIT, CloudSubState.CLOUD_DISCONNECTED)

    # -- state -------------------------------------------------------------

    @property
    def cloud_state(self) -> CloudState:
        """The current super-state."""
        return self._cloud_state

    @property
    def sub(self) -> CloudSubState:
        """The current sub-state (meaningful in ``LTE_CONNECTED`` only)."""
        return self._sub

    def _set_state(
        self, state: CloudState, sub: CloudSubState | None = None
    ) -> None:
        if sub is not None and sub is not self._sub:
            self.log.debug("sub_state", old=self._sub.value, new=sub.value)
            self._sub = sub
        if state is not self._cloud_state:
            self.log.info("state", old=self._cloud_state.value, new=state.value)
            self._cloud_state = state
        self.state = state.value
        self.sub_state = self._sub.value

    def snapshot_extra(self) -> dict[str, Any]:
        """Backoff position, next attempt and QoS list for the debug view."""
        return {
            "connect_retries": self.backoff.retries,
            "backoff_table": list(self.backoff.table),
            "next_attempt_at": self.connect_check.deadline,
            "qos_pending": sorted(self.qos.pending),
            "agnss_buffered": self.agnss_buffered is not None,
            "backend": self.backend.snapshot(),
        }

    # -- dispatch ------------------------------------------------------------

    async def handle(self, message: Any) -> None:
        """Run one message through the state handlers (module docstring)."""
        if isinstance(message, wrap.WrapperEvent):
            await self._on_wrapper_event(message)
            return
        match self._cloud_state:
            case CloudState.LTE_INIT:
                await self._on_lte_init(message)
            case CloudState.LTE_DISCONNECTED:
                await self._on_lte_disconnected(message)
            case CloudState.LTE_CONNECTED:
                if self._sub is CloudSubState.CLOUD_DISCONNECTED:
                    await self._on_cloud_disconnected(message)
                else:
                    await self._on_cloud_connected(message)
                await self._on_lte_connected(message)
            case CloudState.SHUTDOWN:
                pass
        self._on_all_states(message)

    async def _on_lte_init(self, message: Any) -> None:
        if isinstance(message, ModemInitialized | DebugEmulatorInitialized):
            self._set_state(CloudState.LTE_DISCONNECTED)
            self._setup()

    async def _on_lte_disconnected(self, message: Any) -> None:
        match message:
            case ModemLteConnected() | DebugEmulatorNetworkConnected():
                self._set_state(CloudState.LTE_CONNECTED)
                await self._connect_cloud()
            case LocationAgnssNeeded(request=request):
                self._buffer_agnss(request)
            case _ if type(message) in _DATA_SENDS:
                self._drop_send(message)

    async def _on_cloud_disconnected(self, message: Any) -> None:
        match message:
            case CloudConnected():
                self._set_state(CloudState.LTE_CONNECTED, CloudSubState.CLOUD_CONNECTED)
                attempts = self.backoff.retries
                self.backoff.reset()
                self.connect_check.cancel()
                self.log.info("cloud_connected", attempts=attempts)
                if self.agnss_buffered is not None:
                    request, self.agnss_buffered = self.agnss_buffered, None
                    await self._handle_agnss(request)
            case CloudConnectionTimeout():
                self.log.info("cloud_connect_timeout", attempts=self.backoff.retries)
                await self._connect_cloud()
            case DataConfigSend(
                payload=payload
            ) if self.backend.config_before_connected:
                self._qos_add(MessageType.CONFIG, QosFlag.ACK_REQUIRED, payload)
            case CloudDataSendQos(message=qos_message):
                if self.backend.config_before_connected:
                    if qos_message.type is MessageType.CONFIG:
                        await self._transmit(qos_message)
                    else:
                        self.log.debug(
                            "qos_send_deferred", id=qos_message.id, reason="offline"
                        )
                        self._report_unsent_qos0(qos_message)
                else:
                    self._report_unsent_qos0(qos_message)
            case LocationAgnssNeeded(request=request):
                self._buffer_agnss(request)
            case _ if type(message) in _DATA_SENDS:
                self._drop_send(message)

    async def _on_cloud_connected(self, message: Any) -> None:
        match message:
            case CloudDisconnected():
                self._set_state(
                    CloudState.LTE_CONNECTED, CloudSubState.CLOUD_DISCONNECTED
                )
                self.log.warning(
                    "cloud_disconnected", reconnect_in=RECONNECT_AFTER_DROP
                )
                self.connect_check.reschedule(RECONNECT_AFTER_DROP)
                self.qos.timer_reset()
            case DataConfigGet():
                try:
                    await self.backend.state_get(False, 0)
                except BackendNotSupported:
                    self.log.debug("state_get_not_supported")
                except BackendError as exc:
                    self.log.warning("state_get_failed", error=str(exc))
            case DebugMemfaultDataReady(data=data):
                self._qos_add(MessageType.MEMFAULT, QosFlag.ACK_REQUIRED, Payload(data))
            case DataSend(payload=payload) if self.backend.sends_object_paths:
                await self._send_paths("data_send", payload)
            case DataUiDataSend(payload=payload) | DataImpactDataSend(
                payload=payload
            ) if self.backend.sends_object_paths:
                await self._send_paths("ui_send", payload)
            case DataCloudLocationDataSend(
                payload=payload
            ) if self.backend.sends_object_paths:
                await self._call_backend("cloud_location_send", payload, True, 0)
            case DataCloudLocationDataSend(payload=payload):
                self._qos_add(MessageType.CLOUD_LOCATION, QosFlag.ACK_REQUIRED, payload)
                if not self.backend.cloud_location_response_wait():
                    self.emit(CloudLocationUnknown())
            case _ if type(message) in _DATA_SENDS:
                message_type, flags = _DATA_SENDS[type(message)]
                self._qos_add(message_type, flags, message.payload)
            case CloudDataSendQos(message=qos_message):
                if not self.backend.sends_object_paths:
                    await self._transmit(qos_message)
            case LocationAgnssNeeded(request=request):
                await self._handle_agnss(request)
            case LocationPgpsNeeded(request=request):
                await self._handle_pgps(request)

    async def _on_lte_connected(self, message: Any) -> None:
        match message:
            case ModemLteDisconnected():
                self._set_state(
                    CloudState.LTE_DISCONNECTED, CloudSubState.CLOUD_DISCONNECTED
                )
                await self._disconnect_cloud()
            case ModemCarrierFotaPending():
                self._set_state(
                    CloudState.LTE_CONNECTED, CloudSubState.CLOUD_DISCONNECTED
                )
                await self._disconnect_cloud()
            case ModemCarrierFotaStopped():
                await self._connect_cloud()

    def _on_all_states(self, message: Any) -> None:
        match message:
            case UtilShutdownRequest(reason=reason):
                self.log.info("shutdown_requested", reason=reason.value)
                self.emit(CloudShutdownReady(self.id))
                self._set_state(CloudState.SHUTDOWN)
            case DataConfigInit(config=config) | DataConfigReady(config=config):
                self.config = config

    # -- connection --------------------------------------------------------

    def _setup(self) -> None:
        self.backend.init(self.deliver)
        if self.confirm_image is not None:
            self.confirm_image()

    async def _connect_cloud(self) -> None:
        delay = self.backoff.next_delay()
        if delay is None:
            self.log.error(
                "cloud_connect_gave_up",
                attempts=self.backoff.retries,
                max_retries=self.backoff.max_retries,
            )
            self.last_error = "connection attempts exhausted"
            self.emit(CloudError(-errno.ENETUNREACH))
            return
        self.counters["connect_attempts"] += 1
        self.log.info(
            "cloud_connect_attempt", attempt=self.backoff.retries, check_in=delay
        )
        try:
            await self.backend.connect()
        except BackendError as exc:
            # Normal while the client is still busy with an earlier attempt;
            # the timer below decides what happens next.
            self.log.warning("cloud_connect_refused", error=str(exc))
        self.connect_check.reschedule(delay)

    async def _disconnect_cloud(self) -> None:
        try:
            await self.backend.disconnect()
        except BackendError as exc:
            self.log.debug("cloud_disconnect_failed", error=str(exc))
        self.backoff.reset()
        self.qos.timer_reset()
        self.connect_check.cancel()

    def _on_connect_check(self) -> None:
        connected = (
            self._cloud_state is CloudState.LTE_CONNECTED
            and self._sub is CloudSubState.CLOUD_CONNECTED
        )
        if connected or self._cloud_state is CloudState.LTE_DISCONNECTED:
            return
        self.emit(CloudConnectionTimeout())

    # -- sending -----------------------------------------------------------

    def _qos_add(
        self, message_type: MessageType, flags: QosFlag, payload: Payload
    ) -> None:
        try:
            self.qos.add(message_type, flags, payload)
        except QosPoolFull as exc:
            self.log.warning("qos_pool_full", type=message_type.name, detail=str(exc))

    def _on_qos_removed(self, message: QosMessage, why: str) -> None:
        self.counters[f"qos_{why}"] += 1
        ids = message.payload.sample_ids
        if ids:
            if why == "acknowledged":
                self.emit(CloudDataDelivered(ids))
            elif why in ("expired", "pool_full"):
                self.emit(CloudDataDropped(ids, why))
            # "sent_without_ack": reported by _transmit once the backend
            # took (or refused) the message.
        if why == "expired":
            self.log.warning(
                "message_expired",
                id=message.id,
                type=message.type.name,
                transmissions=message.notified_count,
            )

    async def _transmit(self, message: QosMessage) -> None:
        self.counters["transmissions"] += 1
        sent = await self._call_backend(
            _SENDERS[message.type], message.payload, message.ack_required, message.id
        )
        ids = message.payload.sample_ids
        if ids and not message.ack_required:
            # No QoS: the backend taking it is all the device can know.
            self.emit(CloudDataDelivered(ids) if sent else CloudDataUnsent(ids))

    def _report_unsent_qos0(self, message: QosMessage) -> None:
        # A message without QoS that is not transmitted now never will be.
        if message.payload.sample_ids and not message.ack_required:
            self.emit(CloudDataUnsent(message.payload.sample_ids))

    async def _call_backend(
        self, method: str, payload: Payload, ack: bool, message_id: int
    ) -> bool:
        """Call the backend; return whether it took the message."""
        try:
            await getattr(self.backend, method)(payload, ack, message_id)
        except BackendError as exc:
            # Recovery is the QoS library's retransmission.
            self.counters["send_failures"] += 1
            self.log.warning(
                "send_failed", call=method, id=message_id, error=str(exc)
            )
            return False
        return True

    async def _send_paths(self, method: str, payload: Payload) -> None:
        # The backend reports the outcome (WrapperSendResult) once the cloud
        # answers; a send it refuses at once is not sent at all.
        if not await self._call_backend(method, payload, True, 0):
            if payload.sample_ids:
                self.emit(CloudDataUnsent(payload.sample_ids))

    def _drop_send(self, message: Event) -> None:
        # The firmware ignores sends while the cloud is down (and leaks their
        # buffers); the data actor keeps its samples until they are sent.
        self.counters["sends_dropped_offline"] += 1
        self.log.info("send_dropped_offline", dropped=message.spec_name)
        payload = getattr(message, "payload", None)
        if isinstance(payload, Payload) and payload.sample_ids:
            # The host does better: the data actor queues them again.
            self.emit(CloudDataUnsent(payload.sample_ids))

    # -- assistance --------------------------------------------------------

    def _buffer_agnss(self, request: AgnssRequest) -> None:
        # One slot: a newer request replaces an older one.
        self.agnss_buffered = request
        self.log.debug("agnss_request_buffered")

    async def _handle_agnss(self, request: AgnssRequest) -> None:
        if self.backend.handles_agnss_itself:
            try:
                await self.backend.agnss_request(request)
            except BackendError as exc:
                self.log.warning("agnss_request_failed", error=str(exc))
            return
        try:
            payload = self.backend.codec.encode_agnss_request(
                request, self.network_info()
            )
        except (CodecNotSupported, NothingToSend) as exc:
            self.log.info("agnss_request_skipped", reason=str(exc))
            return
        if self.backend.sends_object_paths:
            await self._call_backend("agnss_request_send", payload, True, 0)
        else:
            self._qos_add(MessageType.AGNSS_REQUEST, QosFlag.ACK_REQUIRED, payload)

    async def _handle_pgps(self, request: Any) -> None:
        if self.backend.handles_agnss_itself:
            return
        try:
            payload = self.backend.codec.encode_pgps_request(request)
        except (CodecNotSupported, NothingToSend) as exc:
            self.log.info("pgps_request_skipped", reason=str(exc))
            return
        if self.backend.sends_object_paths:
            await self._call_backend("pgps_request_send", payload, True, 0)
        else:
            self._qos_add(MessageType.PGPS_REQUEST, QosFlag.ACK_REQUIRED, payload)

    # -- wrapper events ------------------------------------------------------

    async def _on_wrapper_event(self, event: wrap.WrapperEvent) -> None:
        match event:
            case wrap.WrapperConnecting():
                self.emit(CloudConnecting())
            case wrap.WrapperConnected():
                self.emit(CloudConnected())
            case wrap.WrapperDisconnected(reason=reason):
                self.log.info("backend_disconnected", reason=reason)
                self.emit(CloudDisconnected())
            case wrap.WrapperDataReceived(data=data, topic=topic):
                self._on_data_received(data, topic)
            case wrap.WrapperAgnssDataReceived(data=data):
                self.log.info("agnss_data_received", size=len(data))
                self.agnss_sink(data)
            case wrap.WrapperPgpsDataReceived(data=data):
                self.log.info("pgps_data_received", size=len(data))
                self.pgps_sink(data)
            case wrap.WrapperCloudLocationResultReceived(data=data):
                self._on_location_result(data)
            case wrap.WrapperUserAssociationRequest():
                self.connect_check.cancel()
                self.backoff.reset()
                self.emit(CloudUserAssociationRequest())
            case wrap.WrapperUserAssociated():
                self.connect_check.schedule(RECONNECT_AFTER_ASSOCIATION)
                self.emit(CloudUserAssociated())
            case wrap.WrapperRebootRequest():
                self.emit(CloudRebootRequest())
            case wrap.WrapperLteDisconnectRequest():
                self.emit(CloudLteDisconnect())
            case wrap.WrapperLteConnectRequest():
                self.emit(CloudLteConnect())
            case wrap.WrapperFotaStart():
                self.emit(CloudFotaStart())
            case wrap.WrapperFotaDone():
                self.emit(CloudFotaDone())
            case wrap.WrapperFotaError():
                self.emit(CloudFotaError())
            case wrap.WrapperFotaErasePending() | wrap.WrapperFotaEraseDone():
                self.log.info("fota_erase", step=event.spec_name)
            case wrap.WrapperDataAck(message_id=message_id):
                if not self.qos.remove(message_id):
                    self.log.debug("ack_unknown_id", id=message_id)
            case wrap.WrapperPingAck():
                self.qos.notify_all()
            case wrap.WrapperSendResult(sample_ids=ids, delivered=delivered):
                if ids:
                    self.emit(
                        CloudDataDelivered(ids) if delivered else CloudDataUnsent(ids)
                    )
            case wrap.WrapperError(err=err):
                self.last_error = f"backend error {err}"
                self.emit(CloudError(err))

    def _on_data_received(self, data: bytes, topic: str) -> None:
        try:
            config = self.backend.codec.decode_config(data, self.config)
        except ConfigEmpty as exc:
            self.log.info("config_empty", topic=topic, reason=str(exc))
            self.emit(CloudConfigEmpty())
        except ConfigDuplicate as exc:
            self.log.debug("config_duplicate", topic=topic, detail=str(exc))
        except NotAConfigDocument as exc:
            self.log.warning("document_ignored", topic=topic, reason=str(exc))
        except ConfigInvalid as exc:
            # The firmware would skip the bad key and apply the rest; the
            # host applies nothing, and reports the configuration it keeps
            # (the data actor answers CONFIG_EMPTY with the full config).
            self.counters["config_rejected"] += 1
            self.last_error = f"config rejected: {exc}"
            self.log.warning("config_rejected", topic=topic, reason=str(exc))
            self.emit(CloudConfigEmpty())
        else:
            self.emit(CloudConfigReceived(config))

    def _on_location_result(self, data: bytes) -> None:
        try:
            location = self.backend.codec.decode_cloud_location(data)
        except LocationUnresolved:
            self.emit(CloudLocationError())
        except CodecNotSupported:
            self.emit(CloudLocationUnknown())
        else:
            self.emit(CloudLocationReceived(location))
