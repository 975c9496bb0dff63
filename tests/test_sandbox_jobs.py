"""The local AWS IoT Jobs service: store semantics, then over Mosquitto.

The store tests are synchronous.  The service tests use real sockets, so no
autojump clock: each is bounded by ``trio.fail_after`` in real time.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from backends.mqtt_transport import MqttMessage, MqttSession, open_mqtt_session
from sandbox.aws_jobs import (
    DEFAULT_CLIENT_ID,
    TERMINAL_STATUSES,
    JobsService,
    JobStore,
    JsonObject,
    Reply,
    jobs_topic,
    parse_request_topic,
)
from tests.mosquitto import MosquittoBroker, client_settings

THING = "352656100000010"
OTHER = "352656100000011"
NOW = 1_700_000_000
LIMIT = 10.0
"""Real-time bound of each broker test, in seconds."""

WAIT = 5.0
"""Real-time bound of one wait for a message."""

DOCUMENT: JsonObject = {
    "operation": "app_fw_update",
    "size": 13,
    "filename": "1.0.1.hex",
    "location": {
        "protocol": "https",
        "host": "fota.s3.amazonaws.com",
        "path": "job-1",
    },
    "fwversion": "1.0.1",
}


def request(document: object) -> bytes:
    return json.dumps(document).encode()


def replies_by_topic(replies: list[Reply]) -> dict[str, JsonObject]:
    return dict(replies)


def status_update(
    store: JobStore,
    job_id: str,
    status: str,
    expected: object = None,
    now: int = NOW,
    thing: str = THING,
) -> dict[str, JsonObject]:
    """Send the firmware's update request and return the replies by topic."""
    body: JsonObject = {"status": status, "statusDetails": None, "clientToken": ""}
    if expected is not None:
        body["expectedVersion"] = expected
    return replies_by_topic(store.update(thing, job_id, request(body), now))


def next_execution(store: JobStore, thing: str = THING) -> JsonObject:
    replies = store.get_next(thing, b'{"clientToken":""}', NOW)
    return replies_by_topic(replies)["$next/get/accepted"]


def store_with_jobs(*job_ids: str) -> JobStore:
    store = JobStore()
    for offset, job_id in enumerate(job_ids):
        store.create_job(job_id, DOCUMENT, [THING], NOW + offset)
    return store


# ---------------------------------------------------------------------------
# JobStore


class TestJobStoreQueue:
    """create_job, the next execution and GET."""

    def test_no_job_gives_a_reply_without_execution(self) -> None:
        """$next/get with nothing pending answers without ``execution``."""
        store = JobStore()

        replies = store.get_next(THING, b'{"clientToken":""}', NOW)

        assert [
            ("$next/get/accepted", {"timestamp": NOW, "clientToken": ""})
        ] == replies

    def test_created_job_is_queued_and_notified(self) -> None:
        """A new job queues version 1 and notifies every target thing."""
        store = JobStore()

        replies = store.create_job("job-1", DOCUMENT, [THING, OTHER], NOW)

        execution = {
            "jobId": "job-1",
            "thingName": THING,
            "status": "QUEUED",
            "queuedAt": NOW,
            "lastUpdatedAt": NOW,
            "versionNumber": 1,
            "executionNumber": 1,
            "jobDocument": DOCUMENT,
        }
        assert [("notify-next", {"timestamp": NOW, "execution": execution})] == (
            replies[THING]
        )
        assert "notify-next" == replies[OTHER][0][0]
        assert execution == next_execution(store)["execution"]
        assert ["QUEUED"] == store.history(OTHER, "job-1")

    def test_second_job_does_not_change_the_next(self) -> None:
        """Queueing behind a pending job sends no notify-next."""
        store = store_with_jobs("job-1")

        replies = store.create_job("job-2", DOCUMENT, [THING], NOW + 5)

        assert {} == replies
        assert "job-1" == store.next_job_id(THING)
        assert "job-1" == next_execution(store)["execution"]["jobId"]

    def test_in_progress_comes_before_older_queued(self) -> None:
        """Starting a later job makes it the next one, with a notify-next."""
        store = store_with_jobs("job-1", "job-2")

        replies = status_update(store, "job-2", "IN_PROGRESS", "1")

        assert "job-2" == replies["notify-next"]["execution"]["jobId"]
        assert "job-2" == store.next_job_id(THING)

    def test_describe_finds_any_state_and_rejects_unknown(self) -> None:
        """<jobId>/get describes a finished job; an unknown one is missing."""
        store = store_with_jobs("job-1")
        status_update(store, "job-1", "SUCCEEDED", 1, now=NOW + 3)

        found = store.describe(THING, "job-1", b"", NOW + 4)
        missing = store.describe(THING, "nope", b'{"clientToken":"t"}', NOW + 4)

        execution = replies_by_topic(found)["job-1/get/accepted"]["execution"]
        assert ("SUCCEEDED", 2, NOW + 3) == (
            execution["status"],
            execution["versionNumber"],
            execution["lastUpdatedAt"],
        )
        assert [
            (
                "nope/get/rejected",
                {
                    "code": "ResourceNotFound",
                    "message": f"Job execution nope not found for thing {THING}",
                    "timestamp": NOW + 4,
                    "clientToken": "t",
                },
            )
        ] == missing

    @pytest.mark.parametrize(
        ("job_id", "document"),
        [("bad id", DOCUMENT), ("job-1", [1]), ("job-1", {"x": float("nan")})],
    )
    def test_invalid_jobs_are_refused(self, job_id: str, document: object) -> None:
        """Invalid ids and documents raise ValueError and store nothing."""
        store = JobStore()

        with pytest.raises(ValueError):
            store.create_job(job_id, document, [THING], NOW)  # type: ignore[arg-type]

        assert [] == store.jobs()

    def test_duplicate_job_id_is_refused(self) -> None:
        """A job id can be used once."""
        store = store_with_jobs("job-1")

        with pytest.raises(ValueError):
            store.create_job("job-1", DOCUMENT, [OTHER], NOW)

        assert store.execution(OTHER, "job-1") is None


class TestJobStoreUpdate:
    """UpdateJobExecution: versions, transitions and notify-next."""

    def test_in_progress_with_quoted_version_is_accepted(self) -> None:
        """The firmware's quoted expectedVersion "1" matches version 1."""
        store = store_with_jobs("job-1")

        replies = status_update(store, "job-1", "IN_PROGRESS", "1", now=NOW + 2)

        assert {"job-1/update/accepted": {"timestamp": NOW + 2, "clientToken": ""}} == (
            replies
        )
        execution = store.execution(THING, "job-1")
        assert execution is not None
        assert (2, "IN_PROGRESS", NOW + 2) == (
            execution["versionNumber"],
            execution["status"],
            execution["startedAt"],
        )

    def test_stale_version_is_rejected_with_the_state(self) -> None:
        """A stale expectedVersion is a VersionMismatch with executionState."""
        store = store_with_jobs("job-1")
        status_update(store, "job-1", "IN_PROGRESS", "1")

        replies = status_update(store, "job-1", "SUCCEEDED", "1", now=NOW + 1)

        rejected = replies["job-1/update/rejected"]
        assert "VersionMismatch" == rejected["code"]
        assert {"status": "IN_PROGRESS", "versionNumber": 2} == (
            rejected["executionState"]
        )
        assert ["QUEUED", "IN_PROGRESS"] == store.history(THING, "job-1")

    def test_terminal_state_cannot_change(self) -> None:
        """SUCCEEDED is final: a later update is an InvalidStateTransition."""
        store = store_with_jobs("job-1")
        status_update(store, "job-1", "SUCCEEDED", 1)

        replies = status_update(store, "job-1", "IN_PROGRESS", 2)

        rejected = replies["job-1/update/rejected"]
        assert "InvalidStateTransition" == rejected["code"]
        assert {"status": "SUCCEEDED", "versionNumber": 2} == (
            rejected["executionState"]
        )
        assert ["QUEUED", "SUCCEEDED"] == store.history(THING, "job-1")

    def test_finishing_the_next_job_notifies_the_one_after(self) -> None:
        """After SUCCEEDED the thing is told about the next queued job."""
        store = store_with_jobs("job-1", "job-2")
        status_update(store, "job-1", "IN_PROGRESS", "1")

        replies = store.update(
            THING, "job-1", request({"status": "SUCCEEDED"}), NOW + 9
        )

        assert ["job-1/update/accepted", "notify-next"] == [t for t, _ in replies]
        notify = replies_by_topic(replies)["notify-next"]
        assert ("job-2", NOW + 9) == (notify["execution"]["jobId"], notify["timestamp"])

    def test_last_job_finished_notifies_without_execution(self) -> None:
        """FAILED on the only job: notify-next has no execution."""
        store = store_with_jobs("job-1")

        replies = status_update(store, "job-1", "FAILED", "1", now=NOW + 4)

        assert {"timestamp": NOW + 4} == replies["notify-next"]
        assert store.next_job_id(THING) is None

    def test_progress_report_keeps_the_next_and_stores_details(self) -> None:
        """IN_PROGRESS to IN_PROGRESS is accepted without a notify-next."""
        store = store_with_jobs("job-1")
        status_update(store, "job-1", "IN_PROGRESS", "1")
        body = {
            "status": "IN_PROGRESS",
            "statusDetails": {"progress": "50"},
            "expectedVersion": 2,
            "includeJobExecutionState": True,
            "includeJobDocument": True,
        }

        replies = replies_by_topic(store.update(THING, "job-1", request(body), NOW))

        assert {
            "timestamp": NOW,
            "executionState": {
                "status": "IN_PROGRESS",
                "versionNumber": 3,
                "statusDetails": {"progress": "50"},
            },
            "jobDocument": DOCUMENT,
        } == replies["job-1/update/accepted"]
        assert "notify-next" not in replies

    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            (b'{"status":', "InvalidJson"),
            (b"\xff\xfe", "InvalidJson"),
            (b"[1]", "InvalidRequest"),
            (b'{"status":"QUEUED"}', "InvalidRequest"),
            (b'{"status":"DONE"}', "InvalidRequest"),
            (b'{"status":"FAILED","statusDetails":{"a":1}}', "InvalidRequest"),
            (b'{"status":"FAILED","expectedVersion":"x"}', "InvalidRequest"),
            (b'{"status":"FAILED","expectedVersion":true}', "InvalidRequest"),
            (b'{"status":"FAILED","clientToken":7}', "InvalidRequest"),
            (b'{"status":"FAILED","executionNumber":2}', "ResourceNotFound"),
        ],
    )
    def test_malformed_updates_are_rejected(self, payload: bytes, code: str) -> None:
        """Each malformed request gets its documented code; nothing changes."""
        store = store_with_jobs("job-1")

        replies = replies_by_topic(store.update(THING, "job-1", payload, NOW))

        assert code == replies["job-1/update/rejected"]["code"]
        assert ["QUEUED"] == store.history(THING, "job-1")

    def test_unknown_job_and_next_updates_are_rejected(self) -> None:
        """An unknown job is ResourceNotFound; updating $next is InvalidTopic."""
        store = store_with_jobs("job-1")

        unknown = status_update(store, "job-9", "FAILED")
        next_update = status_update(store, "$next", "FAILED")

        assert "ResourceNotFound" == unknown["job-9/update/rejected"]["code"]
        assert "InvalidTopic" == next_update["$next/update/rejected"]["code"]


class TestJobStoreCancel:
    """The control plane's CancelJob."""

    def test_cancel_moves_the_next_to_the_following_job(self) -> None:
        """Canceling the next job notifies the thing of the one after."""
        store = store_with_jobs("job-1", "job-2")

        replies = store.cancel_job("job-1", NOW + 7)

        [(topic, notify)] = replies[THING]
        assert ("notify-next", "job-2") == (topic, notify["execution"]["jobId"])
        assert ["QUEUED", "CANCELED"] == store.history(THING, "job-1")

    def test_in_progress_is_canceled_only_with_force(self) -> None:
        """Without force an IN_PROGRESS execution keeps running."""
        store = store_with_jobs("job-1")
        status_update(store, "job-1", "IN_PROGRESS", "1")

        kept = store.cancel_job("job-1", NOW)
        forced = store.cancel_job("job-1", NOW, force=True)

        assert {} == kept
        assert {THING: [("notify-next", {"timestamp": NOW})]} == forced
        assert ["QUEUED", "IN_PROGRESS", "CANCELED"] == store.history(THING, "job-1")

    def test_unknown_job_cannot_be_canceled(self) -> None:
        """CancelJob of a job never created raises KeyError."""
        store = JobStore()

        with pytest.raises(KeyError):
            store.cancel_job("job-1", NOW)

        assert [] == store.jobs()


class TestTopics:
    """Request topics."""

    @pytest.mark.parametrize(
        ("topic", "parsed"),
        [
            (f"$aws/things/{THING}/jobs/$next/get", (THING, "$next", "get")),
            (f"$aws/things/{THING}/jobs/j1/update", (THING, "j1", "update")),
            (f"$aws/things/{THING}/jobs/j1/update/accepted", None),
            (f"$aws/things/{THING}/jobs/notify-next", None),
            (f"$aws/things/{THING}/shadow/get", None),
            ("$aws/things//jobs/j1/get", None),
        ],
    )
    def test_request_topics_are_parsed(
        self, topic: str, parsed: tuple[str, str, str] | None
    ) -> None:
        """Only ``.../jobs/<jobId>/get|update`` are requests."""
        result = parse_request_topic(topic)

        assert parsed == result


# ---------------------------------------------------------------------------
# Properties

UPDATES = st.lists(
    st.tuples(
        st.sampled_from(["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]),
        st.sampled_from(["none", "current", "current-str", "stale"]),
    ),
    max_size=12,
)


class TestJobStoreProperties:
    """Random update sequences keep versions and terminal states."""

    @settings(max_examples=300, deadline=None)
    @given(UPDATES)
    def test_version_counts_accepted_updates_and_terminal_states_stick(
        self, steps: list[tuple[str, str]]
    ) -> None:
        """versionNumber == accepted updates + 1; a terminal status is final."""
        store = store_with_jobs("job-1")
        accepted: list[str] = []

        for tick, (status, version_choice) in enumerate(steps):
            execution = store.execution(THING, "job-1")
            assert execution is not None
            current = execution["versionNumber"]
            expected: object = {
                "none": None,
                "current": current,
                "current-str": str(current),
                "stale": current + 1,
            }[version_choice]
            replies = status_update(store, "job-1", status, expected, NOW + tick)
            if version_choice == "stale":
                assert "VersionMismatch" == replies["job-1/update/rejected"]["code"]
            elif accepted and accepted[-1] in TERMINAL_STATUSES:
                rejected = replies["job-1/update/rejected"]
                assert "InvalidStateTransition" == rejected["code"]
            else:
                assert "job-1/update/accepted" in replies
                assert ("notify-next" in replies) == (status != "IN_PROGRESS")
                accepted.append(status)

        final = store.execution(THING, "job-1")
        assert final is not None
        assert len(accepted) + 1 == final["versionNumber"]
        assert ["QUEUED", *accepted] == store.history(THING, "job-1")
        assert (accepted[-1] if accepted else "QUEUED") == final["status"]


# ---------------------------------------------------------------------------
# JobsService over a real Mosquitto

DEVICE_SUBSCRIPTIONS = [
    (jobs_topic(THING, "notify-next"), 1),
    (jobs_topic(THING, "$next/get/#"), 1),
    (jobs_topic(THING, "+/update/accepted"), 1),
    (jobs_topic(THING, "+/update/rejected"), 1),
]


@attrs.define(eq=False)
class Inbox:
    """A device session's messages, waited for by topic; others are kept."""

    session: MqttSession
    kept: list[MqttMessage] = attrs.field(factory=list)

    async def publish(self, suffix: str, body: bytes) -> None:
        await self.session.publish(jobs_topic(THING, suffix), body, 1)

    async def next(self, suffix: str) -> JsonObject:
        """The JSON body of the next message on ``.../jobs/<suffix>``."""
        topic = jobs_topic(THING, suffix)
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


@attrs.define(eq=False)
class BuggyStore(JobStore):
    """A store whose DescribeJobExecution has a bug."""

    def describe(
        self, thing: str, job_id: str, request: bytes, now: int
    ) -> list[Reply]:
        raise KeyError(job_id)


@asynccontextmanager
async def running_service(
    broker: MosquittoBroker, store: JobStore | None = None
) -> AsyncIterator[JobsService]:
    service = JobsService(store or JobStore(), clock=lambda: float(NOW))
    settings = client_settings(broker, DEFAULT_CLIENT_ID, connect_timeout=3.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run, settings)
        yield service
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def device(broker: MosquittoBroker) -> AsyncIterator[Inbox]:
    """The device's session, subscribed like the nRF aws_fota library."""
    settings = client_settings(broker, THING, connect_timeout=3.0)
    async with open_mqtt_session(settings) as session:
        granted = await session.subscribe(DEVICE_SUBSCRIPTIONS)
        assert all(code < 0x80 for code in granted)
        yield Inbox(session)


def update_body(status: str, expected: str) -> bytes:
    return request(
        {
            "status": status,
            "statusDetails": None,
            "expectedVersion": expected,
            "clientToken": "",
        }
    )


class TestJobsServiceOverMqtt:
    """The service answers a device through a real broker."""

    async def test_fota_job_round_trip(self, mosquitto_broker: MosquittoBroker) -> None:
        """No job, create_job, IN_PROGRESS accepted, stale SUCCEEDED rejected."""
        with trio.fail_after(LIMIT):
            async with running_service(mosquitto_broker) as service, device(
                mosquitto_broker
            ) as inbox:
                await inbox.publish("$next/get", b'{"clientToken":""}')
                nothing = await inbox.next("$next/get/accepted")

                await service.create_job("job-1", DOCUMENT, [THING])
                notify = await inbox.next("notify-next")

                await inbox.publish("job-1/update", update_body("IN_PROGRESS", "1"))
                accepted = await inbox.next("job-1/update/accepted")
                await inbox.publish("job-1/update", update_body("SUCCEEDED", "1"))
                rejected = await inbox.next("job-1/update/rejected")

        assert {"timestamp": NOW, "clientToken": ""} == nothing
        assert DOCUMENT == notify["execution"]["jobDocument"]
        assert ("job-1", 1, "QUEUED") == (
            notify["execution"]["jobId"],
            notify["execution"]["versionNumber"],
            notify["execution"]["status"],
        )
        assert {"timestamp": NOW, "clientToken": ""} == accepted
        assert "VersionMismatch" == rejected["code"]
        assert {"status": "IN_PROGRESS", "versionNumber": 2} == (
            rejected["executionState"]
        )
        assert ["QUEUED", "IN_PROGRESS"] == service.store.history(THING, "job-1")
        assert 3 == service.requests

    async def test_malformed_request_is_rejected_and_service_carries_on(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """Invalid JSON gets InvalidJson and a warning; the next is served."""
        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with running_service(mosquitto_broker) as service, device(
                mosquitto_broker
            ) as inbox:
                await service.create_job("job-1", DOCUMENT, [THING])
                await inbox.next("notify-next")
                await inbox.publish("job-1/update", b'{"status":')
                rejected = await inbox.next("job-1/update/rejected")

                await inbox.publish("job-1/update", update_body("SUCCEEDED", "1"))
                accepted = await inbox.next("job-1/update/accepted")
                done = await inbox.next("notify-next")

        assert ("InvalidJson", NOW) == (rejected["code"], rejected["timestamp"])
        assert {"timestamp": NOW, "clientToken": ""} == accepted
        assert {"timestamp": NOW} == done
        warnings = [e for e in logs if e["event"] == "jobs_rejected"]
        assert [("InvalidJson", "warning", "sandbox.jobs")] == [
            (e["code"], e["log_level"], e["actor"]) for e in warnings
        ]

    async def test_store_failure_is_answered_with_internal_error(
        self, mosquitto_broker: MosquittoBroker
    ) -> None:
        """A bug in the store is logged and answered; the service carries on."""
        with trio.fail_after(LIMIT), capture_logs() as logs:
            async with running_service(mosquitto_broker, BuggyStore()), device(
                mosquitto_broker
            ) as inbox:
                await inbox.session.subscribe([(jobs_topic(THING, "+/get/#"), 1)])
                await inbox.publish("job-1/get", b"")
                failed = await inbox.next("job-1/get/rejected")
                await inbox.publish("$next/get", b"")
                nothing = await inbox.next("$next/get/accepted")

        assert {
            "code": "InternalError",
            "message": "Internal service failure",
            "timestamp": NOW,
        } == failed
        assert {"timestamp": NOW} == nothing
        errors = [e for e in logs if e["event"] == "jobs_request_failed"]
        assert ["error"] == [e["log_level"] for e in errors]

    async def test_create_job_needs_a_running_service(self) -> None:
        """Before run() there is no session to publish on."""
        service = JobsService()

        with pytest.raises(RuntimeError):
            await service.create_job("job-1", DOCUMENT, [THING])

        assert [] == service.store.jobs()
