"""The ``tracker`` command.

``tracker run`` loads the configuration (``tracker.toml`` in the current
directory when there is one, the built-in defaults otherwise), sets up
logging and runs the device until SIGINT or SIGTERM.  ``tracker check``
only validates a configuration file.  Exit codes are ``ExitCode``'s.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import attrs
import click
import structlog
import trio
from trio_websocket import HandshakeError

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
    make_backend,
    run_until_signalled,
)

DEFAULT_CONFIG = Path("tracker.toml")

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
def run(
    config_path: Path | None,
    max_reboots: int | None,
    debug_port: int | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """Run the device until SIGINT or SIGTERM.

    \b
    Exit codes:
      0    stopped by a signal, after every module acknowledged shutdown
      1    unexpected error
      2    invalid configuration, a cloud this build cannot reach, or an
           unusable state database
      3    more reboots than --max-reboots
      130  a second signal cut the shutdown short
    """
    try:
        config = _load(config_path)
        make_backend(config)
        state = StateStore(config.state.directory / "state.db")
    except (ConfigError, UnsupportedCloud, StateStoreError) as exc:
        click.echo(f"tracker: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    if debug_port is not None:
        config = attrs.evolve(
            config, debug=attrs.evolve(config.debug, enabled=True, port=debug_port)
        )
    configure_logging(log_level or config.log.level, log_format or config.log.format)
    service = Service(config, max_reboots=max_reboots, state=state)
    sys.exit(trio.run(_serve, service))


async def _serve(service: Service) -> ExitCode:
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
        code = await run_until_signalled(service)
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
    click.echo(
        f"{source}: ok (cloud {config.cloud.service}, client id {config.client_id}, "
        f"{config.cloud.connect_retries} retries over "
        f"{len(config.cloud.backoff_table)} backoff steps)"
    )
