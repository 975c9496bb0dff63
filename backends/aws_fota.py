"""AWS IoT Jobs FOTA for one device (``wire.md`` §6.1, ``aws_fota.c``).

Design
------
One ``AwsFota`` lives as long as the backend; its job state survives
connections.  Per connection the backend starts ``serve`` in the
connection's nursery and forwards every ``$aws/things/<id>/jobs/…`` message
into its inbox (``deliver``, never blocking).  ``serve`` owns the state
machine; the download runs as a child task and reports back through the
same inbox, so the state has a single owner::

    IDLE --job--> STARTING (IN_PROGRESS sent) --accepted--> DOWNLOADING
    DOWNLOADING --ok: commit, SUCCEEDED / error: FAILED--> FINAL
    FINAL --SUCCEEDED accepted: FOTA_DONE--> DONE (until the reboot)
    FINAL --FAILED accepted: ask $next--> IDLE

* ``expectedVersion`` is the job's ``versionNumber``, sent as a quoted
  string, incremented after every ``update/accepted`` and decremented on
  ``update/rejected`` (which also ends the job locally with an error).
* A job id equal to the one being handled is ignored, as is any job while
  one is in hand.
* On disconnect the connection nursery cancels the download; the next
  connection resumes it (``Range`` from what is already staged) or re-sends
  the pending SUCCEEDED / FAILED.
* ``WrapperFotaStart`` when a download starts, ``WrapperFotaError`` when a
  job fails (at once, as the library's callback does), ``WrapperFotaDone``
  once SUCCEEDED was accepted.
"""

from __future__ import annotations

import enum
import json
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import attrs
import httpx
import structlog
import trio

from backends.errors import BackendError
from protocols import wrapper as wrap
from state.firmware import FirmwareStoreError

if TYPE_CHECKING:
    from state.firmware import FirmwareStore

log = structlog.get_logger(actor="aws_fota")

# The inbox is fed by the session's reader without blocking; a job flow has
# at most a handful of messages in flight, so 16 is plenty.  When full, the
# message is dropped and counted (the Jobs service repeats on reconnect).
INBOX_SIZE: Final = 16

Publish = Callable[[str, bytes], Awaitable[None]]
Subscribe = Callable[[Sequence[tuple[str, int]]], Awaitable[None]]
Emit = Callable[[wrap.WrapperEvent], None]


class JobError(Exception):
    """A job cannot be carried out; the message goes to statusDetails."""


class _State(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"  # IN_PROGRESS sent, waiting for update/accepted
    DOWNLOADING = "downloading"
    FINAL = "final"  # SUCCEEDED or FAILED sent, waiting for update/accepted
    DONE = "done"  # SUCCEEDED accepted: waiting for the reboot


@attrs.frozen
class JobDocument:
    """The validated ``app_fw_update`` document."""

    fwversion: str
    size: int
    url: str


@attrs.define(eq=False)
class _Job:
    job_id: str
    expected_version: int
    document: JobDocument | None
    invalid: str | None = None
    final_status: str | None = None
    final_reason: str | None = None


@attrs.frozen
class _Message:
    topic: str
    payload: bytes


@attrs.frozen
class _DownloadFinished:
    job_id: str
    error: str | None


def parse_document(raw: object) -> JobDocument:
    """Validate a job document.

    Raises:
      JobError: with the reason, for statusDetails.
    """
    if not isinstance(raw, dict):
        raise JobError("job document is not an object")
    if raw.get("operation") != "app_fw_update":
        raise JobError(f"unsupported operation {raw.get('operation')!r}")
    version = raw.get("fwversion")
    if not isinstance(version, str) or not version:
        raise JobError("fwversion missing or not a string")
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise JobError("size missing or not a positive integer")
    location = raw.get("location")
    if not isinstance(location, dict):
        raise JobError("location missing or not an object")
    url = location.get("url")
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise JobError("location.url is not an http(s) URL")
        return JobDocument(version, size, url)
    protocol = location.get("protocol")
    host = location.get("host")
    path = location.get("path")
    if protocol not in ("http", "https"):
        raise JobError(f"unsupported protocol {protocol!r}")
    if not isinstance(host, str) or not host or "/" in host:
        raise JobError("location.host missing or invalid")
    if not isinstance(path, str) or not path:
        raise JobError("location.path missing")
    return JobDocument(version, size, f"{protocol}://{host}/{path.lstrip('/')}")


@attrs.define(eq=False)
class AwsFota:
    """The Jobs client of one thing (module docstring).

    Args:
      client_id: the thing name.
      store: the firmware slots; gives the running version and takes the
        download.
      http_ca_file: CA bundle (PEM) that verifies the download server;
        ``None`` uses the system's.
      download_retries: resumptions after a broken download before FAILED.
      retry_delay: seconds between two download attempts.
      http_timeout: httpx timeout per network operation, in seconds.
    """

    client_id: str
    store: FirmwareStore
    http_ca_file: Path | None = None
    download_retries: int = 3
    retry_delay: float = 0.5
    http_timeout: float = 30.0
    dropped_messages: int = attrs.field(init=False, default=0)
    _state: _State = attrs.field(init=False, default=_State.IDLE)
    _job: _Job | None = attrs.field(init=False, default=None)
    _inbox_send: trio.MemorySendChannel[_Message | _DownloadFinished] | None = (
        attrs.field(init=False, default=None)
    )

    # -- topics ------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return f"$aws/things/{self.client_id}/jobs/"

    def handles(self, topic: str) -> bool:
        """Whether ``topic`` belongs to the Jobs client."""
        return topic.startswith(self.prefix)

    def _job_topic(self, job_id: str, suffix: str) -> str:
        return f"{self.prefix}{job_id}/{suffix}"

    @property
    def state(self) -> str:
        """For the debug view and tests."""
        return self._state.value

    # -- the session side ----------------------------------------------------

    def deliver(self, topic: str, payload: bytes) -> None:
        """Hand a Jobs message to ``serve`` (from the reader; never blocks)."""
        inbox_send = self._inbox_send
        if inbox_send is None:
            self.dropped_messages += 1
            return
        try:
            inbox_send.send_nowait(_Message(topic, payload))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.dropped_messages += 1
            log.warning("fota_message_dropped", topic=topic)

    async def serve(
        self,
        publish: Publish,
        subscribe: Subscribe,
        emit: Emit,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the Jobs client for one connection.

        Subscribes, resumes what the last connection left, then serves the
        inbox until cancelled.  ``task_status.started()`` once ``deliver``
        accepts messages (before the subscriptions).

        Cancellation: the download is cancelled with it; the job state is
        kept for the next connection (staged bytes stay for a resume).

        Logging: ``fota_job_received``, ``fota_download_started``,
        ``fota_succeeded`` at INFO; ``fota_failed`` at WARNING.
        """
        inbox_send, inbox_recv = trio.open_memory_channel[
            _Message | _DownloadFinished
        ](INBOX_SIZE)
        self._inbox_send = inbox_send
        link = _Link(publish, subscribe, emit, inbox_send)
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._resume(link, nursery)
                with inbox_recv:
                    async for item in inbox_recv:
                        await self._handle(link, nursery, item)
        except* BackendError as group:
            # The session's reader sees the loss too and ends the connection;
            # the state was advanced before publishing, so the next
            # connection repeats what did not get out.
            log.info("fota_link_lost", error=repr(group.exceptions[0]))
        finally:
            self._inbox_send = None
            inbox_send.close()

    async def _resume(self, link: _Link, nursery: trio.Nursery) -> None:
        await link.subscribe(
            [(f"{self.prefix}notify-next", 1), (f"{self.prefix}$next/get/#", 1)]
        )
        job = self._job
        if job is not None and self._state is not _State.DONE:
            await self._subscribe_job(link, job)
        match self._state:
            case _State.IDLE:
                await self._ask_next(link)
            case _State.STARTING:
                await self._update(link, job, "IN_PROGRESS")
            case _State.DOWNLOADING:
                assert job is not None
                self._start_download(link, nursery, job, resume=True)
            case _State.FINAL:
                assert job is not None and job.final_status is not None
                log.info("fota_status_resent", status=job.final_status)
                await self._update(link, job, job.final_status, job.final_reason)
            case _State.DONE:
                pass

    # -- the state machine ----------------------------------------------------

    async def _handle(
        self, link: _Link, nursery: trio.Nursery, item: _Message | _DownloadFinished
    ) -> None:
        match item:
            case _DownloadFinished(job_id=job_id, error=error):
                job = self._job
                if job is None or job.job_id != job_id:
                    return
                if error is None:
                    self._state = _State.FINAL
                    job.final_status = "SUCCEEDED"
                    await self._update(link, job, "SUCCEEDED")
                else:
                    await self._fail(link, job, error)
            case _Message(topic=topic, payload=payload):
                await self._on_message(link, nursery, topic, payload)

    async def _on_message(
        self, link: _Link, nursery: trio.Nursery, topic: str, payload: bytes
    ) -> None:
        rest = topic[len(self.prefix) :]
        if rest in ("notify-next", "$next/get/accepted"):
            await self._on_job(link, payload)
            return
        if rest == "$next/get/rejected":
            log.warning("fota_next_rejected", payload=payload[:200])
            return
        job = self._job
        if job is None:
            return
        if rest == f"{job.job_id}/update/accepted":
            job.expected_version += 1
            await self._on_accepted(link, nursery, job)
        elif rest == f"{job.job_id}/update/rejected":
            job.expected_version -= 1
            log.warning(
                "fota_update_rejected", job_id=job.job_id, payload=payload[:200]
            )
            self._job = None
            self._state = _State.IDLE
            link.emit(wrap.WrapperFotaError())
            await self._ask_next(link)

    async def _on_job(self, link: _Link, payload: bytes) -> None:
        try:
            raw = json.loads(payload)
        except ValueError:
            log.warning("fota_job_unparsable", payload=payload[:200])
            return
        execution = raw.get("execution") if isinstance(raw, dict) else None
        if not isinstance(execution, dict):
            log.debug("fota_no_job")
            return
        job_id = execution.get("jobId")
        version = execution.get("versionNumber")
        if not isinstance(job_id, str) or not job_id or "/" in job_id or "#" in job_id:
            log.warning("fota_job_without_id", payload=payload[:200])
            return
        if self._job is not None and self._job.job_id == job_id:
            log.debug("fota_job_ignored", job_id=job_id, reason="already handled")
            return
        if self._state is not _State.IDLE:
            log.info("fota_job_ignored", job_id=job_id, reason="busy")
            return
        if not isinstance(version, int) or isinstance(version, bool):
            version = 1
        job = _Job(job_id, version, None)
        self._job = job
        try:
            job.document = parse_document(execution.get("jobDocument"))
            if job.document.fwversion == self.store.running_version:
                raise JobError(f"version {job.document.fwversion} already running")
        except (JobError, FirmwareStoreError) as exc:
            job.invalid = str(exc)
        log.info("fota_job_received", job_id=job_id, invalid=job.invalid)
        await self._subscribe_job(link, job)
        if job.invalid is not None:
            await self._fail(link, job, job.invalid)
            return
        self._state = _State.STARTING
        await self._update(link, job, "IN_PROGRESS")

    async def _on_accepted(self, link: _Link, nursery: trio.Nursery, job: _Job) -> None:
        match self._state:
            case _State.STARTING:
                self._start_download(link, nursery, job, resume=False)
            case _State.FINAL if job.final_status == "SUCCEEDED":
                self._state = _State.DONE
                log.info("fota_succeeded", job_id=job.job_id)
                link.emit(wrap.WrapperFotaDone())
            case _State.FINAL:
                self._job = None
                self._state = _State.IDLE
                await self._ask_next(link)
            case _:
                pass

    async def _fail(self, link: _Link, job: _Job, reason: str) -> None:
        log.warning("fota_failed", job_id=job.job_id, reason=reason)
        self._state = _State.FINAL
        job.final_status = "FAILED"
        job.final_reason = reason
        link.emit(wrap.WrapperFotaError())
        await self._update(link, job, "FAILED", reason)

    # -- publishing ----------------------------------------------------------

    async def _ask_next(self, link: _Link) -> None:
        await link.publish(f"{self.prefix}$next/get", b'{"clientToken":""}')

    async def _subscribe_job(self, link: _Link, job: _Job) -> None:
        await link.subscribe(
            [
                (self._job_topic(job.job_id, "update/accepted"), 1),
                (self._job_topic(job.job_id, "update/rejected"), 1),
            ]
        )

    async def _update(
        self, link: _Link, job: _Job | None, status: str, reason: str | None = None
    ) -> None:
        assert job is not None
        body = {
            "status": status,
            "statusDetails": None if reason is None else {"reason": reason[:200]},
            "expectedVersion": str(job.expected_version),
            "clientToken": "",
        }
        await link.publish(
            self._job_topic(job.job_id, "update"), json.dumps(body).encode()
        )
        log.info("fota_status_sent", job_id=job.job_id, status=status)

    # -- the download ----------------------------------------------------------

    def _start_download(
        self, link: _Link, nursery: trio.Nursery, job: _Job, *, resume: bool
    ) -> None:
        self._state = _State.DOWNLOADING
        if not resume:
            link.emit(wrap.WrapperFotaStart())
        nursery.start_soon(self._download_task, link, job, resume, name="fota.download")

    async def _download_task(self, link: _Link, job: _Job, resume: bool) -> None:
        assert job.document is not None
        error: str | None = None
        try:
            await self._download(job.document, resume=resume)
            await trio.to_thread.run_sync(
                self.store.commit_staged, job.document.fwversion, job.document.size
            )
        except (JobError, FirmwareStoreError, OSError) as exc:
            error = str(exc)
        await link.inbox_send.send(_DownloadFinished(job.job_id, error))

    async def _download(self, document: JobDocument, *, resume: bool) -> None:
        """Stream the job's image into the store's staging file.

        Raises:
          JobError: the download failed (``download_image``).
        """
        await download_image(
            self.store,
            document.url,
            size=document.size,
            resume=resume,
            ca_file=self.http_ca_file,
            retries=self.download_retries,
            retry_delay=self.retry_delay,
            http_timeout=self.http_timeout,
        )


# -- the download, shared with the other FOTA clients --------------------------


class DownloadError(JobError):
    """An image download failed; the message says why."""


class DownloadRefused(DownloadError):
    """The server answered with an HTTP status other than 200 or 206."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class DownloadBroken(DownloadError):
    """The connection failed more often than the retries allow."""


class ImageSizeError(DownloadError):
    """The image is larger than expected, or ends short."""


class ImageTooLarge(ImageSizeError):
    """The image is larger than the caller's ``max_size``."""


@attrs.define
class _Expected:
    """What the image must look like; ``size`` is learned when not given."""

    size: int | None
    max_size: int | None

    def announced(self, total: int) -> None:
        """Check the total size a response announces (offset + length)."""
        if self.size is None:
            if self.max_size is not None and total > self.max_size:
                raise ImageTooLarge(
                    f"image larger than {self.max_size} bytes ({total} announced)"
                )
            self.size = total
        elif total > self.size:
            raise ImageSizeError(
                f"image larger than {self.size} bytes ({total} announced)"
            )

    def received(self, written: int) -> None:
        """Check the bytes received so far."""
        if self.size is not None and written > self.size:
            raise ImageSizeError(f"image larger than {self.size} bytes")
        if self.max_size is not None and written > self.max_size:
            raise ImageTooLarge(f"image larger than {self.max_size} bytes")


def ssl_context(ca_file: Path | None) -> ssl.SSLContext:
    """The client context for a download: ``ca_file`` or the system's CAs."""
    if ca_file is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(ca_file))


async def download_image(
    store: FirmwareStore,
    url: str,
    *,
    size: int | None = None,
    max_size: int | None = None,
    resume: bool = False,
    ca_file: Path | None = None,
    retries: int = 3,
    retry_delay: float = 0.5,
    http_timeout: float = 30.0,
) -> int:
    """Stream ``url`` into ``store``'s staging file, resuming with ``Range``.

    Args:
      size: the image's exact size, when the caller knows it; ``None``
        takes the size the server announces first (``Content-Length``),
        bounded by ``max_size``, and holds every later response to it.
      max_size: the most bytes accepted when ``size`` is unknown.
      resume: keep what is staged and ask for the rest.
      ca_file: CA bundle (PEM) that verifies an HTTPS server; ``None``
        uses the system's.
      retries: resumptions after a broken connection before giving up.
      retry_delay: seconds between two attempts.
      http_timeout: httpx timeout per network operation, in seconds.

    Returns:
      The image's size (the staging file holds exactly that much).

    Raises:
      DownloadRefused: the server answered with an error status.
      DownloadBroken: the retries ran out.
      ImageTooLarge: more bytes than ``max_size``.
      ImageSizeError: more bytes than ``size`` or than first announced, or
        fewer.
    """
    log.info("fota_download_started", url=url, resume=resume)
    if not resume:
        store.discard_staging()
    expected = _Expected(size, max_size)
    failures = 0
    context = ssl_context(ca_file)
    async with httpx.AsyncClient(verify=context, timeout=http_timeout) as client:
        while True:
            try:
                return await _fetch(client, store, url, expected)
            except httpx.TransportError as exc:
                failures += 1
                log.warning(
                    "fota_download_broken",
                    failures=failures,
                    staged=store.staged_size(),
                    error=repr(exc),
                )
                if failures > retries:
                    raise DownloadBroken(f"download failed: {exc!r}") from exc
            await trio.sleep(retry_delay)


async def _fetch(
    client: httpx.AsyncClient, store: FirmwareStore, url: str, expected: _Expected
) -> int:
    offset = store.staged_size()
    if expected.size is not None:
        if offset > expected.size:
            raise ImageSizeError(f"image larger than {expected.size} bytes")
        if offset == expected.size:
            return offset
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code == 200:
            offset = 0
        elif response.status_code != 206 or not offset:
            raise DownloadRefused(
                f"HTTP {response.status_code} from {url}", response.status_code
            )
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit():
            expected.announced(offset + int(length))
        with store.open_staging(append=offset > 0) as staging:
            written = offset
            async for chunk in response.aiter_raw():
                written += len(chunk)
                expected.received(written)
                _write(staging, chunk)
    if expected.size is not None and written < expected.size:
        raise ImageSizeError(f"image truncated: {written} of {expected.size} bytes")
    return written


def _write(staging: IO[bytes], chunk: bytes) -> None:
    # XXX: a blocking write in the Trio thread; chunks are small and the
    # staging file is local, so this stays far below a scheduling tick.
    staging.write(chunk)


@attrs.frozen
class _Link:
    publish: Publish
    subscribe: Subscribe
    emit: Emit
    inbox_send: trio.MemorySendChannel[Any]
