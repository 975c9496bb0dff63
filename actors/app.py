"""The app actor: boot, the sampling timers and the shutdown protocol.

The firmware's ``main.c`` emits ``APP_EVT_START`` right after boot, which
sets every other module going, and then decides *when* the device samples
and *what* it asks for (spec §13).

Design
------
States::

    STATE_INIT --DATA_EVT_CONFIG_INIT--> STATE_RUNNING
        sub-state SUB_STATE_ACTIVE_MODE or SUB_STATE_PASSIVE_MODE
    any state --UTIL_EVT_SHUTDOWN_REQUEST--> STATE_SHUTDOWN

Three timers, kept on the actor so that they survive a restart:

* ``data_sample_timer`` (periodic): every ``active_wait_timeout`` in active
  mode, every ``movement_resolution`` in passive mode;
* ``movement_timeout_timer`` (periodic, passive only): every
  ``movement_timeout``;
* ``movement_resolution_timer`` (one-shot, passive only): has no expiry
  handler; an ACTIVITY event is ignored while it is still running.

Both periodic timers share one expiry handler.  Like a ``k_timer`` handler
it runs outside the actor's mailbox task (in the timer task), reads the
flags and only publishes ``APP_EVT_DATA_GET_ALL``.  The app is subscribed to
its own events, so that event comes back through the mailbox and is turned
into ``APP_EVT_DATA_GET`` there; ``sample_request_ongoing`` is likewise set
when the app sees its own ``APP_EVT_DATA_GET`` and cleared on
``DATA_EVT_DATA_READY``.  A sampling trigger therefore only publishes
``APP_EVT_DATA_GET_ALL``, as the firmware does; the one exception is the
first ``CLOUD_EVT_CONNECTED``, which builds the request directly.

Passive mode follows the firmware also where it surprises (spec §18.11): an
INACTIVITY event samples too, and every movement event that samples
restarts all three passive timers.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

import attrs
import trio

from actors.runtime import Actor, Priority
from actors.timer import Timer
from protocols.app import (
    AppData,
    AppDataGet,
    AppDataGetAll,
    AppError,
    AppShutdownReady,
    AppStart,
    UtilShutdownRequest,
)
from protocols.base import Module
from protocols.cloud import CloudConnected
from protocols.config import DeviceConfig
from protocols.data import DataConfigInit, DataConfigReady, DataReady
from protocols.modem import ModemStaticDataReady
from protocols.peripherals import (
    SensorMovementActivityDetected,
    SensorMovementImpactDetected,
    SensorMovementInactivityDetected,
)

STATE_INIT: Final = "STATE_INIT"
STATE_RUNNING: Final = "STATE_RUNNING"
STATE_SHUTDOWN: Final = "STATE_SHUTDOWN"
SUB_STATE_ACTIVE_MODE: Final = "SUB_STATE_ACTIVE_MODE"
SUB_STATE_PASSIVE_MODE: Final = "SUB_STATE_PASSIVE_MODE"

# DATA_FETCH_TIMEOUT_DEFAULT: the sampling deadline without a location.
DATA_FETCH_TIMEOUT_DEFAULT: Final = 2
# With a location: min(interval - 5, 110), but never below 5 s.
LOCATION_TIMEOUT_MAX: Final = 110
LOCATION_TIMEOUT_MIN: Final = 5
LOCATION_TIMEOUT_MARGIN: Final = 5


def sample_timeout(config: DeviceConfig, *, with_location: bool) -> int:
    """The ``timeout`` of ``APP_EVT_DATA_GET`` for ``config``, in seconds.

    Args:
      config: the applied configuration; its mode selects the interval
        (``active_wait_timeout`` or ``movement_resolution``).
      with_location: whether the request includes a location.

    Returns:
      2 without a location, else ``max(5, min(interval - 5, 110))``.
    """
    if not with_location:
        return DATA_FETCH_TIMEOUT_DEFAULT
    if config.active_mode:
        interval = config.active_wait_timeout
    else:
        interval = config.movement_resolution
    timeout = min(interval - LOCATION_TIMEOUT_MARGIN, LOCATION_TIMEOUT_MAX)
    return max(timeout, LOCATION_TIMEOUT_MIN)


@attrs.define(eq=False)
class AppActor(Actor):
    """The app module (``main.c``).

    Args:
      has_sensors: whether a sensor module is built in; the requests then
        include BATTERY and ENVIRONMENTAL.
      has_location: whether a location module is built in; the requests
        then include LOCATION unless ``nod`` disables every method.
    """

    name: ClassVar[str] = "app"
    module: ClassVar[Module] = Module.APP
    capacity: ClassVar[int] = 10  # APP_QUEUE_ENTRY_COUNT
    routes: ClassVar[dict[Module, Priority]] = {
        Module.CLOUD: Priority.EARLY,
        Module.APP: Priority.NORMAL,
        Module.DATA: Priority.NORMAL,
        Module.UTIL: Priority.NORMAL,
        Module.SENSOR: Priority.FINAL,
        Module.MODEM: Priority.FINAL,
    }
    error_event = AppError

    has_sensors: bool = attrs.field(kw_only=True, default=True)
    has_location: bool = attrs.field(kw_only=True, default=True)

    started: bool = attrs.field(init=False, default=False)
    config: DeviceConfig | None = attrs.field(init=False, default=None)
    modem_static_sampled: bool = attrs.field(init=False, default=False)
    sample_request_ongoing: bool = attrs.field(init=False, default=False)
    activity: bool = attrs.field(init=False, default=False)
    cloud_connected_once: bool = attrs.field(init=False, default=False)
    data_sample_timer: Timer = attrs.field(init=False)
    movement_timeout_timer: Timer = attrs.field(init=False)
    movement_resolution_timer: Timer = attrs.field(init=False)
    # Period and next due time of each running periodic timer, by name; the
    # due time advances by whole periods so that expiries do not drift.
    _periods: dict[str, float] = attrs.field(init=False, factory=dict)
    _due: dict[str, float] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.state = STATE_INIT
        self.data_sample_timer = self.timers.add(
            "data_sample_timer", self._on_data_sample_expiry
        )
        self.movement_timeout_timer = self.timers.add(
            "movement_timeout_timer", self._on_movement_timeout_expiry
        )
        # One-shot without handler: only ``remaining()`` is ever asked.
        self.movement_resolution_timer = self.timers.add(
            "movement_resolution_timer", lambda: None
        )

    # -- timers --------------------------------------------------------------

    def _start_periodic(self, timer: Timer, period: float) -> None:
        # k_timer_start(timer, period, period): first expiry after a period.
        self._periods[timer.name] = period
        self._due[timer.name] = trio.current_time() + period
        timer.reschedule(period)

    def _stop(self, timer: Timer) -> None:
        self._periods.pop(timer.name, None)
        self._due.pop(timer.name, None)
        timer.cancel()

    def _rearm(self, timer: Timer) -> None:
        period = self._periods.get(timer.name)
        if period is None:  # pragma: no cover - cancel clears the deadline
            return
        now = trio.current_time()
        due = self._due.get(timer.name, now) + period
        if due <= now:
            # Behind by a period or more (a long restart): start afresh
            # rather than firing a burst of stale expiries.
            due = now + period
        self._due[timer.name] = due
        timer.reschedule(due - now)

    def _on_data_sample_expiry(self) -> None:
        self._rearm(self.data_sample_timer)
        self._sample_timer_expired(self.data_sample_timer)

    def _on_movement_timeout_expiry(self) -> None:
        self._rearm(self.movement_timeout_timer)
        self._sample_timer_expired(self.movement_timeout_timer)

    def _sample_timer_expired(self, timer: Timer) -> None:
        """The shared expiry handler; runs in the timer task, never blocks."""
        if self.sample_request_ongoing:
            self.log.debug("sample_skipped", timer=timer.name, reason="ongoing")
            return
        passive = self.sub_state == SUB_STATE_PASSIVE_MODE
        if timer is self.data_sample_timer and passive and not self.activity:
            self.log.debug("sample_skipped", timer=timer.name, reason="no_activity")
            return
        self.emit(AppDataGetAll())

    def _start_active_timers(self, config: DeviceConfig) -> None:
        self._start_periodic(self.data_sample_timer, config.active_wait_timeout)
        self._stop(self.movement_resolution_timer)
        self._stop(self.movement_timeout_timer)

    def _start_passive_timers(self, config: DeviceConfig) -> None:
        self._start_periodic(self.data_sample_timer, config.movement_resolution)
        self.movement_resolution_timer.reschedule(config.movement_resolution)
        self._start_periodic(self.movement_timeout_timer, config.movement_timeout)

    def _stop_all_timers(self) -> None:
        self._stop(self.data_sample_timer)
        self._stop(self.movement_timeout_timer)
        self._stop(self.movement_resolution_timer)

    # -- sampling ------------------------------------------------------------

    def _data_get(self) -> None:
        """Publish ``APP_EVT_DATA_GET`` for the current configuration."""
        assert self.config is not None
        data_list = [AppData.MODEM_DYNAMIC]
        if not self.modem_static_sampled:
            data_list.append(AppData.MODEM_STATIC)
        if self.has_sensors:
            data_list += [AppData.BATTERY, AppData.ENVIRONMENTAL]
        nod = self.config.no_data
        with_location = self.has_location and not (
            nod.gnss and nod.neighbor_cell and nod.wifi
        )
        if with_location:
            data_list.append(AppData.LOCATION)
        timeout = sample_timeout(self.config, with_location=with_location)

        self.log.debug(
            "data_get", data_list=[d.value for d in data_list], timeout=timeout
        )
        self.emit(AppDataGet(data_list=tuple(data_list), timeout=timeout))

    def _set_mode(self, config: DeviceConfig) -> None:
        """Apply ``config``: switch sub-state if needed and restart timers."""
        self.config = config
        if config.active_mode:
            self._start_active_timers(config)
            sub_state = SUB_STATE_ACTIVE_MODE
        else:
            self._start_passive_timers(config)
            sub_state = SUB_STATE_PASSIVE_MODE
        if sub_state != self.sub_state:
            self.log.info("sub_state", old=self.sub_state, new=sub_state)
            self.sub_state = sub_state

    def _on_movement(self, active: bool) -> None:
        """ACTIVITY or INACTIVITY in passive mode (``activity_event_handle``)."""
        assert self.config is not None
        self.activity = active
        if self.sample_request_ongoing:
            self.log.debug("movement_ignored", activity=active, reason="ongoing")
            return
        if active and self.movement_resolution_timer.remaining() > 0:
            self.log.debug("movement_ignored", activity=active, reason="resolution")
            return

        # XXX: an INACTIVITY event samples too and restarts the passive
        # timers.  That is what the firmware does (spec §18.11); kept on
        # purpose so that the host samples at the same times as a device.
        self.emit(AppDataGetAll())
        self._start_passive_timers(self.config)

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.log.info("state", old=self.state, new=state)
            self.state = state

    # -- the state machine ---------------------------------------------------

    async def on_start(self) -> None:
        """Emit ``APP_EVT_START`` on the first start only (not on restarts)."""
        if not self.started:
            self.started = True
            self.emit(AppStart())

    async def handle(self, message: Any) -> None:
        """Run the state handler, then the handler for all states."""
        if self.state == STATE_INIT:
            self._on_state_init(message)
        elif self.state == STATE_RUNNING:
            if self.sub_state == SUB_STATE_PASSIVE_MODE:
                self._on_sub_state_passive(message)
            else:
                self._on_sub_state_active(message)
            self._on_state_running(message)
        self._on_all_events(message)

    def _on_state_init(self, message: Any) -> None:
        if isinstance(message, DataConfigInit):
            self._set_mode(message.config)
            self._set_state(STATE_RUNNING)

    def _on_sub_state_active(self, message: Any) -> None:
        if isinstance(message, DataConfigReady):
            self._set_mode(message.config)

    def _on_sub_state_passive(self, message: Any) -> None:
        match message:
            case DataConfigReady(config=config):
                self._set_mode(config)
            case SensorMovementActivityDetected():
                self._on_movement(True)
            case SensorMovementInactivityDetected():
                self._on_movement(False)

    def _on_state_running(self, message: Any) -> None:
        match message:
            case CloudConnected() if not self.cloud_connected_once:
                # Only the first connection after boot samples; the timers
                # take over from there (reconnects do not sample).
                self._data_get()
            case AppDataGetAll():
                self._data_get()

    def _on_all_events(self, message: Any) -> None:
        match message:
            case UtilShutdownRequest() if self.state != STATE_SHUTDOWN:
                self._stop_all_timers()
                self.emit(AppShutdownReady(self.id))
                self._set_state(STATE_SHUTDOWN)
            case CloudConnected():
                self.cloud_connected_once = True
            case ModemStaticDataReady():
                self.modem_static_sampled = True
            case AppDataGet():
                self.sample_request_ongoing = True
            case DataReady():
                self.sample_request_ongoing = False
            case SensorMovementImpactDetected():
                self.emit(AppDataGetAll())

    # -- observation ---------------------------------------------------------

    def snapshot_extra(self) -> dict[str, Any]:
        """The flags, the mode and when each timer fires next."""
        return {
            "modem_static_sampled": self.modem_static_sampled,
            "sample_request_ongoing": self.sample_request_ongoing,
            "activity": self.activity,
            "cloud_connected_once": self.cloud_connected_once,
            "active_mode": None if self.config is None else self.config.active_mode,
            "next": {
                timer.name: timer.deadline
                for timer in (
                    self.data_sample_timer,
                    self.movement_timeout_timer,
                    self.movement_resolution_timer,
                )
            },
        }
