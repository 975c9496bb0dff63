"""Shared pytest fixtures.  Keep each group in its own section."""

from __future__ import annotations

from pathlib import Path

import pytest

# ---------------------------------------------------------------------------
# MQTT: a real Mosquitto broker with mutual TLS (tests/mosquitto.py)
from tests.mosquitto import mosquitto_broker, mqtt_pki

__all__ = ["mosquitto_broker", "mqtt_pki"]


# ---------------------------------------------------------------------------
# Isolation: a test never writes into the checkout.  Configurations built
# without a file (default_config) put their state in the current directory.


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------------------
# Logging: structlog's default ConsoleRenderer formats exceptions with rich
# (locals included) whenever rich is installed, which on the service's big
# frames takes minutes and gigabytes.  Tests get plain tracebacks.


@pytest.fixture(autouse=True)
def _plain_exception_logs() -> None:
    import structlog

    structlog.reset_defaults()
    *head, _ = structlog.get_config()["processors"]
    structlog.configure(
        processors=[
            *head,
            structlog.dev.ConsoleRenderer(
                exception_formatter=structlog.dev.plain_traceback
            ),
        ]
    )
