"""``python -m tracker run`` with the shipped tracker.toml, as a newcomer runs it.

The file is copied unchanged but for its four ports (set to 0, any free
port, so parallel runs and a busy 8883 do not collide); its state directory
(``var``, relative to the file) is then inside ``tmp_path``.  The process
runs for real: its JSON log lines are read back until the local cloud is
ready, the device connected, and its shadow holds the device's reported
configuration; then SIGINT must stop everything in order with exit code 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import trio

from backends.mqtt_transport import MqttMessage, MqttSettings, open_mqtt_session

REPO: Final = Path(__file__).resolve().parent.parent
#: Seconds from start until the shadow must hold the device's data.
READY_TIMEOUT: Final = 60.0
#: Seconds from SIGINT until the process must have exited.
STOP_TIMEOUT: Final = 30.0


def read_events(log_file: Path) -> list[dict[str, Any]]:
    """The JSON log lines written so far (other lines are skipped)."""
    events = []
    for line in log_file.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line still being written
    return events


def exit_report(log_file: Path, process: trio.Process) -> str:
    """Why the process ended early: its exit code and its whole log."""
    return f"tracker exited with {process.returncode}:\n{log_file.read_text()}"


async def wait_for_event(
    log_file: Path, process: trio.Process, test: Callable[[Any], bool]
) -> dict[str, Any]:
    """Poll the log until an event passes ``test`` (bounded by the caller)."""
    while True:
        for event in read_events(log_file):
            if test(event):
                return event
        if process.poll() is not None:
            raise AssertionError(exit_report(log_file, process))
        await trio.sleep(0.1)


@contextlib.asynccontextmanager
async def tracker_run(directory: Path, log_file: Path) -> AsyncIterator[trio.Process]:
    """``python -m tracker run`` in ``directory``, logging to ``log_file``.

    The process is killed on the way out if the test has not stopped it.
    """
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_file.open("wb") as log:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "tracker", "run"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(STOP_TIMEOUT, shield=True):
                await process.wait()


def shipped_config_with_free_ports(directory: Path, *, face: str = "aws") -> Path:
    """tracker.toml as shipped, but for the local cloud's ports = 0.

    ``face`` is ``[cloud.local] cloud``, the one switch a user flips to
    have the device talk LwM2M instead.
    """
    text = (REPO / "tracker.toml").read_text()
    text, switched = re.subn(r'(?m)^cloud = "aws"$', f'cloud = "{face}"', text)
    assert switched == 1, "tracker.toml lacks [cloud.local] cloud"
    text, mqtt = re.subn(r"(?m)^mqtt_port = \d+$", "mqtt_port = 0", text)
    text, http = re.subn(r"(?m)^http_port = \d+$", "http_port = 0", text)
    text, lwm2m = re.subn(r"(?m)^lwm2m_port = \d+$", "lwm2m_port = 0", text)
    text, coap = re.subn(r"(?m)^coap_port = \d+$", "coap_port = 0", text)
    ports = (mqtt, http, lwm2m, coap)
    assert ports == (1, 1, 1, 1), "tracker.toml lacks [cloud.local] ports"
    path = directory / "tracker.toml"
    path.write_text(text)
    return path


async def test_run_with_the_default_config(tmp_path: Path) -> None:
    shipped_config_with_free_ports(tmp_path)
    log_file = tmp_path / "tracker.log"
    async with tracker_run(tmp_path, log_file) as process:
        with trio.fail_after(READY_TIMEOUT):
            ready = await wait_for_event(
                log_file, process, lambda e: e.get("event") == "local_cloud_ready"
            )
            await wait_for_event(
                log_file, process, lambda e: e.get("event") == "cloud_connected"
            )
            holds = await wait_for_event(
                log_file,
                process,
                lambda e: (
                    e.get("event") == "shadow_holds" and "cfg" in e.get("reported", [])
                ),
            )
        process.send_signal(signal.SIGINT)
        with trio.fail_after(STOP_TIMEOUT):
            await process.wait()

    events = [event.get("event") for event in read_events(log_file)]
    assert process.returncode == 0, exit_report(log_file, process)
    assert ready["mqtt_port"] > 0
    assert ready["ca_file"] == str(tmp_path / "var" / "local-cloud" / "ca.pem")
    assert holds["thing"] == "352656100000010"
    # The state machine is in the log, and the shutdown went in order.
    assert "device_booted" in events
    assert "cloud_connect_attempt" in events
    tail = [
        e for e in events
        if e in ("stop_requested", "service_stopped", "broker_stopped",
                 "local_cloud_stopped")
    ]  # fmt: skip
    assert tail == [
        "stop_requested",
        "service_stopped",
        "broker_stopped",
        "local_cloud_stopped",
    ]
    devices = tmp_path / "var" / "local-cloud" / "devices"
    assert (devices / "352656100000010.pem").is_file()


async def test_run_with_the_lwm2m_face(tmp_path: Path) -> None:
    """The same file with cloud = "lwm2m": register over DTLS, Send, stop."""
    shipped_config_with_free_ports(tmp_path, face="lwm2m")
    log_file = tmp_path / "tracker.log"
    async with tracker_run(tmp_path, log_file) as process:
        with trio.fail_after(READY_TIMEOUT):
            ready = await wait_for_event(
                log_file, process, lambda e: e.get("event") == "local_cloud_ready"
            )
            await wait_for_event(
                log_file, process, lambda e: e.get("event") == "cloud_connected"
            )
            # The first Send: the A-GNSS request with the cell (objects 4
            # and 33625), before any GNSS fix.
            holds = await wait_for_event(
                log_file,
                process,
                lambda e: e.get("event") == "lwm2m_server_holds"
                and 33625 in e.get("objects", []),
            )
        process.send_signal(signal.SIGINT)
        with trio.fail_after(STOP_TIMEOUT):
            await process.wait()

    events = read_events(log_file)
    names = [event.get("event") for event in events]
    assert process.returncode == 0, exit_report(log_file, process)
    assert ready["lwm2m_port"] > 0
    assert holds["endpoint"] == "urn:imei:352656100000010"
    assert 4 in holds["objects"]
    # The public default key is named at start, and the stop de-registers.
    assert "lwm2m_default_psk" in names
    assert names.index("lwm2m_deregistered") > names.index("stop_requested")
    assert not [e for e in events if e.get("level") in ("warning", "error")
                and e.get("event") != "lwm2m_default_psk"]  # fmt: skip


async def test_sandbox_serves_a_client_with_an_issued_certificate(
    tmp_path: Path,
) -> None:
    """``tracker sandbox`` alone; ``--issue-cert`` gives a client its files."""
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    issued = await trio.run_process(
        [sys.executable, "-m", "tracker", "sandbox", "--issue-cert", "my-tool"],
        cwd=tmp_path,
        capture_stdout=True,
        env=environment,
    )
    cert_dir = tmp_path / "var" / "local-cloud"
    assert issued.stdout.decode().split() == [
        "my-tool:",
        "cert", str(cert_dir / "devices" / "my-tool.pem"),
        "key", str(cert_dir / "devices" / "my-tool.key"),
        "ca", str(cert_dir / "ca.pem"),
    ]  # fmt: skip
    log_file = tmp_path / "sandbox.log"
    command = [sys.executable, "-m", "tracker", "sandbox", "--mqtt-port", "0",
               "--http-port", "0", "--lwm2m-port", "0", "--coap-port", "0",
               "--log-format", "json"]  # fmt: skip
    with log_file.open("wb") as log:
        process = await trio.lowlevel.open_process(
            command, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, env=environment,
        )  # fmt: skip
    try:
        with trio.fail_after(READY_TIMEOUT):
            hello = await wait_for_event(
                log_file,
                process,
                lambda e: e.get("event") == "local_cloud_connect_with",
            )
            port = int(hello["mqtt"].rsplit(":", 1)[1])
            settings = MqttSettings(
                host="127.0.0.1",
                port=port,
                client_id="my-tool",
                ca_file=cert_dir / "ca.pem",
                cert_file=cert_dir / "devices" / "my-tool.pem",
                key_file=cert_dir / "devices" / "my-tool.key",
            )
            shadow = "$aws/things/my-tool/shadow"
            async with open_mqtt_session(settings) as session:
                await session.subscribe([(f"{shadow}/get/rejected", 1)])
                await session.publish(f"{shadow}/get", b"", 1)
                async for event in session.incoming:
                    if isinstance(event, MqttMessage):
                        reply = event
                        break
        process.send_signal(signal.SIGINT)
        with trio.fail_after(STOP_TIMEOUT):
            await process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(STOP_TIMEOUT, shield=True):
                await process.wait()

    assert reply.topic == f"{shadow}/get/rejected"
    assert json.loads(reply.payload)["code"] == 404
    assert hello["ca_file"] == str(cert_dir / "ca.pem")
    assert process.returncode == 0, exit_report(log_file, process)
    events = [e.get("event") for e in read_events(log_file)]
    assert events[-2:] == ["broker_stopped", "local_cloud_stopped"]
