"""What every sandbox service does with its MQTT session.

Each service (shadow, jobs, assistance) is one MQTT client of the broker:
it connects, subscribes to its request topics, and handles the requests
one at a time in arrival order until the broker goes away.  Only the
handling differs; this module is the rest.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
import structlog
import trio

from backends.errors import BackendBroken, BackendError
from backends.mqtt_transport import (
    MqttDisconnected,
    MqttMessage,
    MqttSession,
    MqttSettings,
    open_mqtt_session,
)

log = structlog.get_logger(actor="sandbox")


async def run_service(
    name: str,
    settings: MqttSettings,
    subscriptions: Sequence[tuple[str, int]],
    handle: Callable[[MqttSession, MqttMessage], Awaitable[None]],
    on_session: Callable[[MqttSession | None], None],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Connect, subscribe, then hand each message to ``handle`` in order.

    ``on_session`` is told the live session, and ``None`` once it is gone.
    Reports ready through ``task_status`` once every subscription is
    granted.

    Raises:
        BackendError: a subscription was refused, or a connection error
            from ``open_mqtt_session()``.
        BackendBroken: the broker or the network ended the session.

    Cancellation:
        The session is closed (DISCONNECT); a message being handled may
        have some of its replies unpublished.

    Logging:
        INFO ``<name>_service_ready``; WARNING ``<name>_service_lost``.
    """
    async with open_mqtt_session(settings) as session:
        granted = await session.subscribe(subscriptions)
        refused = [
            topic
            for (topic, _qos), code in zip(subscriptions, granted, strict=True)
            if code >= 0x80
        ]
        if refused:
            raise BackendError(f"the broker refused the subscriptions {refused}")
        on_session(session)
        try:
            log.info(f"{name}_service_ready", client_id=settings.client_id)
            task_status.started()
            async for event in session.incoming:
                match event:
                    case MqttMessage():
                        await handle(session, event)
                    case MqttDisconnected(reason=reason):
                        log.warning(f"{name}_service_lost", reason=reason)
                        raise BackendBroken(
                            f"the {name} service lost the broker: {reason}"
                        )
                    case _:
                        pass  # PUBACKs of our replies, PINGRESPs
            raise BackendBroken(f"the {name} service's MQTT session ended")
        finally:
            on_session(None)


@attrs.define(eq=False)
class SandboxService:
    """Base class of the sandbox services: one session, requests in order.

    Subclasses set ``name`` and ``subscriptions`` and implement
    ``_on_message``.
    """

    name: ClassVar[str]
    subscriptions: ClassVar[Sequence[tuple[str, int]]]

    _session: MqttSession | None = attrs.field(default=None, init=False)

    @property
    def running(self) -> bool:
        """Whether the service is connected and serving requests."""
        return self._session is not None

    async def run(
        self,
        settings: MqttSettings,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, subscribe to the request topics and serve until cancelled.

        See ``run_service``; a malformed request never ends the service.
        """
        await run_service(
            self.name,
            settings,
            self.subscriptions,
            self._on_message,
            self._set_session,
            task_status=task_status,
        )

    def _set_session(self, session: MqttSession | None) -> None:
        self._session = session

    async def _on_message(self, session: MqttSession, message: MqttMessage) -> None:
        raise NotImplementedError


def with_token(document: dict[str, Any], token: str | None) -> dict[str, Any]:
    """``document`` with the request's ``clientToken`` echoed, if it had one."""
    if token is not None:
        document["clientToken"] = token
    return document
