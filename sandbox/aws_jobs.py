"""A local AWS IoT Jobs service: the device side (MQTT API) of job executions.

Design
------
Two layers, as in ``sandbox/aws_shadow.py``, so the semantics can be tested
without a broker:

* ``JobStore`` holds the jobs and every thing's job executions.  It is pure
  and synchronous: an operation takes the request payload and the time and
  returns the replies to publish as ``(topic suffix, JSON object)`` pairs,
  the suffix below ``$aws/things/<thing>/jobs/``, e.g.
  ``("j1/update/accepted", {...})`` or ``("notify-next", {...})``.
  ``create_job()`` and ``cancel_job()`` touch many things and return the
  replies per thing.
* ``JobsService`` is an MQTT client of the broker (Mosquitto in tests) with
  its own certificate.  It subscribes to ``$aws/things/+/jobs/+/get`` and
  ``$aws/things/+/jobs/+/update``, feeds each request to the store and
  publishes the replies.  ``create_job()`` and ``cancel_job()`` are the
  backend's side (the AWS control plane's CreateJob and CancelJob).

The ``$next`` GET is the job id ``$next`` of the second filter: subscribing
to ``.../jobs/$next/get`` as well would make Mosquitto deliver each such
request twice (one copy per matching subscription).  The service never
subscribes to the reply topics, so our own replies are not handed back.

Semantics (AWS IoT Core developer guide: "Jobs device MQTT API operations",
"Jobs notifications", "Jobs API operations: ErrorResponse")
-------------------------------------------------------------------------
* ``create_job()`` queues one execution per thing: status ``QUEUED``,
  ``versionNumber`` 1, ``executionNumber`` 1, ``queuedAt`` and
  ``lastUpdatedAt`` = now.
* A thing's pending executions are those ``QUEUED`` or ``IN_PROGRESS``,
  ordered ``IN_PROGRESS`` first, then by the order they were queued (the
  guide's ListNotification and StartNextPendingJobExecution order).  The
  first one is the thing's *next* execution.
* ``$next/get`` answers ``$next/get/accepted`` with
  ``{"execution": {...}, "timestamp"}``, or without ``execution`` when there
  is no pending one.  ``<jobId>/get`` (DescribeJobExecution) answers
  ``<jobId>/get/accepted`` with the execution in any state, or
  ``ResourceNotFound``.  ``includeJobDocument`` (default true) applies to both.
* ``<jobId>/update`` (UpdateJobExecution) takes ``status`` (``IN_PROGRESS``,
  ``SUCCEEDED``, ``FAILED`` or ``REJECTED``), optional ``statusDetails`` (an
  object of strings that replaces the stored one; absent or ``null`` keeps
  it), ``expectedVersion``, ``executionNumber``,
  ``includeJobExecutionState`` and ``includeJobDocument``.  An accepted
  update adds one to ``versionNumber`` and answers ``<jobId>/update/accepted``
  with ``{"timestamp"[, "executionState"][, "jobDocument"]}``.
* Transitions: ``QUEUED`` and ``IN_PROGRESS`` may go to any of the four
  statuses above (``IN_PROGRESS`` to itself too: a progress report).  A
  terminal execution never changes: ``InvalidStateTransition``.
* Whenever a thing's next execution changes (a job queued for a thing with
  none pending, the next one finished or canceled, a later one started) the
  thing also gets ``notify-next`` ``{"timestamp"[, "execution"]}``, after
  the operation's own reply.
* Errors are ``{"code", "message", "timestamp"[, "clientToken"]
  [, "executionState"]}`` on the operation's ``rejected`` topic, codes
  ``InvalidJson`` (not UTF-8 JSON), ``InvalidRequest`` (a field of the
  wrong type or value, or a request that is not an object),
  ``InvalidTopic`` (an update of ``$next``), ``ResourceNotFound`` (no such
  execution), ``VersionMismatch`` and ``InvalidStateTransition`` (these two
  with ``executionState``), and ``InternalError`` (a bug in the store).
* A ``clientToken`` (a string of at most 64 characters, ``""`` included,
  which is what the nRF firmware sends) is echoed in the replies.

Deliberate readings:

* ``expectedVersion`` may be a JSON number or a string of decimal digits:
  the nRF ``aws_jobs`` library sends it quoted (wire.md §6.1), and AWS
  accepts that.
* The check order is: JSON, request fields, the execution exists, version,
  transition.  So a stale version on a finished execution is a
  ``VersionMismatch``.
* ``executionNumber`` in a request must match the execution's, else
  ``ResourceNotFound`` (there is only ever execution number 1 here).
"""

from __future__ import annotations

import copy
import json
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

import attrs
import structlog
import trio

from backends.mqtt_transport import (
    MqttMessage,
    MqttSession,
)
from protocols.json_codec import dumps
from sandbox._service import SandboxService, with_token

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence


log = structlog.get_logger(actor="sandbox.jobs")

JsonObject: TypeAlias = dict[str, Any]
Reply: TypeAlias = tuple[str, JsonObject]
"""A reply to publish: topic suffix below ``.../jobs/`` and its body."""

NEXT: Final = "$next"
"""The job id that stands for the thing's next pending execution."""

QUEUED: Final = "QUEUED"
IN_PROGRESS: Final = "IN_PROGRESS"
SUCCEEDED: Final = "SUCCEEDED"
FAILED: Final = "FAILED"
REJECTED: Final = "REJECTED"
CANCELED: Final = "CANCELED"
PENDING_STATUSES: Final = frozenset({QUEUED, IN_PROGRESS})
TERMINAL_STATUSES: Final = frozenset(
    {SUCCEEDED, FAILED, REJECTED, CANCELED, "TIMED_OUT", "REMOVED"}
)
UPDATE_STATUSES: Final = frozenset({IN_PROGRESS, SUCCEEDED, FAILED, REJECTED})
"""The statuses a device may set with UpdateJobExecution."""

JOB_ID_PATTERN: Final = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_CLIENT_TOKEN_CHARS: Final = 64
OPERATIONS: Final = ("get", "update")

REQUEST_QOS: Final = 1
REPLY_QOS: Final = 1

DEFAULT_CLIENT_ID: Final = "sandbox-jobs"


# ---------------------------------------------------------------------------
# Request parsing


class _Rejected(Exception):
    """A request the service answers on its ``rejected`` topic."""

    def __init__(
        self, code: str, message: str, state: JsonObject | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.state = state


def _load_request(request: bytes) -> JsonObject:
    # An empty payload is an empty request: every field is optional for GET.
    if not request.strip():
        return {}
    try:
        body = json.loads(request.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _Rejected("InvalidJson", "Request is not valid UTF-8 JSON") from None
    if not isinstance(body, dict):
        raise _Rejected("InvalidRequest", "Request must be a JSON object")
    return body


def _client_token(body: JsonObject) -> str | None:
    token = body.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or len(token) > MAX_CLIENT_TOKEN_CHARS:
        raise _Rejected("InvalidRequest", "Invalid clientToken")
    return token


def _flag(body: JsonObject, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise _Rejected("InvalidRequest", f"{name} must be a boolean")
    return value


def _integer(body: JsonObject, name: str) -> int | None:
    # A JSON number or, as the nRF firmware sends it, a string of digits.
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Rejected("InvalidRequest", f"{name} must be a non-negative integer")


def _status_details(body: JsonObject) -> dict[str, str] | None:
    details = body.get("statusDetails")
    if details is None:
        return None
    if not isinstance(details, dict) or not all(
        isinstance(value, str) for value in details.values()
    ):
        raise _Rejected("InvalidRequest", "statusDetails must map strings to strings")
    return dict(details)


def _new_status(body: JsonObject) -> str:
    status = body.get("status")
    if status not in UPDATE_STATUSES:
        raise _Rejected(
            "InvalidRequest",
            f"status must be one of {sorted(UPDATE_STATUSES)}, not {status!r}",
        )
    return str(status)


def _error(exc: _Rejected, now: int, token: str | None) -> JsonObject:
    error: JsonObject = {"code": exc.code, "message": exc.message, "timestamp": now}
    if token is not None:
        error["clientToken"] = token
    if exc.state is not None:
        error["executionState"] = exc.state
    return error


# ---------------------------------------------------------------------------
# The store


@attrs.define(eq=False)
class _Execution:
    """One job's execution on one thing."""

    job_id: str
    thing: str
    document: JsonObject
    queued_at: int
    order: int
    """Position in the store's queue: ties of ``queued_at`` keep order."""

    status: str = QUEUED
    status_details: dict[str, str] = attrs.field(factory=dict)
    started_at: int | None = None
    last_updated_at: int = 0
    version: int = 1
    history: list[str] = attrs.field(factory=lambda: [QUEUED])

    def state(self) -> JsonObject:
        """The JobExecutionState object."""
        state: JsonObject = {"status": self.status, "versionNumber": self.version}
        if self.status_details:
            state["statusDetails"] = dict(self.status_details)
        return state

    def describe(self, *, include_document: bool = True) -> JsonObject:
        """The JobExecution object, as notify-next and GET send it."""
        execution: JsonObject = {
            "jobId": self.job_id,
            "thingName": self.thing,
            "status": self.status,
            "queuedAt": self.queued_at,
            "lastUpdatedAt": self.last_updated_at,
            "versionNumber": self.version,
            "executionNumber": 1,
        }
        if self.started_at is not None:
            execution["startedAt"] = self.started_at
        if self.status_details:
            execution["statusDetails"] = dict(self.status_details)
        if include_document:
            execution["jobDocument"] = copy.deepcopy(self.document)
        return execution

    def set_status(self, status: str, now: int) -> None:
        self.status = status
        self.history.append(status)
        self.version += 1
        self.last_updated_at = now
        if status == IN_PROGRESS and self.started_at is None:
            self.started_at = now


@attrs.define(eq=False)
class JobStore:
    """Jobs and their executions per thing, with the AWS semantics; no I/O.

    Each operation returns the replies to publish, in order, as
    ``(topic suffix, JSON object)`` pairs.  ``now`` is the epoch time in
    seconds used for timestamps.
    """

    _documents: dict[str, JsonObject] = attrs.field(factory=dict, init=False)
    # thing -> job id -> execution, in the order the jobs were queued.
    _executions: dict[str, dict[str, _Execution]] = attrs.field(
        factory=dict, init=False
    )
    _queued: int = attrs.field(default=0, init=False)

    def jobs(self) -> list[str]:
        """The ids of every job created, oldest first."""
        return list(self._documents)

    def execution(self, thing: str, job_id: str) -> JsonObject | None:
        """A copy of the execution (with its document), or ``None``."""
        execution = self._executions.get(thing, {}).get(job_id)
        return None if execution is None else execution.describe()

    def history(self, thing: str, job_id: str) -> list[str]:
        """Every status the execution has had, ``QUEUED`` first.

        Raises:
            KeyError: there is no such execution.
        """
        return list(self._executions[thing][job_id].history)

    def next_job_id(self, thing: str) -> str | None:
        """The id of the thing's next pending execution, or ``None``."""
        execution = self._next(thing)
        return None if execution is None else execution.job_id

    def create_job(
        self, job_id: str, document: JsonObject, things: Iterable[str], now: int
    ) -> dict[str, list[Reply]]:
        """Queue an execution of a new job on each of ``things``.

        Returns ``notify-next`` for each thing whose next execution is now
        this one (it had none pending).

        Raises:
            ValueError: the job id is invalid or taken, or the document is
                not a JSON object.
        """
        if not JOB_ID_PATTERN.fullmatch(job_id):
            raise ValueError(f"invalid job id {job_id!r}")
        if job_id in self._documents:
            raise ValueError(f"job {job_id!r} already exists")
        if not isinstance(document, dict):
            raise ValueError("a job document must be a JSON object")
        try:
            dumps(document)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the job document is not JSON: {exc}") from None
        self._documents[job_id] = copy.deepcopy(document)

        replies: dict[str, list[Reply]] = {}
        for thing in dict.fromkeys(things):
            before = self._next(thing)
            self._queued += 1
            self._executions.setdefault(thing, {})[job_id] = _Execution(
                job_id=job_id,
                thing=thing,
                document=copy.deepcopy(document),
                queued_at=now,
                order=self._queued,
                last_updated_at=now,
            )
            notify = self._notify_if_changed(thing, before, now)
            if notify:
                replies[thing] = notify
        return replies

    def cancel_job(
        self, job_id: str, now: int, *, force: bool = False
    ) -> dict[str, list[Reply]]:
        """Cancel the job's ``QUEUED`` executions (and ``IN_PROGRESS`` ones
        with ``force``), as the control plane's CancelJob does.

        Returns ``notify-next`` for each thing whose next execution changed.

        Raises:
            KeyError: there is no such job.
        """
        if job_id not in self._documents:
            raise KeyError(job_id)
        cancelable = PENDING_STATUSES if force else frozenset({QUEUED})
        replies: dict[str, list[Reply]] = {}
        for thing, executions in self._executions.items():
            execution = executions.get(job_id)
            if execution is None or execution.status not in cancelable:
                continue
            before = self._next(thing)
            execution.set_status(CANCELED, now)
            notify = self._notify_if_changed(thing, before, now)
            if notify:
                replies[thing] = notify
        return replies

    def handle(
        self, thing: str, job_id: str, operation: str, request: bytes, now: int
    ) -> list[Reply]:
        """Dispatch a request received on ``.../jobs/<job_id>/<operation>``."""
        if operation == "get":
            if job_id == NEXT:
                return self.get_next(thing, request, now)
            return self.describe(thing, job_id, request, now)
        if operation == "update":
            return self.update(thing, job_id, request, now)
        raise ValueError(f"unknown jobs operation {operation!r}")

    def get_next(self, thing: str, request: bytes, now: int) -> list[Reply]:
        """GetNextJobExecution (``$next/get``); never changes a status."""
        token: str | None = None
        try:
            body = _load_request(request)
            token = _client_token(body)
            include_document = _flag(body, "includeJobDocument", True)
        except _Rejected as exc:
            return [(f"{NEXT}/get/rejected", _error(exc, now, token))]

        reply: JsonObject = {"timestamp": now}
        execution = self._next(thing)
        if execution is not None:
            reply["execution"] = execution.describe(include_document=include_document)
        return [(f"{NEXT}/get/accepted", with_token(reply, token))]

    def describe(
        self, thing: str, job_id: str, request: bytes, now: int
    ) -> list[Reply]:
        """DescribeJobExecution (``<job_id>/get``), in any state."""
        token: str | None = None
        try:
            body = _load_request(request)
            token = _client_token(body)
            include_document = _flag(body, "includeJobDocument", True)
            execution = self._find(thing, job_id, _integer(body, "executionNumber"))
        except _Rejected as exc:
            return [(f"{job_id}/get/rejected", _error(exc, now, token))]

        reply = {
            "execution": execution.describe(include_document=include_document),
            "timestamp": now,
        }
        return [(f"{job_id}/get/accepted", with_token(reply, token))]

    def update(
        self, thing: str, job_id: str, request: bytes, now: int
    ) -> list[Reply]:
        """UpdateJobExecution; see the module docstring for the rules."""
        token: str | None = None
        try:
            if job_id == NEXT:
                raise _Rejected("InvalidTopic", "$next cannot be updated")
            body = _load_request(request)
            token = _client_token(body)
            status = _new_status(body)
            details = _status_details(body)
            expected = _integer(body, "expectedVersion")
            include_state = _flag(body, "includeJobExecutionState", False)
            include_document = _flag(body, "includeJobDocument", False)
            execution = self._find(thing, job_id, _integer(body, "executionNumber"))
            if expected is not None and expected != execution.version:
                raise _Rejected(
                    "VersionMismatch",
                    f"Expected version {expected} but the execution is at "
                    f"version {execution.version}",
                    execution.state(),
                )
            if execution.status not in PENDING_STATUSES:
                raise _Rejected(
                    "InvalidStateTransition",
                    f"Cannot update a job execution from {execution.status} "
                    f"to {status}",
                    execution.state(),
                )
        except _Rejected as exc:
            return [(f"{job_id}/update/rejected", _error(exc, now, token))]

        before = self._next(thing)
        if details is not None:
            execution.status_details = details
        execution.set_status(status, now)

        reply: JsonObject = {"timestamp": now}
        if include_state:
            reply["executionState"] = execution.state()
        if include_document:
            reply["jobDocument"] = copy.deepcopy(execution.document)
        replies: list[Reply] = [
            (f"{job_id}/update/accepted", with_token(reply, token))
        ]
        return replies + self._notify_if_changed(thing, before, now)

    def _find(
        self, thing: str, job_id: str, execution_number: int | None
    ) -> _Execution:
        execution = self._executions.get(thing, {}).get(job_id)
        if execution is None or execution_number not in (None, 1):
            raise _Rejected(
                "ResourceNotFound",
                f"Job execution {job_id} not found for thing {thing}",
            )
        return execution

    def _next(self, thing: str) -> _Execution | None:
        # IN_PROGRESS first, then queue order: the guide's pending order.
        pending = [
            execution
            for execution in self._executions.get(thing, {}).values()
            if execution.status in PENDING_STATUSES
        ]
        return min(
            pending,
            key=lambda e: (e.status != IN_PROGRESS, e.queued_at, e.order),
            default=None,
        )

    def _notify_if_changed(
        self, thing: str, before: _Execution | None, now: int
    ) -> list[Reply]:
        after = self._next(thing)
        if after is before:
            return []
        notify: JsonObject = {"timestamp": now}
        if after is not None:
            notify["execution"] = after.describe()
        return [("notify-next", notify)]


# ---------------------------------------------------------------------------
# The MQTT service


def jobs_topic(thing: str, suffix: str) -> str:
    """``$aws/things/<thing>/jobs/<suffix>``."""
    return f"$aws/things/{thing}/jobs/{suffix}"


def parse_request_topic(topic: str) -> tuple[str, str, str] | None:
    """``(thing, job id, operation)`` of a request topic, or ``None``."""
    parts = topic.split("/")
    if (
        len(parts) == 6
        and parts[0] == "$aws"
        and parts[1] == "things"
        and parts[2]
        and parts[3] == "jobs"
        and parts[4]
        and parts[5] in OPERATIONS
    ):
        return parts[2], parts[4], parts[5]
    return None


REQUEST_SUBSCRIPTIONS: Final = [
    (jobs_topic("+", f"+/{operation}"), REQUEST_QOS) for operation in OPERATIONS
]


@attrs.define(eq=False)
class JobsService(SandboxService):
    """The Jobs service as an MQTT client of a broker.

    ``store`` may be read (and seeded) directly; requests from MQTT,
    ``create_job()`` and ``cancel_job()`` are applied one at a time, each
    with all its replies published before the next starts, so replies
    never interleave.
    """

    name: ClassVar[str] = "jobs"
    subscriptions: ClassVar[Sequence[tuple[str, int]]] = REQUEST_SUBSCRIPTIONS

    store: JobStore = attrs.field(factory=JobStore)
    clock: Callable[[], float] = attrs.field(default=time.time)
    requests: int = attrs.field(default=0, init=False)
    _lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock, init=False)

    async def create_job(
        self, job_id: str, document: JsonObject, things: Iterable[str]
    ) -> dict[str, list[Reply]]:
        """Create a job for ``things`` and publish their ``notify-next``.

        Returns the replies published, per thing.

        Raises:
            RuntimeError: the service is not running.
            ValueError: as ``JobStore.create_job()``; nothing is published.
            BackendBroken: the connection was lost.

        Cancellation:
            Once the store is updated, notifications not yet written are
            lost.

        Logging:
            INFO ``job_created``; DEBUG ``jobs_reply`` per notification.
        """
        async with self._lock:
            session = self._checked_session()
            things = list(things)
            replies = self.store.create_job(job_id, document, things, self._now())
            log.info("job_created", job_id=job_id, things=len(things))
            for thing, thing_replies in replies.items():
                await self._publish(session, thing, thing_replies)
            return replies

    async def cancel_job(
        self, job_id: str, *, force: bool = False
    ) -> dict[str, list[Reply]]:
        """Cancel a job and publish ``notify-next`` where the next changed.

        Raises:
            RuntimeError: the service is not running.
            KeyError: there is no such job; nothing is published.
            BackendBroken: the connection was lost.

        Cancellation:
            Once the store is updated, notifications not yet written are
            lost.

        Logging:
            INFO ``job_canceled``; DEBUG ``jobs_reply`` per notification.
        """
        async with self._lock:
            session = self._checked_session()
            replies = self.store.cancel_job(job_id, self._now(), force=force)
            log.info("job_canceled", job_id=job_id, force=force)
            for thing, thing_replies in replies.items():
                await self._publish(session, thing, thing_replies)
            return replies

    def _checked_session(self) -> MqttSession:
        if self._session is None:
            raise RuntimeError("the jobs service is not running")
        return self._session

    def _now(self) -> int:
        return int(self.clock())

    async def _on_message(self, session: MqttSession, message: MqttMessage) -> None:
        request = parse_request_topic(message.topic)
        if request is None:
            log.warning("jobs_unexpected_topic", topic=message.topic)
            return
        await self._apply(*request, message.payload)

    async def _apply(
        self, thing: str, job_id: str, operation: str, request: bytes
    ) -> list[Reply]:
        """Apply one request to the store and publish its replies in order.

        Cancellation:
            Once the store is updated, replies not yet written are lost.

        Logging:
            DEBUG ``jobs_request``; ERROR ``jobs_request_failed`` (a bug in
            the store, answered with ``InternalError``); plus what
            ``_publish()`` logs.
        """
        async with self._lock:
            session = self._checked_session()
            self.requests += 1
            now = self._now()
            log.debug(
                "jobs_request",
                thing=thing,
                job_id=job_id,
                operation=operation,
                size=len(request),
            )
            try:
                replies = self.store.handle(thing, job_id, operation, request, now)
            except Exception:
                log.error(
                    "jobs_request_failed",
                    thing=thing,
                    job_id=job_id,
                    operation=operation,
                    exc_info=True,
                )
                failure = _Rejected("InternalError", "Internal service failure")
                suffix = f"{job_id}/{operation}/rejected"
                replies = [(suffix, _error(failure, now, None))]
            await self._publish(session, thing, replies)
            return replies

    async def _publish(
        self, session: MqttSession, thing: str, replies: list[Reply]
    ) -> None:
        """Publish ``replies`` under the thing's jobs topics, in order.

        Logging:
            DEBUG ``jobs_reply``; INFO ``jobs_rejected`` for
            ``ResourceNotFound``, ``VersionMismatch`` and
            ``InvalidStateTransition`` (a device out of step), WARNING for
            the other codes (malformed requests).
        """
        for suffix, document in replies:
            if suffix.endswith("/rejected"):
                code = document.get("code")
                expected = code in (
                    "ResourceNotFound",
                    "VersionMismatch",
                    "InvalidStateTransition",
                )
                level = log.info if expected else log.warning
                level(
                    "jobs_rejected",
                    thing=thing,
                    topic=suffix,
                    code=code,
                    message=document.get("message"),
                )
            else:
                log.debug("jobs_reply", thing=thing, topic=suffix)
            await session.publish(jobs_topic(thing, suffix), dumps(document), REPLY_QOS)
