"""A real Mosquitto broker with mutual TLS, for integration tests.

``Pki`` makes a throw-away CA with trustme and writes PEM files: the broker's
server certificate (valid for ``127.0.0.1`` and ``localhost``) and client
certificates whose common name is the MQTT client id, which Mosquitto's
``use_identity_as_username`` turns into the user name.

``MosquittoBroker`` writes a ``mosquitto.conf`` into a temporary directory and
runs ``mosquitto -c`` as a subprocess on a free loopback port.  It can be
killed and restarted on the same port, and its log file can be read back, so
tests can count connection attempts.

The fixtures ``mqtt_pki`` and ``mosquitto_broker`` are registered in
``tests/conftest.py``.  A missing ``mosquitto`` binary fails the test with a
message naming the Debian package: these tests must not silently skip on CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
import trio
import trustme

from backends.mqtt_transport import MqttSettings

START_TIMEOUT: Final = 10.0
"""Seconds a broker may take to open its listener after being spawned."""

_POLL_INTERVAL: Final = 0.02


def find_mosquitto() -> str:
    """Return the path of the ``mosquitto`` binary, or fail the test."""
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    if found is None:
        pytest.fail(
            "the mosquitto broker is not installed: MQTT integration tests need "
            "it in PATH or at /usr/sbin/mosquitto (Debian: apt-get install -y "
            "mosquitto)",
            pytrace=False,
        )
    return found


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_RUNNING: Final = re.compile(r"^\d+: mosquitto version \S+ running$", re.MULTILINE)


@attrs.frozen
class ClientFiles:
    """PEM files of one client identity: certificate chain and private key."""

    cert_file: Path
    key_file: Path


@attrs.define(eq=False)
class Pki:
    """A test CA and the PEM files issued by it, under ``directory``."""

    directory: Path
    ca: trustme.CA = attrs.field(factory=trustme.CA)

    def __attrs_post_init__(self) -> None:
        self.ca.cert_pem.write_to_path(str(self.ca_file))

    @property
    def ca_file(self) -> Path:
        """The CA certificate, for both the broker and the clients."""
        return self.directory / "ca.pem"

    def server_files(self) -> ClientFiles:
        """The broker's certificate, for ``127.0.0.1`` and ``localhost``."""
        return self._leaf("server", "127.0.0.1", "localhost")

    def client_files(self, client_id: str) -> ClientFiles:
        """A client certificate whose common name is ``client_id``."""
        return self._leaf(f"client-{client_id}", common_name=client_id)

    def _leaf(
        self, name: str, *identities: str, common_name: str | None = None
    ) -> ClientFiles:
        files = ClientFiles(
            self.directory / f"{name}.pem", self.directory / f"{name}.key"
        )
        if not files.cert_file.exists():
            leaf = self.ca.issue_cert(*identities, common_name=common_name)
            _write_leaf(leaf, files.cert_file, files.key_file)
        return files


def _write_leaf(leaf: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
    with cert_file.open("wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key_file))


@attrs.define(eq=False)
class MosquittoBroker:
    """One Mosquitto process with a mutual-TLS listener on ``port``.

    ``start()`` blocks until the listener is open (for sync fixtures);
    ``restart()`` is the Trio-friendly version for use inside a test.  Killing
    and restarting keeps the port and appends to the same log file.
    """

    directory: Path
    pki: Pki
    binary: str
    port: int = attrs.field(factory=free_loopback_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def conf_file(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def log_file(self) -> Path:
        return self.directory / "mosquitto.log"

    def write_conf(self) -> None:
        """Write ``mosquitto.conf``; called by the first start."""
        server = self.pki.server_files()
        lines = [
            "per_listener_settings false",
            "allow_anonymous false",
            "persistence false",
            f"log_dest file {self.log_file}",
            "log_type all",
            "connection_messages true",
            f"listener {self.port} 127.0.0.1",
            f"cafile {self.pki.ca_file}",
            f"certfile {server.cert_file}",
            f"keyfile {server.key_file}",
            "require_certificate true",
            "use_identity_as_username true",
            # A minimum, not a pin: Mosquitto 2.0 still negotiates TLS 1.3.
            "tls_version tlsv1.2",
        ]
        # As root, mosquitto drops to the "mosquitto" user, which cannot read
        # pytest's 0700 tmp_path; "user root" keeps it as it is.  A non-root
        # mosquitto ignores the option.
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        self.conf_file.write_text("\n".join(lines) + "\n")

    def _spawn(self) -> None:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("mosquitto is already running")
        if not self.conf_file.exists():
            self.write_conf()
        # The child keeps its own copy of the descriptor.
        with (self.directory / "mosquitto.stderr").open("ab") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.starts += 1

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(
                f"mosquitto exited with {self.process.returncode}; log:\n"
                f"{self.log_text()}\nstderr:\n"
                f"{(self.directory / 'mosquitto.stderr').read_text()}",
                pytrace=False,
            )

    def _listening(self) -> bool:
        # Mosquitto logs "running" once its listeners are open.  Watching the
        # log, rather than probing the port, keeps probes out of the
        # connection count.
        self._check_alive()
        return len(_RUNNING.findall(self.log_text())) >= self.starts

    def start(self) -> None:
        """Spawn the broker and block until it listens."""
        self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._listening():
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not listen on port {self.port}")
            time.sleep(_POLL_INTERVAL)

    async def restart(self) -> None:
        """Spawn the broker again on the same port; wait until it listens."""
        self._spawn()
        with trio.fail_after(START_TIMEOUT):
            while True:
                if self._listening():
                    return
                await trio.sleep(_POLL_INTERVAL)

    def kill(self) -> None:
        """Kill the broker with SIGKILL: no DISCONNECT, no TLS close_notify."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def stop(self) -> None:
        """Terminate the broker politely, killing it if it does not exit."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung broker
            self.kill()

    def log_text(self) -> str:
        """The broker's log so far (all starts), or "" before the first one."""
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connection_attempts(self) -> int:
        """How many connections the broker has accepted so far (all starts).

        Counted from "New connection from" lines, which Mosquitto writes for
        TLS connections refused later, too.
        """
        return self.log_text().count("New connection from")


# ---------------------------------------------------------------------------
# Fixtures (registered in tests/conftest.py)


@pytest.fixture
def mqtt_pki(tmp_path: Path) -> Pki:
    """A fresh test CA writing its PEM files into ``tmp_path/pki``."""
    directory = tmp_path / "pki"
    directory.mkdir()
    return Pki(directory)


@pytest.fixture
def mosquitto_broker(tmp_path: Path, mqtt_pki: Pki) -> Iterator[MosquittoBroker]:
    """A running Mosquitto with mutual TLS; stopped at teardown."""
    directory = tmp_path / "mosquitto"
    directory.mkdir()
    broker = MosquittoBroker(directory, mqtt_pki, find_mosquitto())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def client_settings(
    broker: MosquittoBroker, client_id: str, **overrides: Any
) -> MqttSettings:
    """Settings for ``client_id`` with a valid certificate of the test CA."""
    files = broker.pki.client_files(client_id)
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "client_id": client_id,
        "ca_file": broker.pki.ca_file,
        "cert_file": files.cert_file,
        "key_file": files.key_file,
    } | overrides
    return MqttSettings(**values)
