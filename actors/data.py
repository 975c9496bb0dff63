"""The data actor: configuration, sample buffers and encoding (``data_module.c``).

Configuration
-------------
This part of the data module decides which configuration the device runs
with.  At ``APP_EVT_START`` it announces the configuration it booted with
(``DATA_EVT_CONFIG_INIT``).  Every configuration the cloud sends
(``CLOUD_EVT_CONFIG_RECEIVED``) is checked field by field against the
firmware's rules:

* ``active_mode`` and the ``nod`` flags are taken as they come;
* ``location_timeout``, ``active_wait_timeout``, ``movement_resolution`` and
  ``movement_timeout`` are taken only when greater than zero; a value of zero
  or less is refused with a warning naming the field, and the field keeps
  its value (the firmware sets no upper bound);
* the accelerometer threshold and timeout are taken unchecked, as in the
  firmware (the codec has already refused non-numbers and non-finite
  values).

If anything changed, ``DATA_EVT_CONFIG_READY`` carries the new
configuration.  Whatever happened, the complete applied configuration is
reported back (``DATA_EVT_CONFIG_SEND``), so the cloud's reported state is
always the state the device runs: that is also the answer to a document
without configuration (``CLOUD_EVT_CONFIG_EMPTY``).

Buffers (spec §10.1, §10.4)
---------------------------
Every sample event is buffered in every state, in a ring per kind
(``actors.ringbuffer``): a full ring overwrites its oldest entry, and an
entry overwritten before it was sent is counted (``<buffer>_overwritten``
in the counters and per buffer in the snapshot).  A button press or an
impact also raises ``DATA_EVT_UI_DATA_READY`` / ``DATA_EVT_IMPACT_DATA_READY``.
A disconnect loses nothing: entries simply stay queued.

Sample requests (spec §10.3)
----------------------------
``APP_EVT_DATA_GET`` names the kinds wanted and a deadline; the
``data_send_work`` timer enforces it.  ``DATA_EVT_DATA_READY`` goes out as
soon as every requested kind has reported (ready, not ready or not
supported), or at the deadline.  A location report arriving while no
request is pending (typically after the deadline, when a method fallback
finished late) raises a ``DATA_EVT_DATA_READY`` of its own, so the late fix
is sent.  Unlike the firmware, which counts reports, a kind that reports
twice counts once.

Encoding (spec §10.5, wire.md §1.3-§1.5, §2.3-§2.5)
-----------------------------------------------
Only in ``STATE_CLOUD_CONNECTED`` and only while the date-time is valid;
otherwise the data stays queued.  On ``DATA_EVT_DATA_READY`` the actor
sends, in this order: the cloud-location request
(``DATA_EVT_CLOUD_LOCATION_DATA_SEND``), the regular update with the newest
queued entry of every buffer (``DATA_EVT_DATA_SEND``), and the batch with
every entry still queued after that (``DATA_EVT_DATA_SEND_BATCH``).  A part
with nothing in it is skipped.  A button press or impact is sent on its own
at once when connected (``DATA_EVT_UI_DATA_SEND`` /
``DATA_EVT_IMPACT_DATA_SEND``); otherwise it waits for the next
``DATA_EVT_DATA_READY``, where the newest press goes in the regular update
under ``btn`` and older ones in the batch.

Time: samples carry the uptime in milliseconds, counted from the data
actor's first start (``uptime_origin``).  At encode time the actor reads the
wall clock and derives the boot time, ``boot_unix_ms = clock_ms -
uptime_now_ms``, and each sample goes out as ``unix_ms = boot_unix_ms +
uptime_ms`` (the firmware's ``date_time_uptime_to_unix_time_ms``).  The
buffers keep the uptime, so a wall-clock step between two encodes moves
every timestamp consistently.  On the host the wall clock is valid from the
start, so ``date_time_valid`` defaults to True; the gate is kept for a
device that has to obtain its time first (``date_time_obtained``).

A changed configuration is handed to ``persist`` (the service stores it in
its SQLite state, as the firmware writes it to flash).

Persistence of samples (host only)
----------------------------------
The firmware's buffers live in RAM and are lost on a reboot.  Given a
``store`` (the service's ``StateStore``), the host loses nothing it
accepted: every sample is written to the store (state ``queued``, one
committed transaction) *before* it enters its ring, and its row id rides
along in a shadow ring of ids kept in lockstep with the sample ring.  Each
row then moves, always in one transaction:

* ``queued -> sent`` when the entry is encoded; the payload names its rows
  (``Payload.sample_ids``);
* ``sent -> delivered`` on ``CloudDataDelivered`` (the cloud acknowledged
  the message, or a regular update without QoS was handed to the backend:
  delivered as far as the device can know, as in the firmware);
* ``sent -> dropped`` on ``CloudDataDropped`` with the QoS library's reason
  (``expired``: unacknowledged after every retransmission; ``pool_full``);
* ``queued -> dropped`` (reason ``ring_overwritten``) when the ring
  overwrites an entry that was never sent: the ring-size policy;
* ``sent -> queued`` on ``CloudDataUnsent`` (the send was dropped while the
  cloud was offline, or never reached the backend): the entry is put back
  in its ring and goes out with the next ``DATA_EVT_DATA_READY``.  The
  firmware loses such data; the host chooses to keep it rather than record
  a drop, since nothing was tried.

At its first start the actor reloads every row still ``queued`` or
``sent`` into its rings as queued, so what the previous process accepted
but did not see delivered is sent again with the next batch (a ring too
small for the backlog drops the oldest, ``ring_overwritten``), and the
first ``CLOUD_EVT_CONNECTED`` after such a reload raises
``DATA_EVT_DATA_READY`` at once rather than waiting for the next sample
request (host only).  Rows keep
the wall-clock boot time they were sampled under, so their timestamps are
carried over to the new uptime base unchanged in UNIX time.

Guarantee: at least once.  A kill after the cloud acknowledged a message
but before ``delivered`` was committed resends those rows: the cloud may
see them twice.  A regular update without QoS is counted delivered once the
backend took it, so a loss on the wire after that is not seen.  A store
failure is logged and counted (``sample_store_failures``) and the sample is
kept in memory only.  Without a store the actor behaves as the firmware.
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Final, Protocol, TypeVar, runtime_checkable

import attrs
import cattrs
import trio

from actors.ringbuffer import BufferSizes, RingBuffer, SampleBuffers
from actors.runtime import Actor, Priority
from actors.timer import Timer
from protocols.app import (
    AppConfigGet,
    AppData,
    AppDataGet,
    AppStart,
    UtilShutdownRequest,
)
from protocols.base import Module, Payload
from protocols.cloud import (
    CloudConfigEmpty,
    CloudConfigReceived,
    CloudConnected,
    CloudDataDelivered,
    CloudDataDropped,
    CloudDataUnsent,
    CloudDisconnected,
)
from protocols.codec import CloudCodec, CodecNotSupported, NothingToSend
from protocols.config import DeviceConfig
from protocols.data import (
    DataCloudLocationDataSend,
    DataConfigGet,
    DataConfigInit,
    DataConfigReady,
    DataConfigSend,
    DataDateTimeObtained,
    DataError,
    DataImpactDataReady,
    DataImpactDataSend,
    DataReady,
    DataSend,
    DataSendBatch,
    DataShutdownReady,
    DataUiDataReady,
    DataUiDataSend,
)
from protocols.json_codec import Flavour
from protocols.json_data import (
    Battery,
    Button,
    Impact,
    encode_batch,
    encode_cloud_location,
    encode_regular,
    encode_ui_message,
)
from protocols.modem import (
    ModemBatteryDataNotReady,
    ModemDynamicData,
    ModemDynamicDataNotReady,
    ModemDynamicDataReady,
    ModemStaticData,
    ModemStaticDataNotReady,
    ModemStaticDataReady,
)
from protocols.peripherals import (
    CloudLocationRequest,
    EnvironmentalData,
    GnssData,
    LocationCloudLocationDataReady,
    LocationDataNotReady,
    LocationGnssDataReady,
    LocationTimeout,
    SensorEnvironmentalDataReady,
    SensorEnvironmentalNotSupported,
    SensorFuelGaugeNotSupported,
    SensorFuelGaugeReady,
    SensorMovementImpactDetected,
    UiButtonDataReady,
)

_T = TypeVar("_T")

# The sample type held by each ring (the store's ``kind`` is the ring name).
_KINDS: Final[dict[str, type]] = {
    "gnss": GnssData,
    "sensors": EnvironmentalData,
    "modem_dynamic": ModemDynamicData,
    "ui": Button,
    "impact": Impact,
    "battery": Battery,
    "modem_static": ModemStaticData,
    "cloud_location": CloudLocationRequest,
}
_converter: Final = cattrs.Converter()


class SampleStore(Protocol):
    """What the data actor needs of ``state.store.StateStore``."""

    def add_sample(self, kind: str, body: str) -> int: ...

    def mark(
        self, ids: Sequence[int], state: str, reason: str | None = None
    ) -> None: ...

    def pending_samples(self) -> list[tuple[int, str, str]]: ...


# Fields the firmware only accepts when greater than zero.
POSITIVE_FIELDS: Final = (
    "location_timeout",
    "active_wait_timeout",
    "movement_resolution",
    "movement_timeout",
)

# APP_DATA_NUMBER_OF_TYPES_MAX: the longest request list accepted.
DATA_TYPES_MAX: Final = len(AppData)


@runtime_checkable
class ObjectPathEncoder(Protocol):
    """A codec that writes samples into objects and sends their paths (LwM2M).

    Each method returns a ``Payload`` whose ``paths`` name what the Send
    carries, or raises ``NothingToSend``.  Such a cloud has no batch and no
    impact messages: the batch's entries stay queued (as in the firmware,
    where the codec answers -ENOTSUP) and impacts are never encoded.
    """

    def encode_regular(
        self,
        *,
        btn: Button | None = None,
        impact: Impact | None = None,
        dev: ModemStaticData | None = None,
        roam: ModemDynamicData | None = None,
        gnss: GnssData | None = None,
        env: EnvironmentalData | None = None,
        bat: Battery | None = None,
    ) -> Payload: ...

    def encode_ui(self, button: Button) -> Payload: ...

    def encode_cloud_location(self, request: CloudLocationRequest) -> Payload: ...


def merge_config(
    current: DeviceConfig, received: DeviceConfig
) -> tuple[DeviceConfig, list[str]]:
    """Apply ``received`` onto ``current`` by the firmware's rules.

    Returns the resulting configuration and one message per refused field.
    """
    changes: dict[str, Any] = {}
    refused: list[str] = []
    for field in attrs.fields(DeviceConfig):
        new = getattr(received, field.name)
        if new == getattr(current, field.name):
            continue
        if field.name in POSITIVE_FIELDS and new <= 0:
            refused.append(f"{field.name} = {new!r}: must be greater than 0")
            continue
        changes[field.name] = new
    return attrs.evolve(current, **changes), refused


def _to_unix(item: _T, offset_ms: int) -> _T:
    """A copy of ``item`` with its uptime timestamp moved to UNIX ms."""
    stamp: int = item.timestamp  # type: ignore[attr-defined]
    return attrs.evolve(item, timestamp=stamp + offset_ms)  # type: ignore[misc]


def _payload(data: bytes | Payload, sample_ids: tuple[int, ...]) -> Payload:
    """A document, or a codec's path list, carrying ``sample_ids``."""
    if isinstance(data, Payload):
        return attrs.evolve(data, sample_ids=sample_ids)
    return Payload(data, sample_ids=sample_ids)


def _encode_button(button: Button) -> bytes:
    return encode_ui_message(button=button)


def _encode_impact(impact: Impact) -> bytes:
    return encode_ui_message(impact=impact)


# --------------------------------------------------------------------------
# The actor


@attrs.define(eq=False)
class DataActor(Actor):
    """The data module (module docstring).

    Args:
      codec: encodes the configuration report for the selected cloud; a
        cloud without reports (LwM2M, where the object is the state)
        raises ``CodecNotSupported`` and nothing is sent.
      config: the configuration the device boots with.
      config_before_connected: answer a configuration-less document even
        while the cloud is not connected (nRF Cloud needs the report before
        it declares the session ready).
      flavour: the JSON layout of the data documents (AWS or Azure); None
        for a cloud that takes no JSON data documents: samples are then
        buffered but never encoded, unless the codec is an
        ``ObjectPathEncoder`` (LwM2M), which writes them into objects.
      buffer_sizes: entries per ring (defaults: the Kconfig defaults).
      clock: the wall clock in UNIX seconds, read at encode time.
      uptime_origin: the Trio time that is uptime 0 for the samples; None
        takes the actor's first start.
      date_time_valid: whether the wall clock can be trusted yet.
      store: keeps every accepted sample until delivered or dropped, and
        gives back the undelivered ones at the first start (module
        docstring, "Persistence of samples"); None keeps RAM only.
    """

    name: ClassVar[str] = "data"
    module: ClassVar[Module] = Module.DATA
    capacity: ClassVar[int] = 10  # DATA_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.MODEM: Priority.EARLY,
        Module.CLOUD: Priority.EARLY,
        Module.LOCATION: Priority.EARLY,
        Module.UI: Priority.EARLY,
        Module.SENSOR: Priority.EARLY,
        Module.APP: Priority.NORMAL,
        Module.UTIL: Priority.NORMAL,
        Module.DATA: Priority.NORMAL,
    }
    error_event = DataError

    codec: CloudCodec = attrs.field(kw_only=True)
    config: DeviceConfig = attrs.field(kw_only=True, factory=DeviceConfig)
    config_before_connected: bool = attrs.field(kw_only=True, default=False)
    flavour: Flavour | None = attrs.field(kw_only=True, default=Flavour.AWS)
    buffer_sizes: BufferSizes = attrs.field(kw_only=True, factory=BufferSizes)
    clock: Callable[[], float] = attrs.field(kw_only=True, default=time.time)
    uptime_origin: float | None = attrs.field(kw_only=True, default=None)
    date_time_valid: bool = attrs.field(kw_only=True, default=True)
    # Called with every configuration that changed (the firmware writes it
    # to flash under data_module/config); a failure is only logged there too.
    persist: Callable[[DeviceConfig], None] | None = attrs.field(
        kw_only=True, default=None
    )

    store: SampleStore | None = attrs.field(kw_only=True, default=None)

    buffers: SampleBuffers = attrs.field(init=False)
    # The store id of every ring entry, in rings kept in lockstep with the
    # sample rings (None: not stored).
    sample_ids: dict[str, RingBuffer[int | None]] = attrs.field(init=False)
    # Rows encoded and not yet reported on: id -> (ring name, sample).
    in_flight: dict[int, tuple[str, Any]] = attrs.field(init=False, factory=dict)
    _reloaded: bool = attrs.field(init=False, default=False)
    _resend_on_connect: bool = attrs.field(init=False, default=False)
    # The kinds the pending request waits for, and those reported so far.
    requested: tuple[AppData, ...] = attrs.field(init=False, default=())
    received: set[AppData] = attrs.field(init=False, factory=set)
    data_send_work: Timer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.state = "STATE_CLOUD_DISCONNECTED"
        self.buffers = SampleBuffers.create(self.buffer_sizes)
        self.sample_ids = {
            name: RingBuffer[int | None](ring.size, name)
            for name, ring in self.buffers.rings().items()
        }
        self.data_send_work = self.timers.add("data_send_work", self._deadline)

    async def on_start(self) -> None:
        """Fix the uptime origin at the first start (not on restarts)."""
        if self.uptime_origin is None:
            self.uptime_origin = trio.current_time()
        if not self._reloaded:
            self._reloaded = True
            self._reload()

    async def handle(self, message: Any) -> None:
        """Dispatch one event by the state machine of spec §10.2."""
        if self._delivery(message) or self.state == "STATE_SHUTDOWN":
            return
        if self._buffer(message) or self._track(message):
            return
        connected = self.state == "STATE_CLOUD_CONNECTED"
        match message:
            case AppStart():
                self.log.info("config_init", **attrs.asdict(self.config))
                self.emit(DataConfigInit(self.config))
            case AppDataGet(data_list=data_list, timeout=timeout):
                self._request(data_list, timeout)
            case CloudConnected():
                self.state = "STATE_CLOUD_CONNECTED"
                if self._resend_on_connect:
                    # Host only: what an earlier process left goes out now.
                    self._resend_on_connect = False
                    self._data_ready("reloaded")
            case CloudDisconnected():
                self.state = "STATE_CLOUD_DISCONNECTED"
            case CloudConfigReceived(config=received):
                self._apply(received)
            case CloudConfigEmpty():
                if connected or self.config_before_connected:
                    self._send_config()
            case AppConfigGet() if connected:
                self.emit(DataConfigGet())
            case DataReady() if connected:
                self._encode_data()
            case DataUiDataReady() if connected:
                self._encode_message(self.buffers.ui, _encode_button, DataUiDataSend)
            case DataImpactDataReady() if connected:
                ring = self.buffers.impact
                self._encode_message(ring, _encode_impact, DataImpactDataSend)
            case UtilShutdownRequest():
                self.data_send_work.cancel()
                self.emit(DataShutdownReady(self.id))
                self.state = "STATE_SHUTDOWN"

    def date_time_obtained(self) -> None:
        """Open the date-time gate; emit ``DATA_EVT_DATE_TIME_OBTAINED`` once."""
        if self.date_time_valid:
            return
        self.date_time_valid = True
        self.log.info("date_time_obtained")
        self.emit(DataDateTimeObtained())

    def uptime_ms(self) -> int:
        """Milliseconds since the uptime origin (0 before the first start)."""
        if self.uptime_origin is None:
            return 0
        return round((trio.current_time() - self.uptime_origin) * 1000)

    # -- configuration ----------------------------------------------------

    def _apply(self, received: DeviceConfig) -> None:
        merged, refused = merge_config(self.config, received)
        for reason in refused:
            self.counters["config_values_refused"] += 1
            self.last_error = f"config refused: {reason}"
            self.log.warning("config_value_refused", reason=reason)
        if merged != self.config:
            self.config = merged
            self.log.info("config_applied", **attrs.asdict(merged))
            self._persist(merged)
            self.emit(DataConfigReady(merged))
        self._send_config()

    def _persist(self, config: DeviceConfig) -> None:
        if self.persist is None:
            return
        try:
            self.persist(config)
        except Exception as exc:  # the store's failure must not stop the device
            self.counters["config_persist_failures"] += 1
            self.last_error = f"config not persisted: {exc}"
            self.log.error("config_persist_failed", error=str(exc))

    def _send_config(self) -> None:
        try:
            payload = self.codec.encode_config_report(self.config)
        except CodecNotSupported:
            return
        self.emit(DataConfigSend(payload))

    # -- buffering (all states) -------------------------------------------

    def _store(self, ring: RingBuffer[_T], item: _T) -> None:
        self._put(ring, item, self._record(ring.name, item))

    def _put(self, ring: RingBuffer[_T], item: _T, sample_id: int | None) -> None:
        ids = self.sample_ids[ring.name]
        lost_id = None
        if len(ids) == ids.size:
            oldest, queued = ids.entries()[0]
            if queued:
                lost_id = oldest
        ids.add(sample_id)
        if lost_id is not None:
            self._mark([lost_id], "dropped", "ring_overwritten")
        if ring.add(item):
            self.counters[f"{ring.name}_overwritten"] += 1
            self.log.warning(
                "sample_overwritten", buffer=ring.name, total=ring.overwritten
            )
        self.log.debug("sample_buffered", buffer=ring.name, queued=ring.queued_count)

    def _buffer(self, message: Any) -> bool:
        """Buffer a sample event; return whether ``message`` was one."""
        match message:
            case UiButtonDataReady(button_number=number, timestamp=ts):
                self._store(self.buffers.ui, Button(number, ts))
                self.emit(DataUiDataReady())
            case SensorMovementImpactDetected(magnitude=magnitude, timestamp=ts):
                self._store(self.buffers.impact, Impact(magnitude, ts))
                self.emit(DataImpactDataReady())
            case ModemStaticDataReady(data=data):
                self._store(self.buffers.modem_static, data)
                self._status_set(AppData.MODEM_STATIC)
            case ModemDynamicDataReady(data=data):
                self._store(self.buffers.modem_dynamic, data)
                self._status_set(AppData.MODEM_DYNAMIC)
            case SensorFuelGaugeReady(battery_level=level, timestamp=ts):
                self._store(self.buffers.battery, Battery(level, ts))
                self._status_set(AppData.BATTERY)
            case SensorEnvironmentalDataReady(data=data):
                self._store(self.buffers.sensors, data)
                self._status_set(AppData.ENVIRONMENTAL)
            case LocationGnssDataReady(data=data):
                self._store(self.buffers.gnss, data)
                self._status_set(AppData.LOCATION)
            case LocationCloudLocationDataReady(request=request):
                self._store(self.buffers.cloud_location, request)
                self._status_set(AppData.LOCATION)
            case _:
                return False
        return True

    # -- sample-request tracking ------------------------------------------

    def _track(self, message: Any) -> bool:
        """Count a "not ready / not supported" report; return whether it was one."""
        match message:
            case ModemStaticDataNotReady():
                self._status_set(AppData.MODEM_STATIC)
            case ModemDynamicDataNotReady():
                self._status_set(AppData.MODEM_DYNAMIC)
            case SensorFuelGaugeNotSupported() | ModemBatteryDataNotReady():
                self._status_set(AppData.BATTERY)
            case SensorEnvironmentalNotSupported():
                self._status_set(AppData.ENVIRONMENTAL)
            case LocationDataNotReady() | LocationTimeout():
                self._status_set(AppData.LOCATION)
            case _:
                return False
        return True

    def _request(self, data_list: tuple[AppData, ...], timeout: int) -> None:
        if 0 < len(data_list) <= DATA_TYPES_MAX:
            self.requested = tuple(data_list)
            self.received = set()
        else:
            self.log.error("data_list_invalid", count=len(data_list))
        # As the firmware, the deadline is (re)armed even for a refused list.
        self.data_send_work.reschedule(timeout)
        kinds = [t.value for t in data_list]
        self.log.debug("data_requested", types=kinds, timeout=timeout)

    def _status_set(self, kind: AppData) -> None:
        if not self.data_send_work.pending:
            # A late location (after the deadline or a method fallback)
            # gets a send of its own; other late kinds wait for the next.
            if kind is AppData.LOCATION:
                self.counters["late_location"] += 1
                self._data_ready("late_location")
            return
        if kind in self.requested:
            self.received.add(kind)
        if self.received >= set(self.requested):
            self._data_ready("complete")

    def _deadline(self) -> None:
        # Runs in the timer task: it only publishes, which never blocks.
        self._data_ready("deadline")

    def _data_ready(self, reason: str) -> None:
        missing = [t.value for t in self.requested if t not in self.received]
        self.log.debug("data_ready", reason=reason, missing=missing)
        self.requested = ()
        self.received = set()
        self.data_send_work.cancel()
        self.emit(DataReady())

    # -- encoding (CLOUD_CONNECTED) ---------------------------------------

    @property
    def _paths_codec(self) -> ObjectPathEncoder | None:
        """The codec, when it sends object paths instead of documents."""
        codec = self.codec
        return codec if isinstance(codec, ObjectPathEncoder) else None

    def _can_encode(self) -> bool:
        if self.flavour is None and self._paths_codec is None:
            return False
        if not self.date_time_valid:
            self.counters["encode_deferred_no_time"] += 1
            self.log.info("encode_deferred", reason="date-time not valid")
            return False
        return True

    def _offset_ms(self) -> int:
        """``boot_unix_ms``: the wall clock now minus the uptime now."""
        return round(self.clock() * 1000) - self.uptime_ms()

    def _encode_data(self) -> None:
        if not self._can_encode():
            return
        offset = self._offset_ms()
        buffers = self.buffers
        paths_codec = self._paths_codec
        try:
            request = buffers.cloud_location.latest()
            if request is not None:
                ring = buffers.cloud_location
                stamped = _to_unix(request, offset)
                sent = self._send_part(
                    DataCloudLocationDataSend,
                    (lambda: paths_codec.encode_cloud_location(stamped))
                    if paths_codec is not None
                    else (lambda: encode_cloud_location(stamped)),
                    self._ids([self.sample_ids[ring.name].latest()]),
                )
                self._taken([self._take_latest(ring)], sent)
            if paths_codec is not None:
                self._encode_regular_paths(paths_codec, offset)
                return
            assert self.flavour is not None

            newest = {
                key: None if item is None else _to_unix(item, offset)
                for key, item in (
                    ("btn", buffers.ui.latest()),
                    ("impact", buffers.impact.latest()),
                    ("dev", buffers.modem_static.latest()),
                    ("roam", buffers.modem_dynamic.latest()),
                    ("gnss", buffers.gnss.latest()),
                    ("env", buffers.sensors.latest()),
                    ("bat", buffers.battery.latest()),
                )
            }
            flavour = self.flavour
            sent = self._send_part(
                DataSend,
                lambda: encode_regular(flavour, **newest),
                self._ids(
                    [self.sample_ids[r.name].latest() for r in self._data_rings()]
                ),
            )
            self._taken([self._take_latest(r) for r in self._data_rings()], sent)

            queued = {
                key: [_to_unix(item, offset) for item in ring.queued()]
                for key, ring in zip(_BATCH_KEYS, self._data_rings(), strict=True)
            }
            batch_ids = self._ids(
                [
                    i
                    for r in self._data_rings()
                    for i in self.sample_ids[r.name].queued()
                ]
            )
            sent = self._send_part(
                DataSendBatch, lambda: encode_batch(**queued), batch_ids
            )
            taken = []
            for ring in self._data_rings():
                items = ring.take_queued()
                ids = self.sample_ids[ring.name].take_queued()
                taken += [
                    (ring.name, i, item) for i, item in zip(ids, items, strict=True)
                ]
            self._taken(taken, sent)
        except ValueError as exc:
            self._encode_failed(exc)

    def _encode_regular_paths(self, codec: ObjectPathEncoder, offset: int) -> None:
        """The regular update of a cloud that sends object paths (LwM2M).

        No impact and no batch: those entries stay in their rings.
        """
        b = self.buffers
        rings = [r for r in self._data_rings() if r is not b.impact]

        def newest(ring: RingBuffer[_T]) -> _T | None:
            item = ring.latest()
            return None if item is None else _to_unix(item, offset)

        btn, dev, roam = newest(b.ui), newest(b.modem_static), newest(b.modem_dynamic)
        gnss, env, bat = newest(b.gnss), newest(b.sensors), newest(b.battery)
        sent = self._send_part(
            DataSend,
            lambda: codec.encode_regular(
                btn=btn, dev=dev, roam=roam, gnss=gnss, env=env, bat=bat
            ),
            self._ids([self.sample_ids[r.name].latest() for r in rings]),
        )
        self._taken([self._take_latest(r) for r in rings], sent)

    def _data_rings(self) -> list[RingBuffer[Any]]:
        # In the order of _BATCH_KEYS.
        b = self.buffers
        return [
            b.modem_static, b.modem_dynamic, b.gnss, b.sensors, b.ui, b.impact,
            b.battery,
        ]  # fmt: skip

    def _send_part(
        self,
        event: Callable[[Payload], Any],
        encode: Callable[[], bytes | Payload],
        sample_ids: tuple[int, ...] = (),
    ) -> bool:
        """Encode one part and publish it; an empty part is skipped (False)."""
        try:
            data = encode()
        except NothingToSend:
            return False
        self.counters[f"sent_{event.__name__}"] += 1  # type: ignore[attr-defined]
        self.emit(event(_payload(data, sample_ids)))
        return True

    def _encode_message(
        self,
        ring: RingBuffer[_T],
        encode: Callable[[_T], bytes | Payload],
        event: Callable[[Payload], Any],
    ) -> None:
        if not self._can_encode():
            return
        paths_codec = self._paths_codec
        if paths_codec is not None:
            if ring is not self.buffers.ui:
                # No impact messages on such a cloud (wire.md §5.4).
                return
            encode = paths_codec.encode_ui  # type: ignore[assignment]
        item = ring.latest()
        if item is None:
            # Already sent with a regular update or an earlier message.
            return
        stamped = _to_unix(item, self._offset_ms())
        try:
            data = encode(stamped)
        except ValueError as exc:
            self._encode_failed(exc)
            return
        ids = self._ids([self.sample_ids[ring.name].latest()])
        self.counters[f"sent_{event.__name__}"] += 1  # type: ignore[attr-defined]
        self.emit(event(_payload(data, ids)))
        self._taken([self._take_latest(ring)], True)

    def _encode_failed(self, exc: ValueError) -> None:
        # The firmware raises DATA_EVT_ERROR and aborts the encode (util
        # then reboots); the entries stay queued.
        # XXX: an entry the codec can never encode (a non-numeric mccmnc)
        # stays queued, so the same error recurs at every DATA_READY until
        # it is overwritten or the service restarts.
        self.counters["encode_errors"] += 1
        self.last_error = f"encode failed: {exc}"
        self.log.error("encode_failed", reason=str(exc))
        self.emit(DataError(-errno.EINVAL))

    # -- persistence of samples (host only) ---------------------------------

    @staticmethod
    def _ids(ids: Sequence[int | None]) -> tuple[int, ...]:
        return tuple(i for i in ids if i is not None)

    def _take_latest(self, ring: RingBuffer[Any]) -> tuple[str, int | None, Any]:
        """``take_latest`` on a ring and its ids; (name, id, item)."""
        item = ring.take_latest()
        sample_id = self.sample_ids[ring.name].take_latest()
        return ring.name, sample_id, item

    def _taken(self, taken: list[tuple[str, int | None, Any]], sent: bool) -> None:
        """Record entries taken from the rings: in flight if ``sent``."""
        ids = []
        for name, sample_id, item in taken:
            if sample_id is None or item is None:
                continue
            ids.append(sample_id)
            if sent:
                self.in_flight[sample_id] = (name, item)
        if sent:
            self._mark(ids, "sent")
        else:
            # Taken by the encoder but in no document (nothing encodable).
            self._mark(ids, "dropped", "not_encoded")

    def _record(self, kind: str, item: Any) -> int | None:
        """Write an accepted sample as queued; its id, or None on failure."""
        if self.store is None:
            return None
        body = json.dumps(
            {"boot_unix_ms": self._offset_ms(), "sample": _converter.unstructure(item)}
        )
        try:
            return self.store.add_sample(kind, body)
        except Exception as exc:  # the store's failure must not stop the device
            self._store_failed(exc)
            return None

    def _mark(self, ids: Sequence[int], state: str, reason: str | None = None) -> None:
        if self.store is None or not ids:
            return
        try:
            self.store.mark(ids, state, reason)
        except Exception as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: Exception) -> None:
        self.counters["sample_store_failures"] += 1
        self.last_error = f"sample store failed: {exc}"
        self.log.error("sample_store_failed", error=str(exc))

    def _delivery(self, message: Any) -> bool:
        """Take a delivery report; return whether ``message`` was one."""
        match message:
            case CloudDataDelivered(sample_ids=ids):
                self._settle(ids, "delivered", None)
            case CloudDataDropped(sample_ids=ids, reason=reason):
                self.log.warning("samples_dropped", count=len(ids), reason=reason)
                self._settle(ids, "dropped", reason)
            case CloudDataUnsent(sample_ids=ids):
                self._requeue(ids)
            case _:
                return False
        return True

    def _settle(self, ids: tuple[int, ...], state: str, reason: str | None) -> None:
        for sample_id in ids:
            self.in_flight.pop(sample_id, None)
        self.counters[f"samples_{state}"] += len(ids)
        self._mark(ids, state, reason)

    def _requeue(self, ids: tuple[int, ...]) -> None:
        """Put entries whose send never happened back in their rings."""
        self.counters["samples_requeued"] += len(ids)
        back = [i for i in ids if i in self.in_flight]
        self._mark(back, "queued")
        for sample_id in back:
            name, item = self.in_flight.pop(sample_id)
            self._put(self.buffers.rings()[name], item, sample_id)

    def _reload(self) -> None:
        """Queue again every stored sample not yet delivered or dropped."""
        if self.store is None:
            return
        try:
            pending = self.store.pending_samples()
        except Exception as exc:
            self._store_failed(exc)
            return
        if not pending:
            return
        offset = self._offset_ms()
        rings = self.buffers.rings()
        loaded: list[tuple[int, RingBuffer[Any], Any]] = []
        bad: list[int] = []
        for sample_id, kind, body in pending:
            try:
                raw = json.loads(body)
                item: Any = _converter.structure(raw["sample"], _KINDS[kind])
                # Same UNIX time under this boot's uptime base.
                shift = int(raw["boot_unix_ms"]) - offset
                item = attrs.evolve(item, timestamp=item.timestamp + shift)
            except Exception as exc:
                self.log.error("sample_unreadable", id=sample_id, error=str(exc))
                bad.append(sample_id)
                continue
            loaded.append((sample_id, rings[kind], item))
        self._mark(bad, "dropped", "unreadable")
        self._mark([sample_id for sample_id, _, _ in loaded], "queued")
        for sample_id, ring, item in loaded:
            self._put(ring, item, sample_id)
        self.counters["samples_reloaded"] += len(loaded)
        self._resend_on_connect = bool(loaded)
        self.log.info("samples_reloaded", count=len(loaded), unreadable=len(bad))

    # -- observation -------------------------------------------------------

    def snapshot_extra(self) -> dict[str, Any]:
        """The configuration in force and the fill of every buffer."""
        return {
            "config": attrs.asdict(self.config),
            "date_time_valid": self.date_time_valid,
            "requested": [t.value for t in self.requested],
            "samples_in_flight": len(self.in_flight),
            "buffers": {
                name: {
                    "size": ring.size,
                    "stored": len(ring),
                    "queued": ring.queued_count,
                    "overwritten": ring.overwritten,
                }
                for name, ring in self.buffers.rings().items()
            },
        }


# The batch's key order (wire.md §2.4), matched by DataActor._data_rings.
_BATCH_KEYS: Final = ("dev", "roam", "gnss", "env", "btn", "impact", "bat")
