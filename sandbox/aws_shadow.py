"""A local AWS IoT Device Shadow service (the classic, unnamed shadow).

Design
------
Two layers, so the semantics can be tested without a broker:

* ``ShadowStore`` holds every thing's shadow and implements GET, UPDATE and
  DELETE.  It is pure and synchronous: an operation takes the request
  payload and the time, and returns the replies to publish as
  ``(topic suffix, JSON object)`` pairs, e.g. ``("update/accepted", {...})``.
* ``ShadowService`` is an MQTT client of the broker (Mosquitto in tests) with
  its own certificate.  It subscribes to ``$aws/things/+/shadow/get``,
  ``.../update`` and ``.../delete``, feeds each request to the store and
  publishes the replies under ``$aws/things/<thing>/shadow/``.  It also
  plays the backend's ``RepublishDesiredConfig`` rule (wire.md §2.2): after
  every ``get/accepted`` it publishes ``{"cfg": state.desired.cfg}``, or
  ``{}`` without one, to ``.../shadow/get/accepted/desired/cfg``.

The service never subscribes to the reply topics, so the broker does not
hand our own replies back to us.

Semantics (AWS IoT Core developer guide: "Device Shadow MQTT topics",
"Device Shadow service documents", "Device Shadow error messages")
------------------------------------------------------------------
* UPDATE merges ``state.desired`` and ``state.reported`` into the shadow:
  nested objects merge, ``null`` deletes a key (a ``null`` section deletes
  the section, ``"state": null`` empties both), arrays and other values
  replace.  The first update creates the shadow at version 1; every
  accepted update adds one.  Deleting a shadow keeps its version, so a new
  shadow of the same name goes on counting.
* An optional ``version`` must equal the current one, else 409.  A
  ``clientToken`` (a string of at most 64 bytes) is echoed in the replies.
* ``update/accepted`` echoes the request's state, with metadata (per-leaf
  ``{"timestamp": s}``) for it; ``update/documents`` carries the previous
  (``null`` for a new shadow) and the current document; ``update/delta``
  carries the desired keys whose values differ from reported, recursively,
  with their desired metadata.  GET returns the whole document with
  ``state.delta`` when there is one.
* Errors are ``{"code", "message", "timestamp"[, "clientToken"]}`` on the
  operation's ``rejected`` topic: 400 for malformed requests, 404 for a
  missing shadow, 409, 413 above 8 KiB, 415 for a payload not in UTF-8.

Deliberate readings of the guide:

* ``update/delta`` is published only when the request carried a ``desired``
  object and the delta is not empty.  The guide's flow for a device
  reporting its state lists ``update/accepted`` alone; and a delta after
  every report would make a device whose desired state holds a key it never
  reports answer with a configuration report forever (wire.md §2.2: a delta
  without ``cfg`` triggers a ``cfg`` report).
* The 8 KiB limit applies to the request payload and to the stored state
  (desired plus reported, compact JSON, without metadata) after the update.
* The nesting limit of 6 counts the objects and arrays of a section,
  the section included: ``{"a":{"b":1}}`` has two levels.
"""

from __future__ import annotations

import copy
import json
import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, NoReturn, TypeAlias

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
    from collections.abc import Callable, Sequence


log = structlog.get_logger(actor="sandbox.shadow")

JsonObject: TypeAlias = dict[str, Any]
Reply: TypeAlias = tuple[str, JsonObject]
"""A reply to publish: topic suffix below ``.../shadow/`` and its body."""

MAX_DOCUMENT_BYTES: Final = 8 * 1024
"""The largest request payload and stored state accepted (else 413)."""

MAX_CLIENT_TOKEN_BYTES: Final = 64
MAX_NESTING: Final = 6
SECTIONS: Final = ("desired", "reported")
OPERATIONS: Final = ("get", "update", "delete")

REQUEST_QOS: Final = 1
REPLY_QOS: Final = 1
REPUBLISH_QOS: Final = 0
"""The IoT rule's republish action; AWS defaults it to QoS 0."""

DEFAULT_CLIENT_ID: Final = "sandbox-shadow"


# ---------------------------------------------------------------------------
# JSON helpers


def json_equal(a: object, b: object) -> bool:
    """Equality of JSON values: ``true`` is not ``1``, ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def shadow_delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """The desired keys whose values differ from reported, recursively.

    A key missing from reported is included whole; two objects are compared
    key by key and only their differing keys are included.
    """
    delta: JsonObject = {}
    for key, want in desired.items():
        if key not in reported:
            delta[key] = copy.deepcopy(want)
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            inner = shadow_delta(want, have)
            if inner:
                delta[key] = inner
        elif not json_equal(want, have):
            delta[key] = copy.deepcopy(want)
    return delta


def desired_cfg_republish(get_accepted: JsonObject) -> JsonObject:
    """What ``RepublishDesiredConfig`` makes of a ``get/accepted`` document.

    ``SELECT state.desired.cfg AS cfg``: ``{"cfg": ...}``, or ``{}`` when the
    shadow has no desired ``cfg``.
    """
    desired = get_accepted.get("state", {}).get("desired", {})
    if "cfg" in desired:
        return {"cfg": copy.deepcopy(desired["cfg"])}
    return {}


def _stamp(value: object, now: int) -> Any:
    # Metadata mirrors the state: objects recurse, anything else (arrays,
    # scalars, and the nulls of a request) is one {"timestamp"} leaf.
    if isinstance(value, dict):
        return {key: _stamp(inner, now) for key, inner in value.items()}
    return {"timestamp": now}


def _merge(
    state: JsonObject, metadata: JsonObject, patch: JsonObject, now: int
) -> None:
    # Merges ``patch`` into ``state`` in place, keeping ``metadata`` in step.
    for key, value in patch.items():
        if value is None:
            state.pop(key, None)
            metadata.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(state.get(key), dict):
                state[key] = {}
                metadata[key] = {}
            _merge(state[key], metadata[key], value, now)
        else:
            state[key] = copy.deepcopy(value)
            metadata[key] = {"timestamp": now}


def _restrict(metadata: JsonObject, delta: JsonObject) -> JsonObject:
    # The metadata of the keys of ``delta`` (a sub-tree of the desired state).
    restricted: JsonObject = {}
    for key, value in delta.items():
        meta = metadata.get(key, {})
        if isinstance(value, dict) and value:
            restricted[key] = _restrict(meta, value)
        else:
            restricted[key] = copy.deepcopy(meta)
    return restricted


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


# ---------------------------------------------------------------------------
# Request parsing


class _Rejected(Exception):
    """A request the service answers on its ``rejected`` topic."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _reject_constant(name: str) -> NoReturn:
    raise _Rejected(400, "Invalid JSON")


def _load_request(request: bytes, *, empty_ok: bool) -> JsonObject:
    if len(request) > MAX_DOCUMENT_BYTES:
        raise _Rejected(413, "The payload exceeds the maximum size allowed")
    if empty_ok and not request.strip():
        return {}
    try:
        text = request.decode("utf-8")
    except UnicodeDecodeError:
        raise _Rejected(
            415, "Unsupported documented encoding; supported encoding is UTF-8"
        ) from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _Rejected(400, "Invalid JSON") from None
    if not isinstance(body, dict):
        raise _Rejected(400, "Invalid JSON")
    return body


def _client_token(body: JsonObject) -> str | None:
    token = body.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES:
        raise _Rejected(400, "Invalid clientToken")
    return token


def _request_version(body: JsonObject) -> int | None:
    if "version" not in body:
        return None
    version = body["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _Rejected(400, "Invalid version")
    return version


def _request_state(body: JsonObject) -> JsonObject | None:
    # ``None`` is the documented "state": null, which empties the shadow.
    if "state" not in body:
        raise _Rejected(400, "Missing required node: state")
    state = body["state"]
    if state is None:
        return None
    if not isinstance(state, dict):
        raise _Rejected(400, "State node must be an object")
    for key, section in state.items():
        if key not in SECTIONS:
            raise _Rejected(400, "State contains an invalid node")
        if section is not None and not isinstance(section, dict):
            raise _Rejected(400, f"{key.capitalize()} node must be an object")
        if _depth(section) > MAX_NESTING:
            raise _Rejected(
                400,
                f"JSON contains too many levels of nesting; maximum is {MAX_NESTING}",
            )
    return state


def _error(code: int, message: str, now: int, token: str | None) -> JsonObject:
    error: JsonObject = {"code": code, "message": message, "timestamp": now}
    if token is not None:
        error["clientToken"] = token
    return error


# ---------------------------------------------------------------------------
# The store


@attrs.define(eq=False)
class _Shadow:
    """One thing's shadow; sections are always present, maybe empty."""

    version: int
    state: dict[str, JsonObject] = attrs.field(
        factory=lambda: {section: {} for section in SECTIONS}
    )
    metadata: dict[str, JsonObject] = attrs.field(
        factory=lambda: {section: {} for section in SECTIONS}
    )

    def document(self) -> JsonObject:
        """State, metadata and version, without the empty sections."""
        return {
            "state": {s: copy.deepcopy(v) for s, v in self.state.items() if v},
            "metadata": {
                s: copy.deepcopy(self.metadata[s]) for s, v in self.state.items() if v
            },
            "version": self.version,
        }

    def delta(self) -> JsonObject:
        return shadow_delta(self.state["desired"], self.state["reported"])


@attrs.define(eq=False)
class ShadowStore:
    """Every thing's classic shadow, with the AWS semantics; no I/O.

    Each operation returns the replies to publish, in order, as
    ``(topic suffix, JSON object)`` pairs.  ``now`` is the epoch time in
    seconds used for timestamps.  ``updates`` counts the accepted updates
    per thing, deleted shadows included.
    """

    updates: dict[str, int] = attrs.field(factory=dict)
    _shadows: dict[str, _Shadow] = attrs.field(factory=dict, init=False)
    # The last version of every thing ever seen: deletion keeps it.
    _versions: dict[str, int] = attrs.field(factory=dict, init=False)

    def exists(self, thing: str) -> bool:
        """Whether ``thing`` has a shadow."""
        return thing in self._shadows

    def version(self, thing: str) -> int:
        """The shadow's current version (0 if there never was one)."""
        return self._versions.get(thing, 0)

    def document(self, thing: str) -> JsonObject | None:
        """A copy of the shadow's state, metadata and version, or ``None``."""
        shadow = self._shadows.get(thing)
        return None if shadow is None else shadow.document()

    def handle(
        self, thing: str, operation: str, request: bytes, now: int
    ) -> list[Reply]:
        """Dispatch a request received on ``.../shadow/<operation>``."""
        if operation == "update":
            return self.update(thing, request, now)
        if operation == "get":
            return self.get(thing, now, request)
        if operation == "delete":
            return self.delete(thing, now, request)
        raise ValueError(f"unknown shadow operation {operation!r}")

    def update(self, thing: str, request: bytes, now: int) -> list[Reply]:
        """Apply an UPDATE request; see the module docstring for the rules."""
        token: str | None = None
        try:
            body = _load_request(request, empty_ok=False)
            token = _client_token(body)
            state = _request_state(body)
            expected = _request_version(body)
            if expected is not None and expected != self.version(thing):
                raise _Rejected(409, "Version conflict")
            previous = self._shadows.get(thing)
            shadow = self._updated(previous, state, now)
            shadow.version = self.version(thing) + 1
        except _Rejected as exc:
            return [("update/rejected", _error(exc.code, exc.message, now, token))]

        self._shadows[thing] = shadow
        self._versions[thing] = shadow.version
        self.updates[thing] = self.updates.get(thing, 0) + 1

        echoed = {} if state is None else state
        replies: list[Reply] = [
            (
                "update/accepted",
                with_token(
                    {
                        "state": copy.deepcopy(state),
                        "metadata": {s: _stamp(v, now) for s, v in echoed.items()},
                        "version": shadow.version,
                        "timestamp": now,
                    },
                    token,
                ),
            ),
            (
                "update/documents",
                with_token(
                    {
                        "previous": None if previous is None else previous.document(),
                        "current": shadow.document(),
                        "timestamp": now,
                    },
                    token,
                ),
            ),
        ]
        delta = shadow.delta()
        if isinstance(echoed.get("desired"), dict) and delta:
            replies.append(
                (
                    "update/delta",
                    with_token(
                        {
                            "version": shadow.version,
                            "timestamp": now,
                            "state": delta,
                            "metadata": _restrict(shadow.metadata["desired"], delta),
                        },
                        token,
                    ),
                )
            )
        return replies

    def get(self, thing: str, now: int, request: bytes = b"") -> list[Reply]:
        """Answer a GET request (normally an empty payload)."""
        token: str | None = None
        try:
            token = _client_token(_load_request(request, empty_ok=True))
            shadow = self._shadows.get(thing)
            if shadow is None:
                raise _Rejected(404, f"No shadow exists with name: '{thing}'")
        except _Rejected as exc:
            return [("get/rejected", _error(exc.code, exc.message, now, token))]

        document = shadow.document()
        delta = shadow.delta()
        if delta:
            document["state"]["delta"] = delta
        document["timestamp"] = now
        return [("get/accepted", with_token(document, token))]

    def delete(self, thing: str, now: int, request: bytes = b"") -> list[Reply]:
        """Delete the shadow; its version is kept for the next one."""
        token: str | None = None
        try:
            # AWS ignores the content; only a client token is looked for.
            try:
                token = _client_token(_load_request(request, empty_ok=True))
            except _Rejected:
                token = None
            shadow = self._shadows.pop(thing, None)
            if shadow is None:
                raise _Rejected(404, f"No shadow exists with name: '{thing}'")
        except _Rejected as exc:
            return [("delete/rejected", _error(exc.code, exc.message, now, token))]
        return [
            (
                "delete/accepted",
                with_token({"version": shadow.version, "timestamp": now}, token),
            )
        ]

    def _updated(
        self, previous: _Shadow | None, state: JsonObject | None, now: int
    ) -> _Shadow:
        # A new _Shadow with ``state`` applied; raises 413 if it grew too big.
        shadow = _Shadow(version=0)
        if previous is not None:
            shadow.state = copy.deepcopy(previous.state)
            shadow.metadata = copy.deepcopy(previous.metadata)
        if state is None:
            state = {section: None for section in SECTIONS}
        for section, patch in state.items():
            if patch is None:
                shadow.state[section] = {}
                shadow.metadata[section] = {}
            else:
                _merge(shadow.state[section], shadow.metadata[section], patch, now)
        if len(dumps(shadow.state)) > MAX_DOCUMENT_BYTES:
            raise _Rejected(413, "The payload exceeds the maximum size allowed")
        return shadow


# ---------------------------------------------------------------------------
# The MQTT service


def shadow_topic(thing: str, suffix: str) -> str:
    """``$aws/things/<thing>/shadow/<suffix>``."""
    return f"$aws/things/{thing}/shadow/{suffix}"


def parse_request_topic(topic: str) -> tuple[str, str] | None:
    """``(thing, operation)`` of a request topic, or ``None``."""
    parts = topic.split("/")
    if (
        len(parts) == 5
        and parts[0] == "$aws"
        and parts[1] == "things"
        and parts[2]
        and parts[3] == "shadow"
        and parts[4] in OPERATIONS
    ):
        return parts[2], parts[4]
    return None


REQUEST_SUBSCRIPTIONS: Final = [
    (shadow_topic("+", operation), REQUEST_QOS) for operation in OPERATIONS
]


@attrs.define(eq=False)
class ShadowService(SandboxService):
    """The Device Shadow service as an MQTT client of a broker.

    ``store`` may be read (and seeded) directly; requests from MQTT and
    ``set_desired()`` are applied one at a time, each with all its replies
    published before the next starts, so replies never interleave.
    """

    name: ClassVar[str] = "shadow"
    subscriptions: ClassVar[Sequence[tuple[str, int]]] = REQUEST_SUBSCRIPTIONS

    store: ShadowStore = attrs.field(factory=ShadowStore)
    clock: Callable[[], float] = attrs.field(default=time.time)
    requests: int = attrs.field(default=0, init=False)
    _lock: trio.StrictFIFOLock = attrs.field(factory=trio.StrictFIFOLock, init=False)
    # Set, and replaced by a fresh one, after every request handled.
    _handled: trio.Event = attrs.field(factory=trio.Event, init=False)

    async def wait_handled(self) -> None:
        """Return after the next request has been applied and answered."""
        await self._handled.wait()

    async def set_desired(self, thing: str, desired: JsonObject) -> list[Reply]:
        """Update the desired state, as a backend's UPDATE request would.

        Publishes the replies (``update/accepted``, ``update/documents`` and,
        when desired and reported differ, ``update/delta``) and returns them;
        a rejection (e.g. 413) is published and returned, not raised.

        Raises:
            RuntimeError: the service is not running.
            BackendBroken: the connection was lost.

        Cancellation:
            Once the store is updated, replies not yet written are lost.

        Logging:
            As ``_apply()``.
        """
        request = dumps({"state": {"desired": desired}})
        return await self._apply(thing, "update", request)

    async def _on_message(self, session: MqttSession, message: MqttMessage) -> None:
        request = parse_request_topic(message.topic)
        if request is None:
            log.warning("shadow_unexpected_topic", topic=message.topic)
            return
        thing, operation = request
        await self._apply(thing, operation, message.payload)

    async def _apply(self, thing: str, operation: str, request: bytes) -> list[Reply]:
        """Apply one request to the store and publish its replies in order.

        Cancellation:
            Once the store is updated, replies not yet written are lost.

        Logging:
            DEBUG ``shadow_request``, ``shadow_accepted``; INFO
            ``shadow_rejected`` for 404 and 409, WARNING for the other codes
            (malformed requests); ERROR ``shadow_request_failed`` (a bug in
            the store, answered with 500).
        """
        async with self._lock:
            session = self._session
            if session is None:
                raise RuntimeError("the shadow service is not running")
            self.requests += 1
            now = int(self.clock())
            log.debug(
                "shadow_request", thing=thing, operation=operation, size=len(request)
            )
            try:
                replies = self.store.handle(thing, operation, request, now)
            except Exception:
                log.error(
                    "shadow_request_failed",
                    thing=thing,
                    operation=operation,
                    exc_info=True,
                )
                replies = [
                    (
                        f"{operation}/rejected",
                        _error(500, "Internal service failure", now, None),
                    )
                ]
            for suffix, document in replies:
                self._log_reply(thing, suffix, document)
                await session.publish(
                    shadow_topic(thing, suffix), dumps(document), REPLY_QOS
                )
                if suffix == "get/accepted":
                    await session.publish(
                        shadow_topic(thing, "get/accepted/desired/cfg"),
                        dumps(desired_cfg_republish(document)),
                        REPUBLISH_QOS,
                    )
            self._handled.set()
            self._handled = trio.Event()
            return replies

    def _log_reply(self, thing: str, suffix: str, document: JsonObject) -> None:
        if suffix.endswith("/rejected"):
            code = document.get("code")
            level = log.info if code in (404, 409) else log.warning
            level(
                "shadow_rejected",
                thing=thing,
                topic=suffix,
                code=code,
                message=document.get("message"),
            )
        elif suffix.endswith("/accepted"):
            log.debug(
                "shadow_accepted",
                thing=thing,
                topic=suffix,
                version=document.get("version"),
            )
