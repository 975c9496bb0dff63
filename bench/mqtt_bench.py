"""MQTT publish benchmark: the actor path against raw gmqtt, in one run.

Run with ``python -m bench.mqtt_bench [--messages N] [--size BYTES]``.

Design
------
One Mosquitto with mutual TLS on a free loopback port (``tests.mosquitto``)
serves three paths, each publishing N QoS 1 messages of ``--size`` bytes to
``<client id>/batch`` with at most ``WINDOW`` unacknowledged at any time:

(a) ``raw``: gmqtt under plain ``asyncio.run``, no Trio anywhere.  Its
    public ``Client.publish()``; PUBACKs are counted by wrapping the package
    handler's PUBACK method (gmqtt 0.8 has no PUBACK callback).
(b) ``session``: our ``MqttSession`` (gmqtt under trio-asyncio), publishing
    with ``session.publish()`` and reading ``MqttPubAck`` off ``incoming``.
(c) ``actors``: a ``Bus``, a ``CloudActor`` and an ``AwsIotBackend``.  The
    benchmark publishes ``DataSendBatch`` on the bus; the cloud actor puts
    each into its QoS list, transmits it with ``batch_send`` at QoS 1, and
    removes it on the ``WrapperDataAck`` the PUBACK becomes.  The removal is
    observed through the QoS library's ``removed`` callback.

Why a window of 10 for all three: the QoS library holds at most 10
unacknowledged messages (``pending_max``, the firmware's pool), and a
message handed over while the pool is full is dropped (``qos_pool_full``).
A producer on the actor path must therefore wait for acknowledgements, as
the firmware's data module does; giving the baselines the same window keeps
the comparison about per-message cost, not about pipelining depth.

Measured per path: throughput (messages / seconds from the first hand-over
to the last acknowledgement) and publish-to-broker latency (hand-over to
PUBACK as seen by that path's caller; for (c) that includes the
``WrapperDataAck`` trip back through the cloud actor's mailbox).  Each round
runs a warm-up of ``WARMUP`` messages first, not counted.  Rounds alternate
the paths (a, b, c, a, b, c, ...); throughput is the median over rounds,
latency percentiles are over every counted message of every round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeAlias

import attrs
import gmqtt  # type: ignore[import-untyped]
import pytest
import trio
from gmqtt.mqtt.constants import MQTTv311  # type: ignore[import-untyped]

from actors.backoff import ReconnectBackoff
from actors.cloud import CloudActor
from actors.runtime import Bus
from backends.aws import AwsIotBackend
from backends.mqtt_transport import MqttPubAck, MqttSettings, open_mqtt_session
from bench.results import (
    RunResult,
    latency_quantile,
    median_throughput,
    paired_ratio,
)
from protocols.base import Payload
from protocols.data import DataSendBatch
from protocols.modem import ModemInitialized, ModemLteConnected
from protocols.qos import QosMessage
from tests.mosquitto import MosquittoBroker, Pki, client_settings
from tracker.logs import configure_logging

WINDOW: Final = 10
"""Unacknowledged messages allowed per path: the QoS library's pool size."""

WARMUP: Final = 100
"""Messages sent before each counted run of a path (TLS session, caches)."""

SEQ_DIGITS: Final = 10
"""Leading digits of every payload: its sequence number within a run."""

PATH_TIMEOUT: Final = 120.0
"""Seconds one path may take before the benchmark gives up."""

CONNECTED: Final = "SUB_STATE_CLOUD_CONNECTED"

Runs: TypeAlias = list[tuple[int, int]]
"""The runs of one path, in order: (messages, window) each."""

# Ten tries of 10 s each: the broker is local, the first attempt succeeds.
BACKOFF_TABLE: Final = (10,) * 12


# ---------------------------------------------------------------------------
# Results


@attrs.define
class PathResults:
    """Every round of one path."""

    name: str
    runs: list[RunResult] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    @property
    def loaded(self) -> list[RunResult]:
        return [run for run in self.runs if run.window == WINDOW]

    @property
    def throughput(self) -> float:
        return median_throughput(self.loaded)

    def ratio_to(self, baseline: PathResults) -> float:
        """Median over rounds of this path's throughput / the baseline's."""
        return paired_ratio(self.loaded, baseline.loaded)

    def latency(self, quantile: float, window: int = WINDOW) -> float:
        """The latency quantile over the runs with this window."""
        runs = [run for run in self.runs if run.window == window]
        return latency_quantile(runs, quantile)


def payload_for(seq: int, size: int) -> bytes:
    """``size`` bytes starting with ``seq`` in decimal."""
    return f"{seq:0{SEQ_DIGITS}d}".encode().ljust(size, b".")


def seq_of(data: bytes) -> int:
    return int(data[:SEQ_DIGITS])


# ---------------------------------------------------------------------------
# The broker


class BenchBroker(MosquittoBroker):
    """The test broker, without per-packet debug logging.

    The test configuration logs every packet (``log_type all``), which
    would make the broker, not the clients, the bottleneck.  "running" is
    an information message, so start-up detection still works.
    """

    def write_conf(self) -> None:
        super().write_conf()
        quiet = "\n".join(
            f"log_type {kind}" for kind in ("error", "warning", "notice", "information")
        )
        text = self.conf_file.read_text().replace("log_type all", quiet)
        self.conf_file.write_text(text)


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


# ---------------------------------------------------------------------------
# (a) raw gmqtt under asyncio


async def _raw_gmqtt(settings: MqttSettings, runs: Runs, size: int) -> list[RunResult]:
    assert settings.cert_file is not None
    context = ssl.create_default_context(cafile=str(settings.ca_file))
    context.load_cert_chain(settings.cert_file, settings.key_file)
    client = gmqtt.Client(settings.client_id)
    topic = f"{settings.client_id}/batch"
    window = asyncio.Semaphore(WINDOW)
    # MQTT 3.1.1 §4.6: a server sends PUBACKs in the order it received the
    # PUBLISH packets, so the oldest hand-over time belongs to each PUBACK.
    sent: deque[float] = deque()
    latencies: list[float] = []
    last_ack = 0.0

    handler = client._package_handler
    handle_puback = handler._handle_puback_packet

    def on_puback(cmd: int, packet: bytes) -> None:
        nonlocal last_ack
        handle_puback(cmd, packet)
        last_ack = time.perf_counter()
        latencies.append(last_ack - sent.popleft())
        window.release()

    # Before connect: the handler caches its dispatch table on first use.
    handler._handle_puback_packet = on_puback
    await client.connect(
        settings.host, settings.port, ssl=context, version=MQTTv311, keepalive=1200
    )
    results = []
    try:
        for n, window_size in runs:
            window = asyncio.Semaphore(window_size)
            latencies = []
            start = time.perf_counter()
            for seq in range(n):
                payload = payload_for(seq, size)
                await window.acquire()
                sent.append(time.perf_counter())
                client.publish(topic, payload, qos=1)
            for _ in range(window_size):
                await window.acquire()
            results.append(RunResult(n, window_size, last_ack - start, latencies))
    finally:
        await client.disconnect()
    return results


def run_raw(settings: MqttSettings, runs: Runs, size: int) -> list[RunResult]:
    async def bounded() -> list[RunResult]:
        return await asyncio.wait_for(_raw_gmqtt(settings, runs, size), PATH_TIMEOUT)

    return asyncio.run(bounded())


# ---------------------------------------------------------------------------
# (b) MqttSession under trio-asyncio


async def run_session(
    settings: MqttSettings, runs: Runs, size: int
) -> list[RunResult]:
    topic = f"{settings.client_id}/batch"
    window = trio.Semaphore(WINDOW)
    # Packet id -> hand-over time; a PUBACK may be read before publish()
    # has returned its packet id, hence ``early`` (as in AwsIotBackend).
    in_flight: dict[int, float] = {}
    early: dict[int, float] = {}
    latencies: list[float] = []
    last_ack = 0.0
    results = []

    async with open_mqtt_session(settings) as session:

        async def read_acks() -> None:
            nonlocal last_ack
            async for event in session.incoming:
                if not isinstance(event, MqttPubAck):
                    continue
                last_ack = time.perf_counter()
                sent_at = in_flight.pop(event.message_id, None)
                if sent_at is None:
                    early[event.message_id] = last_ack
                else:
                    latencies.append(last_ack - sent_at)
                window.release()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_acks, name="bench.read_acks")
            for n, window_size in runs:
                window = trio.Semaphore(window_size)
                latencies = []
                start = time.perf_counter()
                for seq in range(n):
                    payload = payload_for(seq, size)
                    await window.acquire()
                    sent_at = time.perf_counter()
                    mid = await session.publish(topic, payload, 1)
                    acked_at = early.pop(mid, None)
                    if acked_at is None:
                        in_flight[mid] = sent_at
                    else:
                        latencies.append(acked_at - sent_at)
                for _ in range(window_size):
                    await window.acquire()
                results.append(
                    RunResult(n, window_size, last_ack - start, latencies)
                )
            nursery.cancel_scope.cancel()
    return results


# ---------------------------------------------------------------------------
# (c) the actor path


async def run_actors(
    settings: MqttSettings, runs: Runs, size: int, notes: list[str]
) -> list[RunResult]:
    bus = Bus()
    backend = AwsIotBackend(settings.client_id, settings)
    cloud = CloudActor(
        bus, backend=backend, backoff=ReconnectBackoff(BACKOFF_TABLE, max_retries=10)
    )
    window = trio.Semaphore(WINDOW)
    sent: dict[int, float] = {}
    latencies: list[float] = []
    last_ack = 0.0
    results = []

    # The QoS library's own callback, wrapped without changing what it does
    # (as tests/test_aws_reconnect.py spies on it).
    removed: Callable[[QosMessage, str], None] = cloud.qos.removed

    def on_removed(message: QosMessage, why: str) -> None:
        nonlocal last_ack
        removed(message, why)
        if why == "acknowledged":
            last_ack = time.perf_counter()
            latencies.append(last_ack - sent.pop(seq_of(message.payload.data)))
            window.release()
        else:
            # Expired or refused (pool full): a lost message, and a stuck
            # producer; the benchmark's timeout reports it.
            notes.append(f"message {seq_of(message.payload.data)} {why}")

    cloud.qos.removed = on_removed

    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        await nursery.start(cloud.run)
        bus.publish(ModemInitialized())
        bus.publish(ModemLteConnected())
        with trio.fail_after(10):
            while cloud.sub_state != CONNECTED:
                await trio.sleep(0.01)

        for n, window_size in runs:
            window = trio.Semaphore(window_size)
            latencies = []
            before = dict(cloud.counters)
            start = time.perf_counter()
            for seq in range(n):
                batch = DataSendBatch(Payload(payload_for(seq, size)))
                await window.acquire()
                sent[seq] = time.perf_counter()
                bus.publish(batch)
            for _ in range(window_size):
                await window.acquire()
            results.append(RunResult(n, window_size, last_ack - start, latencies))
            extra = cloud.counters["transmissions"] - before.get("transmissions", 0) - n
            if extra:
                notes.append(f"{extra} retransmissions in a run of {n}")
        overflows = cloud.counters["mailbox_overflows"]
        if overflows:
            notes.append(f"{overflows} cloud mailbox overflows")
        nursery.cancel_scope.cancel()
    return results


# ---------------------------------------------------------------------------
# The report


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def report(
    paths: list[PathResults], messages: int, size: int, rounds: int, serial: int
) -> str:
    raw = paths[0]

    def cell(path: PathResults, quantile: float, window: int) -> str:
        value = path.latency(quantile, window)
        ratio = value / raw.latency(quantile, window)
        return f"{value * 1000:>7.2f} {ratio:>5.2f}"

    lines = [
        f"MQTT QoS 1 publish, {size} B payloads, mutual TLS to Mosquitto on "
        f"loopback, {rounds} round(s)",
        f"throughput and 'loaded' latency: {messages} messages per round, window "
        f"{WINDOW}; 'serial' latency: {serial} messages per round, window 1",
        "msg/s = median over rounds; x = median of the per-round ratios to raw",
        "latency = hand-over to PUBACK, in ms, over all rounds; x = ratio to raw",
        "",
        f"{'path':<8} {'msg/s':>7} {'x':>5} | {'loaded p50':>13} {'p99':>13} "
        f"| {'serial p50':>13} {'p99':>13}",
    ]
    for path in paths:
        lines.append(
            f"{path.name:<8} {path.throughput:>7.0f} "
            f"{path.ratio_to(raw):>5.2f} | "
            f"{cell(path, 0.50, WINDOW)} {cell(path, 0.99, WINDOW)} | "
            f"{cell(path, 0.50, 1)} {cell(path, 0.99, 1)}"
        )
    lines.append("")
    for path in paths:
        per_round = ", ".join(f"{run.throughput:.0f}" for run in path.loaded)
        lines.append(f"{path.name} msg/s per round: {per_round}")
    for path in paths:
        for note in path.notes:
            lines.append(f"NOTE {path.name}: {note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mqtt_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--messages", type=int, default=2000, help="per run")
    parser.add_argument("--size", type=int, default=256, help="payload bytes")
    parser.add_argument("--rounds", type=int, default=5, help="runs per path")
    parser.add_argument(
        "--serial", type=int, default=300, help="window-1 messages per round"
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.rounds, args.serial) < 1:
        parser.error("--messages, --rounds and --serial must be positive")
    if args.size < SEQ_DIGITS:
        parser.error(f"--size must be at least {SEQ_DIGITS} (the sequence number)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = find_mosquitto()
    if binary is None:
        print(
            "mqtt_bench: the mosquitto broker is not installed; it must be in "
            "PATH or at /usr/sbin/mosquitto (Debian: apt-get install -y "
            "mosquitto)",
            file=sys.stderr,
        )
        return 2
    # Warnings only: a qos_pool_full or a mailbox overflow must show.
    configure_logging("warning", "console")

    # The warm-up's result is dropped below ([1:]).
    runs = [(WARMUP, WINDOW), (args.messages, WINDOW), (args.serial, 1)]
    paths = [PathResults("raw"), PathResults("session"), PathResults("actors")]
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp:
        pki_dir, broker_dir = Path(tmp, "pki"), Path(tmp, "mosquitto")
        pki_dir.mkdir()
        broker_dir.mkdir()
        broker = BenchBroker(broker_dir, Pki(pki_dir), binary)
        try:
            try:
                broker.start()
            except pytest.fail.Exception as exc:
                print(f"mqtt_bench: mosquitto did not start: {exc}", file=sys.stderr)
                return 2
            for round_no in range(args.rounds):
                raw, session, actors = (
                    client_settings(broker, f"bench-{name}-{round_no}")
                    for name in ("raw", "session", "device")
                )
                paths[0].runs += run_raw(raw, runs, args.size)[1:]
                paths[1].runs += _trio_run(run_session, session, runs, args.size)[1:]
                paths[2].runs += _trio_run(
                    run_actors, actors, runs, args.size, paths[2].notes
                )[1:]
        finally:
            broker.stop()
    print(report(paths, args.messages, args.size, args.rounds, args.serial))
    return 0


def _trio_run(fn: Callable[..., Any], *args: Any) -> list[RunResult]:
    async def bounded() -> list[RunResult]:
        with trio.fail_after(PATH_TIMEOUT):
            result: list[RunResult] = await fn(*args)
            return result

    return trio.run(bounded)


if __name__ == "__main__":
    sys.exit(main())
