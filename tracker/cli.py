"""The ``tracker`` command.

``tracker run`` loads the configuration (``tracker.toml`` in the current
directory when there is one, the built-in defaults otherwise), sets up
logging and runs the device until SIGINT or SIGTERM (with the default
``cloud.service = "local"``, together with the local cloud it connects
to).  ``tracker sandbox`` runs only the local cloud, for other devices and
tools; ``tracker sandbox --issue-cert ID`` writes a client certificate and
exits.  ``tracker check`` only validates a configuration file.  Exit codes
are ``ExitCode``'s.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
import structlog
import trio
from trio_websocket import HandshakeError

from actors.supervisor import first_leaf
from sandbox.broker import BrokerError
from sandbox.certs import InvalidClientId
from sandbox.local_cloud import LocalCloud
from sandbox.lwm2m_server import Lwm2mServerError
from state.store import StateStore, StateStoreError
from tracker import __version__
from tracker.config import Config, ConfigError, default_config, load_config
from tracker.debug import DEFAULT_PORT, DebugServer
from tracker.inspect import inspect
from tracker.logs import configure_logging
from tracker.service import (
    ExitCode,
    Service,
    UnsupportedCloud,
    check_cloud,
    local_cloud_for,
    run_until_signalled,
)
from tracker.warp import DEFAULT_IDLE, warp_clock

DEFAULT_CONFIG = Path("tracker.toml")

_F = TypeVar("_F", bound=Callable[..., Any])

log = structlog.get_logger(actor="service")


def _load(path: Path | None) -> Config:
    if path is not None:
        return load_config(path)
    if DEFAULT_CONFIG.is_file():
        return load_config(DEFAULT_CONFIG)
    return default_config()


@click.group()
@click.version_option(version=__version__, prog_name="tracker")
def main() -> None:
    """An nRF Asset Tracker v2 device, on the host."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Configuration file (default: ./tracker.toml, else built-in defaults).",
)
@click.option(
    "--max-reboots",
    type=click.IntRange(min=0),
    default=None,
    help="Exit with code 3 after this many reboots (default: reboot forever).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default=None,
    help="Override [log] format.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Override [log] level.",
)
@click.option(
    "--debug-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the debug websocket on this port (0: any free port).",
)
@click.option(
    "--warp",
    is_flag=True,
    help="Time warp: jump over idle stretches (see below).",
)
@click.option(
    "--warp-idle",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_IDLE,
    show_default=True,
    help="With --warp: real seconds of idleness before the clock jumps.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop in order after this many seconds of device time.",
)
def run(
    config_path: Path | None,
    max_reboots: int | None,
    debug_port: int | None,
    log_format: str | None,
    log_level: str | None,
    warp: bool,
    warp_idle: float,
    duration: float | None,
) -> None:
    """Run the device until SIGINT or SIGTERM (or for --duration).

    With --warp the whole process (the device and the embedded local cloud)
    runs on a clock that jumps to the next timer whenever everything has
    been idle for --warp-idle real seconds, so hours of device life pass in
    seconds, with the messages and timestamps of a real-time run. Limits:
    peers outside the process (a real cloud, `tracker sandbox` in another
    process) live in real time and see the traffic compressed; a peer
    slower than --warp-idle looks like silence, so its timeout may fire;
    log lines keep the real time in `timestamp` and the device's in `t`.

    \b
    Exit codes:
      0    stopped by a signal, after every module acknowledged shutdown
      1    unexpected error
      2    invalid configuration, a cloud this build cannot reach, an
           unusable state database, or a local cloud that cannot listen
      3    more reboots than --max-reboots
      130  a second signal cut the shutdown short
    """
    try:
        config = _load(config_path)
        check_cloud(config)
        if config.cloud.service == "local":
            # The device's certificate, now: a client id that cannot have
            # one, or a directory that cannot hold it, is a setup error.
            local_cloud_for(config).issue(config.client_id)
        state = StateStore(config.state.directory / "state.db")
    except (ConfigError, UnsupportedCloud, StateStoreError, InvalidClientId) as exc:
        click.echo(f"tracker: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    except OSError as exc:
        click.echo(f"tracker: the local cloud's directory: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    if debug_port is not None:
        config = attrs.evolve(
            config, debug=attrs.evolve(config.debug, enabled=True, port=debug_port)
        )
    configure_logging(log_level or config.log.level, log_format or config.log.format)
    service = Service(config, max_reboots=max_reboots, state=state)
    if warp:
        log.info("time_warp", idle=warp_idle)
    clock = warp_clock(warp_idle) if warp else None
    sys.exit(trio.run(_serve, service, duration, clock=clock))


async def _serve(service: Service, duration: float | None = None) -> ExitCode:
    """Run the service, and the debug websocket beside it when enabled."""
    debug = service.config.debug
    async with trio.open_nursery() as nursery:
        if debug.enabled:
            server = DebugServer(
                service,
                host=debug.host,
                port=debug.port,
                interval=debug.interval,
                recent=debug.recent,
                send_timeout=debug.send_timeout,
            )
            port = await nursery.start(server.run)
            log.info("debug_websocket", url=f"ws://{debug.host}:{port}/")
        code = await run_until_signalled(service, duration=duration)
        nursery.cancel_scope.cancel(reason="service stopped")
    return code


@main.command("inspect")
@click.argument("url", default=f"ws://127.0.0.1:{DEFAULT_PORT}/")
@click.option("--once", is_flag=True, help="Print one table and exit.")
def inspect_command(url: str, once: bool) -> None:
    """Show a live table of the actors of a running tracker (debug websocket)."""
    try:
        trio.run(functools.partial(inspect, url, once=once))
    except (OSError, HandshakeError) as exc:
        click.echo(f"tracker: cannot reach {url}: {exc}", err=True)
        sys.exit(ExitCode.ERROR)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Configuration file (default: ./tracker.toml, else built-in defaults).",
)
def check(config_path: Path | None) -> None:
    """Validate a configuration file and print what it selects."""
    try:
        config = _load(config_path)
    except ConfigError as exc:
        click.echo(f"tracker: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    source = config.source or "built-in defaults"
    cloud = config.cloud
    service = cloud.service
    if service == "local":
        service = f"local, {cloud.local.cloud}"
    identity = (
        f"endpoint {config.lwm2m_endpoint}"
        if cloud.speaks_lwm2m
        else f"client id {config.client_id}"
    )
    click.echo(
        f"{source}: ok (cloud {service}, {identity}, "
        f"{cloud.connect_retries} retries over "
        f"{len(cloud.backoff_table)} backoff steps)"
    )


def _port_option(flag: str, key: str, what: str = "") -> Callable[[_F], _F]:
    """``flag`` overrides the local cloud's port ``key`` (0: any free one)."""
    return click.option(
        flag,
        type=click.IntRange(0, 65535),
        default=None,
        help=f"Override [cloud.local] {key}{what} (0: any free port).",
    )


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Configuration file (default: ./tracker.toml, else built-in defaults).",
)
@click.option("--host", default=None, help="Override [cloud.local] host.")
@_port_option("--mqtt-port", "mqtt_port")
@_port_option("--http-port", "http_port")
@_port_option("--lwm2m-port", "lwm2m_port", ", CoAP over DTLS")
@_port_option("--coap-port", "coap_port", ", plain CoAP")
@click.option(
    "--issue-cert",
    "issue_cert",
    metavar="CLIENT_ID",
    multiple=True,
    help="Write a client certificate for CLIENT_ID, print its paths and exit "
    "(repeatable).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default=None,
    help="Override [log] format.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="Override [log] level.",
)
def sandbox(
    config_path: Path | None,
    host: str | None,
    mqtt_port: int | None,
    http_port: int | None,
    lwm2m_port: int | None,
    coap_port: int | None,
    issue_cert: tuple[str, ...],
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run only the local cloud until SIGINT or SIGTERM.

    \b
    MQTT clients (the AWS IoT face) connect over TLS, presenting a
    certificate signed by the local CA whose common name is their client
    id; --issue-cert writes one. LwM2M clients register over plain CoAP, or
    over DTLS with the endpoint name and PSK of [device] and [cloud.lwm2m].
    Exit codes: 0 stopped by a signal, 1 unexpected error, 2 invalid
    configuration or a port that cannot be opened.
    """
    try:
        config = _load(config_path)
    except ConfigError as exc:
        click.echo(f"tracker: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    cloud = local_cloud_for(config)
    cloud = attrs.evolve(
        cloud,
        host=cloud.host if host is None else host,
        mqtt_port=cloud.mqtt_port if mqtt_port is None else mqtt_port,
        http_port=cloud.http_port if http_port is None else http_port,
        lwm2m_port=cloud.lwm2m_port if lwm2m_port is None else lwm2m_port,
        coap_port=cloud.coap_port if coap_port is None else coap_port,
    )
    if issue_cert:
        try:
            for client_id in issue_cert:
                files = cloud.issue(client_id)
                click.echo(
                    f"{client_id}: cert {files.cert_file} key {files.key_file} "
                    f"ca {cloud.pki.ca_file}"
                )
        except (InvalidClientId, OSError) as exc:
            click.echo(f"tracker: {exc}", err=True)
            sys.exit(ExitCode.CONFIG)
        return
    configure_logging(log_level or config.log.level, log_format or config.log.format)
    try:
        sys.exit(trio.run(_serve_sandbox, cloud))
    except* (BrokerError, Lwm2mServerError, OSError) as group:
        error = first_leaf(group)
        click.echo(f"tracker: the local cloud cannot start: {error}", err=True)
        sys.exit(ExitCode.CONFIG)


async def _serve_sandbox(cloud: LocalCloud) -> ExitCode:
    """Run ``cloud`` until the first SIGINT or SIGTERM."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            endpoints = await nursery.start(cloud.run)
            log.info(
                "local_cloud_connect_with",
                mqtt=f"mqtts://{endpoints.host}:{endpoints.mqtt_port}",
                ca_file=str(endpoints.ca_file),
                client_certificates=(
                    f"{endpoints.cert_directory}/<client id>.pem and .key; "
                    "make one with: tracker sandbox --issue-cert <client id>"
                ),
                files=endpoints.file_url("<name>"),
                lwm2m=(
                    None
                    if endpoints.lwm2m_port is None
                    else f"coaps://{endpoints.host}:{endpoints.lwm2m_port} "
                    "(PSK identities and keys: [device] and [cloud.lwm2m])"
                ),
                coap=(
                    None
                    if endpoints.coap_port is None
                    else f"coap://{endpoints.host}:{endpoints.coap_port}"
                ),
            )
            async for signum in signals:
                log.info("stop_requested", signal=signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel(reason="stop requested")
    log.info("local_cloud_stopped")
    return ExitCode.OK
