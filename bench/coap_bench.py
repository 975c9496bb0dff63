"""LwM2M Send benchmark: our CoAP session and backend against raw aiocoap.

Run with ``python -m bench.coap_bench [--messages N] [--window W]``.

Design
------
The local LwM2M server (``sandbox.lwm2m_server.LocalLwm2mServer``) runs in a
child process on loopback, plain CoAP and DTLS (PSK) on free ports, so the
client paths measured here have this process (and one core) to themselves,
as the MQTT benchmark's clients have against Mosquitto.  Every path sends
the same body: the SenML-CBOR of a typical regular update (GNSS, modem
dynamic data, battery, environment), as ``Lwm2mCodec.encode_regular`` writes
it into the objects and the backend reads it back.  Each is a confirmable
``POST /dp`` answered 2.04, with at most ``--window`` requests outstanding:

(a) ``raw``: an aiocoap client context under trio-asyncio.  The whole run
    is one asyncio coroutine (one crossing of the bridge per run), each
    request a ``context.request()`` whose response future counts it.
(b) ``session``: our ``CoapSession.request("POST", "/dp", ...)``, one Trio
    task per outstanding request.
(c) ``backend``: the whole ``Lwm2mBackend``, registered to the server; the
    benchmark calls ``data_send(payload, True, 0)`` and counts the
    ``WrapperSendResult`` the backend emits for it (``sample_ids`` carries
    the sequence number).  The backend does not serialise sends (each is a
    background task), and the cloud actor is not needed for this.

aiocoap keeps NSTART = 1 (RFC 7252 4.7): one confirmable exchange per peer
is on the wire at a time, the others wait in its backlog.  A window above
1 therefore only queues requests inside aiocoap, and the loaded latency is
mostly queueing.  It still lets the caller's work overlap the server's:
aiocoap sends the next backlogged message as soon as an ACK arrives, before
the response reaches the caller.  The ``serial`` columns (window 1) are the
cost of one trip.

Per path: throughput (messages / seconds from the first hand-over to the
last response), latency (hand-over to response, as the path's caller sees
it), and CPU per message of this process and of the server process (from
``/proc``; the server's share tells whether the server bounds a path).
Each round runs a warm-up first, not counted; rounds alternate the paths;
throughput is the median over rounds, percentiles are over every message.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Final, TypeAlias

import aiocoap  # type: ignore[import-untyped]
import attrs
import trio

from backends.coap_transport import CoapSession, CoapSettings
from backends.lwm2m import Lwm2mBackend, lwm2m_backend
from bench.results import (
    RunResult,
    latency_quantile,
    median_throughput,
    paired_ratio,
)
from protocols import wrapper as wrap
from protocols.base import Payload
from protocols.json_data import Battery
from protocols.lwm2m_codec import Lwm2mCodec
from protocols.lwm2m_formats import ContentFormat, Path, encode_senml_cbor
from protocols.lwm2m_objects import ObjectStore
from protocols.modem import ModemDynamicData, NetworkMode
from protocols.peripherals import EnvironmentalData, GnssData, Pvt
from tracker.config import Lwm2mConfig
from tracker.logs import configure_logging

WARMUP: Final = 100
"""Messages sent before each counted run of a path (handshake, caches)."""

PATH_TIMEOUT: Final = 120.0
"""Seconds one path of one round may take before the benchmark gives up."""

SERVER_START_TIMEOUT: Final = 30.0
"""Seconds the server process may take to report its ports."""

SERVER_STOP_TIMEOUT: Final = 10.0
"""Seconds the server process may take to stop before it is killed."""

REQUEST_TIMEOUT: Final = 30.0
"""Per-request bound of the session and backend paths; on loopback a
response takes milliseconds, so reaching it means something is lost."""

KEY: Final = bytes.fromhex("5e0f1c2d3b4a69788796a5b4c3d2e1f0")
"""The PSK of every benchmark endpoint: 16 bytes (tinydtls's most), not
the firmware's public default (the backend would warn about it)."""

ENDPOINTS: Final = {
    "raw": "urn:imei:350000000000001",
    "session": "urn:imei:350000000000002",
    "backend": "urn:imei:350000000000003",
}
"""Endpoint name (and PSK identity) of each path."""

LINKS: Final = b'</>;rt="oma.lwm2m";ct=112,</1/0>,</3/0>,</4/0>,</6/0>'
"""The object links the raw and session paths register with."""

# A regular update's samples, as the data actor hands them to the codec.
T_MS: Final = 1_700_000_123_456
SAMPLES: Final[dict[str, Any]] = {
    "gnss": GnssData(
        pvt=Pvt(
            latitude=63.42, longitude=10.43, accuracy=4.5, altitude=170.5,
            altitude_accuracy=5.0, speed=1.5, speed_accuracy=1.0, heading=90.0,
            heading_accuracy=10.0,
        ),
        satellites_tracked=7,
        search_time=30000,
        timestamp=T_MS,
    ),
    "roam": ModemDynamicData(
        timestamp=T_MS, area_code=40401, cell_id=21679716, rsrp=-97, mcc=242,
        mnc=2, ip_address="10.81.183.99", apn="telenor.iot", mccmnc="24202",
        band=20, network_mode=NetworkMode.LTE_M,
    ),
    "bat": Battery(87, T_MS),
    "env": EnvironmentalData(
        timestamp=T_MS, temperature=23.5, humidity=50.25, pressure=100.5
    ),
}  # fmt: skip

Runs: TypeAlias = list[tuple[int, int]]
"""The runs of one path, in order: (messages, window) each."""


# ---------------------------------------------------------------------------
# Results


@attrs.define
class PathResults:
    """Every round of one path over one transport."""

    name: str
    # The throughput runs (window ``--window``) and the window-1 runs.
    loaded: list[RunResult] = attrs.Factory(list)
    serial: list[RunResult] = attrs.Factory(list)
    notes: list[str] = attrs.Factory(list)

    @property
    def throughput(self) -> float:
        return median_throughput(self.loaded)

    def ratio_to(self, baseline: PathResults) -> float:
        """Median over rounds of this path's throughput / the baseline's."""
        return paired_ratio(self.loaded, baseline.loaded)

    def latency(self, quantile: float, serial: bool) -> float:
        """The latency quantile over the loaded (or the serial) runs."""
        return latency_quantile(self.serial if serial else self.loaded, quantile)

    def cpu_per_message(self) -> tuple[float, float]:
        """Median (client, server) CPU seconds per message, loaded runs."""
        return (
            statistics.median(run.cpu_client / run.messages for run in self.loaded),
            statistics.median(run.cpu_server / run.messages for run in self.loaded),
        )


class CpuClock:
    """CPU time of this process and of the server process."""

    def __init__(self, server_pid: int) -> None:
        self._stat = f"/proc/{server_pid}/stat"
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def server(self) -> float:
        """The server's user + system CPU seconds (0 without ``/proc``)."""
        try:
            with open(self._stat) as stat:
                # Fields after the command name (which may hold spaces).
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        # utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
        return (int(fields[11]) + int(fields[12])) / self._tick

    def sample(self) -> tuple[float, float]:
        return time.process_time(), self.server()


@attrs.define
class Meter:
    """Counts one run: hand-over times, latencies, the last response."""

    clock: CpuClock
    sent: dict[int, float] = attrs.Factory(dict)
    latencies: list[float] = attrs.Factory(list)
    last: float = 0.0
    failures: int = 0
    _start: float = 0.0
    _cpu: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self._cpu = self.clock.sample()
        self._start = time.perf_counter()

    def handed_over(self, seq: int) -> None:
        self.sent[seq] = time.perf_counter()

    def answered(self, seq: int, ok: bool) -> None:
        self.last = time.perf_counter()
        self.latencies.append(self.last - self.sent.pop(seq))
        if not ok:
            self.failures += 1

    def result(self, messages: int, window: int) -> RunResult:
        client, server = self.clock.sample()
        return RunResult(
            messages,
            window,
            self.last - self._start,
            self.latencies,
            client - self._cpu[0],
            server - self._cpu[1],
        )


# ---------------------------------------------------------------------------
# The payload


def regular_update() -> tuple[tuple[str, ...], bytes]:
    """The paths of a regular update and the Send body they make."""
    codec = Lwm2mCodec(ObjectStore())
    paths = codec.encode_regular(**SAMPLES).paths
    records = [r for path in paths for r in codec.store.read(Path.parse(path))]
    return paths, encode_senml_cbor(records)


# ---------------------------------------------------------------------------
# The server, in a child process


def _serve(conn: Connection, psk: dict[bytes, bytes]) -> None:
    """The child process: run the server until the parent says stop."""
    from sandbox.lwm2m_server import LocalLwm2mServer, Lwm2mServerSettings

    configure_logging("warning", "console")

    async def main() -> None:
        settings = Lwm2mServerSettings(coap_port=0, coaps_port=0, psk=psk)
        server = LocalLwm2mServer(settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            conn.send((server.coap_port, server.coaps_port))
            try:
                await trio.to_thread.run_sync(conn.recv, abandon_on_cancel=True)
            except EOFError:
                pass
            nursery.cancel_scope.cancel()

    trio.run(main)


@attrs.define
class ServerProcess:
    """The LwM2M server in a child process."""

    process: Any = None
    conn: Connection | None = None
    coap_port: int = 0
    coaps_port: int = 0

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        psk = {endpoint.encode(): KEY for endpoint in ENDPOINTS.values()}
        self.process = context.Process(target=_serve, args=(child, psk), daemon=True)
        self.process.start()
        child.close()
        self.conn = parent
        if not parent.poll(SERVER_START_TIMEOUT):
            raise RuntimeError("the LwM2M server process did not report its ports")
        self.coap_port, self.coaps_port = parent.recv()

    def stop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send("stop")
            except OSError:
                pass
            self.conn.close()
        if self.process is not None:
            self.process.join(SERVER_STOP_TIMEOUT)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()

    def uri(self, secure: bool) -> str:
        if secure:
            return f"coaps://127.0.0.1:{self.coaps_port}"
        return f"coap://127.0.0.1:{self.coap_port}"


def register_query(endpoint: str) -> tuple[str, ...]:
    return (f"ep={endpoint}", "lt=43200", "lwm2m=1.1", "b=U")


# ---------------------------------------------------------------------------
# (a) raw aiocoap under trio-asyncio


async def _aio_raw_context(uri: str, secure: bool) -> Any:
    transports = ["tinydtls"] if secure else ["udp6"]
    context = await aiocoap.Context.create_client_context(transports=transports)
    if secure:
        context.client_credentials.load_from_dict(
            {
                uri + "/*": {
                    "dtls": {
                        "psk": {"hex": KEY.hex()},
                        "client-identity": {"hex": ENDPOINTS["raw"].encode().hex()},
                    }
                }
            }
        )
    return context


async def _aio_raw_register(context: Any, uri: str) -> Any:
    message = aiocoap.Message(
        code=aiocoap.POST, uri=uri + "/rd", payload=LINKS,
        content_format=ContentFormat.LINK_FORMAT,
    )  # fmt: skip
    message.opt.uri_query = register_query(ENDPOINTS["raw"])
    response = await context.request(message).response
    if response.code.dotted != "2.01":
        raise RuntimeError(f"raw registration answered {response.code.dotted}")
    # aiocoap pools DTLS connections weakly: the caller keeps this one.
    return response.remote


async def _aio_raw_run(
    context: Any, uri: str, body: bytes, n: int, window: int, meter: Meter
) -> None:
    """One run, entirely in asyncio: futures, no task per request."""
    slots = asyncio.Semaphore(window)

    def done(seq: int, future: asyncio.Future[Any]) -> None:
        ok = not future.cancelled() and future.exception() is None
        meter.answered(seq, ok and future.result().code.dotted == "2.04")
        slots.release()

    meter.start()
    for seq in range(n):
        await slots.acquire()
        message = aiocoap.Message(
            code=aiocoap.POST, uri=uri + "/dp", payload=body,
            content_format=ContentFormat.SENML_CBOR,
        )  # fmt: skip
        meter.handed_over(seq)
        future = context.request(message).response
        future.add_done_callback(lambda f, seq=seq: done(seq, f))
    for _ in range(window):
        await slots.acquire()


async def run_raw(
    uri: str, secure: bool, body: bytes, runs: Runs, clock: CpuClock
) -> list[RunResult]:
    import trio_asyncio  # type: ignore[import-untyped]
    from trio_asyncio import aio_as_trio

    results = []
    async with trio_asyncio.open_loop() as loop:
        context = await aio_as_trio(_aio_raw_context, loop=loop)(uri, secure)
        try:
            remote = await aio_as_trio(_aio_raw_register, loop=loop)(context, uri)
            for n, window in runs:
                meter = Meter(clock)
                await aio_as_trio(_aio_raw_run, loop=loop)(
                    context, uri, body, n, window, meter
                )
                results.append(_checked(meter, n, window))
            del remote
        finally:
            with trio.move_on_after(5, shield=True):
                await aio_as_trio(context.shutdown, loop=loop)()
    return results


def _checked(meter: Meter, n: int, window: int) -> RunResult:
    if meter.failures:
        raise RuntimeError(f"{meter.failures} of {n} sends were not answered 2.04")
    return meter.result(n, window)


# ---------------------------------------------------------------------------
# (b) CoapSession


async def run_session(
    uri: str, secure: bool, body: bytes, runs: Runs, clock: CpuClock
) -> list[RunResult]:
    endpoint = ENDPOINTS["session"]
    settings = CoapSettings(
        uri=uri,
        psk_identity=endpoint.encode() if secure else b"",
        psk=KEY if secure else b"",
        request_timeout=REQUEST_TIMEOUT,
    )
    session = CoapSession(settings)
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(session.run)
        created = await session.request(
            "POST", "/rd", query=register_query(endpoint), payload=LINKS,
            content_format=ContentFormat.LINK_FORMAT,
        )  # fmt: skip
        if created.code != "2.01":
            raise RuntimeError(f"session registration answered {created.code}")
        for n, window in runs:
            meter = Meter(clock)
            slots = trio.Semaphore(window)

            async def send(seq: int, meter: Meter, slots: trio.Semaphore) -> None:
                response = await session.request(
                    "POST", "/dp", payload=body,
                    content_format=ContentFormat.SENML_CBOR,
                )  # fmt: skip
                meter.answered(seq, response.code == "2.04")
                slots.release()

            meter.start()
            async with trio.open_nursery() as senders:
                for seq in range(n):
                    await slots.acquire()
                    meter.handed_over(seq)
                    senders.start_soon(send, seq, meter, slots)
            results.append(_checked(meter, n, window))
        await session.aclose()
    return results


# ---------------------------------------------------------------------------
# (c) Lwm2mBackend


async def run_backend(
    uri: str, secure: bool, body: bytes, runs: Runs, clock: CpuClock
) -> list[RunResult]:
    del secure  # the URI's scheme says it
    config = Lwm2mConfig(server_uri=uri, psk=KEY.hex())
    backend = lwm2m_backend(config, endpoint=ENDPOINTS["backend"])
    paths = backend.lwm2m_codec.encode_regular(**SAMPLES).paths
    _check_same_body(backend, paths, body)
    connected = trio.Event()
    meter = Meter(clock)
    slots = trio.Semaphore(1)
    problems: list[wrap.WrapperEvent] = []

    def collect(event: wrap.WrapperEvent) -> None:
        if isinstance(event, wrap.WrapperSendResult):
            meter.answered(event.sample_ids[0], event.delivered)
            slots.release()
        elif isinstance(event, wrap.WrapperConnected):
            connected.set()
        elif not isinstance(event, wrap.WrapperConnecting):
            problems.append(event)

    backend.init(collect)
    results = []
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run)
        await backend.connect()
        await connected.wait()
        for n, window in runs:
            meter = Meter(clock)
            slots = trio.Semaphore(window)
            meter.start()
            for seq in range(n):
                await slots.acquire()
                meter.handed_over(seq)
                await backend.data_send(
                    Payload(paths=paths, sample_ids=(seq,)), True, 0
                )
            for _ in range(window):
                await slots.acquire()
            results.append(_checked(meter, n, window))
        if problems:
            raise RuntimeError(f"the backend reported {problems}")
        nursery.cancel_scope.cancel()
    return results


def _check_same_body(
    backend: Lwm2mBackend, paths: tuple[str, ...], body: bytes
) -> None:
    """The backend must send what the baselines send, or the ratio lies."""
    records = [r for path in paths for r in backend.store.read(Path.parse(path))]
    if encode_senml_cbor(records) != body:
        raise RuntimeError("the backend's Send body differs from the baseline's")


# ---------------------------------------------------------------------------
# The report


def report(
    title: str, paths: list[PathResults], args: argparse.Namespace, size: int
) -> str:
    raw = paths[0]

    def cell(path: PathResults, quantile: float, serial: bool) -> str:
        value = path.latency(quantile, serial)
        ratio = value / raw.latency(quantile, serial)
        return f"{value * 1000:>7.2f} {ratio:>5.2f}"

    lines = [
        f"{title}: confirmable POST /dp, {size} B SenML-CBOR, {args.rounds} round(s)",
        f"msg/s and 'loaded' latency: {args.messages} messages per round, window "
        f"{args.window}; 'serial': {args.serial} messages per round, window 1",
        "",
        f"{'path':<8} {'msg/s':>7} {'x':>5} | {'loaded p50':>13} {'p99':>13} "
        f"| {'serial p50':>13} {'p99':>13} | {'cpu us/msg':>10} {'server':>6}",
    ]
    for path in paths:
        client, server = path.cpu_per_message()
        lines.append(
            f"{path.name:<8} {path.throughput:>7.0f} "
            f"{path.ratio_to(raw):>5.2f} | "
            f"{cell(path, 0.50, False)} {cell(path, 0.99, False)} | "
            f"{cell(path, 0.50, True)} {cell(path, 0.99, True)} | "
            f"{client * 1e6:>10.0f} {server * 1e6:>6.0f}"
        )
    for path in paths:
        per_round = ", ".join(f"{run.throughput:.0f}" for run in path.loaded)
        lines.append(f"{path.name} msg/s per round: {per_round}")
    for path in paths:
        for note in path.notes:
            lines.append(f"NOTE {path.name}: {note}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.coap_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--messages", type=int, default=1000, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per path")
    parser.add_argument("--window", type=int, default=10, help="outstanding sends")
    parser.add_argument(
        "--serial", type=int, default=200, help="window-1 messages per round"
    )
    parser.add_argument(
        "--dtls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure CoAP over DTLS (PSK)",
    )
    args = parser.parse_args(argv)
    if min(args.messages, args.rounds, args.window, args.serial) < 1:
        parser.error("--messages, --rounds, --window and --serial must be positive")
    return args


PathRunner: TypeAlias = Callable[..., Any]

PATHS: Final[tuple[tuple[str, PathRunner], ...]] = (
    ("raw", run_raw),
    ("session", run_session),
    ("backend", run_backend),
)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Warnings only: a lost session or a refused send must show.
    configure_logging("warning", "console")
    paths_of_update, body = regular_update()
    # The warm-up's result is dropped below.
    runs = [(WARMUP, args.window), (args.messages, args.window), (args.serial, 1)]
    transports = [False, True] if args.dtls else [False]
    tables = []
    server = ServerProcess()
    try:
        server.start()
        clock = CpuClock(server.process.pid)
        for secure in transports:
            uri = server.uri(secure)
            results = [PathResults(name) for name, _ in PATHS]
            for _ in range(args.rounds):
                for result, (_name, runner) in zip(results, PATHS, strict=True):
                    _, loaded, serial = _trio_run(
                        runner, uri, secure, body, runs, clock
                    )
                    result.loaded.append(loaded)
                    result.serial.append(serial)
            title = "CoAP over DTLS 1.2 (PSK)" if secure else "CoAP (plain UDP)"
            tables.append(report(title, results, args, len(body)))
    finally:
        server.stop()
    print(f"regular update paths: {' '.join(paths_of_update)}\n")
    print("\n\n".join(tables))
    return 0


def _trio_run(fn: PathRunner, *args: Any) -> list[RunResult]:
    async def bounded() -> list[RunResult]:
        with trio.fail_after(PATH_TIMEOUT):
            result: list[RunResult] = await fn(*args)
            return result

    return trio.run(bounded)


if __name__ == "__main__":
    sys.exit(main())
