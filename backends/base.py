"""The cloud wrapper API: what the cloud actor needs from any cloud.

Every cloud (AWS IoT, Azure IoT Hub, nRF Cloud, LwM2M, the scripted cloud of
the tests) implements ``CloudBackend``.  The methods mirror
``cloud_wrapper.h``; where the firmware returns a negative errno, a backend
raises one of ``backends.errors``.

Rules every backend follows:

* A method returns promptly.  ``connect`` *starts* an attempt; its outcome
  arrives later as ``WrapperConnected`` or ``WrapperDisconnected``.  The
  cloud actor's backoff decides when to try again, never the backend.
* Results travel as ``protocols.wrapper`` messages through the ``emit``
  callback given to ``init``; ``emit`` never blocks.
* ``run`` serves the backend's own tasks (network readers, timers) and is
  started by the supervisor like any actor.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import trio

from backends.errors import BackendNotSupported
from protocols.base import Payload
from protocols.codec import CloudCodec
from protocols.peripherals import AgnssRequest
from protocols.wrapper import WrapperEvent

Emit = Callable[[WrapperEvent], None]


class CloudBackend(abc.ABC):
    """One cloud service, seen through the firmware's cloud wrapper API."""

    # LwM2M sends object paths (Send operation) instead of encoded documents
    # and has no QoS list; the cloud actor routes its sends accordingly.
    sends_object_paths: ClassVar[bool] = False
    # nRF Cloud needs the configuration acknowledged before it reports the
    # session ready, so config is sent while still "disconnected".
    config_before_connected: ClassVar[bool] = False
    # nRF Cloud sends A-GNSS requests itself and consumes the answer.
    handles_agnss_itself: ClassVar[bool] = False

    codec: CloudCodec

    @abc.abstractmethod
    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the backend's own tasks until cancelled."""

    @abc.abstractmethod
    def init(self, emit: Emit) -> None:
        """Resolve the client id and register where events go."""

    @abc.abstractmethod
    async def connect(self) -> None:
        """Start a connection attempt (``BackendBusy`` if one is running)."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Tear the connection down; emits ``WrapperDisconnected`` if it was up."""

    def cloud_location_response_wait(self) -> bool:
        """Whether the cloud answers location requests to the device."""
        return False

    async def state_get(self, ack: bool, message_id: int) -> None:
        """Ask the cloud for the device's state (shadow, twin)."""
        raise BackendNotSupported("state_get")

    async def state_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Report the device's configuration."""
        raise BackendNotSupported("state_send")

    async def data_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send the newest samples."""
        raise BackendNotSupported("data_send")

    async def batch_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send buffered samples as one batch."""
        raise BackendNotSupported("batch_send")

    async def ui_send(self, payload: Payload, ack: bool, message_id: int) -> None:
        """Send a button press or an impact."""
        raise BackendNotSupported("ui_send")

    async def cloud_location_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send cells and access points for the cloud to resolve."""
        raise BackendNotSupported("cloud_location_send")

    async def agnss_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send an A-GNSS request."""
        raise BackendNotSupported("agnss_request_send")

    async def pgps_request_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send a P-GPS request."""
        raise BackendNotSupported("pgps_request_send")

    async def memfault_data_send(
        self, payload: Payload, ack: bool, message_id: int
    ) -> None:
        """Send Memfault chunks."""
        raise BackendNotSupported("memfault_data_send")

    async def agnss_request(self, request: AgnssRequest) -> None:
        """Request A-GNSS data through the cloud library itself (nRF Cloud)."""
        raise BackendNotSupported("agnss_request")

    def snapshot(self) -> dict[str, object]:
        """Backend details for the debug view."""
        return {}
