"""Shared pytest fixtures.  Keep each group in its own section."""

from __future__ import annotations

# ---------------------------------------------------------------------------
# MQTT: a real Mosquitto broker with mutual TLS (tests/mosquitto.py)

from tests.mosquitto import mosquitto_broker, mqtt_pki

__all__ = ["mosquitto_broker", "mqtt_pki"]
