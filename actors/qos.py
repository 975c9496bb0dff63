"""The QoS library: acknowledged delivery of the cloud module's messages.

Every outgoing message gets an id.  Messages that need an acknowledgement
are kept in a pool of ``pending_max`` slots; a periodic timer asks for each
kept message to be sent again every ``notify_timeout`` seconds, and drops a
message once it has been asked for ``notified_count_max`` times.  With the
firmware's numbers (10 slots, 3 notifications, 16 s) an unacknowledged
message is sent at 0, 16 and 32 s and dropped at 48 s.

A message without acknowledgement is announced once and forgotten.  The
firmware frees such a message before its announcement has been handled (a
use-after-free); here the announcement carries the payload itself, which is
what the firmware meant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from actors.timer import Timer
from protocols.base import Payload
from protocols.qos import MessageType, QosFlag, QosMessage

# QOS_MESSAGE_ID_BASE: ids start here and wrap back here before 65535.
MESSAGE_ID_BASE: Final = 15000
MESSAGE_ID_MAX: Final = 65535


class QosPoolFull(Exception):
    """The pool of unacknowledged messages is full; the message is lost."""


@attrs.define(eq=False)
class QosLibrary:
    """The pending list, its retransmission timer and the id sequence.

    ``notify`` is called with each message to (re)transmit, the
    ``notified_count`` already updated; ``removed`` with each message that
    leaves the pending list, by acknowledgement or by expiry.  The timer is
    created by the owning actor (``TimerGroup.add``) with ``on_timer`` as its
    callback, so that it survives actor restarts.
    """

    notify: Callable[[QosMessage], None]
    removed: Callable[[QosMessage, str], None]
    pending_max: int = 10
    notified_count_max: int = 3
    notify_timeout: float = 16.0
    timer: Timer | None = None
    next_id: int = MESSAGE_ID_BASE
    pending: dict[int, QosMessage] = attrs.Factory(dict)

    def message_id_get_next(self) -> int:
        """A fresh message id (15000, 15001, ... 65534, 15000, ...)."""
        if self.next_id >= MESSAGE_ID_MAX:
            self.next_id = MESSAGE_ID_BASE
        message_id = self.next_id
        self.next_id += 1
        return message_id

    def add(self, type: MessageType, flags: QosFlag, payload: Payload) -> QosMessage:
        """Queue a message and announce its first transmission.

        Raises:
          QosPoolFull: the message needs an acknowledgement and every slot
            is taken; nothing was announced.
        """
        message = QosMessage(
            id=self.message_id_get_next(),
            type=type,
            flags=flags,
            payload=payload,
            notified_count=1,
        )
        if message.ack_required:
            if len(self.pending) >= self.pending_max:
                self.removed(message, "pool_full")
                raise QosPoolFull(
                    f"{len(self.pending)} of {self.pending_max} slots pending"
                )
            self.pending[message.id] = message
            self.notify(message)
        else:
            self.notify(message)
            self.removed(message, "sent_without_ack")
        if self.pending and self.timer is not None:
            self.timer.schedule(self.notify_timeout)
        return message

    def remove(self, message_id: int) -> bool:
        """Forget an acknowledged message; False if the id is not pending."""
        message = self.pending.pop(message_id, None)
        if message is None:
            return False
        self.removed(message, "acknowledged")
        if not self.pending and self.timer is not None:
            self.timer.cancel()
        return True

    def notify_all(self) -> None:
        """Announce every pending message again now (on a ping response)."""
        for message_id, message in list(self.pending.items()):
            message = attrs.evolve(message, notified_count=message.notified_count + 1)
            self.pending[message_id] = message
            self.notify(message)

    def timer_reset(self) -> None:
        """Stop retransmitting; pending messages stay for the next add."""
        if self.timer is not None:
            self.timer.cancel()

    def on_timer(self) -> None:
        """The retransmission timer fired: expire, then re-announce."""
        for message_id, message in list(self.pending.items()):
            if message.notified_count >= self.notified_count_max:
                del self.pending[message_id]
                self.removed(message, "expired")
        if not self.pending:
            return
        self.notify_all()
        if self.timer is not None:
            self.timer.reschedule(self.notify_timeout)
