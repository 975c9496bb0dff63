"""The cloud module's reconnection schedule.

The firmware does not compute its backoff: it reads a fixed table of delays,
indexed by the number of connection attempts made since the counter was last
reset (``connect_retries``), and gives up with ``CLOUD_EVT_ERROR`` once that
counter exceeds ``CONFIG_CLOUD_CONNECT_RETRIES``.  Each attempt is given the
current table delay to succeed; there is no separate connect timeout.

Two tables exist.  The documented one (the default here) skips 1024 s; the
v2.9.0 source inserts it.  Note the order of operations in ``next_delay``:
the table is read *before* the limit is checked, so a table must have at
least ``max_retries + 2`` entries (the configuration enforces it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

# The cloud module page's table: 15 entries, no 1024 s.
SEED_TABLE: Final = (
    32, 64, 128, 256, 512,
    2048, 4096, 8192, 16384, 32768,
    65536, 131072, 262144, 524288, 1048576,
)  # fmt: skip

# ``backoff_delay[]`` in NCS v2.9.0's cloud_module.c: 16 entries, with 1024 s.
V2_9_0_TABLE: Final = (
    32, 64, 128, 256, 512,
    1024, 2048, 4096, 8192, 16384,
    32768, 65536, 131072, 262144, 524288, 1048576,
)  # fmt: skip

BACKOFF_TABLES: Final[Mapping[str, tuple[int, ...]]] = {
    "seed": SEED_TABLE,
    "v2.9.0": V2_9_0_TABLE,
}

# The firmware's build-time assert: CONFIG_CLOUD_CONNECT_RETRIES < 14.
MAX_CONNECT_RETRIES: Final = 13


@attrs.define
class ReconnectBackoff:
    """The ``connect_retries`` counter and the table it indexes."""

    table: tuple[int, ...]
    max_retries: int
    retries: int = 0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.max_retries <= MAX_CONNECT_RETRIES:
            raise ValueError(
                f"max_retries must be between 0 and {MAX_CONNECT_RETRIES}, "
                f"got {self.max_retries}"
            )
        if len(self.table) < self.max_retries + 2:
            raise ValueError(
                f"a backoff table for {self.max_retries} retries needs at least "
                f"{self.max_retries + 2} entries, got {len(self.table)}"
            )

    def next_delay(self) -> int | None:
        """Account for one more attempt and return how long it may take.

        Returns ``None`` when the attempts are exhausted: the caller raises
        ``CLOUD_EVT_ERROR`` and makes no attempt.
        """
        delay = self.table[self.retries]
        if self.retries > self.max_retries:
            return None
        self.retries += 1
        return delay

    def reset(self) -> None:
        """Start the schedule again from its first delay."""
        self.retries = 0
