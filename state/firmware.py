"""The host's MCUboot: two image slots and a test-swap with revert.

Design
------
Image bytes are files in the directory, under unique names
(``img-<hex>.bin``), next to a staging file (``staging.part``) that a
download streams into.  What the slots hold lives in the state directory's
SQLite database (``state.store``, schema 3), not in a file of its own::

    firmware_slots  ('primary',   "1.0.0", "img-….bin" | NULL)
                    ('secondary', "1.0.1", "img-….bin")     -- absent: empty
    firmware_swap   (1, pending 0 | 1, confirmed 0 | 1)

No rows at all is a fresh device: ``default_version`` runs, confirmed, with
no image file (the development build).

The database transaction is the single commit point.  The commit rule: an
image file is whole and fsynced, under its final name, with its directory
fsynced, before the transaction that names it commits; an image file named
by the committed rows is never renamed or changed.  So a crash at any point
leaves the old or the new state, never a half-applied one.  Image files
that the committed rows do not name are garbage, deleted after every commit
(a crash in between leaves them to the next one).  The rename into a slot
and the garbage collection both happen under the database's write lock
(``BEGIN IMMEDIATE``), so a collector, in this process or another, never
sees an image between its rename and its commit.

Rules, mirroring MCUboot's test swap simply:

* ``stage`` / ``commit_staged`` put an image into the secondary slot and
  mark it pending.  The running image is untouched.
* ``activate_pending`` runs at every boot, before anything else:

  1. if the running image is **unconfirmed**, it already had its one trial
     boot and nobody confirmed it: revert to the secondary slot's image
     (the one that ran before the swap), confirmed, and drop the failed one;
  2. else, if an image is pending: swap the slots (the staged image runs,
     unconfirmed; the old one waits in the secondary slot for a revert);
  3. else nothing changes.

* ``confirm`` marks the running image good (the cloud module calls it once
  its setup succeeded) and drops the old image kept for a revert.

The database
------------
``FirmwareStore(directory, database=None)``: ``None`` means
``directory.parent / "state.db"``, the database of the state directory, as
``tracker.service`` lays it out (``<state>/firmware`` and
``<state>/state.db``, which ``StateStore`` opens too).  The store opens its
own connection (WAL lets several share the file) with
``state.store.open_database``, at first use.  Reading creates nothing on
a fresh device (neither a database nor legacy files): the development
build runs.

The FOTA clients keep their own state over a reboot in the same database
(``load_status`` / ``save_status``, table ``fota_status``: one JSON object
per client), so it commits with the same guarantees.

Migration from the JSON files
-----------------------------
Before schema 3 the slot table was ``slots.json`` in the directory
(``{"format": 1, "primary": {"version", "image"}, "secondary": … | null,
"pending", "confirmed"}``) and LwM2M object 5 kept its state in
``lwm2m_fota.json`` there.  At first open, whichever of them exists is
imported in one transaction, then renamed aside (``*.migrated``) and the
directory fsynced before anything else is written; a crash between the
commit and the renames leaves the files, imported again, with the same
content, at the next open.  A corrupt ``slots.json`` stops the import: a
``FirmwareStoreError`` names the file and the problem, and nothing is
imported or renamed.  A corrupt status file only loses that client's state
(as a corrupt row does): it is logged, renamed ``*.rejected`` and the rest
is imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Final

import attrs
import structlog

from state.store import StateStoreError, open_database

log = structlog.get_logger(actor="firmware")

# The slot table of releases before schema 3, imported at first open.
METADATA: Final = "slots.json"
# Where a download streams to before ``commit_staged``.
STAGING: Final = "staging.part"
# The format of the legacy slot table.
FORMAT: Final = 1
# The database's file name in the state directory (the default).
DATABASE: Final = "state.db"
# Image files: ``img-<16 hex digits>.bin``; anything else is left alone.
IMAGE_GLOB: Final = "img-*.bin"
# Suffix of a legacy file once imported, and of one that could not be.
MIGRATED_SUFFIX: Final = ".migrated"
REJECTED_SUFFIX: Final = ".rejected"
# The FOTA clients' state files before schema 3: status key -> file name in
# the directory (``backends.lwm2m_fota`` names its key after this table).
LEGACY_STATUS_FILES: Final[Mapping[str, str]] = {"lwm2m_fota": "lwm2m_fota.json"}


class FirmwareStoreError(Exception):
    """The firmware store is unusable (the message names the file and why)."""


@attrs.frozen
class Slot:
    """One slot's content: a version and its image file (``None``: no file)."""

    version: str
    image: str | None = None


@attrs.frozen
class _Meta:
    primary: Slot
    secondary: Slot | None = None
    pending: bool = False
    confirmed: bool = True


def _parse_slot(where: str, name: str, value: object, *, optional: bool) -> Slot | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise FirmwareStoreError(f"{where}: {name!r} is not an object")
    version = value.get("version")
    image = value.get("image")
    if not isinstance(version, str) or not version:
        raise FirmwareStoreError(f"{where}: {name}.version is not a non-empty string")
    if image is not None and (
        not isinstance(image, str) or "/" in image or image.startswith(".")
    ):
        raise FirmwareStoreError(f"{where}: {name}.image is not a plain file name")
    return Slot(version, image)


def _parse_meta(where: str, raw: object) -> _Meta:
    """A slot table in the legacy JSON shape (also how rows are checked)."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FirmwareStoreError(f"{where}: not a format {FORMAT} slot table")
    primary = _parse_slot(where, "primary", raw.get("primary"), optional=False)
    secondary = _parse_slot(where, "secondary", raw.get("secondary"), optional=True)
    pending = raw.get("pending")
    confirmed = raw.get("confirmed")
    if not isinstance(pending, bool) or not isinstance(confirmed, bool):
        raise FirmwareStoreError(
            f"{where}: 'pending' and 'confirmed' must be booleans"
        )
    if pending and secondary is None:
        raise FirmwareStoreError(f"{where}: an image is pending but the slot is empty")
    assert primary is not None
    return _Meta(primary, secondary, pending, confirmed)


def _flag(value: object) -> object:
    """A stored 0/1 as a bool; anything else as it is (then refused)."""
    return bool(value) if type(value) is int and value in (0, 1) else value


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define(eq=False)
class FirmwareStore:
    """Primary and secondary image slots in ``directory`` (module docstring).

    Every method does blocking file and database I/O; the transactions are
    small, but callers in Trio code run ``commit_staged`` (which fsyncs the
    image) in a worker thread.  Calls from several threads are serialised
    by a lock.

    Args:
      directory: where the image files live; created on the first write.
      default_version: what runs on a device that never took an update.
      database: the SQLite state database holding the slot table and the
        FOTA clients' status; ``None`` means ``directory.parent /
        "state.db"``, the state directory's database (``tracker.service``
        keeps the slots in ``<state>/firmware``).  One store per database.
    """

    directory: Path
    default_version: str = "0.0.0-development"
    database: Path | None = attrs.field(default=None, kw_only=True)
    _db: sqlite3.Connection | None = attrs.field(
        init=False, default=None, repr=False
    )
    _lock: threading.RLock = attrs.field(
        init=False, factory=threading.RLock, repr=False
    )

    # -- files ------------------------------------------------------------------

    @property
    def database_file(self) -> Path:
        """The SQLite database holding the slot table."""
        if self.database is not None:
            return self.database
        return self.directory.parent / DATABASE

    @property
    def metadata_file(self) -> Path:
        """The legacy slot table (``slots.json``), imported at first open."""
        return self.directory / METADATA

    @property
    def staging_file(self) -> Path:
        """Where a download streams to before ``commit_staged``."""
        return self.directory / STAGING

    def _legacy_files(self) -> list[Path]:
        names = [METADATA, *LEGACY_STATUS_FILES.values()]
        return [self.directory / name for name in names]

    def close(self) -> None:
        """Close the database connection; idempotent (a later call reopens)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- the database -------------------------------------------------------------

    @contextlib.contextmanager
    def _database_errors(self) -> Iterator[None]:
        """SQLite's errors as ``FirmwareStoreError`` naming the database."""
        try:
            yield
        except sqlite3.Error as exc:
            raise FirmwareStoreError(f"{self.database_file}: {exc}") from exc

    def _connect(self, *, create: bool) -> sqlite3.Connection | None:
        """The open connection; opened (and legacy files imported) on first use.

        Returns ``None`` instead of creating a database when ``create`` is
        false and there is neither a database nor a legacy file.
        """
        if self._db is not None:
            return self._db
        if not create and not self.database_file.exists():
            if not any(path.exists() for path in self._legacy_files()):
                return None
        try:
            db = open_database(self.database_file)
        except StateStoreError as exc:
            raise FirmwareStoreError(str(exc)) from exc
        try:
            with self._database_errors():
                imported = self._import_legacy(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        if imported:
            self._collect_garbage()
        return db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the database's write lock."""
        with self._lock:
            db = self._connect(create=True)
            assert db is not None
            with self._database_errors():
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")

    def _read_meta(self, db: sqlite3.Connection, *, check_images: bool = True) -> _Meta:
        """The committed slot table; the default one when there are no rows."""
        where = f"{self.database_file}: firmware_slots"
        snapshot = not db.in_transaction
        with self._database_errors():
            # One read transaction: both tables from the same commit.
            if snapshot:
                db.execute("BEGIN")
            try:
                slots = {
                    str(slot): {"version": version, "image": image}
                    for slot, version, image in db.execute(
                        "SELECT slot, version, image FROM firmware_slots"
                    )
                }
                swap = db.execute(
                    "SELECT pending, confirmed FROM firmware_swap WHERE id = 1"
                ).fetchone()
            finally:
                if snapshot:
                    db.execute("COMMIT")
        if swap is None and not slots:
            return _Meta(Slot(self.default_version))
        if swap is None:
            raise FirmwareStoreError(f"{where}: slots without firmware_swap's row")
        raw = {
            "format": FORMAT,
            "primary": slots.get("primary"),
            "secondary": slots.get("secondary"),
            "pending": _flag(swap[0]),
            "confirmed": _flag(swap[1]),
        }
        meta = _parse_meta(where, raw)
        if check_images:
            self._check_images(where, meta)
        return meta

    def _check_images(self, where: str, meta: _Meta) -> None:
        for slot in (meta.primary, meta.secondary):
            if slot is not None and slot.image is not None:
                if not (self.directory / slot.image).is_file():
                    raise FirmwareStoreError(
                        f"{where}: names the image {slot.image!r}, which is missing"
                    )

    @staticmethod
    def _write_meta(db: sqlite3.Connection, meta: _Meta) -> None:
        """Replace the slot table's rows (inside the caller's transaction)."""
        db.execute("DELETE FROM firmware_slots")
        for name, slot in (("primary", meta.primary), ("secondary", meta.secondary)):
            if slot is not None:
                db.execute(
                    "INSERT INTO firmware_slots (slot, version, image) "
                    "VALUES (?, ?, ?)",
                    (name, slot.version, slot.image),
                )
        db.execute(
            "INSERT INTO firmware_swap (id, pending, confirmed, updated) "
            "VALUES (1, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "pending = excluded.pending, confirmed = excluded.confirmed, "
            "updated = excluded.updated",
            (int(meta.pending), int(meta.confirmed), time.time()),
        )

    def _collect_garbage(self) -> None:
        """Delete image files the committed rows do not name."""
        if not self.directory.is_dir():
            return
        with self._writing() as db:
            # Under the write lock: no image is between rename and commit.
            meta = self._read_meta(db, check_images=False)
            keep = {s.image for s in (meta.primary, meta.secondary) if s is not None}
            for path in self.directory.glob(IMAGE_GLOB):
                if path.name not in keep:
                    path.unlink(missing_ok=True)

    # -- migration from the JSON files ------------------------------------------

    def _legacy_meta(self) -> _Meta | None:
        path = self.metadata_file
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise FirmwareStoreError(f"{path}: unreadable ({exc})") from exc
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise FirmwareStoreError(f"{path}: not valid JSON ({exc})") from exc
        meta = _parse_meta(str(path), raw)
        self._check_images(str(path), meta)
        return meta

    def _legacy_status(self, path: Path) -> dict[str, Any] | None:
        """A legacy status file's object; ``None`` if it is unusable (logged)."""
        try:
            raw = json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"unreadable ({exc})"
        except ValueError as exc:
            problem = f"not valid JSON ({exc})"
        else:
            if isinstance(raw, dict):
                return raw
            problem = "not a JSON object"
        log.error("firmware_status_rejected", file=str(path), error=problem)
        return None

    def _import_legacy(self, db: sqlite3.Connection) -> bool:
        """Import the JSON files of older releases (module docstring).

        Returns whether anything was imported.
        """
        meta = self._legacy_meta()
        statuses: dict[str, dict[str, Any]] = {}
        aside: list[tuple[Path, str]] = []
        for key, name in LEGACY_STATUS_FILES.items():
            path = self.directory / name
            if not path.exists():
                continue
            body = self._legacy_status(path)
            if body is None:
                aside.append((path, REJECTED_SUFFIX))
            else:
                statuses[key] = body
                aside.append((path, MIGRATED_SUFFIX))
        if meta is None and not aside:
            return False
        if meta is not None or statuses:
            db.execute("BEGIN IMMEDIATE")
            try:
                if meta is not None:
                    self._write_meta(db, meta)
                for key, body in statuses.items():
                    self._put_status(db, key, body)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        if meta is not None:
            aside.append((self.metadata_file, MIGRATED_SUFFIX))
        try:
            for path, suffix in aside:
                os.replace(path, path.with_name(path.name + suffix))
            # A file left over by the old writer's atomic replace.
            self.metadata_file.with_name(METADATA + ".tmp").unlink(missing_ok=True)
            # Durable before any later write: a re-import after that write
            # would roll it back.
            _fsync_directory(self.directory)
        except OSError as exc:
            raise FirmwareStoreError(
                f"{self.directory}: imported files not renamed aside ({exc})"
            ) from exc
        imported = [path.name for path, suffix in aside if suffix == MIGRATED_SUFFIX]
        if imported:
            log.info(
                "firmware_state_imported",
                database=str(self.database_file),
                files=imported,
            )
        return meta is not None

    # -- reading --------------------------------------------------------------

    def _read(self) -> _Meta:
        with self._lock:
            db = self._connect(create=False)
            if db is None:
                return _Meta(Slot(self.default_version))
            return self._read_meta(db)

    @property
    def running_version(self) -> str:
        """The version in the primary slot."""
        return self._read().primary.version

    @property
    def running_image(self) -> Path | None:
        """The running image file (``None`` for the development build)."""
        image = self._read().primary.image
        return None if image is None else self.directory / image

    @property
    def confirmed(self) -> bool:
        """Whether the running image was confirmed."""
        return self._read().confirmed

    @property
    def pending(self) -> str | None:
        """The version staged for the next boot, if any."""
        meta = self._read()
        return meta.secondary.version if meta.pending and meta.secondary else None

    def staged_size(self) -> int:
        """Bytes in the staging file so far (0 if there is none)."""
        try:
            return self.staging_file.stat().st_size
        except FileNotFoundError:
            return 0

    # -- writing --------------------------------------------------------------

    def open_staging(self, *, append: bool = False) -> IO[bytes]:
        """A binary handle on the staging file; the caller closes it.

        Args:
          append: continue a broken download (keep what is there) instead
            of starting over.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.staging_file.open("ab" if append else "wb")

    def discard_staging(self) -> None:
        """Forget a partial download."""
        self.staging_file.unlink(missing_ok=True)

    def commit_staged(self, version: str, size: int) -> None:
        """Move the staging file into the secondary slot, pending.

        Raises:
          FirmwareStoreError: the staging file does not hold ``size`` bytes
            (it is left as it is) or the slot table is corrupt.
        """
        self._read()
        staging = self.staging_file
        actual = self.staged_size()
        if actual != size:
            raise FirmwareStoreError(
                f"{staging}: holds {actual} bytes, expected {size}"
            )
        # The long fsync first, outside the lock.
        with staging.open("rb+") as f:
            os.fsync(f.fileno())
        image = f"img-{secrets.token_hex(8)}.bin"
        with self._writing() as db:
            meta = self._read_meta(db)
            os.replace(staging, self.directory / image)
            _fsync_directory(self.directory)
            self._write_meta(
                db, attrs.evolve(meta, secondary=Slot(version, image), pending=True)
            )
        self._collect_garbage()
        log.info("firmware_staged", version=version, size=size)

    def stage(self, version: str, source: Path) -> None:
        """Copy ``source`` into the secondary slot, pending."""
        with source.open("rb") as src, self.open_staging() as dst:
            shutil.copyfileobj(src, dst)
        self.commit_staged(version, source.stat().st_size)

    def activate_pending(self) -> str | None:
        """Run at boot: revert an untried-and-unconfirmed image or swap.

        Returns:
          The version that runs from now on if it changed, else ``None``.

        Raises:
          FirmwareStoreError: the slot table is corrupt; nothing changed.
        """
        meta = self._read()
        if _at_boot(meta)[0] == meta:
            return None  # nothing to do: no write
        with self._writing() as db:
            meta = self._read_meta(db)
            new, running = _at_boot(meta)
            if new != meta:
                self._write_meta(db, new)
        if new == meta:
            return None
        self._collect_garbage()
        if not meta.confirmed and meta.secondary is None:
            log.warning("firmware_revert_impossible", running=meta.primary.version)
        elif not meta.confirmed:
            log.warning(
                "firmware_reverted", failed=meta.primary.version, running=running
            )
        else:
            log.info(
                "firmware_swapped", previous=meta.primary.version, running=running
            )
        return running

    def confirm(self) -> None:
        """Mark the running image good (idempotent; writes only on change)."""
        if self._read().confirmed:
            return
        with self._writing() as db:
            meta = self._read_meta(db)
            if meta.confirmed:
                return
            # Keep an image staged meanwhile; drop the one kept for a revert.
            secondary = meta.secondary if meta.pending else None
            self._write_meta(
                db, attrs.evolve(meta, secondary=secondary, confirmed=True)
            )
        self._collect_garbage()
        log.info("firmware_confirmed", version=meta.primary.version)

    # -- the FOTA clients' status -------------------------------------------------

    def load_status(self, key: str) -> dict[str, Any] | None:
        """The JSON object ``save_status`` kept under ``key``, or ``None``.

        Raises:
          FirmwareStoreError: the database is unusable or the stored value
            is not a JSON object (the message names the database and key).
        """
        with self._lock:
            db = self._connect(create=False)
            if db is None:
                return None
            with self._database_errors():
                row = db.execute(
                    "SELECT body FROM fota_status WHERE key = ?", (key,)
                ).fetchone()
        if row is None:
            return None
        where = f"{self.database_file}: fota_status {key!r}"
        try:
            body = json.loads(row[0])
        except (TypeError, ValueError) as exc:
            raise FirmwareStoreError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise FirmwareStoreError(f"{where}: not a JSON object")
        return body

    def save_status(self, key: str, body: Mapping[str, Any]) -> None:
        """Keep ``body`` (JSON-serialisable) under ``key``, in one transaction.

        Raises:
          FirmwareStoreError: the database cannot be written.
        """
        with self._writing() as db:
            self._put_status(db, key, body)

    @staticmethod
    def _put_status(db: sqlite3.Connection, key: str, body: Mapping[str, Any]) -> None:
        db.execute(
            "INSERT INTO fota_status (key, body, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET body = excluded.body, "
            "updated_at = excluded.updated_at",
            (key, json.dumps(dict(body), sort_keys=True), time.time()),
        )


def _at_boot(meta: _Meta) -> tuple[_Meta, str | None]:
    """The bootloader's decision: the new slot table and what now runs.

    ``None`` as the version: the running image did not change.
    """
    if not meta.confirmed:
        if meta.secondary is None:
            # Nothing to go back to: keep running what we have.
            return attrs.evolve(meta, confirmed=True), None
        return _Meta(meta.secondary, None, pending=False, confirmed=True), (
            meta.secondary.version
        )
    if meta.pending and meta.secondary is not None:
        swapped = _Meta(meta.secondary, meta.primary, pending=False, confirmed=False)
        return swapped, meta.secondary.version
    return meta, None
