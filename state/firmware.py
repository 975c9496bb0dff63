"""The host's MCUboot: two image slots and a test-swap with revert.

Design
------
The directory holds image files under unique names (``img-<hex>.bin``), a
staging file (``staging.part``) that a download streams into, and one
metadata file, ``slots.json``::

    {"format": 1,
     "primary": {"version": "1.0.0", "image": "img-….bin" | null},
     "secondary": {"version": "1.0.1", "image": "img-….bin"} | null,
     "pending": true | false,
     "confirmed": true | false}

The metadata file is the single commit point.  It is replaced atomically
(write to a temporary file, fsync, rename, fsync the directory), and image
files are never renamed once the metadata names them, so a crash at any
point leaves either the old or the new state, never a half-applied one.
Files no longer named by the metadata are deleted afterwards (a crash in
between only leaves garbage, removed on the next write).

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

No metadata file means a fresh device: ``default_version`` runs, confirmed,
with no image file (the development build).  Reading never creates files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Any, Final

import attrs
import structlog

log = structlog.get_logger(actor="firmware")

METADATA: Final = "slots.json"
STAGING: Final = "staging.part"
FORMAT: Final = 1


class FirmwareStoreError(Exception):
    """The firmware store's files are unusable (the message names the file)."""


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

    def to_json(self) -> dict[str, Any]:
        def slot(s: Slot | None) -> dict[str, Any] | None:
            return None if s is None else {"version": s.version, "image": s.image}

        return {
            "format": FORMAT,
            "primary": slot(self.primary),
            "secondary": slot(self.secondary),
            "pending": self.pending,
            "confirmed": self.confirmed,
        }


def _parse_slot(path: Path, name: str, value: object, *, optional: bool) -> Slot | None:
    if value is None and optional:
        return None
    if not isinstance(value, dict):
        raise FirmwareStoreError(f"{path}: {name!r} is not an object")
    version = value.get("version")
    image = value.get("image")
    if not isinstance(version, str) or not version:
        raise FirmwareStoreError(f"{path}: {name}.version is not a non-empty string")
    if image is not None and (
        not isinstance(image, str) or "/" in image or image.startswith(".")
    ):
        raise FirmwareStoreError(f"{path}: {name}.image is not a plain file name")
    return Slot(version, image)


def _parse_meta(path: Path, text: str) -> _Meta:
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FirmwareStoreError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise FirmwareStoreError(f"{path}: not a format {FORMAT} slot table")
    primary = _parse_slot(path, "primary", raw.get("primary"), optional=False)
    secondary = _parse_slot(path, "secondary", raw.get("secondary"), optional=True)
    pending = raw.get("pending")
    confirmed = raw.get("confirmed")
    if not isinstance(pending, bool) or not isinstance(confirmed, bool):
        raise FirmwareStoreError(f"{path}: 'pending' and 'confirmed' must be booleans")
    if pending and secondary is None:
        raise FirmwareStoreError(f"{path}: an image is pending but the slot is empty")
    assert primary is not None
    return _Meta(primary, secondary, pending, confirmed)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@attrs.define(eq=False)
class FirmwareStore:
    """Primary and secondary image slots in ``directory`` (module docstring).

    Every method does blocking file I/O; the files are small, but callers in
    Trio code run ``commit_staged`` (which fsyncs) in a worker thread.

    Args:
      directory: where the slots live; created on the first write.
      default_version: what runs on a device that never took an update.
    """

    directory: Path
    default_version: str = "0.0.0-development"

    # -- reading --------------------------------------------------------------

    @property
    def metadata_file(self) -> Path:
        """The slot table."""
        return self.directory / METADATA

    @property
    def staging_file(self) -> Path:
        """Where a download streams to before ``commit_staged``."""
        return self.directory / STAGING

    def _read(self) -> _Meta:
        path = self.metadata_file
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return _Meta(Slot(self.default_version))
        except (OSError, UnicodeDecodeError) as exc:
            raise FirmwareStoreError(f"{path}: unreadable ({exc})") from exc
        meta = _parse_meta(path, text)
        for slot in (meta.primary, meta.secondary):
            if slot is not None and slot.image is not None:
                if not (self.directory / slot.image).is_file():
                    raise FirmwareStoreError(
                        f"{path}: names the image {slot.image!r}, which is missing"
                    )
        return meta

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

    def _write(self, meta: _Meta) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.metadata_file
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", encoding="utf-8") as f:
            json.dump(meta.to_json(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        _fsync_directory(self.directory)
        self._collect_garbage(meta)

    def _collect_garbage(self, meta: _Meta) -> None:
        keep = {s.image for s in (meta.primary, meta.secondary) if s is not None}
        for path in self.directory.glob("img-*.bin"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

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
        meta = self._read()
        staging = self.staging_file
        actual = self.staged_size()
        if actual != size:
            raise FirmwareStoreError(
                f"{staging}: holds {actual} bytes, expected {size}"
            )
        with staging.open("rb+") as f:
            os.fsync(f.fileno())
        image = f"img-{secrets.token_hex(8)}.bin"
        os.replace(staging, self.directory / image)
        self._write(attrs.evolve(meta, secondary=Slot(version, image), pending=True))
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
        if not meta.confirmed:
            if meta.secondary is None:
                # Nothing to go back to: keep running what we have.
                log.warning("firmware_revert_impossible", running=meta.primary.version)
                self._write(attrs.evolve(meta, confirmed=True))
                return None
            log.warning(
                "firmware_reverted",
                failed=meta.primary.version,
                running=meta.secondary.version,
            )
            self._write(_Meta(meta.secondary, None, pending=False, confirmed=True))
            return meta.secondary.version
        if meta.pending and meta.secondary is not None:
            log.info(
                "firmware_swapped",
                previous=meta.primary.version,
                running=meta.secondary.version,
            )
            self._write(
                _Meta(meta.secondary, meta.primary, pending=False, confirmed=False)
            )
            return meta.secondary.version
        return None

    def confirm(self) -> None:
        """Mark the running image good (idempotent; writes only on change)."""
        meta = self._read()
        if meta.confirmed:
            return
        # Keep an image staged meanwhile; drop the one kept for a revert.
        secondary = meta.secondary if meta.pending else None
        self._write(attrs.evolve(meta, secondary=secondary, confirmed=True))
        log.info("firmware_confirmed", version=meta.primary.version)
