"""The ``tracker`` command.

``tracker run`` loads the configuration (``tracker.toml`` in the current
directory when there is one, the built-in defaults otherwise), sets up
logging and runs the device until SIGINT or SIGTERM.  ``tracker check``
only validates a configuration file.  Exit codes are ``ExitCode``'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import trio

from state.store import StateStore, StateStoreError
from tracker import __version__
from tracker.config import Config, ConfigError, default_config, load_config
from tracker.logs import configure_logging
from tracker.service import ExitCode, Service, UnsupportedCloud, make_backend
from tracker.service import run_until_signalled

DEFAULT_CONFIG = Path("tracker.toml")


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
def run(
    config_path: Path | None,
    max_reboots: int | None,
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
    configure_logging(log_level or config.log.level, log_format or config.log.format)
    service = Service(config, max_reboots=max_reboots, state=state)
    sys.exit(trio.run(run_until_signalled, service))


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
