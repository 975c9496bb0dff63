"""An MQTT broker in the process: amqtt, on Trio, with mutual TLS.

Design
------
``EmbeddedBroker.run()`` opens its own ``trio_asyncio.open_loop()`` (STYLE
P4) and starts an amqtt ``Broker`` inside it through one asyncio-flavoured
helper (P2).  Leaving ``run()`` (cancellation) shuts the broker down under a
shielded ``SHUTDOWN_GRACE``, then the loop's exit cancels whatever amqtt
left behind.

What amqtt 0.12.1 does that we change or work around:

* Its TLS listener asks for a client certificate but does not require one
  (``Broker._create_ssl_context`` sets ``CERT_OPTIONAL``), and no
  configuration key changes that.  ``_MutualTlsBroker`` overrides that
  static method: ``CERT_REQUIRED``, TLS 1.2 at least, so a client without a
  certificate signed by the local CA fails the handshake.
* Its default plugins let anyone in (``AnonymousAuthPlugin``) and publish
  ``$SYS`` topics through a plugin that warns it is deprecated (a
  ``DeprecationWarning`` at start).  We configure one plugin only,
  ``ClientCertAuth``: the certificate's common name must be the MQTT
  client id, the rule AWS IoT policies normally express with
  ``${iot:Connection.Thing.ThingName}`` (Mosquitto's
  ``use_identity_as_username`` in the tests).  A mismatch gets CONNACK 5
  (not authorized).
* It drops every PUBLISH to a topic starting with ``$`` ("[MQTT-4.7.2-1]
  ... cannot use a topic with a leading $ character") and stops reading
  that client, which leaves the client connected but deaf.  MQTT 3.1.1
  §4.7.2 only says such topics are not matched by filters starting with a
  wildcard; AWS IoT's own services live under ``$aws/``, and a device
  must publish there (shadow get and update, jobs).  ``_MutualTlsBroker``
  delivers PUBLISHes to ``$aws/`` itself, with the same steps amqtt takes
  for any other topic (events, topic filtering, broadcast, retain), and
  leaves every other topic to amqtt.
* A failed TLS handshake is reported through the loop's exception handler
  when it is not an ``OSError``, and trio-asyncio's default handler
  re-raises into the loop's nursery, which would take the broker down for
  one bad client.  ``run()`` installs a handler that logs instead.
* Its session monitor wakes every second to forget disconnected clean
  sessions.  Under a time-warped clock (``tracker.warp``) a wake-up every
  second would cap every jump of the clock at one second; ours sweeps
  every ``SESSION_SWEEP`` seconds instead (a disconnected clean session
  costs a little memory until then).  It uses amqtt's private session
  table and clean-up, like the rest of this module.
* The bound port of ``bind = "host:0"`` is only on the private
  ``Broker._servers[name].instance`` (an ``asyncio.Server``); we read it
  there.
* amqtt (and ``transitions``, under its sessions) log through ``logging``
  at INFO for every connection and state change; ``run()`` raises those
  loggers to WARNING unless ``verbose``.  A failed start is logged by
  amqtt with a traceback at ERROR and re-raised; we raise it as
  ``BrokerError`` and drop amqtt's record (``_drop_startup_failure``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import structlog
import trio
from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import Action, ListenerConfig  # type: ignore[import-untyped]
from amqtt.events import BrokerEvents  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.x509.oid import NameOID

from backends.aio import asyncio_error_logger

if TYPE_CHECKING:
    from amqtt.mqtt.protocol.broker_handler import (  # type: ignore[import-untyped]
        BrokerProtocolHandler,
    )
    from amqtt.session import Session  # type: ignore[import-untyped]

__all__ = ["BrokerError", "ClientCertAuth", "EmbeddedBroker"]

log = structlog.get_logger(actor="broker")

#: Seconds the broker may take to close its sessions and listener.
SHUTDOWN_GRACE: Final = 5.0
#: Seconds the broker may take to open its listener.
START_TIMEOUT: Final = 10.0
#: The name of the one listener: amqtt's configuration must have a
#: ``default`` listener (``BrokerConfig.__post_init__`` looks it up).
_LISTENER: Final = "default"
#: The loggers of amqtt (``amqtt.broker`` ...) and of the state machine
#: library its sessions use, which logs every transition at INFO.
_LIBRARY_LOGGERS: Final = ("amqtt", "transitions")
#: The reserved topics of AWS IoT, which clients publish to.
_AWS_RESERVED: Final = "$aws/"
#: Seconds amqtt adds to a client's keepalive before it drops the client
#: (MQTT 3.1.1 allows one and a half keepalives; amqtt's default is 0).
_KEEPALIVE_SLACK: Final = 10
#: Seconds between two sweeps of disconnected clean sessions.
SESSION_SWEEP: Final = 300.0


class BrokerError(Exception):
    """The broker could not start (port in use, unreadable certificates)."""


class ClientCertAuth(BaseAuthPlugin):  # type: ignore[misc]
    """Admit a client only if its certificate's common name is its client id.

    The TLS layer has already verified the certificate against the CA; this
    binds the verified identity to the MQTT session.
    """

    @dataclass
    class Config:
        """No options; amqtt builds one from the plugin's configuration."""

    async def authenticate(self, *, session: Session) -> bool | None:
        """True when the peer certificate names ``session.client_id``."""
        ssl_object = session.ssl_object
        der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
        if not der:
            log.warning("broker_client_refused", client_id=session.client_id,
                        reason="no client certificate")  # fmt: skip
            return False
        cert = x509.load_der_x509_certificate(der)
        names = [
            str(attribute.value)
            for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
        if names != [session.client_id]:
            log.warning(
                "broker_client_refused",
                client_id=session.client_id,
                reason=f"the certificate is for {names}, not for the client id",
            )
            return False
        return True


class _MutualTlsBroker(Broker):  # type: ignore[misc]
    """amqtt's broker with client certificates required (module docstring)."""

    @staticmethod
    def _create_ssl_context(listener: ListenerConfig) -> ssl.SSLContext:
        context = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH, cafile=str(listener["cafile"])
        )
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(listener["certfile"]), str(listener["keyfile"]))
        context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def _session_monitor(self) -> None:
        # Replaces amqtt's one-second loop (module docstring); session
        # expiry intervals are not configured here, so only clean and
        # anonymous sessions are ever forgotten, as amqtt does.
        while True:
            await asyncio.sleep(SESSION_SWEEP)
            stale = [
                client_id
                for client_id, (session, _) in self._sessions.items()
                if session.transitions.state == "disconnected"
                and (session.is_anonymous or session.clean_session)
            ]
            for client_id in stale:
                await self._cleanup_session(client_id)

    async def _handle_message_delivery(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        wait_deliver: asyncio.Future[Any],
    ) -> bool:
        # Returns whether to keep reading the client, as amqtt's does.
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        if not isinstance(topic, str) or not topic.startswith(_AWS_RESERVED):
            delivered: bool = await super()._handle_message_delivery(
                client_session, handler, wait_deliver
            )
            return delivered
        if "#" in topic or "+" in topic:
            log.warning("broker_bad_topic", client_id=client_session.client_id,
                        topic=topic)  # fmt: skip
            return False
        client_id = client_session.client_id
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_RECEIVED, client_id=client_id, message=message
        )
        if not await self._topic_filtering(
            client_session, topic=topic, action=Action.PUBLISH
        ):
            return True
        await self.plugins_manager.fire_event(
            BrokerEvents.MESSAGE_BROADCAST, client_id=client_id, message=message
        )
        await self._broadcast_message(client_session, topic, message.data)
        packet = message.publish_packet
        if packet is not None and packet.retain_flag:
            await self.retain_message(client_session, topic, message.data, message.qos)
        return True


def _drop_startup_failure(record: logging.LogRecord) -> bool:
    """Keep every amqtt record but its traceback of a failed start."""
    return record.getMessage() != "Broker startup failed"


def _bind(host: str, port: int) -> str:
    """amqtt's ``bind`` value: ``host:port``, IPv6 literals in brackets."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# A client that failed the handshake or went away is its own problem.
_log_asyncio_error = asyncio_error_logger(
    "broker", actor="broker", quiet=(ssl.SSLError, ConnectionError)
)


@attrs.define(eq=False)
class EmbeddedBroker:
    """amqtt listening with mutual TLS on ``host:port`` (0: any free port).

    Args:
        host: The address to listen on; loopback unless clients are
            elsewhere.
        port: The MQTT over TLS port; 0 picks a free one (``port`` after
            start).
        ca_file: The CA whose certificates clients must present.
        cert_file: The broker's certificate (PEM).
        key_file: The broker's private key (PEM).
        verbose: Let amqtt log at INFO (every connection) instead of WARNING.
    """

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    verbose: bool = False
    _broker: Broker | None = attrs.field(default=None, init=False)

    @property
    def clients(self) -> list[str]:
        """The client ids with a connected session."""
        if self._broker is None:
            return []
        return [
            client_id
            for client_id, (session, _handler) in self._broker.sessions.items()
            if session.transitions.is_connected()
        ]

    async def run(
        self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; ``task_status.started`` gets the port.

        Raises:
            BrokerError: the listener could not be opened.

        Cancellation:
            Every session is closed and the listener shut, within
            ``SHUTDOWN_GRACE`` seconds; then the loop's exit cancels the
            rest of amqtt's tasks.

        Logging:
            INFO ``broker_listening`` and ``broker_stopped``; WARNING
            ``broker_client_refused`` per refused client and
            ``broker_shutdown_slow`` when the grace runs out.
        """
        # trio_asyncio patches asyncio on import (STYLE P1): only here.
        import trio_asyncio  # type: ignore[import-untyped]

        for name in _LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(
                logging.INFO if self.verbose else logging.WARNING
            )
        broker_logger = logging.getLogger(f"{_LIBRARY_LOGGERS[0]}.broker")
        if _drop_startup_failure not in broker_logger.filters:
            broker_logger.addFilter(_drop_startup_failure)
        async with trio_asyncio.open_loop() as loop:
            loop.set_exception_handler(_log_asyncio_error)
            with trio.fail_after(START_TIMEOUT):
                broker: Broker = await trio_asyncio.aio_as_trio(
                    self._aio_start, loop=loop
                )()
            self._broker = broker
            try:
                server = broker._servers[_LISTENER].instance
                self.port = server.sockets[0].getsockname()[1]
                log.info("broker_listening", host=self.host, port=self.port)
                task_status.started(self.port)
                await trio.sleep_forever()
            finally:
                self._broker = None
                with trio.move_on_after(SHUTDOWN_GRACE, shield=True) as grace:
                    await trio_asyncio.aio_as_trio(broker.shutdown, loop=loop)()
                if grace.cancelled_caught:
                    log.warning("broker_shutdown_slow", grace=SHUTDOWN_GRACE)
                else:
                    log.info("broker_stopped")

    async def _aio_start(self) -> Broker:
        """Build and start the broker (asyncio side: amqtt wants its loop)."""
        config = {
            "listeners": {
                _LISTENER: {
                    "type": "tcp",
                    "bind": _bind(self.host, self.port),
                    "ssl": True,
                    "cafile": str(self.ca_file),
                    "certfile": str(self.cert_file),
                    "keyfile": str(self.key_file),
                },
            },
            "timeout_disconnect_delay": _KEEPALIVE_SLACK,
            "plugins": {f"{__name__}.ClientCertAuth": {}},
        }
        try:
            broker = _MutualTlsBroker(config)
            await broker.start()
        except Exception as exc:
            cause = exc.__cause__ or exc
            raise BrokerError(
                f"cannot listen on {_bind(self.host, self.port)}: {cause}"
            ) from exc
        return broker
