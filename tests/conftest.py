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
