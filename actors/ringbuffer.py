"""The data module's ring buffers (``cloud_codec_ringbuffer.c``).

Design
------
A ring of ``size`` slots and a ``head`` index that starts at 0.  Adding an
entry first moves the head on by one (wrapping to 0 at the end) and then
writes the slot there, so the first entry lands in slot 1 and the oldest
entry is always the next one to be overwritten.  "Latest" is the entry at
the head.

Every entry carries a ``queued`` flag, set when it is written and cleared
when it has been encoded for the cloud.  That flag is the only "already
sent" marker (spec §9.1): an entry taken for the regular update is no
longer queued, so it never appears in the batch as well.  A slot whose
entry is no longer queued is free to overwrite; a slot whose entry is
still queued is overwritten all the same (the ring never blocks), and that
loss is counted in ``overwritten`` so nothing disappears silently.

``take_queued`` returns the still-queued entries oldest first.  The
firmware's batch encoder walks the array from slot 0 instead, so its
arrays come out rotated; every entry carries its own timestamp, so only the
order within an array differs.

``BufferSizes`` and ``SampleBuffers`` are the data module's set of rings
(spec §10.1), one per kind of sample.
"""

from __future__ import annotations

from typing import Any, Final, Generic, TypeVar

import attrs

from protocols.json_data import Battery, Button, Impact
from protocols.modem import ModemDynamicData, ModemStaticData
from protocols.peripherals import CloudLocationRequest, EnvironmentalData, GnssData

T = TypeVar("T")

# Kconfig range of every DATA_*_BUFFER_COUNT option.
SIZE_MIN: Final = 1
SIZE_MAX: Final = 100


@attrs.define
class _Slot(Generic[T]):
    item: T
    queued: bool = True


def _check_size(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not SIZE_MIN <= value <= SIZE_MAX:
        limits = f"{SIZE_MIN}..{SIZE_MAX}"
        raise ValueError(f"{attribute.name} {value} is outside {limits} (Kconfig)")


@attrs.define(eq=False)
class RingBuffer(Generic[T]):
    """A fixed-size ring that overwrites its oldest entry (module docstring).

    Args:
      size: the number of slots, 1 to 100 as the Kconfig options allow.
      name: the buffer's name, for logs and the debug view.
    """

    size: int = attrs.field(validator=_check_size)
    name: str = ""
    head: int = attrs.field(init=False, default=0)
    # Entries written, and entries overwritten while still queued.
    written: int = attrs.field(init=False, default=0)
    overwritten: int = attrs.field(init=False, default=0)
    _slots: list[_Slot[T] | None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = [None] * self.size

    def add(self, item: T) -> bool:
        """Write ``item`` after the head; return whether a queued entry was lost."""
        self.head = (self.head + 1) % self.size
        old = self._slots[self.head]
        lost = old is not None and old.queued
        if lost:
            self.overwritten += 1
        self._slots[self.head] = _Slot(item)
        self.written += 1
        return lost

    def latest(self) -> T | None:
        """The entry at the head if it is still queued, else None."""
        slot = self._slots[self.head]
        if slot is None or not slot.queued:
            return None
        return slot.item

    def take_latest(self) -> T | None:
        """``latest()``, marking it sent."""
        slot = self._slots[self.head]
        if slot is None or not slot.queued:
            return None
        slot.queued = False
        return slot.item

    def queued(self) -> list[T]:
        """Every still-queued entry, oldest first."""
        return [slot.item for slot in self._ordered() if slot.queued]

    def take_queued(self) -> list[T]:
        """``queued()``, marking every entry returned sent."""
        taken = []
        for slot in self._ordered():
            if slot.queued:
                slot.queued = False
                taken.append(slot.item)
        return taken

    def entries(self) -> list[tuple[T, bool]]:
        """Every stored entry with its queued flag, oldest first."""
        return [(slot.item, slot.queued) for slot in self._ordered()]

    @property
    def queued_count(self) -> int:
        """How many entries wait to be sent."""
        return sum(1 for slot in self._slots if slot is not None and slot.queued)

    def __len__(self) -> int:
        """How many slots hold an entry, sent or not."""
        return sum(1 for slot in self._slots if slot is not None)

    def _ordered(self) -> list[_Slot[T]]:
        # The slot after the head holds the oldest entry.
        order = [(self.head + 1 + i) % self.size for i in range(self.size)]
        return [slot for i in order if (slot := self._slots[i]) is not None]


# --------------------------------------------------------------------------
# The data module's buffers (spec §10.1)


def _single(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value != 1:
        raise ValueError(f"{attribute.name} is a single value in the firmware")


@attrs.frozen(kw_only=True)
class BufferSizes:
    """Entries per buffer; the defaults are the Kconfig defaults (spec §10.1).

    ``cloud_location`` is a single value in the firmware and must stay 1:
    only the newest request is ever sent.
    """

    gnss: int = 10  # DATA_GNSS_BUFFER_COUNT
    sensors: int = 10  # DATA_SENSOR_BUFFER_COUNT
    modem_dynamic: int = 3  # DATA_MODEM_DYNAMIC_BUFFER_COUNT
    ui: int = 3  # DATA_UI_BUFFER_COUNT
    impact: int = 1  # DATA_IMPACT_BUFFER_COUNT
    battery: int = 3  # DATA_BATTERY_BUFFER_COUNT
    modem_static: int = 1  # modem_stat, a single value
    cloud_location: int = attrs.field(default=1, validator=_single)


@attrs.define(eq=False)
class SampleBuffers:
    """One ring per kind of sample; entries hold uptime timestamps."""

    gnss: RingBuffer[GnssData]
    sensors: RingBuffer[EnvironmentalData]
    modem_dynamic: RingBuffer[ModemDynamicData]
    ui: RingBuffer[Button]
    impact: RingBuffer[Impact]
    battery: RingBuffer[Battery]
    modem_static: RingBuffer[ModemStaticData]
    cloud_location: RingBuffer[CloudLocationRequest]

    @classmethod
    def create(cls, sizes: BufferSizes) -> SampleBuffers:
        """Empty rings of the given sizes."""
        rings = {
            field.name: RingBuffer[Any](getattr(sizes, field.name), field.name)
            for field in attrs.fields(BufferSizes)
        }
        return cls(**rings)

    def rings(self) -> dict[str, RingBuffer[Any]]:
        """Every ring by name, in the firmware's declaration order."""
        names = [field.name for field in attrs.fields(type(self))]
        return {name: getattr(self, name) for name in names}
