"""The P-GPS prediction download (wire.md §7.2, asset_tracker_v2.md §16.2).

Design
------
The cloud answers a P-GPS request with where the predictions are, not with
the predictions: ``{"path": "public/….bin", "host": "…"}`` from the AWS and
Azure backends, ``["host", "path"]`` from nRF Cloud.  The firmware's P-GPS
library then fetches ``host/path`` over HTTP(S) with the download client.
``PgpsDownloader`` plays that part for the host::

    cloud actor --pgps_sink--> handle(reply)      (sync, never blocks)
        validate; sink("pgps", reply); start a download in run's nursery
    download task --> sink("pgps_predictions", data)   on success

* ``handle`` is the cloud actor's ``pgps_sink``: it runs inside the cloud
  actor's mailbox loop, so it only validates, records and starts a task.
  It never raises: an invalid reply is logged and counted.
* Every reply reaches ``sink("pgps", reply)`` as it is, valid or not: the
  firmware hands each reply to the P-GPS library, which does its own
  parsing (the modem counts them as before this module existed).
* One download at a time.  A newer valid reply cancels the download in
  progress (``superseded``) and its task waits until the older task has
  finished before it connects, so two downloads never overlap.
* A download is bounded by ``max_size`` (the announced ``Content-Length``
  and the bytes actually received) and by ``timeout`` per network
  operation.  No retry: the firmware's library asks the cloud again when
  it still lacks predictions.
* The downloader outlives connections (it lives for one boot, under the
  supervisor), so a download survives a cloud reconnection.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import attrs
import httpx
import structlog
import trio

log = structlog.get_logger(actor="pgps")

DEFAULT_MAX_SIZE: Final = 1024 * 1024
"""Bytes; a real prediction file (42 predictions) is about 60 KiB."""

_PAYLOAD_LOG_LIMIT: Final = 200
_FORBIDDEN_IN_HOST: Final = frozenset("/?#@ \t\r\n")


class InvalidPgpsReply(ValueError):
    """A P-GPS reply that names no downloadable file; the message says why."""


class PgpsDownloadError(Exception):
    """A download failed; the message says why."""


@attrs.frozen
class PgpsLocation:
    """Where the predictions are: ``host`` (may carry ``:port``) and ``path``."""

    host: str
    path: str


def parse_pgps_reply(reply: bytes) -> PgpsLocation:
    """Validate a P-GPS reply: the AWS/Azure object or the nRF Cloud array.

    Raises:
      InvalidPgpsReply: not JSON, neither form, or an empty or malformed
        host or path.
    """
    try:
        document = json.loads(reply)
    except (ValueError, RecursionError) as exc:
        raise InvalidPgpsReply(f"not JSON: {exc}") from exc
    if isinstance(document, dict):
        host, path = document.get("host"), document.get("path")
    elif isinstance(document, list) and len(document) == 2:
        host, path = document
    else:
        raise InvalidPgpsReply("neither an object nor a [host, path] array")
    if not isinstance(host, str) or not host:
        raise InvalidPgpsReply("host missing or not a non-empty string")
    if not isinstance(path, str) or not path.lstrip("/"):
        raise InvalidPgpsReply("path missing or not a non-empty string")
    if any(char in _FORBIDDEN_IN_HOST for char in host):
        raise InvalidPgpsReply(f"host {host[:80]!r} is not a host name")
    return PgpsLocation(host, path.lstrip("/"))


@attrs.define(eq=False)
class _Download:
    url: str
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    cancel_reason: str | None = None
    done: trio.Event = attrs.Factory(trio.Event)


def _describe(exc: BaseException) -> str:
    # httpx's transport errors often carry no message of their own (a TLS
    # failure is a bare ConnectError); the first cause with one says why.
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not str(exc):
        exc, cause = cause, cause.__cause__ or cause.__context__
        if str(exc):
            text += f" ({type(exc).__name__}: {exc})"
    return text


def _check_scheme(_: object, __: attrs.Attribute[str], value: str) -> None:
    if value not in ("http", "https"):
        raise ValueError(f"scheme must be 'http' or 'https', not {value!r}")


@attrs.define(eq=False)
class PgpsDownloader:
    """Fetches the prediction files the cloud points at (module docstring).

    Args:
      sink: takes ``("pgps", reply)`` for every reply and
        ``("pgps_predictions", data)`` for every downloaded file; the
        modem's ``receive_assistance``.  Called from Trio, must not block.
      ca_file: CA bundle (PEM) that verifies the file server; ``None``
        uses the system's.  Only used with ``scheme="https"``.
      scheme: ``"https"`` (the firmware's default) or ``"http"``.
      max_size: the largest prediction file accepted, in bytes.
      timeout: httpx timeout per network operation, in seconds.
    """

    sink: Callable[[str, bytes], None]
    ca_file: Path | None = attrs.field(default=None, kw_only=True)
    scheme: str = attrs.field(default="https", kw_only=True, validator=_check_scheme)
    max_size: int = attrs.field(default=DEFAULT_MAX_SIZE, kw_only=True)
    timeout: float = attrs.field(default=30.0, kw_only=True)
    counters: dict[str, int] = attrs.field(
        init=False,
        factory=lambda: dict.fromkeys(
            (
                "replies",
                "invalid_replies",
                "downloads_started",
                "downloads_succeeded",
                "downloads_failed",
                "downloads_cancelled",
                "dropped",
                "bytes_downloaded",
            ),
            0,
        ),
    )
    last_error: str | None = attrs.field(init=False, default=None)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _current: _Download | None = attrs.field(init=False, default=None)
    _ssl_context: ssl.SSLContext | None = attrs.field(init=False, default=None)

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run downloads until cancelled.

        ``task_status.started()`` once ``handle`` can start downloads.

        Cancellation: the download in progress is cancelled and lost (the
        firmware asks again); a later ``handle`` still records the reply but
        counts the download as ``dropped``.

        Logging: ``pgps_download_started`` and ``pgps_download_succeeded`` at
        INFO; ``pgps_download_cancelled`` at INFO; ``pgps_download_failed``
        and ``pgps_reply_invalid`` at WARNING; ``pgps_download_dropped`` at
        WARNING when a reply arrives while not running.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._current = None

    def handle(self, reply: bytes) -> None:
        """Take a P-GPS reply from the cloud (sync; never blocks or raises).

        Records the reply through ``sink("pgps", reply)`` whatever it
        contains, then, for a valid reply, starts its download, cancelling
        the one in progress.
        """
        self.counters["replies"] += 1
        try:
            location = parse_pgps_reply(reply)
        except InvalidPgpsReply as exc:
            self.counters["invalid_replies"] += 1
            log.warning(
                "pgps_reply_invalid",
                reason=str(exc),
                payload=reply[:_PAYLOAD_LOG_LIMIT],
            )
            location = None
        self.sink("pgps", reply)
        if location is None:
            return

        url = f"{self.scheme}://{location.host}/{location.path}"
        nursery = self._nursery
        if nursery is None:
            self.counters["dropped"] += 1
            log.warning("pgps_download_dropped", url=url, reason="not running")
            return
        previous = self._current
        if previous is not None:
            previous.cancel_reason = "superseded"
            previous.scope.cancel(reason="superseded by a newer P-GPS reply")
        download = _Download(url)
        self._current = download
        nursery.start_soon(
            self._download_task, download, previous, name="pgps.download"
        )

    def snapshot(self) -> dict[str, Any]:
        """The state for the debug view: counters, current URL, last error."""
        current = self._current
        return {
            "running": self._nursery is not None,
            "downloading": None if current is None else current.url,
            "last_error": self.last_error,
            **self.counters,
        }

    # -- the download --------------------------------------------------------

    async def _download_task(
        self, download: _Download, previous: _Download | None
    ) -> None:
        try:
            with download.scope:
                # One download at a time: the older one was cancelled in
                # handle and ends at its next checkpoint.
                if previous is not None:
                    await previous.done.wait()
                self.counters["downloads_started"] += 1
                log.info("pgps_download_started", url=download.url)
                try:
                    data = await self._fetch(download.url)
                except PgpsDownloadError as exc:
                    self._failed(download.url, str(exc))
                    return
            if download.scope.cancelled_caught:
                self.counters["downloads_cancelled"] += 1
                log.info(
                    "pgps_download_cancelled",
                    url=download.url,
                    reason=download.cancel_reason or "cancelled",
                )
                return
            self.counters["downloads_succeeded"] += 1
            self.counters["bytes_downloaded"] += len(data)
            log.info("pgps_download_succeeded", url=download.url, size=len(data))
            self.sink("pgps_predictions", data)
        finally:
            download.done.set()
            if self._current is download:
                self._current = None

    def _failed(self, url: str, reason: str) -> None:
        self.counters["downloads_failed"] += 1
        self.last_error = reason
        log.warning("pgps_download_failed", url=url, reason=reason)

    def _verify(self) -> ssl.SSLContext:
        # Built on first use and kept: loading the CA bundle is blocking file
        # I/O, and a boot that never downloads should not pay for it.
        if self._ssl_context is None:
            if self.ca_file is None:
                self._ssl_context = ssl.create_default_context()
            else:
                self._ssl_context = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl_context

    async def _fetch(self, url: str) -> bytes:
        """The whole file at ``url``.

        Raises:
          PgpsDownloadError: an HTTP status other than 200, a file larger
            than ``max_size`` or empty, a broken connection, a TLS failure,
            a timeout or an unreadable CA bundle.
        """
        try:
            verify = self._verify() if self.scheme == "https" else True
            async with httpx.AsyncClient(verify=verify, timeout=self.timeout) as client:
                async with client.stream("GET", url) as response:
                    return await self._read(response)
        except httpx.HTTPError as exc:
            raise PgpsDownloadError(f"download failed: {_describe(exc)}") from exc
        except (httpx.InvalidURL, OSError) as exc:
            raise PgpsDownloadError(f"cannot download: {_describe(exc)}") from exc

    async def _read(self, response: httpx.Response) -> bytes:
        if response.status_code != 200:
            raise PgpsDownloadError(f"HTTP {response.status_code}")
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self.max_size:
            raise PgpsDownloadError(
                f"file larger than {self.max_size} bytes ({length} announced)"
            )
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > self.max_size:
                raise PgpsDownloadError(f"file larger than {self.max_size} bytes")
        if not data:
            raise PgpsDownloadError("empty file")
        return bytes(data)
