"""LwM2M firmware update: the Firmware Update object 5 (``wire.md`` §6.4).

Design
------
``FirmwareUpdateObject`` owns instance ``/5/0`` of the device's
``ObjectStore`` and plays the part of the firmware's ``lwm2m_firmware.c``
on top of the host's image slots (``state.firmware``)::

    Idle --write Package URI (http/https)--> Downloading --ok--> Downloaded
    Idle --write Package (push)-----------> Downloading --ok--> Downloaded
    Downloading --error: result 2/4/5/7/9--> Idle
    Downloading / Downloaded --empty URI or Package: cancel--> Idle
    Downloaded --execute Update--> Updating --5 s: pending, FOTA_DONE-->
        reboot --> (next boot) Idle with result 1, or 8 if it reverted

* The store's callbacks are synchronous: they check the operation against
  the state (refusing with the code OMA servers expect), move the state at
  once and hand the slow part (download, staging, the update) to ``run``
  through a small queue.  ``run`` carries out one operation at a time in a
  cancel scope, so a cancel (empty URI) stops a download at once.
* Pull downloads use the AWS path's HTTP(S) client (``download_image``):
  ``Range`` resume after a broken connection, the size the server
  announces held against every later response, and ``max_size`` as the
  secondary slot's size.
* The image goes to the store's staging file and stays there while the
  object is Downloaded: as in the firmware (without
  ``FOTA_CLIENT_AUTOSCHEDULE_UPDATE``), only the Update execute marks it
  pending for the next boot (``commit_staged``).  The firmware then waits
  5 s (the execute's acknowledgement gets out) and asks for the reboot
  through the Device object's Reboot, flagged as coming from the firmware
  object, which the integration turns into FOTA_DONE; here the object emits
  that ``WrapperFotaDone`` itself, and the cloud actor turns it into
  ``CLOUD_EVT_FOTA_DONE``, the util actor into a reboot.
* What must survive a reboot (state, result, URI, package name, version,
  size and SHA-256) is kept in the state database through the image
  slots' store (``FirmwareStore.save_status``, key ``lwm2m_fota``), one
  transaction per change; the store imports the ``lwm2m_fota.json`` of
  older releases at first open.  At boot, after the bootloader's part
  (``activate_pending``): Updating becomes result 1 when the running image
  is the one staged (by content, not by version) and result 8 otherwise;
  a Downloading left by a reboot becomes Idle with result 0, as the
  firmware does; Downloaded stays if the staged file is intact.  The image
  is confirmed by the cloud actor's set-up, as on the MQTT path; until it
  is, the saved state keeps the image's digest, so that a revert at the
  boot after (never confirmed) still turns the result into 8.
* Events (``asset_tracker_v2.md`` §15.5): ``WrapperFotaStart`` when the
  state becomes Downloading, ``WrapperFotaError`` whenever a failure result
  is set (also at boot after a failed update, as the firmware's result
  callback does), ``WrapperFotaDone`` as the reboot request.

XXX: no CoAP(S) pull.  The firmware's download client also fetches
``coap://`` and ``coaps://`` package URIs; here they end with result 9
(unsupported protocol) and resource 8 lists HTTP and HTTPS only, so a
server that offers only CoAP downloads must push the package (resource 0).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import attrs
import httpx
import structlog
import trio

from backends.aws_fota import (
    DownloadBroken,
    DownloadRefused,
    ImageSizeError,
    ImageTooLarge,
    download_image,
)
from protocols import wrapper as wrap
from protocols.lwm2m_formats import Record
from protocols.lwm2m_objects import (
    FIRMWARE_UPDATE,
    BadRequest,
    MethodNotAllowed,
    ObjectStore,
)
from state.firmware import LEGACY_STATUS_FILES, FirmwareStore, FirmwareStoreError

log = structlog.get_logger(actor="lwm2m_fota")

Emit = Callable[[wrap.WrapperEvent], None]

# The Firmware Update object and its single instance.
OBJECT_ID: Final = FIRMWARE_UPDATE.id
INSTANCE: Final = 0

# Resource ids of object 5 (OMA LwM2M 1.1, appendix E.6).
PACKAGE: Final = 0
PACKAGE_URI: Final = 1
UPDATE: Final = 2
STATE: Final = 3
UPDATE_RESULT: Final = 5
PKG_NAME: Final = 6
PKG_VERSION: Final = 7
PROTOCOL_SUPPORT: Final = 8
DELIVERY_METHOD: Final = 9


class State(enum.IntEnum):
    """Resource 3, State."""

    IDLE = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    UPDATING = 3


class Result(enum.IntEnum):
    """Resource 5, Update Result."""

    INITIAL = 0
    SUCCESS = 1
    NOT_ENOUGH_FLASH = 2
    OUT_OF_RAM = 3
    CONNECTION_LOST = 4
    INTEGRITY_FAILURE = 5
    UNSUPPORTED_PACKAGE = 6
    INVALID_URI = 7
    UPDATE_FAILED = 8
    UNSUPPORTED_PROTOCOL = 9


class Protocol(enum.IntEnum):
    """Resource 8, Firmware Update Protocol Support, values."""

    COAP = 0
    COAPS = 1
    HTTP = 2
    HTTPS = 3


# Pull schemes this client downloads, and their resource 8 values.
PULL_SCHEMES: Final = {"http": Protocol.HTTP, "https": Protocol.HTTPS}

# Resource 9, Firmware Update Delivery Method: 2 = pull and push.
DELIVERY_PULL_AND_PUSH: Final = 2

# Seconds between the Update execute and the reboot request: the firmware's
# update work item runs 5 s later, so the execute's acknowledgement (and
# the Updating state's notification) get out first.
UPDATE_DELAY: Final = 5.0

# The largest image accepted, in bytes: the host's stand-in for the size of
# the secondary slot (an nRF9160 application slot is about 0.45 MiB; room
# to spare for development images).
DEFAULT_MAX_SIZE: Final = 1024 * 1024

# Operations waiting for ``run``.  The state machine admits one operation at
# a time (a cancel only cancels), so a handful is plenty; a full queue
# refuses the operation instead of blocking the store's callback.
QUEUE_SIZE: Final = 4

# The key of the object's state in the firmware store's status table.
STATUS_KEY: Final = "lwm2m_fota"
# The file that kept it before the state database (imported by the store).
STATE_FILE: Final = LEGACY_STATUS_FILES[STATUS_KEY]
# The saved state's format version.
STATE_FORMAT: Final = 1

# A version inside a package's file name ("app-1.0.1.bin" -> "1.0.1").
_VERSION_RE: Final = re.compile(
    r"(?<![0-9.])v?([0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.-]*[0-9A-Za-z])?)"
)
# A file name's extension (".bin", ".hex", ".zip").
_EXTENSION_RE: Final = re.compile(r"\.[A-Za-z]+$")
# Longest package name kept in resource 6 (the object's string limit).
_NAME_MAX: Final = 255
# Bytes hashed per read when checking an image.
_HASH_CHUNK: Final = 64 * 1024


class FotaStateError(Exception):
    """The saved state is unusable (the message names it and the problem)."""


# How an operation the state does not allow is refused.  OMA's object
# definition makes Update executable only in Downloaded and says operations
# the state machine does not foresee SHOULD be rejected, without naming a
# code.  The firmware's engine (Zephyr: -EPERM) and AVSystem's client answer
# 4.05 Method Not Allowed for Update outside Downloaded and for a write
# while Downloading, and AVSystem's 4.00 Bad Request for a new package while
# one is downloaded: servers such as Coiote expect exactly these.


# -- the persistent part ----------------------------------------------------


@attrs.frozen
class _Saved:
    """What survives a reboot."""

    state: State = State.IDLE
    result: Result = Result.INITIAL
    uri: str = ""
    name: str = ""
    version: str = ""
    size: int = 0
    sha256: str = ""
    # The digest of an image that booted but was not confirmed yet.
    verify: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "state": int(self.state),
            "result": int(self.result),
            "uri": self.uri,
            "name": self.name,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
            "verify": self.verify,
        }


def _integer(where: str, raw: Mapping[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise FotaStateError(f"{where}: {key!r} is not an integer")
    return value


def _parse_saved(where: str, raw: Mapping[str, Any]) -> _Saved:
    """The saved state from its JSON object; ``where`` names its place."""
    if raw.get("format") != STATE_FORMAT:
        raise FotaStateError(f"{where}: not a format {STATE_FORMAT} state")
    try:
        state = State(_integer(where, raw, "state"))
        result = Result(_integer(where, raw, "result"))
    except ValueError as exc:
        raise FotaStateError(f"{where}: {exc}") from None
    strings = {}
    for key in ("uri", "name", "version", "sha256", "verify"):
        value = raw.get(key)
        if not isinstance(value, str):
            raise FotaStateError(f"{where}: {key!r} is not a string")
        strings[key] = value
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise FotaStateError(f"{where}: 'size' is not a non-negative integer")
    return _Saved(state, result, size=size, **strings)


def _sha256(path: Path | None) -> str:
    """The file's SHA-256 in hex; "" when there is no such file."""
    if path is None:
        return ""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except FileNotFoundError:
        return ""
    return digest.hexdigest()


# -- package URIs and names -------------------------------------------------


class PackageUriError(Exception):
    """A Package URI this client cannot use; ``result`` says why."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


def check_uri(uri: str) -> str:
    """Validate a Package URI and return its scheme (``http``/``https``).

    Raises:
      PackageUriError: result 7 (not an absolute URI with a host) or 9 (a scheme
        other than http and https).
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise PackageUriError(
            "URI contains white space or control characters", Result.INVALID_URI
        )
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise PackageUriError(f"not a URI ({exc})", Result.INVALID_URI) from None
    scheme = parts.scheme.lower()
    if not scheme or "://" not in uri:
        raise PackageUriError("not an absolute URI", Result.INVALID_URI)
    if scheme not in PULL_SCHEMES:
        raise PackageUriError(
            f"unsupported protocol {scheme!r}", Result.UNSUPPORTED_PROTOCOL
        )
    if not parts.hostname:
        raise PackageUriError("URI names no host", Result.INVALID_URI)
    return scheme


def package_name(uri: str) -> str:
    """The package's name: the last segment of the URI's path ("" if none)."""
    try:
        path = urlsplit(uri).path
    except ValueError:
        return ""  # not a URI: the download says so (result 7)
    return unquote(path.rsplit("/", 1)[-1])[:_NAME_MAX]


def package_version(name: str, sha256: str) -> str:
    """The version in the package's name, else one made of its digest.

    The image format carries no version; the slot table needs one (the
    modem reports it as the application version), and the digest keeps two
    different packages apart.
    """
    match = _VERSION_RE.search(_EXTENSION_RE.sub("", name))
    if match:
        return match[1]
    return f"0.0.0+sha256.{sha256[:12]}"


# -- the operations ``run`` carries out -------------------------------------


# Each operation carries the generation it was accepted in; a reset or a new
# package starts a new generation, so ``run`` skips what was cancelled.


@attrs.frozen
class _Pull:
    generation: int
    uri: str


@attrs.frozen
class _Push:
    generation: int
    data: bytes


@attrs.frozen
class _Update:
    generation: int


_Operation = _Pull | _Push | _Update


class _Failed(Exception):
    """An operation failed with an Update Result."""

    def __init__(self, message: str, result: Result) -> None:
        super().__init__(message)
        self.result = result


@attrs.define(eq=False)
class FirmwareUpdateObject:
    """Object 5 instance 0 of ``objects`` (module docstring).

    Creating it creates ``/5/0`` and settles what the last boot left (so
    create it after the bootloader's ``activate_pending``).  Operations
    wait for ``run``.

    Args:
      objects: the device's LwM2M objects.
      firmware: the image slots.
      emit: takes the wrapper FOTA events (the backend's event sink).
      ca_file: CA bundle (PEM) that verifies HTTPS download servers;
        ``None`` uses the system's.
      max_size: the largest image accepted (the secondary slot's size).
      download_retries: resumptions after a broken download.
      retry_delay: seconds between two download attempts.
      http_timeout: httpx timeout per network operation, in seconds.
      update_delay: seconds from the Update execute to the reboot request.
    """

    objects: ObjectStore
    firmware: FirmwareStore
    emit: Emit
    ca_file: Path | None = None
    max_size: int = DEFAULT_MAX_SIZE
    download_retries: int = 3
    retry_delay: float = 0.5
    http_timeout: float = 30.0
    update_delay: float = UPDATE_DELAY
    _saved: _Saved = attrs.field(init=False, factory=_Saved)
    _boot_events: list[wrap.WrapperEvent] = attrs.field(init=False, factory=list)
    _scope: trio.CancelScope | None = attrs.field(init=False, default=None)
    _generation: int = attrs.field(init=False, default=0)
    _queue_send: trio.MemorySendChannel[_Operation] = attrs.field(init=False)
    _queue_recv: trio.MemoryReceiveChannel[_Operation] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._queue_send, self._queue_recv = trio.open_memory_channel[_Operation](
            QUEUE_SIZE
        )
        loaded = self._load()
        self._saved = self._settle_boot(loaded)
        self._create_instance()
        if self._saved != loaded:
            self._save()

    # -- boot ----------------------------------------------------------------

    @property
    def saved_where(self) -> str:
        """Where the object's state survives a reboot (for messages)."""
        return f"{self.firmware.database_file}: fota_status {STATUS_KEY!r}"

    @property
    def state(self) -> State:
        """Resource 3 (for tests and the debug view)."""
        return self._saved.state

    @property
    def result(self) -> Result:
        """Resource 5 (for tests and the debug view)."""
        return self._saved.result

    def _load(self) -> _Saved:
        try:
            raw = self.firmware.load_status(STATUS_KEY)
        except FirmwareStoreError as exc:
            log.error("fota_state_unreadable", error=str(exc))
            return _Saved()
        if raw is None:
            return _Saved()
        try:
            return _parse_saved(self.saved_where, raw)
        except FotaStateError as exc:
            # A fresh object: the server sees Idle and may start again.
            log.error("fota_state_unusable", error=str(exc))
            return _Saved()

    def _settle_boot(self, saved: _Saved) -> _Saved:
        """What the object says after a reboot (module docstring).

        Hashes the running or staged image when the saved state needs it
        (blocking, but once, at boot, before any actor runs).
        """
        try:
            running = _sha256(self.firmware.running_image)
            confirmed = self.firmware.confirmed
        except FirmwareStoreError as exc:
            log.error("fota_slots_unusable", error=str(exc))
            running, confirmed = "", True
        match saved.state:
            case State.UPDATING if saved.sha256 and saved.sha256 == running:
                log.info("fota_update_succeeded", version=saved.version)
                return attrs.evolve(
                    saved,
                    state=State.IDLE,
                    result=Result.SUCCESS,
                    verify="" if confirmed else saved.sha256,
                )
            case State.UPDATING:
                log.warning("fota_update_failed", version=saved.version)
                self._boot_events.append(wrap.WrapperFotaError())
                return attrs.evolve(
                    saved, state=State.IDLE, result=Result.UPDATE_FAILED
                )
            case State.DOWNLOADING:
                # The firmware drops a download a reboot interrupted and
                # shows the initial result; the server starts it again.
                self.firmware.discard_staging()
                return _Saved(uri=saved.uri)
            case State.DOWNLOADED if not self._staging_intact(saved):
                log.warning("fota_staged_image_lost", version=saved.version)
                self._boot_events.append(wrap.WrapperFotaError())
                return _Saved(result=Result.INTEGRITY_FAILURE, uri=saved.uri)
            case _ if saved.verify and saved.verify != running:
                # The updated image booted once and was never confirmed:
                # the bootloader went back to the old one.
                log.warning("fota_update_reverted", version=saved.version)
                self._boot_events.append(wrap.WrapperFotaError())
                return attrs.evolve(
                    saved, result=Result.UPDATE_FAILED, verify=""
                )
            case _ if saved.verify and confirmed:
                return attrs.evolve(saved, verify="")
            case _:
                return saved

    def _staging_intact(self, saved: _Saved) -> bool:
        staging = self.firmware.staging_file
        return (
            self.firmware.staged_size() == saved.size > 0
            and _sha256(staging) == saved.sha256
        )

    def _create_instance(self) -> None:
        saved = self._saved
        self.objects.create(
            OBJECT_ID,
            INSTANCE,
            {
                PACKAGE: b"",
                PACKAGE_URI: saved.uri,
                STATE: int(saved.state),
                UPDATE_RESULT: int(saved.result),
                PKG_NAME: saved.name,
                PKG_VERSION: saved.version,
                PROTOCOL_SUPPORT: {
                    i: int(protocol)
                    for i, protocol in enumerate(PULL_SCHEMES.values())
                },
                DELIVERY_METHOD: DELIVERY_PULL_AND_PUSH,
            },
        )
        self.objects.on_write(OBJECT_ID, self._on_write)
        self.objects.on_execute(self._path(UPDATE), self._on_update)

    # -- state ---------------------------------------------------------------

    @staticmethod
    def _path(resource: int) -> str:
        return f"/{OBJECT_ID}/{INSTANCE}/{resource}"

    def _save(self) -> None:
        # XXX: a small blocking transaction (with fsync) in the Trio thread,
        # from the store's synchronous callbacks; a few hundred bytes, once
        # per state change, so a disk stall costs at most that one change.
        # It may also wait for the firmware store's lock while a worker
        # thread commits a staged image (one rename, two fsyncs).
        try:
            self.firmware.save_status(STATUS_KEY, self._saved.to_json())
        except (FirmwareStoreError, OSError) as exc:
            # The object goes on in memory; a reboot would forget it.
            log.error("fota_state_not_saved", where=self.saved_where,
                      error=str(exc))

    def _update(self, **changes: Any) -> None:
        """Change the saved state and mirror it into the resources."""
        old = self._saved
        new = attrs.evolve(old, **changes)
        self._saved = new
        mirrored = (
            (STATE, "state", int),
            (UPDATE_RESULT, "result", int),
            (PACKAGE_URI, "uri", str),
            (PKG_NAME, "name", str),
            (PKG_VERSION, "version", str),
        )
        for resource, field, kind in mirrored:
            value = getattr(new, field)
            if value != getattr(old, field):
                self.objects.set(self._path(resource), kind(value))
        self._save()
        if new.state != old.state:
            log.info("fota_state", state=new.state.name, result=new.result.name)
            if new.state is State.DOWNLOADING:
                self.emit(wrap.WrapperFotaStart())

    def _fail(self, message: str, result: Result) -> None:
        log.warning("fota_failed", result=result.name, reason=message)
        self.firmware.discard_staging()
        self._update(state=State.IDLE, result=result, size=0, sha256="")
        self.emit(wrap.WrapperFotaError())

    def _reset(self) -> None:
        """Back to Idle with the initial result (an empty URI or Package)."""
        self._generation += 1
        if self._scope is not None:
            self._scope.cancel()
        self.firmware.discard_staging()
        self._update(
            state=State.IDLE, result=Result.INITIAL, uri="", size=0, sha256=""
        )
        log.info("fota_reset")

    def _queue(self, operation: _Operation) -> None:
        try:
            self._queue_send.send_nowait(operation)
        except trio.WouldBlock:
            raise MethodNotAllowed(
                f"/{OBJECT_ID}/{INSTANCE}: an operation is still queued"
            ) from None

    # -- the store's callbacks -------------------------------------------------

    def _on_write(self, records: list[Record]) -> None:
        """A server write to object 5 (the store holds it already).

        Raising refuses it and the store undoes it; so every check comes
        before the first change.
        """
        writes: dict[int, Any] = {}
        for record in records:
            if record.path.instance != INSTANCE or record.path.level != 3:
                raise BadRequest(f"{record.path}: not a resource of /5/0")
            assert record.path.resource is not None
            writes[record.path.resource] = record.value
        package = writes.get(PACKAGE)
        uri = writes.get(PACKAGE_URI)
        if package and uri:
            raise BadRequest("/5/0: a Package and a Package URI in one write")
        if isinstance(uri, str):
            self._write_uri(uri)
        elif isinstance(package, bytes):
            self._write_package(package)

    def _refuse_busy(self, empty: bool) -> None:
        """Refuse a new package in any state but Idle (see above)."""
        state = self._saved.state
        where = f"/{OBJECT_ID}/{INSTANCE}"
        if state is State.UPDATING:
            # The update is under way; only the reboot ends it.
            raise MethodNotAllowed(f"{where}: the firmware is being updated")
        if state is State.DOWNLOADING and not empty:
            raise MethodNotAllowed(f"{where}: a package is downloading")
        if state is State.DOWNLOADED and not empty:
            raise BadRequest(f"{where}: a package is downloaded; reset first")

    def _write_uri(self, uri: str) -> None:
        self._refuse_busy(empty=not uri)
        if not uri:
            self._reset()
            return
        self._generation += 1
        self._queue(_Pull(self._generation, uri))
        self._start(uri=uri, name=package_name(uri))

    def _write_package(self, data: bytes) -> None:
        # A single zero byte is the reset of servers that cannot write an
        # empty opaque value.
        empty = data in (b"", b"\0")
        self._refuse_busy(empty=empty)
        # Package is write-only: the bytes go to the staging file, not to
        # the object (``data`` holds them until then).
        self.objects.set(self._path(PACKAGE), b"")
        if empty:
            self._reset()
            return
        self._generation += 1
        self._queue(_Push(self._generation, data))
        self._start(uri="", name="")

    def _start(self, *, uri: str, name: str) -> None:
        self._update(
            state=State.DOWNLOADING,
            result=Result.INITIAL,
            uri=uri,
            name=name,
            version="",
            size=0,
            sha256="",
            verify="",
        )

    def _on_update(self, argument: bytes) -> None:
        """Execute /5/0/2: only in Downloaded (else 4.05, see above)."""
        del argument  # the Update takes no arguments
        if self._saved.state is not State.DOWNLOADED:
            raise MethodNotAllowed(
                f"/{OBJECT_ID}/{INSTANCE}/{UPDATE}: no package downloaded "
                f"(state {self._saved.state.name})"
            )
        self._queue(_Update(self._generation))
        self._update(state=State.UPDATING, result=Result.INITIAL)

    # -- run -----------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Carry out downloads and updates until cancelled (one boot).

        ``task_status.started()`` once the events left by the last boot
        (a failed update) are emitted.

        Cancellation: stops a download (the object stays Downloading; the
        next boot makes it Idle) or the wait before the reboot request.

        Logging: ``fota_state`` at INFO per state change;
        ``fota_failed`` at WARNING with the result and the reason.
        """
        for event in self._boot_events:
            self.emit(event)
        self._boot_events.clear()
        task_status.started()
        async for operation in self._queue_recv:
            if operation.generation != self._generation:
                continue  # cancelled while it waited
            with trio.CancelScope() as scope:
                self._scope = scope
                try:
                    await self._carry_out(operation)
                except _Failed as exc:
                    self._fail(str(exc), exc.result)
                except Exception as exc:
                    # A fault of ours must not take the device down: the
                    # server sees the update fail, the log has the trace.
                    log.exception("fota_operation_crashed")
                    self._fail(repr(exc), Result.UPDATE_FAILED)
                finally:
                    self._scope = None
            if scope.cancelled_caught:
                # A reset cancelled it: a staging thread may have written
                # after the reset discarded the file.
                self.firmware.discard_staging()

    async def _carry_out(self, operation: _Operation) -> None:
        match operation:
            case _Pull(uri=uri):
                size = await self._download(uri)
                await self._staged(size)
            case _Push(data=data):
                if len(data) > self.max_size:
                    raise _Failed(
                        f"package of {len(data)} bytes, at most "
                        f"{self.max_size} fit",
                        Result.NOT_ENOUGH_FLASH,
                    )
                await trio.to_thread.run_sync(self._stage_bytes, data)
                await self._staged(len(data))
            case _Update():
                await self._apply()

    async def _download(self, uri: str) -> int:
        try:
            check_uri(uri)
        except PackageUriError as exc:
            raise _Failed(str(exc), exc.result) from None
        try:
            return await download_image(
                self.firmware,
                uri,
                max_size=self.max_size,
                ca_file=self.ca_file,
                retries=self.download_retries,
                retry_delay=self.retry_delay,
                http_timeout=self.http_timeout,
            )
        except DownloadRefused as exc:
            # Like AVSystem's client: "not found" means the URI names no
            # package; any other refusal counts as a lost connection, as
            # the firmware's download client reports it.
            result = (
                Result.INVALID_URI
                if exc.status in (404, 410)
                else Result.CONNECTION_LOST
            )
            raise _Failed(str(exc), result) from None
        except DownloadBroken as exc:
            raise _Failed(str(exc), Result.CONNECTION_LOST) from None
        except ImageTooLarge as exc:
            raise _Failed(str(exc), Result.NOT_ENOUGH_FLASH) from None
        except ImageSizeError as exc:
            raise _Failed(str(exc), Result.INTEGRITY_FAILURE) from None
        except httpx.InvalidURL as exc:
            raise _Failed(f"invalid URI: {exc}", Result.INVALID_URI) from None
        except OSError as exc:
            # The staging file could not be written: no room for it.
            raise _Failed(f"staging failed: {exc}", Result.NOT_ENOUGH_FLASH) from None

    def _stage_bytes(self, data: bytes) -> None:
        with self.firmware.open_staging() as staging:
            staging.write(data)

    async def _staged(self, size: int) -> None:
        """The staging file holds the whole package: check it, Downloaded."""
        if size == 0:
            raise _Failed("empty package", Result.INTEGRITY_FAILURE)
        digest = await trio.to_thread.run_sync(_sha256, self.firmware.staging_file)
        if self.firmware.staged_size() != size or not digest:
            raise _Failed("staged package changed", Result.INTEGRITY_FAILURE)
        version = package_version(self._saved.name, digest)
        self._update(
            state=State.DOWNLOADED, version=version, size=size, sha256=digest
        )

    async def _apply(self) -> None:
        """The Update execute: wait, mark the image pending, ask to reboot."""
        await trio.sleep(self.update_delay)
        saved = self._saved
        digest = await trio.to_thread.run_sync(_sha256, self.firmware.staging_file)
        if digest != saved.sha256:
            raise _Failed("staged package changed", Result.UPDATE_FAILED)
        try:
            await trio.to_thread.run_sync(
                self.firmware.commit_staged, saved.version, saved.size
            )
        except (FirmwareStoreError, OSError) as exc:
            raise _Failed(str(exc), Result.UPDATE_FAILED) from None
        log.info("fota_update_requested", version=saved.version)
        self.emit(wrap.WrapperFotaDone())
