"""The device's persistent state in SQLite: configuration, reboots, firmware.

The firmware keeps its configuration in flash under ``data_module/config``
and loses nothing else across a reboot that it needs.  The host also keeps
every sample the data actor accepted until the cloud has acknowledged it or
a documented policy dropped it (table ``samples``, schema 2; see
``actors.data``), so that a killed process resends what was not delivered,
and what its image slots hold and where a FOTA client stands (schema 3; see
``state.firmware``).  The host keeps all of it in one SQLite database, in
WAL mode with ``synchronous=FULL``: every write is one transaction, so a
process killed at any moment leaves either the old or the new value, never
half of one.

Several connections may use the database at once (WAL): ``StateStore``
holds one, ``state.firmware.FirmwareStore`` another.  Both open it with
``open_database``, the one place that knows the pragmas and the schema.

Schema versions
---------------
``PRAGMA user_version`` holds the schema version.  Opening a database runs
every migration above its version, in order, each in its own transaction
(``BEGIN IMMEDIATE``, the version read again under the write lock, the
statements, the new version, ``COMMIT``): a crash inside a migration leaves
the version before it, and two connections opening an old database at the
same time run each migration once.  A database written by a newer release
(a version above the newest known here) is refused rather than guessed at.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from protocols.config import DeviceConfig, NoData

# Each entry migrates the schema from its index to index + 1.
MIGRATIONS: Final[Sequence[str]] = (
    """
    CREATE TABLE config (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE reboots (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        reason TEXT NOT NULL,
        cause TEXT NOT NULL
    );
    """,
    # 2: samples accepted from producers and not yet known delivered
    # (actors.data, "Persistence").
    """
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        body TEXT NOT NULL,
        state TEXT NOT NULL
            CHECK (state IN ('queued', 'sent', 'delivered', 'dropped')),
        reason TEXT,
        updated REAL NOT NULL
    );
    CREATE INDEX samples_pending ON samples (state)
        WHERE state IN ('queued', 'sent');
    """,
    # 3: the host's image slots (state.firmware: at most one row per slot,
    # the swap flags in one row, none of either on a fresh device) and the
    # state FOTA clients keep over a reboot, one JSON object per client.
    """
    CREATE TABLE firmware_slots (
        slot TEXT PRIMARY KEY CHECK (slot IN ('primary', 'secondary')),
        version TEXT NOT NULL,
        image TEXT
    );
    CREATE TABLE firmware_swap (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        pending INTEGER NOT NULL,
        confirmed INTEGER NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE fota_status (
        key TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
)
SAMPLE_STATES: Final = ("queued", "sent", "delivered", "dropped")
SCHEMA_VERSION: Final = len(MIGRATIONS)

# The firmware's settings key for the configuration struct.
CONFIG_KEY: Final = "data_module/config"

# Seconds a connection waits for another one's write lock before it fails
# (sqlite3's default; writes are single small transactions).
BUSY_TIMEOUT: Final = 5.0


class StateStoreError(Exception):
    """The database cannot be used; the message names the file and why."""


@attrs.frozen
class RebootRecord:
    """One reboot of the device, as kept across restarts of the service."""

    at: float
    reason: str
    cause: str


def _statements(script: str) -> list[str]:
    """``script`` cut into complete SQL statements, in order."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        raise ValueError(f"incomplete SQL statement: {current.strip()!r}")
    return statements


def _version(db: sqlite3.Connection) -> int:
    (version,) = db.execute("PRAGMA user_version").fetchone()
    return int(version)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Run every migration above the database's version (module docstring)."""
    while True:
        version = _version(db)
        if version > SCHEMA_VERSION:
            raise StateStoreError(
                f"{path}: schema version {version} is newer than this "
                f"release knows ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another connection may have migrated while this one waited.
            version = _version(db)
            if version < SCHEMA_VERSION:
                for statement in _statements(MIGRATIONS[version]):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def open_database(path: Path) -> sqlite3.Connection:
    """Open (or create) the state database at ``path``, migrated.

    The connection is in autocommit mode (``isolation_level=None``: every
    transaction is an explicit ``BEGIN``), in WAL mode with
    ``synchronous=FULL``, and may be used from another thread (the caller
    serialises its use).

    Raises:
      StateStoreError: the file is not a usable database or its schema is
        newer than this release; the message names the file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT,
        )
    except (OSError, sqlite3.Error) as exc:
        raise StateStoreError(f"{path}: {exc}") from exc
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        _migrate(db, path)
    except sqlite3.Error as exc:
        db.close()
        raise StateStoreError(f"{path}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def _config_to_json(config: DeviceConfig) -> str:
    return json.dumps(attrs.asdict(config), sort_keys=True)


def _config_from_json(text: str) -> DeviceConfig:
    raw = json.loads(text)
    if not isinstance(raw, dict) or not isinstance(raw.get("no_data"), dict):
        raise ValueError("not a configuration object")
    fields = {field.name for field in attrs.fields(DeviceConfig)}
    if set(raw) != fields:
        raise ValueError(f"fields {sorted(raw)} differ from {sorted(fields)}")
    config = DeviceConfig(**{**raw, "no_data": NoData(**raw["no_data"])})
    for field in attrs.fields(DeviceConfig):
        value = getattr(config, field.name)
        default = getattr(DeviceConfig(), field.name)
        # bool is an int subclass: compare the exact types, numbers aside.
        if type(value) is not type(default) and not (
            isinstance(default, float) and type(value) is int
        ):
            raise ValueError(f"{field.name} = {value!r} has the wrong type")
    return config


class StateStore:
    """The persistent state of one device (module docstring).

    Calls are synchronous and short (one small transaction each); a caller
    on a hot path may run them in a worker thread, which is why the
    connection may be used from another thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_database(path)

    def close(self) -> None:
        """Close the database; idempotent."""
        self._db.close()

    @property
    def schema_version(self) -> int:
        """The database's schema version."""
        return _version(self._db)

    # -- configuration -------------------------------------------------

    def load_config(self) -> DeviceConfig | None:
        """The stored configuration, or None when none was stored yet.

        Raises:
          StateStoreError: the stored value is not a configuration; nothing
            is changed, the caller decides to fall back to the defaults.
        """
        row = self._db.execute(
            "SELECT value FROM config WHERE key = ?", (CONFIG_KEY,)
        ).fetchone()
        if row is None:
            return None
        try:
            return _config_from_json(row[0])
        except (ValueError, TypeError) as exc:
            raise StateStoreError(
                f"{self.path}: {CONFIG_KEY} is not a valid configuration: {exc}"
            ) from exc

    def save_config(self, config: DeviceConfig) -> None:
        """Store ``config``, replacing the previous one, in one transaction."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO config (key, value, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                "updated = excluded.updated",
                (CONFIG_KEY, _config_to_json(config), time.time()),
            )

    # -- reboots -------------------------------------------------------

    def record_reboot(self, reason: str, cause: str) -> None:
        """Keep one reboot's reason and cause."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO reboots (at, reason, cause) VALUES (?, ?, ?)",
                (time.time(), reason, cause),
            )

    def reboots(self) -> list[RebootRecord]:
        """Every recorded reboot, oldest first."""
        rows = self._db.execute("SELECT at, reason, cause FROM reboots ORDER BY id")
        return [RebootRecord(*row) for row in rows]

    # -- samples (schema 2) ------------------------------------------------

    def add_sample(self, kind: str, body: str) -> int:
        """Keep one accepted sample as ``queued``; return its id.

        ``body`` is the sample as JSON text (the caller encodes it).
        """
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO samples (kind, body, state, updated) "
                "VALUES (?, ?, 'queued', ?)",
                (kind, body, time.time()),
            )
        assert cursor.lastrowid is not None
        return int(cursor.lastrowid)

    def mark(self, ids: Sequence[int], state: str, reason: str | None = None) -> None:
        """Move every sample of ``ids`` to ``state``, in one transaction.

        A sample already ``delivered`` stays delivered: a late report of the
        same message (a drop after a duplicate, say) cannot undo it.
        """
        if state not in SAMPLE_STATES:
            raise ValueError(f"unknown sample state {state!r}")
        if not ids:
            return
        now = time.time()
        with self._transaction():
            self._db.executemany(
                "UPDATE samples SET state = ?, reason = ?, updated = ? "
                "WHERE id = ? AND state != 'delivered'",
                [(state, reason, now, sample_id) for sample_id in ids],
            )

    def pending_samples(self) -> list[tuple[int, str, str]]:
        """``(id, kind, body)`` of every sample queued or sent, oldest first."""
        rows = self._db.execute(
            "SELECT id, kind, body FROM samples "
            "WHERE state IN ('queued', 'sent') ORDER BY id"
        )
        return [(int(i), str(k), str(b)) for i, k, b in rows]

    def sample_counts(self) -> dict[str, int]:
        """How many samples are in each state (every state named)."""
        counts = dict.fromkeys(SAMPLE_STATES, 0)
        rows = self._db.execute("SELECT state, count(*) FROM samples GROUP BY state")
        counts.update({str(state): int(n) for state, n in rows})
        return counts

    def samples(self) -> list[tuple[int, str, str, str | None]]:
        """``(id, kind, state, reason)`` of every sample, by id (tests, debug)."""
        rows = self._db.execute(
            "SELECT id, kind, state, reason FROM samples ORDER BY id"
        )
        return [(int(i), str(k), str(s), r) for i, k, s, r in rows]

    def _transaction(self) -> Any:
        # sqlite3's connection context manager commits or rolls back, but
        # with isolation_level=None it needs an explicit BEGIN.
        self._db.execute("BEGIN IMMEDIATE")
        return self._db
