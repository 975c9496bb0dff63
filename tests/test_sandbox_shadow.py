"""The local AWS IoT Device Shadow: store semantics, then over Mosquitto.

The store tests are synchronous.  The service tests use real sockets, so no
autojump clock: each is bounded by ``trio.fail_after`` in real time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from backends.mqtt_transport import (
    MqttMessage,
    MqttSession,
    open_mqtt_session,
)
from sandbox.aws_shadow import (
    DEFAULT_CLIENT_ID,
    MAX_DOCUMENT_BYTES,
    JsonObject,
    Reply,
    ShadowService,
    ShadowStore,
    desired_cfg_republish,
    dumps,
    parse_request_topic,
    shadow_topic,
)
from tests.mosquitto import MosquittoBroker, client_settings

THING = "352656100000010"
NOW = 1_700_000_000
LIMIT = 10.0
"""Real-time bound of each broker test, in seconds."""

WAIT = 5.0
"""Real-time bound of one wait for a message."""


def request(document: object) -> bytes:
    return json.dumps(document).encode()


def replies_by_topic(replies: list[Reply]) -> dict[str, JsonObject]:
    return dict(replies)


def nested(levels: int) -> JsonObject:
    """An object ``levels`` deep: {"k": {"k": ... 1}}."""
    document: Any = 1
    for _ in range(levels):
        document = {"k": document}
    return dict(document)


def report(store: ShadowStore, reported: JsonObject, now: int = NOW) -> list[Reply]:
    return store.update(THING, request({"state": {"reported": reported}}), now)


def desire(store: ShadowStore, desired: JsonObject, now: int = NOW) -> list[Reply]:
    return store.update(THING, request({"state": {"desired": desired}}), now)


# ---------------------------------------------------------------------------
# ShadowStore


class TestShadowStoreUpdate:
    """UPDATE: merging, versions, delta, documents and rejections."""

    def test_first_update_creates_the_shadow_at_version_1(self) -> None:
        """The first accepted update creates the shadow with version 1."""
        store = ShadowStore()

        replies = report(store, {"cfg": {"act": True}})

        assert ["update/accepted", "update/documents"] == [t for t, _ in replies]
        accepted = replies_by_topic(replies)["update/accepted"]
        assert {
            "state": {"reported": {"cfg": {"act": True}}},
            "metadata": {"reported": {"cfg": {"act": {"timestamp": NOW}}}},
            "version": 1,
            "timestamp": NOW,
        } == accepted
        assert 1 == store.version(THING)
        assert store.exists(THING)

    def test_every_accepted_update_increments_the_version(self) -> None:
        """Three accepted updates give version 3 and count 3 updates."""
        store = ShadowStore()

        report(store, {"a": 1})
        desire(store, {"a": 2})
        replies = report(store, {"a": 1})

        assert 3 == replies_by_topic(replies)["update/accepted"]["version"]
        assert 3 == store.version(THING)
        assert {THING: 3} == store.updates

    def test_nested_objects_merge_and_arrays_replace(self) -> None:
        """Nested objects merge key by key; an array is replaced whole."""
        store = ShadowStore()
        report(store, {"cfg": {"act": True, "actwt": 60}, "nod": ["gnss", "ncell"]})

        report(store, {"cfg": {"mvt": 3600}, "nod": ["wifi"]}, now=NOW + 1)

        document = store.document(THING)
        assert document is not None
        assert {
            "cfg": {"act": True, "actwt": 60, "mvt": 3600},
            "nod": ["wifi"],
        } == document["state"]["reported"]
        assert {
            "cfg": {
                "act": {"timestamp": NOW},
                "actwt": {"timestamp": NOW},
                "mvt": {"timestamp": NOW + 1},
            },
            "nod": {"timestamp": NOW + 1},
        } == document["metadata"]["reported"]

    def test_null_deletes_keys_and_sections(self) -> None:
        """A null value deletes its key; a null section deletes the section."""
        store = ShadowStore()
        store.update(
            THING,
            request({"state": {"desired": {"x": 1}, "reported": {"a": 1, "b": 2}}}),
            NOW,
        )

        store.update(
            THING,
            request({"state": {"desired": None, "reported": {"a": None}}}),
            NOW,
        )

        document = store.document(THING)
        assert document is not None
        assert {"reported": {"b": 2}} == document["state"]
        assert {"reported": {"b": {"timestamp": NOW}}} == document["metadata"]
        assert 2 == document["version"]

    def test_delta_is_computed_recursively(self) -> None:
        """The delta holds only the differing desired keys, with metadata."""
        store = ShadowStore()
        report(store, {"cfg": {"act": True, "actwt": 60}, "bat": 90})

        replies = desire(store, {"cfg": {"act": False, "actwt": 60}}, now=NOW + 5)

        delta = replies_by_topic(replies)["update/delta"]
        assert {
            "version": 2,
            "timestamp": NOW + 5,
            "state": {"cfg": {"act": False}},
            "metadata": {"cfg": {"act": {"timestamp": NOW + 5}}},
        } == delta

    def test_desired_key_missing_from_reported_is_in_the_delta(self) -> None:
        """A desired key without a reported value is in the delta whole."""
        store = ShadowStore()
        report(store, {"cfg": {"act": True}})

        replies = desire(store, {"cfg": {"act": True}, "led": {"on": 1}})

        assert {"led": {"on": 1}} == replies_by_topic(replies)["update/delta"][
            "state"
        ]

    def test_no_delta_when_desired_and_reported_agree(self) -> None:
        """Desired equal to reported publishes no delta; GET shows none."""
        store = ShadowStore()
        report(store, {"cfg": {"act": True, "actwt": 60}})

        replies = desire(store, {"cfg": {"act": True}})

        assert "update/delta" not in replies_by_topic(replies)
        got = replies_by_topic(store.get(THING, NOW))["get/accepted"]
        assert "delta" not in got["state"]

    def test_true_is_not_equal_to_one(self) -> None:
        """JSON equality: desired true differs from reported 1."""
        store = ShadowStore()
        report(store, {"x": 1})

        replies = desire(store, {"x": True})

        assert {"x": True} == replies_by_topic(replies)["update/delta"]["state"]

    def test_reported_only_update_publishes_no_delta(self) -> None:
        """A report leaves a pending difference to GET, not to a delta."""
        store = ShadowStore()
        desire(store, {"cfg": {"act": False}})

        replies = report(store, {"cfg": {"act": True}})

        assert "update/delta" not in replies_by_topic(replies)
        got = replies_by_topic(store.get(THING, NOW))["get/accepted"]
        assert {"cfg": {"act": False}} == got["state"]["delta"]

    def test_documents_carry_previous_and_current(self) -> None:
        """update/documents has the previous (null at first) and current."""
        store = ShadowStore()
        first = replies_by_topic(report(store, {"a": 1}))

        second = replies_by_topic(report(store, {"a": 2}, now=NOW + 1))

        assert first["update/documents"]["previous"] is None
        assert {
            "state": {"reported": {"a": 1}},
            "metadata": {"reported": {"a": {"timestamp": NOW}}},
            "version": 1,
        } == second["update/documents"]["previous"]
        assert {"reported": {"a": 2}} == second["update/documents"]["current"][
            "state"
        ]
        assert 2 == second["update/documents"]["current"]["version"]

    def test_version_mismatch_is_rejected_with_409(self) -> None:
        """A request version other than the current one is a conflict."""
        store = ShadowStore()
        report(store, {"a": 1})

        replies = store.update(
            THING,
            request(
                {"state": {"reported": {"a": 2}}, "version": 7, "clientToken": "t"}
            ),
            NOW,
        )

        assert [
            (
                "update/rejected",
                {
                    "code": 409,
                    "message": "Version conflict",
                    "timestamp": NOW,
                    "clientToken": "t",
                },
            )
        ] == replies
        assert 1 == store.version(THING)
        assert {THING: 1} == store.updates

    def test_matching_version_is_accepted(self) -> None:
        """The current version in the request lets the update through."""
        store = ShadowStore()
        report(store, {"a": 1})

        replies = store.update(
            THING, request({"state": {"reported": {"a": 2}}, "version": 1}), NOW
        )

        assert 2 == replies_by_topic(replies)["update/accepted"]["version"]

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            (b"{", "Invalid JSON"),
            (b"", "Invalid JSON"),
            (b"[1, 2]", "Invalid JSON"),
            (b'{"state": {"reported": {"x": NaN}}}', "Invalid JSON"),
            (b'{"desired": {"a": 1}}', "Missing required node: state"),
            (b'{"state": 3}', "State node must be an object"),
            (b'{"state": {"desired": [1]}}', "Desired node must be an object"),
            (b'{"state": {"reported": "x"}}', "Reported node must be an object"),
            (b'{"state": {"delta": {}}}', "State contains an invalid node"),
            (b'{"state": {}, "version": "1"}', "Invalid version"),
            (b'{"state": {}, "clientToken": 5}', "Invalid clientToken"),
            (
                request({"state": {}, "clientToken": "x" * 65}),
                "Invalid clientToken",
            ),
            (
                request({"state": {"desired": nested(7)}}),
                "JSON contains too many levels of nesting; maximum is 6",
            ),
        ],
    )
    def test_malformed_requests_are_rejected_with_400(
        self, payload: bytes, message: str
    ) -> None:
        """Malformed requests get 400 with AWS's message; nothing changes."""
        store = ShadowStore()

        replies = store.update(THING, payload, NOW)

        assert [
            ("update/rejected", {"code": 400, "message": message, "timestamp": NOW})
        ] == replies
        assert not store.exists(THING)
        assert {} == store.updates

    def test_six_levels_of_nesting_are_accepted(self) -> None:
        """Six nested objects, the section included, are within the limit."""
        store = ShadowStore()

        replies = desire(store, nested(6))

        assert 1 == replies_by_topic(replies)["update/accepted"]["version"]

    def test_invalid_utf8_is_rejected_with_415(self) -> None:
        """A payload that is not UTF-8 is an unsupported encoding."""
        store = ShadowStore()

        replies = store.update(THING, b'{"state":{"reported":{"a":"\xff"}}}', NOW)

        assert 415 == replies_by_topic(replies)["update/rejected"]["code"]

    def test_oversized_request_is_rejected_with_413(self) -> None:
        """A request above 8 KiB is refused before parsing."""
        store = ShadowStore()
        payload = request({"state": {"reported": {"blob": "x" * MAX_DOCUMENT_BYTES}}})

        replies = store.update(THING, payload, NOW)

        assert [
            (
                "update/rejected",
                {
                    "code": 413,
                    "message": "The payload exceeds the maximum size allowed",
                    "timestamp": NOW,
                },
            )
        ] == replies
        assert not store.exists(THING)

    def test_state_growing_above_8_kib_is_rejected_with_413(self) -> None:
        """Small updates that together exceed 8 KiB: the last is refused."""
        store = ShadowStore()
        chunk = "x" * (MAX_DOCUMENT_BYTES // 3)
        for key in ("a", "b"):
            report(store, {key: chunk})

        replies = report(store, {"c": chunk})

        assert 413 == replies_by_topic(replies)["update/rejected"]["code"]
        assert 2 == store.version(THING)

    def test_client_token_is_echoed(self) -> None:
        """accepted, documents and delta all carry the request's token."""
        store = ShadowStore()
        report(store, {"a": 1})

        replies = store.update(
            THING, request({"state": {"desired": {"a": 2}}, "clientToken": "tok"}), NOW
        )

        assert ["tok"] * 3 == [document["clientToken"] for _, document in replies]

    def test_state_null_empties_the_shadow(self) -> None:
        """"state": null keeps the shadow, empty, and counts as an update."""
        store = ShadowStore()
        report(store, {"a": 1})

        replies = store.update(THING, b'{"state": null}', NOW)

        assert 2 == replies_by_topic(replies)["update/accepted"]["version"]
        assert {"state": {}, "metadata": {}, "version": 2} == store.document(THING)


class TestShadowStoreGet:
    """GET: the whole document, or 404."""

    def test_missing_shadow_is_rejected_with_404(self) -> None:
        """A thing without a shadow gets 404 naming it."""
        store = ShadowStore()

        replies = store.get(THING, NOW)

        assert [
            (
                "get/rejected",
                {
                    "code": 404,
                    "message": f"No shadow exists with name: '{THING}'",
                    "timestamp": NOW,
                },
            )
        ] == replies

    def test_get_returns_the_full_document(self) -> None:
        """get/accepted has desired, reported, delta, metadata, version."""
        store = ShadowStore()
        report(store, {"cfg": {"act": True}}, now=NOW)
        desire(store, {"cfg": {"act": False}}, now=NOW + 1)

        replies = store.get(THING, NOW + 2, b'{"clientToken":"g"}')

        assert [
            (
                "get/accepted",
                {
                    "state": {
                        "desired": {"cfg": {"act": False}},
                        "reported": {"cfg": {"act": True}},
                        "delta": {"cfg": {"act": False}},
                    },
                    "metadata": {
                        "desired": {"cfg": {"act": {"timestamp": NOW + 1}}},
                        "reported": {"cfg": {"act": {"timestamp": NOW}}},
                    },
                    "version": 2,
                    "timestamp": NOW + 2,
                    "clientToken": "g",
                },
            )
        ] == replies

    def test_invalid_json_in_a_get_is_rejected_with_400(self) -> None:
        """A non-empty GET payload must be a JSON object."""
        store = ShadowStore()
        report(store, {"a": 1})

        replies = store.get(THING, NOW, b"not json")

        assert 400 == replies_by_topic(replies)["get/rejected"]["code"]


class TestShadowStoreDelete:
    """DELETE: the shadow goes, its version stays."""

    def test_delete_keeps_the_version_for_the_next_shadow(self) -> None:
        """After a delete, GET is 404 and the next update is version 3."""
        store = ShadowStore()
        report(store, {"a": 1})
        report(store, {"a": 2})

        deleted = store.delete(THING, NOW)
        missing = store.get(THING, NOW)
        recreated = report(store, {"b": 1})

        assert [("delete/accepted", {"version": 2, "timestamp": NOW})] == deleted
        assert "get/rejected" == missing[0][0]
        accepted = replies_by_topic(recreated)["update/accepted"]
        assert 3 == accepted["version"]
        assert {"state": {"reported": {"b": 1}}} == {"state": accepted["state"]}

    def test_delete_of_a_missing_shadow_is_rejected_with_404(self) -> None:
        """Nothing to delete gives delete/rejected 404."""
        store = ShadowStore()

        replies = store.delete(THING, NOW)

        assert 404 == replies_by_topic(replies)["delete/rejected"]["code"]


class TestRepublishRuleAndTopics:
    """The RepublishDesiredConfig rule and the request topic parser."""

    def test_desired_cfg_is_republished(self) -> None:
        """The rule selects state.desired.cfg as cfg."""
        document = {"state": {"desired": {"cfg": {"act": False}, "x": 1}}}

        result = desired_cfg_republish(document)

        assert {"cfg": {"act": False}} == result

    def test_no_desired_cfg_gives_an_empty_object(self) -> None:
        """Without a desired cfg the rule publishes {}."""
        document = {"state": {"reported": {"cfg": {"act": True}}}}

        result = desired_cfg_republish(document)

        assert {} == result

    @pytest.mark.parametrize(
        ("topic", "expected"),
        [
            ("$aws/things/t1/shadow/get", ("t1", "get")),
            ("$aws/things/t1/shadow/update", ("t1", "update")),
            ("$aws/things/t1/shadow/delete", ("t1", "delete")),
            ("$aws/things/t1/shadow/get/accepted", None),
            ("$aws/things/t1/shadow/name/n/get", None),
            ("$aws/things//shadow/get", None),
            ("t1/batch", None),
        ],
    )
    def test_request_topics_are_parsed(
        self, topic: str, expected: tuple[str, str] | None
    ) -> None:
        """Only the three classic-shadow request topics are requests."""
        result = parse_request_topic(topic)

        assert expected == result


# ---------------------------------------------------------------------------
# Property: versions and delta over random update sequences

KEYS = st.sampled_from(["a", "b", "c"])
LEAVES = (
    st.integers(-2, 2)
    | st.booleans()
    | st.text(alphabet="xy", max_size=2)
    | st.lists(st.integers(0, 2), max_size=2)
)
PATCH_VALUES = st.recursive(
    LEAVES | st.none(),
    lambda children: st.dictionaries(KEYS, children, max_size=3),
    max_leaves=6,
)
PATCHES = st.dictionaries(KEYS, PATCH_VALUES, max_size=3) | st.none()
VERSION_CHOICES = st.sampled_from(["none", "current", "stale"])
STEPS = st.lists(
    st.tuples(st.sampled_from(["desired", "reported"]), PATCHES, VERSION_CHOICES),
    max_size=12,
)


def model_merge(target: JsonObject, patch: JsonObject) -> JsonObject:
    """The documented merge, written independently of the store."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            base = merged.get(key)
            merged[key] = model_merge(base if isinstance(base, dict) else {}, value)
        else:
            merged[key] = value
    return merged


def leaves(
    document: JsonObject, prefix: tuple[str, ...] = ()
) -> dict[tuple[str, ...], Any]:
    """Leaf paths of a JSON object; an empty object counts as a leaf."""
    found: dict[tuple[str, ...], Any] = {}
    for key, value in document.items():
        if isinstance(value, dict) and value:
            found |= leaves(value, (*prefix, key))
        else:
            found[(*prefix, key)] = value
    return found


def lookup(document: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(document, dict) or key not in document:
            return False, None
        document = document[key]
    return True, document


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def model_delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """Desired leaves whose reported counterpart is missing or different."""
    delta: JsonObject = {}
    for path, want in leaves(desired).items():
        found, have = lookup(reported, path)
        if found and canonical(have) == canonical(want):
            continue
        if found and want == {} and isinstance(have, dict):
            continue  # an empty object has no key that could differ
        node = delta
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = want
    return delta


class TestShadowStoreProperties:
    """Random update sequences keep versions and delta consistent."""

    @settings(max_examples=300, deadline=None)
    @given(STEPS)
    def test_version_counts_accepted_updates_and_delta_is_the_difference(
        self, steps: list[tuple[str, JsonObject | None, str]]
    ) -> None:
        """version == accepted updates; GET delta == recursive difference."""
        store = ShadowStore()
        model: dict[str, JsonObject] = {"desired": {}, "reported": {}}
        accepted = 0

        for tick, (section, patch, version_choice) in enumerate(steps):
            body: JsonObject = {"state": {section: patch}}
            if version_choice == "current":
                body["version"] = store.version(THING)
            elif version_choice == "stale":
                body["version"] = store.version(THING) + 1
            replies = replies_by_topic(store.update(THING, request(body), NOW + tick))
            if version_choice == "stale":
                assert 409 == replies["update/rejected"]["code"]
                continue
            accepted += 1
            model[section] = {} if patch is None else model_merge(model[section], patch)
            delta = model_delta(model["desired"], model["reported"])

            assert accepted == replies["update/accepted"]["version"]
            assert accepted == store.version(THING)
            got = replies_by_topic(store.get(THING, NOW))["get/accepted"]
            expected_state = {s: v for s, v in model.items() if v}
            if delta:
                expected_state["delta"] = delta
            assert expected_state == got["state"]
            if section == "desired" and patch is not None and delta:
                assert delta == replies["update/delta"]["state"]
            else:
                assert "update/delta" not in replies

        assert accepted == store.updates.get(THING, 0)


# ---------------------------------------------------------------------------
# ShadowService over a real Mosquitto

DEVICE_REPLY_TOPICS = [
    shadow_topic(THING, suffix)
    for suffix in (
        "get/accepted",
        "get/rejected",
        "get/accepted/desired/cfg",
        "update/accepted",
        "update/rejected",
        "update/delta",
        "delete/rejected",
    )
]


@attrs.define(eq=False)
class Inbox:
    """A device session's messages, waited for by topic; others are kept."""

    session: MqttSession
    kept: list[MqttMessage] = attrs.field(factory=list)

    async def next(self, suffix: str) -> JsonObject:
        """The JSON body of the next message on ``.../shadow/<suffix>``."""
        topic = shadow_topic(THING, suffix)
        for message in self.kept:
            if message.topic == topic:
                self.kept.remove(message)
                return dict(json.loads(message.payload))
        with trio.fail_after(WAIT):
            while True:
                event = await self.session.incoming.receive()
                if not isinstance(event, MqttMessage):
                    continue
                if event.topic == topic:
                    return dict(json.loads(event.payload))
                self.kept.append(event)


@asynccontextmanager
async def running_service(
    broker: MosquittoBroker, store: ShadowStore | None = None
) -> AsyncIterator[ShadowService]:
    service = ShadowService(store or ShadowStore(), clock=lambda: float(NOW))
    settings = client_settings(broker, DEFAULT_CLIENT_ID, connect_timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run, settings)
        yield service
        nursery.cancel_scope.cancel()


@attrs.define(eq=False)
class BuggyStore(ShadowStore):
    """A store whose DELETE has a bug."""

    def delete(self, thing: str, now: int, request: bytes = b"") -> list[Reply]:
        raise KeyError(thing)


@asynccontextmanager
async def device(broker: MosquittoBroker) -> AsyncIterator[Inbox]:
    """The device's session, subscribed to its own shadow reply topics."""
    settings = client_settings(broker, THING, connect_timeout=3.0)
    async with open_mqtt_session(settings) as session:
        granted = await session.subscribe([(topic, 1) for topic in DEVICE_REPLY_TOPICS])
        assert all(code < 0x80 for code in granted)
        yield Inbox(session)


class TestShadowServiceOverMqtt:
    """The service answers a device through a real broker."""

    async def test_shadow_round_trip_with_desired_cfg_republish(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """404, report, set_desired delta, then GET with the cfg republish."""
        with trio.fail_after(LIMIT):
            async with running_service(mosquitto_broker) as service, device(
                mosquitto_broker
            ) as inbox:
                await inbox.session.publish(shadow_topic(THING, "get"), b"", 1)
                rejected = await inbox.next("get/rejected")

                await inbox.session.publish(
                    shadow_topic(THING, "update"),
                    b'{"state":{"reported":{"cfg":{"act":true}}}}',
                    1,
                )
                accepted = await inbox.next("update/accepted")

                await service.set_desired(THING, {"cfg": {"act": False}})
                delta = await inbox.next("update/delta")

                await inbox.session.publish(shadow_topic(THING, "get"), b"", 1)
                got = await inbox.next("get/accepted")
                republished = await inbox.next("get/accepted/desired/cfg")

        assert {
            "code": 404,
            "message": f"No shadow exists with name: '{THING}'",
            "timestamp": NOW,
        } == rejected
        assert 1 == accepted["version"]
        assert {"reported": {"cfg": {"act": True}}} == accepted["state"]
        assert {"cfg": {"act": False}} == delta["state"]
        assert 2 == delta["version"]
        assert {"cfg": {"act": False}} == got["state"]["delta"]
        assert {"cfg": {"act": False}} == republished
        assert 2 == service.store.version(THING)

    async def test_malformed_request_is_rejected_and_service_carries_on(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """Invalid JSON gets 400 and a log line; the next request is served."""
        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with running_service(mosquitto_broker) as service, device(
                mosquitto_broker
            ) as inbox:
                update = shadow_topic(THING, "update")
                await inbox.session.publish(update, b'{"state":', 1)
                rejected = await inbox.next("update/rejected")

                empty_report = dumps({"state": {"reported": {}}})
                await inbox.session.publish(update, empty_report, 1)
                accepted = await inbox.next("update/accepted")
                await inbox.session.publish(shadow_topic(THING, "get"), b"", 1)
                republished = await inbox.next("get/accepted/desired/cfg")

        assert {"code": 400, "message": "Invalid JSON", "timestamp": NOW} == rejected
        assert 1 == accepted["version"]
        assert {} == republished
        assert 3 == service.requests
        warnings = [e for e in logs if e["event"] == "shadow_rejected"]
        assert [(400, "warning", "sandbox.shadow")] == [
            (e["code"], e["log_level"], e["actor"]) for e in warnings
        ]

    async def test_store_failure_is_answered_with_500(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """A bug in the store is logged and answered; the service carries on."""
        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with running_service(mosquitto_broker, BuggyStore()), device(
                mosquitto_broker
            ) as inbox:
                await inbox.session.publish(shadow_topic(THING, "delete"), b"", 1)
                failed = await inbox.next("delete/rejected")
                await inbox.session.publish(shadow_topic(THING, "get"), b"", 1)
                missing = await inbox.next("get/rejected")

        assert {
            "code": 500,
            "message": "Internal service failure",
            "timestamp": NOW,
        } == failed
        assert 404 == missing["code"]
        errors = [e for e in logs if e["event"] == "shadow_request_failed"]
        assert ["error"] == [e["log_level"] for e in errors]

    async def test_set_desired_needs_a_running_service(self) -> None:
        """Before run() there is no session to publish on."""
        service = ShadowService()

        with pytest.raises(RuntimeError):
            await service.set_desired(THING, {"cfg": {"act": False}})

        assert not service.store.exists(THING)
