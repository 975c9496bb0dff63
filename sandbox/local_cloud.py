"""The local cloud: an AWS IoT stand-in in this process, for a device or a tool.

Design
------
``LocalCloud.run()`` starts, in one nursery:

* the MQTT broker (``sandbox.broker.EmbeddedBroker``: amqtt with mutual
  TLS; a client's certificate must be signed by the local CA and name its
  client id);
* the HTTPS file server (``sandbox.files.FileServer``) for firmware images
  and P-GPS predictions, serving ``<directory>/files``;
* the device shadow, IoT Jobs and A-GNSS/P-GPS services, each an MQTT
  client of that broker with a certificate of its own (client ids
  ``local-cloud-shadow``, ``local-cloud-jobs``, ``local-cloud-assistance``);
* when given ports, the LwM2M server (``sandbox.lwm2m_server``): CoAP over
  DTLS with the pre-shared keys of ``lwm2m_credentials`` (identity = the
  endpoint name), and plain CoAP for tools without DTLS.  It is also the
  bootstrap server of those devices, handing each an account on itself.

Every certificate comes from ``sandbox.certs.LocalPki`` in ``directory``
(``ca.pem``, ``server.pem``, ``devices/<client id>.pem``); ``issue()`` makes
one for any client id.  ``run()`` reports the ``LocalCloudEndpoints`` once
everything is listening and every service has its subscriptions.

The cloud's state (shadows, jobs) lives in memory and is gone when the
process ends, as a fresh AWS account would be: the device creates its
shadow again on its first connection.

Failure: when a part fails (a service loses the broker, the broker dies),
``run()`` raises and the rest is cancelled; nothing restarts on its own.
That costs a tracker run its cloud for good, but only an in-process broker
failure can cause it.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from pathlib import Path
from typing import Any, Final

import attrs
import structlog
import trio

from backends.mqtt_transport import MqttSettings
from sandbox.assistance import AssistanceService
from sandbox.aws_jobs import JobsService
from sandbox.aws_shadow import ShadowService
from sandbox.broker import EmbeddedBroker
from sandbox.certs import CertFiles, LocalPki
from sandbox.files import FileServer
from sandbox.lwm2m_server import (
    BootstrapAccount,
    LocalLwm2mServer,
    Lwm2mServerSettings,
)

__all__ = ["LocalCloud", "LocalCloudEndpoints"]

log = structlog.get_logger(actor="local_cloud")

#: The services' MQTT client ids (and certificate common names).
SHADOW_CLIENT_ID: Final = "local-cloud-shadow"
JOBS_CLIENT_ID: Final = "local-cloud-jobs"
ASSISTANCE_CLIENT_ID: Final = "local-cloud-assistance"
#: Where a wildcard listener is reached from this process.
_WILDCARD_PEERS: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
#: MQTT keepalive of the services' own sessions, in seconds.
_SERVICE_KEEPALIVE: Final = 60
#: Seconds a service may take to connect to the broker in this process.
_SERVICE_CONNECT_TIMEOUT: Final = 10.0


def _url_host(host: str) -> str:
    """``host`` as it goes into a URL (IPv6 literals in brackets)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


@attrs.frozen
class LocalCloudEndpoints:
    """How to reach a running local cloud.

    Attributes:
        host: The address clients connect to (the listening address, or
            loopback when listening on every address).
        mqtt_port: The MQTT over TLS port.
        http_port: The HTTPS file server's port.
        ca_file: The CA certificate clients must trust, and the CA that
            must have signed their own certificates.
        cert_directory: Where device certificates are kept
            (``<client id>.pem`` and ``<client id>.key``).
        files_directory: What the file server serves.
        lwm2m_port: The LwM2M server's CoAP over DTLS port, if it serves.
        coap_port: The LwM2M server's plain CoAP port, if it serves.
    """

    host: str
    mqtt_port: int
    http_port: int
    ca_file: Path
    cert_directory: Path
    files_directory: Path
    lwm2m_port: int | None = None
    coap_port: int | None = None

    def file_url(self, name: str) -> str:
        """The HTTPS URL of ``files_directory / name``."""
        return f"https://{_url_host(self.host)}:{self.http_port}/{name}"


@attrs.define(eq=False)
class LocalCloud:
    """Broker, shadow, jobs, assistance and file server (module docstring).

    Args:
        directory: Certificates (and ``files/``, served over HTTPS).
        host: The address to listen on.
        mqtt_port: The broker's port; 0 picks a free one.
        http_port: The file server's port; 0 picks a free one.
        lwm2m_port: The LwM2M server's CoAP over DTLS port (0 picks a free
            one; ``None``: no DTLS listener, as also without credentials).
        coap_port: The LwM2M server's plain CoAP port (0 picks a free one;
            ``None``: none).  Without either port there is no LwM2M server.
        lwm2m_credentials: DTLS PSK identity (an endpoint name) -> key.
        verbose: Let the broker library log every connection.
    """

    directory: Path
    host: str = "127.0.0.1"
    mqtt_port: int = 8883
    http_port: int = 0
    lwm2m_port: int | None = None
    coap_port: int | None = None
    lwm2m_credentials: dict[bytes, bytes] = attrs.field(factory=dict)
    verbose: bool = False
    pki: LocalPki = attrs.field(init=False)
    shadow: ShadowService = attrs.field(factory=ShadowService, init=False)
    jobs: JobsService = attrs.field(factory=JobsService, init=False)
    assistance: AssistanceService | None = attrs.field(default=None, init=False)
    files: FileServer | None = attrs.field(default=None, init=False)
    broker: EmbeddedBroker | None = attrs.field(default=None, init=False)
    lwm2m: LocalLwm2mServer | None = attrs.field(default=None, init=False)
    endpoints: LocalCloudEndpoints | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self.pki = LocalPki(self.directory)

    @property
    def client_host(self) -> str:
        """The address this process connects to."""
        return _WILDCARD_PEERS.get(self.host, self.host)

    def issue(self, client_id: str) -> CertFiles:
        """The certificate and key of ``client_id``, made if needed.

        Raises:
            InvalidClientId: the id cannot name a certificate.
            OSError: ``directory`` is not writable.
        """
        self.pki.ensure_ca()
        return self.pki.device_files(client_id)

    def device_settings(self, client_id: str, **overrides: Any) -> MqttSettings:
        """MQTT settings for ``client_id`` against the running cloud.

        Raises:
            RuntimeError: the cloud is not running.
            InvalidClientId: the id cannot name a certificate.
        """
        if self.endpoints is None:
            raise RuntimeError("the local cloud is not running")
        files = self.issue(client_id)
        fields: dict[str, Any] = {
            "host": self.endpoints.host,
            "port": self.endpoints.mqtt_port,
            "client_id": client_id,
            "ca_file": self.endpoints.ca_file,
            "cert_file": files.cert_file,
            "key_file": files.key_file,
        }
        fields.update(overrides)
        return MqttSettings(**fields)

    def shadow_document(self, thing: str) -> dict[str, Any] | None:
        """The shadow of ``thing`` as a GET would return it, or None."""
        return self.shadow.store.document(thing)

    def reported(self, thing: str) -> dict[str, Any]:
        """The reported state of ``thing``'s shadow (empty without one)."""
        document = self.shadow_document(thing) or {}
        state = document.get("state", {})
        reported = state.get("reported", {}) if isinstance(state, dict) else {}
        return reported if isinstance(reported, dict) else {}

    def lwm2m_uri(self) -> str:
        """The ``coaps://`` URI of the running LwM2M server.

        Raises:
            RuntimeError: the cloud is not running, or serves no CoAP/DTLS.
        """
        port = None if self.endpoints is None else self.endpoints.lwm2m_port
        if port is None:
            raise RuntimeError("the local cloud serves no LwM2M over DTLS")
        return f"coaps://{_url_host(self.client_host)}:{port}"

    def _lwm2m_server(self) -> LocalLwm2mServer | None:
        coaps_port = self.lwm2m_port if self.lwm2m_credentials else None
        if coaps_port is None and self.coap_port is None:
            return None
        # aiocoap's DTLS server binds one address, not a wildcard.
        host = self.client_host
        return LocalLwm2mServer(
            Lwm2mServerSettings(
                host=host,
                coap_port=self.coap_port,
                coaps_port=coaps_port,
                psk=self.lwm2m_credentials,
            )
        )

    def _offer_bootstrap(self, server: LocalLwm2mServer) -> None:
        """Let every known device bootstrap from the server, into itself.

        A device with ``bootstrap = true`` asks the same DTLS port for its
        account (``/bs``) and is given this server's URI with its own key;
        the URI is known only once the port is bound.
        """
        if server.coaps_port is None:
            return
        uri = f"coaps://{_url_host(self.client_host)}:{server.coaps_port}"
        accounts = {
            identity.decode(): BootstrapAccount(
                server_uri=uri, psk_identity=identity, psk_key=key
            )
            for identity, key in self.lwm2m_credentials.items()
        }
        server.settings = attrs.evolve(server.settings, bootstrap=accounts)

    async def run(
        self,
        *,
        task_status: trio.TaskStatus[LocalCloudEndpoints] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; report the endpoints once all is ready.

        Raises:
            BrokerError: the broker could not listen.
            OSError: the file server could not listen, or ``directory`` is
                not writable.
            BackendError: a service could not connect or subscribe, or lost
                the broker.

        Logging:
            INFO ``local_cloud_ready`` with every endpoint, and each part's
            own lines.
        """
        ca_file = self.pki.ensure_ca()
        server = self.pki.server_files(self.host)
        files_directory = self.directory / "files"
        files_directory.mkdir(parents=True, exist_ok=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(server.cert_file, server.key_file)
        self.broker = EmbeddedBroker(
            self.host,
            self.mqtt_port,
            ca_file,
            server.cert_file,
            server.key_file,
            verbose=self.verbose,
        )
        self.files = FileServer(files_directory, ssl_context=context, host=self.host)
        async with trio.open_nursery() as nursery:
            mqtt_port = await nursery.start(self.broker.run)
            http_port = await nursery.start(
                functools.partial(self.files.run, port=self.http_port)
            )
            lwm2m = self._lwm2m_server()
            if lwm2m is not None:
                await nursery.start(lwm2m.run)
                self._offer_bootstrap(lwm2m)
            self.lwm2m = lwm2m
            endpoints = LocalCloudEndpoints(
                host=self.client_host,
                mqtt_port=mqtt_port,
                http_port=http_port,
                ca_file=ca_file,
                cert_directory=self.pki.device_directory,
                files_directory=files_directory,
                lwm2m_port=None if lwm2m is None else lwm2m.coaps_port,
                coap_port=None if lwm2m is None else lwm2m.coap_port,
            )
            self.endpoints = endpoints
            # P-GPS replies name the host (and port) the device downloads from.
            self.assistance = AssistanceService(
                pgps_host=f"{_url_host(endpoints.host)}:{http_port}"
            )
            try:
                for service, client_id in (
                    (self.shadow, SHADOW_CLIENT_ID),
                    (self.jobs, JOBS_CLIENT_ID),
                    (self.assistance, ASSISTANCE_CLIENT_ID),
                ):
                    settings = self.device_settings(
                        client_id,
                        keepalive=_SERVICE_KEEPALIVE,
                        connect_timeout=_SERVICE_CONNECT_TIMEOUT,
                    )
                    await nursery.start(service.run, settings)
                log.info(
                    "local_cloud_ready",
                    host=endpoints.host,
                    mqtt_port=mqtt_port,
                    http_port=http_port,
                    lwm2m_port=endpoints.lwm2m_port,
                    coap_port=endpoints.coap_port,
                    ca_file=str(ca_file),
                    cert_directory=str(endpoints.cert_directory),
                )
                task_status.started(endpoints)
                await trio.sleep_forever()
            finally:
                self.endpoints = None
