"""Accepted samples survive until the cloud has them (actors.data, persistence).

Unit tests run a real ``StateStore`` in ``tmp_path`` with the scripted cloud
rig under the autojump clock.  The SIGKILL test kills a child process that
runs a whole ``Service`` in the middle of a send burst, then runs a second
``Service`` on the same state directory.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from actors.data import DataActor
from backends.scripted import Connect
from protocols.data import DataReady
from protocols.json_codec import JsonCodec
from protocols.modem import ModemInitialized, ModemLteConnected
from protocols.peripherals import SensorFuelGaugeReady
from state.store import StateStore
from tests.rig import Rig, start_rig

ROOT = Path(__file__).resolve().parent.parent


async def rig_with_data(
    nursery: trio.Nursery, store: StateStore, *, ack_delay: float | None
) -> tuple[Rig, DataActor]:
    rig = await start_rig(nursery, [Connect(after=1.0)], ack_delay=ack_delay)
    # A wall clock that moves with the virtual one.
    wall = 1_800_000_000 - trio.current_time()
    data = DataActor(
        rig.bus,
        codec=JsonCodec(),
        store=store,
        clock=lambda: wall + trio.current_time(),
    )
    await nursery.start(data.run)
    rig.publish(ModemInitialized())
    rig.publish(ModemLteConnected())
    await trio.sleep(2)
    assert data.state == "STATE_CLOUD_CONNECTED"
    return rig, data


def payload_ids(rig: Rig, name: str | None = None) -> list[int]:
    """Every sample id the scripted cloud was sent, sorted."""
    return sorted(
        i
        for call in rig.backend.sent(name)
        if call.payload
        for i in call.payload.sample_ids
    )


def states(store: StateStore) -> list[tuple[str, str | None]]:
    return [(state, reason) for _, _, state, reason in store.samples()]


class TestUnackedData:
    async def test_accepted_samples_are_queued_then_delivered(
        self, autojump_clock: object, nursery: trio.Nursery, tmp_path: Path
    ) -> None:
        """Rows are queued on acceptance and delivered once acknowledged."""
        store = StateStore(tmp_path / "state.db")
        rig, _ = await rig_with_data(nursery, store, ack_delay=0.5)
        for level in (80, 81, 82):
            rig.publish(
                SensorFuelGaugeReady(battery_level=level, timestamp=1000 + level)
            )
        await trio.sleep(0.1)
        assert states(store) == [("queued", None)] * 3

        rig.publish(DataReady())
        await trio.sleep(5)

        assert states(store) == [("delivered", None)] * 3
        assert payload_ids(rig) == [1, 2, 3]

    async def test_unacked_batch_expires_as_dropped(
        self, autojump_clock: object, nursery: trio.Nursery, tmp_path: Path
    ) -> None:
        """A batch never acknowledged is dropped ("expired") after 48 s."""
        store = StateStore(tmp_path / "state.db")
        rig, _ = await rig_with_data(nursery, store, ack_delay=None)
        for level in (80, 81, 82):
            rig.publish(
                SensorFuelGaugeReady(battery_level=level, timestamp=1000 + level)
            )
        await trio.sleep(0.1)
        rig.publish(DataReady())
        await trio.sleep(10)
        # The newest went without QoS (delivered), the two older in the batch.
        assert states(store) == [("sent", None)] * 2 + [("delivered", None)]

        await trio.sleep(60)

        assert states(store) == [("dropped", "expired")] * 2 + [("delivered", None)]

    async def test_ring_overwrite_is_a_policy_drop(
        self, autojump_clock: object, nursery: trio.Nursery, tmp_path: Path
    ) -> None:
        """An entry overwritten before it was sent is dropped ("ring_overwritten")."""
        store = StateStore(tmp_path / "state.db")
        rig, _ = await rig_with_data(nursery, store, ack_delay=0.5)
        for level in range(5):  # the battery ring holds 3
            rig.publish(
                SensorFuelGaugeReady(battery_level=level, timestamp=1000 + level)
            )
        await trio.sleep(0.1)

        assert (
            states(store)
            == [("dropped", "ring_overwritten")] * 2 + [("queued", None)] * 3
        )

    async def test_a_fresh_actor_resends_pending_samples(
        self, autojump_clock: object, nursery: trio.Nursery, tmp_path: Path
    ) -> None:
        """Rows queued or sent by an earlier actor are sent again."""
        store = StateStore(tmp_path / "state.db")
        queued = store.add_sample("battery", json.dumps(
            {"boot_unix_ms": 1_700_000_000_000,
             "sample": {"level": 50, "timestamp": 10}}
        ))  # fmt: skip
        sent = store.add_sample("battery", json.dumps(
            {"boot_unix_ms": 1_700_000_000_000,
             "sample": {"level": 51, "timestamp": 20}}
        ))  # fmt: skip
        store.mark([sent], "sent")

        rig, data = await rig_with_data(nursery, store, ack_delay=0.5)
        assert data.counters["samples_reloaded"] == 2
        rig.publish(DataReady())
        await trio.sleep(5)

        assert states(store) == [("delivered", None)] * 2
        assert payload_ids(rig) == [queued, sent]
        # The UNIX time of the sample is kept across the new uptime base.
        payload = rig.backend.sent("batch_send")[0].payload
        assert payload is not None
        batch = json.loads(payload.data)
        assert batch["bat"][0]["ts"] == 1_700_000_000_010


# The child: a Service with the simulated cloud, pressing a button fast.
CHILD = """
import sys, trio
from tracker.config import parse_config
from tracker.service import Service
service = Service(parse_config(sys.argv[1]))
async def main():
    async with trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        await service.booted.wait()
        print("ready", file=sys.stderr, flush=True)
trio.run(main)
"""

POLICY = {"ring_overwritten", "expired", "pool_full"}


def service_config(state: Path, presses: int) -> str:
    text = f"""
[state]
directory = "{state}"
[cloud]
service = "simulated"
[modem]
attach_delay = 0.1
[cloud.simulated]
connect_delay = 0.1
ack_delay = 0.3
"""
    for n in range(presses):
        text += f"[[sources.presses]]\nat = {0.3 + n * 0.04:.2f}\n"
    return text


class TestSigkill:
    def test_kill_mid_burst_loses_nothing(self, tmp_path: Path) -> None:
        """Every accepted sample is delivered or dropped by policy after a kill.

        Guarantee tested: at least once.  Exactly once cannot be promised: a
        kill between the cloud's acknowledgement and the commit of
        ``delivered`` leaves rows ``sent``, and the second run sends them
        again (the duplicates allowed are exactly the rows still pending
        at the kill).  So: every row ends ``delivered`` or ``dropped`` with a
        policy reason, none is left ``queued``/``sent``, and every row still
        pending after the kill was sent again by the second run or dropped
        by policy there.
        """
        from backends.scripted import ScriptedBackend
        from tracker.config import parse_config
        from tracker.service import Service, make_backend

        state = tmp_path / "var"
        with subprocess.Popen(
            [sys.executable, "-c", CHILD, service_config(state, 100)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        ) as child:
            assert child.stderr is not None
            assert child.stderr.readline() == b"ready\n"
            time.sleep(1.5)  # in the middle of the 4 s burst of presses
            child.send_signal(signal.SIGKILL)
        assert child.returncode == -signal.SIGKILL

        store = StateStore(state / "state.db")
        after_kill = {i: (s, r) for i, _, s, r in store.samples()}
        pending = {i for i, (s, _) in after_kill.items() if s in ("queued", "sent")}
        assert any(s == "delivered" for s, _ in after_kill.values())
        assert pending, "the kill should land with samples in flight"
        store.close()

        backends: list[ScriptedBackend] = []

        def factory(config: object) -> ScriptedBackend:
            backend = make_backend(config)  # type: ignore[arg-type]
            assert isinstance(backend, ScriptedBackend)
            backends.append(backend)
            return backend

        service = Service(
            parse_config(service_config(state, 0)), backend_factory=factory
        )

        async def second_run() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.booted.wait()
                with trio.fail_after(20):
                    while True:
                        await trio.sleep(0.2)
                        assert service.state is not None
                        left = {i for i, _, _ in service.state.pending_samples()}
                        if not left & set(after_kill):
                            break
                service.request_stop()

        trio.run(second_run)

        # Rows the second run accepted itself wait for its own next send:
        # only the rows accepted before the kill are judged.
        final = [row for row in StateStore(state / "state.db").samples()
                 if row[0] in after_kill]  # fmt: skip
        assert len(final) == len(after_kill)
        for sample_id, _, state_, reason in final:
            assert state_ in ("delivered", "dropped"), (sample_id, state_)
            if state_ == "dropped":
                assert reason in POLICY, (sample_id, reason)
        resent = {
            i
            for backend in backends
            for call in backend.sent()
            if call.payload is not None
            for i in call.payload.sample_ids
        }
        by_id = {i: (s, r) for i, _, s, r in final}
        for sample_id in pending:
            assert sample_id in resent or by_id[sample_id][0] == "dropped", sample_id
        # Rows settled before the kill were not sent again.
        settled = set(after_kill) - pending
        assert not settled & resent
