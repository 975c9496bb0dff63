"""What a cloud's codec must do, and how it reports a document it rejects.

Each cloud lays its documents out differently (AWS shadow, Azure twin, nRF
Cloud device messages, LwM2M objects); the cloud actor only sees this
interface.  The exceptions map to the firmware codec's return values, which
decide what the cloud module does with a received document.
"""

from __future__ import annotations

import abc

from protocols.base import Payload
from protocols.cloud import CloudLocation
from protocols.config import DeviceConfig
from protocols.modem import ModemDynamicData
from protocols.peripherals import AgnssRequest, PgpsRequest


class CodecNotSupported(Exception):
    """This cloud has no encoding for the document (``-ENOTSUP``)."""


class ConfigEmpty(Exception):
    """The document holds no configuration (``-ENODATA``)."""


class ConfigDuplicate(Exception):
    """The document's version was already seen (``-ECANCELED``)."""


class NotAConfigDocument(Exception):
    """The payload is not a configuration document at all (``-ENOENT``)."""


class ConfigInvalid(Exception):
    """A configuration key has a value of the wrong type.

    The firmware's decoder skips such a key; the host refuses the whole
    document so that a configuration is never half applied, and names the
    key in the message.
    """


class NothingToSend(Exception):
    """An assistance request asks for nothing, or lacks its inputs (-ENODATA)."""


class LocationUnresolved(Exception):
    """The cloud answered a location request without a location (-EFAULT)."""


class CloudCodec(abc.ABC):
    """Encodes and decodes the documents whose shape depends on the cloud."""

    @abc.abstractmethod
    def decode_config(self, data: bytes, current: DeviceConfig) -> DeviceConfig:
        """Apply a received document to ``current`` and return the result.

        Keys absent from the document keep their current value.

        Raises:
          ConfigEmpty, ConfigDuplicate, NotAConfigDocument, ConfigInvalid.
        """

    def encode_config_report(self, config: DeviceConfig) -> Payload:
        """The complete applied configuration, as the cloud expects it back."""
        raise CodecNotSupported("this cloud takes no configuration report")

    def encode_agnss_request(
        self, request: AgnssRequest, network: ModemDynamicData | None
    ) -> Payload:
        """Build an A-GNSS request; ``NothingToSend`` when nothing is needed."""
        raise CodecNotSupported("A-GNSS requests are not encoded for this cloud")

    def encode_pgps_request(self, request: PgpsRequest) -> Payload:
        """Build a P-GPS request."""
        raise CodecNotSupported("P-GPS requests are not encoded for this cloud")

    def decode_cloud_location(self, data: bytes) -> CloudLocation:
        """Decode a location answer; ``LocationUnresolved`` if there is none."""
        raise CodecNotSupported("this cloud does not return locations")
