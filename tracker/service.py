"""The service: one actor tree per boot, rebooted in order, stopped on request.

A *boot* builds a fresh tree (bus, backend, util, cloud, data, modem and app
actors) and runs it under a ``Supervisor`` until the util actor decides to
reboot, or the supervisor gives up on a crashing actor.  The service then
stops the tree child by child and, unless the reason was a stop of the
service, boots a new one: the host's equivalent of the firmware's warm
reboot.  Reboots are counted and their reasons kept, so the next boot (and
an operator) can see why the device restarted.

With ``cloud.service = "local"`` the service first starts a
``LocalCloud`` (broker, shadow, jobs, assistance, file server) in its own
nursery; it outlives every reboot of the device, which connects to it as it
would to the cloud that ``[cloud.local] cloud`` names.  While it runs, the
service logs ``shadow_holds`` whenever the device's reported shadow
changes, so a person watching the log sees the data arrive.

Exit status of ``Service.run``: see ``ExitCode``.
"""

from __future__ import annotations

import enum
import functools
import signal
import time
from collections.abc import Callable

import attrs
import structlog
import trio

from actors.app import AppActor
from actors.backoff import ReconnectBackoff
from actors.cloud import CloudActor
from actors.data import DataActor, SampleStore
from actors.modem import ModemActor, SimulatedModem
from actors.route import default_route, load_route
from actors.runtime import Actor, ActorSnapshot, Bus
from actors.sources import (
    ButtonPress,
    LocationActor,
    Movement,
    SensorActor,
    SimulatedGnss,
    SimulatedSensors,
    UiActor,
)
from actors.supervisor import RestartLimitExceeded, Supervisor, first_leaf
from actors.util import Reboot, UtilActor
from backends.aws import AwsIotBackend
from backends.base import CloudBackend
from backends.lwm2m import lwm2m_backend
from backends.mqtt_transport import MqttSettings
from backends.pgps import PgpsDownloader
from backends.scripted import Connect, Refuse, ScriptedBackend
from protocols.app import ShutdownReason
from protocols.config import DeviceConfig
from sandbox.broker import BrokerError
from sandbox.local_cloud import LocalCloud, LocalCloudEndpoints
from sandbox.lwm2m_server import Lwm2mServerError
from state.firmware import FirmwareStore
from state.store import StateStore, StateStoreError
from tracker.config import Config
from tracker.warp import DeviceWallClock

# Lazy: it follows whatever logging set-up is in force when it logs.
log = structlog.get_logger(actor="service")

class ExitCode(enum.IntEnum):
    """What ``tracker run`` exits with."""

    OK = 0  # stopped by SIGINT or SIGTERM through the shutdown protocol
    ERROR = 1  # an unexpected error outside any actor
    CONFIG = 2  # invalid configuration, missing cloud, or unusable state
    REBOOT_LIMIT = 3  # more reboots than --max-reboots allowed
    FORCED = 130  # a second signal cut the shutdown short


class UnsupportedCloud(Exception):
    """The configuration selects a cloud this build cannot connect to."""


def check_cloud(config: Config) -> None:
    """Fail early when ``cloud.service`` has no backend in this build.

    Raises:
      UnsupportedCloud: as ``make_backend`` would.
    """
    if config.cloud.service in ("simulated", "aws", "lwm2m", "local"):
        return
    make_backend(config)


def local_cloud_for(config: Config) -> LocalCloud:
    """The local cloud ``[cloud.local]`` describes (not started)."""
    local = config.cloud.local
    # The configuration resolves the directory when it is loaded.
    assert local.directory is not None
    lwm2m = config.cloud.lwm2m
    return LocalCloud(
        local.directory,
        host=local.host,
        mqtt_port=local.mqtt_port,
        http_port=local.http_port,
        lwm2m_port=local.lwm2m_port,
        coap_port=local.coap_port,
        # This service's device may talk LwM2M to it, with its own key.
        lwm2m_credentials={
            config.lwm2m_endpoint.encode(): bytes.fromhex(lwm2m.psk)
        },
        verbose=config.log.level == "debug",
    )


def local_aws_config(config: Config, cloud: LocalCloud) -> Config:
    """``config`` with ``[cloud.aws]`` pointed at the running ``cloud``.

    The device gets a certificate for its client id (made on first use),
    and trusts the local CA for the broker and for its downloads.

    Raises:
      RuntimeError: the local cloud is not running.
      InvalidClientId: the client id cannot name a certificate.
    """
    endpoints: LocalCloudEndpoints | None = cloud.endpoints
    if endpoints is None:
        raise RuntimeError("the local cloud is not running")
    files = cloud.issue(config.client_id)
    aws = attrs.evolve(
        config.cloud.aws,
        broker_host=endpoints.host,
        port=endpoints.mqtt_port,
        ca_file=endpoints.ca_file,
        cert_file=files.cert_file,
        key_file=files.key_file,
        download_ca_file=endpoints.ca_file,
    )
    return attrs.evolve(config, cloud=attrs.evolve(config.cloud, aws=aws))


def make_backend(
    config: Config,
    firmware: FirmwareStore | None = None,
    *,
    local: LocalCloud | None = None,
    device_config: DeviceConfig | None = None,
) -> CloudBackend:
    """The backend for ``cloud.service``.

    ``firmware`` enables FOTA into that store (AWS IoT Jobs, LwM2M object
    5); ``local`` is the running local cloud, required for "local";
    ``device_config`` is the configuration the device boots with (LwM2M
    serves it as object 50009).

    Raises:
      UnsupportedCloud: the service has no backend here yet.
      RuntimeError: "local" without a running local cloud.
    """
    if config.cloud.service == "local":
        if local is None:
            raise RuntimeError("cloud.service = \"local\" needs the local cloud")
        if config.cloud.local.cloud == "lwm2m":
            endpoints = local.endpoints
            lwm2m = attrs.evolve(config.cloud.lwm2m, server_uri=local.lwm2m_uri())
            return lwm2m_backend(
                lwm2m,
                endpoint=config.lwm2m_endpoint,
                firmware=firmware,
                device_config=device_config,
                http_ca_file=None if endpoints is None else endpoints.ca_file,
                environmental=config.sources.environmental,
            )
        return _aws_backend(local_aws_config(config, local), firmware)
    if config.cloud.service == "simulated":
        simulated = config.cloud.simulated
        return ScriptedBackend(
            [Refuse(after=simulated.connect_delay)] * simulated.refuse_attempts,
            default=Connect(after=simulated.connect_delay),
            ack_delay=simulated.ack_delay,
        )
    if config.cloud.service == "aws":
        return _aws_backend(config, firmware)
    if config.cloud.service == "lwm2m":
        return lwm2m_backend(
            config.cloud.lwm2m,
            endpoint=config.lwm2m_endpoint,
            firmware=firmware,
            device_config=device_config,
            environmental=config.sources.environmental,
        )
    raise UnsupportedCloud(
        f"cloud.service = {config.cloud.service!r}: no backend for this cloud "
        'in this build yet; use "local", "simulated", "aws" or "lwm2m"'
    )


def _aws_backend(config: Config, firmware: FirmwareStore | None) -> CloudBackend:
    """An ``AwsIotBackend`` as ``[cloud.aws]`` describes it."""
    aws = config.cloud.aws
    # The configuration guarantees the credential files for "aws".
    assert aws.ca_file is not None
    settings = MqttSettings(
        host=aws.broker_host,
        port=aws.port,
        client_id=config.client_id,
        ca_file=aws.ca_file,
        cert_file=aws.cert_file,
        key_file=aws.key_file,
        keepalive=aws.keepalive,
    )
    return AwsIotBackend(
        config.client_id,
        settings,
        legacy_topics=aws.legacy_topics,
        firmware=firmware,
        http_ca_file=aws.download_ca_file,
    )


@attrs.define(eq=False)
class Device:
    """One boot's actor tree."""

    bus: Bus
    backend: CloudBackend
    util: UtilActor
    cloud: CloudActor
    data: DataActor
    modem: ModemActor
    app: AppActor
    supervisor: Supervisor
    pgps: PgpsDownloader
    location: LocationActor
    sensor: SensorActor
    ui: UiActor

    @property
    def actors(self) -> list[Actor]:
        """The module actors, in start order."""
        return [
            self.util, self.cloud, self.data, self.modem,
            self.location, self.sensor, self.ui, self.app,
        ]  # fmt: skip

    def snapshot(self) -> list[ActorSnapshot]:
        """Every actor's snapshot, in start order."""
        return [actor.snapshot() for actor in self.actors]


def build_device(
    config: Config,
    on_reboot: Callable[[Reboot], None],
    *,
    backend: CloudBackend | None = None,
    firmware: FirmwareStore | None = None,
    initial_config: DeviceConfig | None = None,
    persist_config: Callable[[DeviceConfig], None] | None = None,
    samples: SampleStore | None = None,
    clock: Callable[[], float] | None = None,
) -> Device:
    """Wire a fresh tree from ``config``; nothing runs until it is supervised.

    ``firmware`` gives the modem's application version and the cloud
    module's image confirmation; ``initial_config`` is the device
    configuration to boot with (the stored one) and ``persist_config``
    stores every change of it; ``samples`` keeps every accepted sample until
    it is delivered, and the data actor resends what it holds at boot.
    ``clock`` is the device's wall clock (UNIX seconds) that stamps samples;
    by default the host's.

    The P-GPS replies go to a ``PgpsDownloader``, supervised right after
    the backend, which records each reply with the modem and downloads the
    prediction file it names (``"pgps_predictions"``).
    """
    bus = Bus()
    backend = backend if backend is not None else make_backend(config, firmware)
    util = UtilActor(
        bus,
        on_reboot=on_reboot,
        reboot_timeout=config.util.reboot_timeout,
        ack_reboot_delay=config.util.ack_reboot_delay,
    )
    modem = ModemActor(
        bus,
        driver=(
            SimulatedModem(config.device.imei)
            if firmware is None
            else SimulatedModem(config.device.imei, firmware.running_version)
        ),
        attach_delay=config.modem.attach_delay,
        outages=[(outage.at, outage.duration) for outage in config.modem.outages],
    )
    pgps = PgpsDownloader(
        modem.receive_assistance, ca_file=config.cloud.aws.download_ca_file
    )
    cloud = CloudActor(
        bus,
        backend=backend,
        backoff=ReconnectBackoff(
            config.cloud.backoff_table, config.cloud.connect_retries
        ),
        network_info=modem.current_network,
        agnss_sink=functools.partial(modem.receive_assistance, "agnss"),
        pgps_sink=pgps.handle,
        confirm_image=None if firmware is None else firmware.confirm,
    )
    sources = config.sources
    route = default_route() if sources.route is None else load_route(sources.route)
    location = LocationActor(
        bus, gnss=SimulatedGnss(route=route, seed=sources.seed), agnss=sources.agnss
    )
    sensor = SensorActor(
        bus,
        sensors=SimulatedSensors(
            seed=sources.seed,
            environmental=sources.environmental,
            fuel_gauge=sources.fuel_gauge,
        ),
        movement=[
            Movement(m.at, m.kind, m.magnitude) for m in sources.movement
        ],
    )
    ui = UiActor(bus, presses=[ButtonPress(p.at, p.button) for p in sources.presses])
    data = DataActor(
        bus,
        codec=backend.codec,
        config_before_connected=backend.config_before_connected,
        # Only the JSON clouds encode sample documents.
        flavour=getattr(backend.codec, "flavour", None),
        config=initial_config or DeviceConfig(),
        persist=persist_config,
        store=samples,
        clock=time.time if clock is None else clock,
    )
    app = AppActor(bus)
    actors: list[Actor] = [util, cloud, data, modem, location, sensor, ui, app]
    util.register_shutdown(a.id for a in actors if a.supports_shutdown)

    def record_restart(name: str, exc: BaseException) -> None:
        for actor in actors:
            if actor.name == name:
                actor.restarts += 1
                actor.last_error = f"crashed: {exc!r}"

    supervisor = Supervisor(
        [
            ("backend", backend),
            ("pgps", pgps),
            *((actor.name, actor) for actor in actors),
        ],
        on_restart=record_restart,
    )
    return Device(
        bus, backend, util, cloud, data, modem, app, supervisor, pgps,
        location, sensor, ui,
    )  # fmt: skip


@attrs.define(eq=False)
class Service:
    """Boots, reboots and stops the device (module docstring).

    Args:
      config: the validated configuration.
      max_reboots: give up (``ExitCode.REBOOT_LIMIT``) after this many
        reboots; ``None`` reboots forever, as the device would.
      backend_factory: builds each boot's backend (tests inject one);
        ``None`` uses ``make_backend`` with the service's firmware store.
      firmware: the image slots; by default in
        ``config.state.directory / "firmware"``.

    With ``cloud.service = "local"`` and no ``backend_factory``, ``run``
    starts ``local_cloud`` (``local_cloud_for(config)`` unless given) before
    the first boot and stops it after the last; ``local_ready`` is set once
    it serves.  An injected ``backend_factory`` replaces the cloud, local
    or not.
    """

    config: Config
    max_reboots: int | None = None
    backend_factory: Callable[[Config], CloudBackend] | None = None
    firmware: FirmwareStore = attrs.field(
        default=attrs.Factory(
            lambda self: FirmwareStore(self.config.state.directory / "firmware"),
            takes_self=True,
        )
    )
    reboots: list[Reboot] = attrs.field(init=False, factory=list)
    # Opened by ``run`` unless given: a Service that never runs writes nothing.
    state: StateStore | None = None
    # The shutdown that ended ``run`` with ``ExitCode.OK`` (reason SERVICE_STOP).
    stopped_by: Reboot | None = attrs.field(init=False, default=None)
    device: Device | None = attrs.field(init=False, default=None)
    booted: trio.Event = attrs.field(init=False, factory=trio.Event)
    local_cloud: LocalCloud | None = None
    local_ready: trio.Event = attrs.field(init=False, factory=trio.Event)
    # One timeline for every boot, following the Trio clock (tracker.warp).
    wall_clock: DeviceWallClock = attrs.field(factory=DeviceWallClock)
    _stop_requested: bool = attrs.field(init=False, default=False)

    def request_stop(self) -> None:
        """Stop through the util actor's shutdown protocol."""
        self._stop_requested = True
        if self.device is not None:
            self.device.util.request_stop()

    async def run(self) -> ExitCode:
        """Boot until stopped; returns the exit code.

        Cancellation: cancelling it cancels the running tree at once,
        without the shutdown protocol.

        Logging: ``device_booted`` and ``device_rebooting`` at INFO and
        WARNING, ``service_stopped`` at INFO; with the local cloud,
        ``shadow_holds`` at INFO whenever the device's reported state
        changes.
        """
        if self.config.cloud.service != "local" or self.backend_factory is not None:
            return await self._run_boots()
        if self.local_cloud is None:
            self.local_cloud = local_cloud_for(self.config)
        cloud = self.local_cloud
        async with trio.open_nursery() as nursery:
            unavailable: list[BaseException] = []
            try:
                await nursery.start(cloud.run)
            except* (BrokerError, Lwm2mServerError, OSError) as group:
                unavailable.extend(group.exceptions)
            if unavailable:
                # A port in use or an unwritable directory: a setup problem,
                # reported like a bad configuration.
                log.error(
                    "local_cloud_unavailable",
                    error=str(first_leaf(unavailable[0])),
                    hint="change [cloud.local] host or its ports",
                )
                return ExitCode.CONFIG
            self.local_ready.set()
            if self.config.cloud.local.cloud == "lwm2m":
                nursery.start_soon(self._log_lwm2m_sends, cloud)
            else:
                nursery.start_soon(self._log_shadow, cloud)
            code = await self._run_boots()
            nursery.cancel_scope.cancel(reason="service stopped")
        log.info("local_cloud_stopped")
        return code

    async def _log_lwm2m_sends(self, cloud: LocalCloud) -> None:
        """Log what the LwM2M server holds of the device after each Send."""
        server = cloud.lwm2m
        assert server is not None
        endpoint = self.config.lwm2m_endpoint
        since = 0
        while True:
            event = await server.wait_for("send", endpoint, since=since)
            since = event.seq + 1
            held = server.sends.get(endpoint, {})
            objects = sorted({int(path.split("/")[1]) for path in held})
            log.info("lwm2m_server_holds", endpoint=endpoint, objects=objects)

    async def _log_shadow(self, cloud: LocalCloud) -> None:
        """Log the device's reported shadow each time it changes.

        It waits for the shadow service rather than polling: a periodic
        wake-up would also hold a time-warped run to steps of its period.
        """
        thing = self.config.client_id
        last = 0
        while True:
            await cloud.shadow.wait_handled()
            version = cloud.shadow.store.version(thing)
            if version != last:
                last = version
                reported = cloud.reported(thing)
                log.info(
                    "shadow_holds",
                    thing=thing,
                    version=version,
                    reported=sorted(reported),
                )

    async def _run_boots(self) -> ExitCode:
        if self.state is None:
            self.state = StateStore(self.config.state.directory / "state.db")
            earlier = self.state.reboots()
            if earlier:
                last = earlier[-1]
                log.info(
                    "reboots_so_far",
                    count=len(earlier),
                    last_reason=last.reason,
                    last_cause=last.cause,
                )
        while True:
            reboot = await self._boot()
            if reboot.reason is ShutdownReason.SERVICE_STOP:
                self.stopped_by = reboot
                log.info("service_stopped", boots=len(self.reboots) + 1)
                return ExitCode.OK
            self.reboots.append(reboot)
            assert self.state is not None
            # One small transaction between two boots, with no actor
            # running: done inline (a worker thread would also let the
            # autojump clock of the tests race past it).
            self.state.record_reboot(reboot.reason.value, reboot.cause)
            log.warning(
                "device_rebooting",
                reboots=len(self.reboots),
                reason=reboot.reason.value,
                cause=reboot.cause,
            )
            if self.max_reboots is not None and len(self.reboots) > self.max_reboots:
                log.error("reboot_limit_reached", max_reboots=self.max_reboots)
                return ExitCode.REBOOT_LIMIT

    def _stored_config(self) -> DeviceConfig | None:
        """The configuration the last boot stored, if it is usable."""
        if self.state is None:
            return None
        try:
            return self.state.load_config()
        except StateStoreError as exc:
            # The device boots with the defaults, as the firmware does when
            # its flash holds no valid settings; the next change overwrites
            # the bad value.
            log.error("stored_config_unusable", error=str(exc))
            return None

    async def _boot(self) -> Reboot:
        outcome: list[Reboot] = []
        rebooting = trio.Event()

        def on_reboot(reboot: Reboot) -> None:
            outcome.append(reboot)
            rebooting.set()

        # The bootloader's part: swap in a staged image, or revert one that
        # had its trial boot without being confirmed.
        previous = self.firmware.running_version
        activated = self.firmware.activate_pending()
        if activated is not None:
            log.info("firmware_activated", previous=previous, running=activated)
        config = self.config
        initial_config = self._stored_config()
        if self.backend_factory is not None:
            backend = self.backend_factory(config)
        else:
            if self.local_cloud is not None:
                config = local_aws_config(config, self.local_cloud)
            backend = make_backend(
                self.config,
                self.firmware,
                local=self.local_cloud,
                device_config=initial_config,
            )
        device = build_device(
            config,
            on_reboot,
            backend=backend,
            firmware=self.firmware,
            initial_config=initial_config,
            persist_config=None if self.state is None else self.state.save_config,
            samples=self.state,
            clock=self.wall_clock,
        )
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(device.supervisor.run)
                self.device = device
                log.info("device_booted", boot=len(self.reboots) + 1)
                self.booted.set()
                if self._stop_requested:
                    device.util.request_stop()
                await rebooting.wait()
                await device.supervisor.stop()
                nursery.cancel_scope.cancel(reason="device rebooting")
        except* RestartLimitExceeded as group:
            # except* keeps the nesting of the nurseries it came through.
            cause = str(first_leaf(group))
            outcome.append(
                Reboot(reason=ShutdownReason.GENERIC, cause=cause, acknowledged=False)
            )
        finally:
            self.device = None
        return outcome[0]


async def run_until_signalled(
    service: Service, *, duration: float | None = None
) -> ExitCode:
    """Run ``service``; the first SIGINT or SIGTERM stops it in order.

    A second signal cancels everything at once (``ExitCode.FORCED``).
    With ``duration``, the service is also stopped in order once that many
    seconds of Trio time have passed (``duration_reached``).
    """
    result: list[ExitCode] = []
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                result.append(await service.run())
                nursery.cancel_scope.cancel()

            nursery.start_soon(serve, name="service")
            if duration is not None:

                async def stop_after(seconds: float) -> None:
                    await trio.sleep(seconds)
                    log.info("duration_reached", seconds=seconds)
                    service.request_stop()

                nursery.start_soon(stop_after, duration, name="duration")
            count = 0
            async for signum in signals:
                count += 1
                name = signal.Signals(signum).name
                if count == 1:
                    log.info("stop_requested", signal=name)
                    service.request_stop()
                else:
                    log.warning("stop_forced", signal=name)
                    nursery.cancel_scope.cancel(reason=f"second {name}")
                    result.append(ExitCode.FORCED)
                    break
    return result[0]
