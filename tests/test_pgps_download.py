"""The P-GPS downloader against the sandbox HTTPS file server (real sockets)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from structlog.testing import capture_logs

from backends.pgps import (
    InvalidPgpsReply,
    PgpsDownloader,
    PgpsLocation,
    parse_pgps_reply,
)
from sandbox.files import FileServer
from tests.mosquitto import Pki

LIMIT = 10  # seconds of real time per test
PREDICTIONS = bytes(range(256)) * 240  # 60 KiB, the size of 42 predictions
OTHER = b"\x5a" * 5000


async def wait_until(predicate: Callable[[], bool], poll: float = 0.02) -> None:
    """Poll ``predicate`` in real time (callers bound it with fail_after)."""
    while not predicate():
        await trio.sleep(poll)


@attrs.define(eq=False)
class Rig:
    server: FileServer
    downloader: PgpsDownloader
    received: list[tuple[str, bytes]]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def publish(self, name: str, data: bytes) -> None:
        (self.server.directory / name).write_bytes(data)

    def reply(self, name: str) -> bytes:
        return json.dumps({"path": f"public/{name}", "host": self.host}).encode()

    def predictions(self) -> list[bytes]:
        return [data for kind, data in self.received if kind == "pgps_predictions"]


@asynccontextmanager
async def pgps_rig(
    pki: Pki, tmp_path: Path, *, trusted: bool = True, max_size: int = 1024 * 1024
) -> AsyncIterator[Rig]:
    files = tmp_path / "files"
    files.mkdir()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = FileServer(files, server_context)
    received: list[tuple[str, bytes]] = []
    downloader = PgpsDownloader(
        lambda kind, data: received.append((kind, data)),
        ca_file=pki.ca_file if trusted else None,
        max_size=max_size,
        timeout=5.0,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        await nursery.start(downloader.run)
        yield Rig(server, downloader, received)
        nursery.cancel_scope.cancel()


def _finished(downloader: PgpsDownloader) -> int:
    counters = downloader.counters
    return (
        counters["downloads_succeeded"]
        + counters["downloads_failed"]
        + counters["downloads_cancelled"]
    )


class TestParsePgpsReply:
    def test_object_and_array_forms(self) -> None:
        """The AWS object and the nRF Cloud array name the same file."""
        obj = b'{"path":"public/15131-0_15135-72000.bin","host":"pgps.nrfcloud.com"}'
        array = b'["pgps.nrfcloud.com","public/15131-0_15135-72000.bin"]'

        parsed = [parse_pgps_reply(obj), parse_pgps_reply(array)]

        expected = PgpsLocation("pgps.nrfcloud.com", "public/15131-0_15135-72000.bin")
        assert parsed == [expected, expected]

    @pytest.mark.parametrize(
        ("reply", "reason"),
        [
            (b"{not json", "not JSON"),
            (b"\xff\xfe", "not JSON"),
            (b'{"path":"public/x.bin"}', "host missing"),
            (b'{"path":"public/x.bin","host":""}', "host missing"),
            (b'{"path":"","host":"h"}', "path missing"),
            (b'{"path":"/","host":"h"}', "path missing"),
            (b'{"path":"x.bin","host":42}', "host missing"),
            (b'{"path":"x.bin","host":"h/evil"}', "not a host name"),
            (b'["h"]', "neither an object"),
            (b'["h","p","q"]', "neither an object"),
            (b'"h/p"', "neither an object"),
            (b'{"appId":"PGPS","messageType":"DATA","err":40499}', "host missing"),
        ],
    )
    def test_invalid_replies(self, reply: bytes, reason: str) -> None:
        """Anything that does not name a host and a path is refused with why."""
        with pytest.raises(InvalidPgpsReply, match=reason):
            parse_pgps_reply(reply)


class TestPgpsDownloader:
    async def test_valid_reply_is_recorded_and_downloaded(
        self, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """The reply goes to the sink, then the file's bytes as predictions."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path) as rig:
                rig.publish("f.bin", PREDICTIONS)
                reply = json.dumps({"path": "f.bin", "host": rig.host}).encode()

                rig.downloader.handle(reply)
                await wait_until(lambda: _finished(rig.downloader) == 1)

        assert rig.received == [("pgps", reply), ("pgps_predictions", PREDICTIONS)]
        assert rig.server.requests == [("/f.bin", None)]
        snapshot = rig.downloader.snapshot()
        assert snapshot["downloads_succeeded"] == 1
        assert snapshot["bytes_downloaded"] == len(PREDICTIONS)
        assert snapshot["downloading"] is None
        assert snapshot["last_error"] is None

    async def test_array_form_is_downloaded(
        self, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """The nRF Cloud ``[host, path]`` reply is fetched like the object."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path) as rig:
                rig.publish("f.bin", PREDICTIONS)
                reply = json.dumps([rig.host, "/f.bin"]).encode()

                rig.downloader.handle(reply)
                await wait_until(lambda: _finished(rig.downloader) == 1)

        assert rig.received == [("pgps", reply), ("pgps_predictions", PREDICTIONS)]

    @pytest.mark.parametrize(
        "reply",
        [b"{not json", b'{"path":"public/f.bin"}', b'["127.0.0.1"]'],
        ids=["not-json", "missing-host", "short-array"],
    )
    async def test_invalid_reply_is_recorded_but_not_downloaded(
        self, mqtt_pki: Pki, tmp_path: Path, reply: bytes
    ) -> None:
        """An invalid reply still reaches the modem; it is logged and counted."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path) as rig:
                with capture_logs() as logs:
                    rig.downloader.handle(reply)
                await trio.sleep(0.1)

        assert rig.received == [("pgps", reply)]
        assert rig.server.requests == []
        assert rig.downloader.counters["invalid_replies"] == 1
        assert rig.downloader.counters["downloads_started"] == 0
        assert [e["event"] for e in logs] == ["pgps_reply_invalid"]
        assert logs[0]["log_level"] == "warning"

    async def test_missing_file_is_a_logged_failure(
        self, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A 404 is logged with the status and counted; no predictions."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path) as rig:
                with capture_logs() as logs:
                    rig.downloader.handle(rig.reply("missing.bin"))
                    await wait_until(lambda: _finished(rig.downloader) == 1)

        assert rig.predictions() == []
        assert rig.downloader.counters["downloads_failed"] == 1
        assert rig.downloader.last_error == "HTTP 404"
        failed = [e for e in logs if e["event"] == "pgps_download_failed"]
        assert failed[0]["reason"] == "HTTP 404"
        assert failed[0]["log_level"] == "warning"

    async def test_oversized_file_is_refused(
        self, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A file larger than ``max_size`` is refused on its announced length."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path, max_size=4096) as rig:
                rig.publish("big.bin", OTHER)

                with capture_logs() as logs:
                    rig.downloader.handle(json.dumps([rig.host, "big.bin"]).encode())
                    await wait_until(lambda: _finished(rig.downloader) == 1)

        assert rig.predictions() == []
        assert rig.downloader.counters["downloads_failed"] == 1
        failed = [e for e in logs if e["event"] == "pgps_download_failed"]
        assert "larger than 4096 bytes" in failed[0]["reason"]

    async def test_untrusted_server_is_refused(
        self, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """Without the test CA the system CAs reject the server: a failure."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path, trusted=False) as rig:
                rig.publish("f.bin", PREDICTIONS)

                rig.downloader.handle(json.dumps([rig.host, "f.bin"]).encode())
                await wait_until(lambda: _finished(rig.downloader) == 1)

        assert rig.predictions() == []
        assert rig.downloader.counters["downloads_failed"] == 1
        assert "CERTIFICATE_VERIFY_FAILED" in (rig.downloader.last_error or "")

    async def test_newer_reply_cancels_the_download(
        self, mqtt_pki: Pki, tmp_path: Path
    ) -> None:
        """A second reply cancels the stalled first download; only it lands."""
        with trio.fail_after(LIMIT):
            async with pgps_rig(mqtt_pki, tmp_path) as rig:
                rig.publish("old.bin", PREDICTIONS)
                rig.publish("new.bin", OTHER)
                rig.server.stalls["old.bin"] = [1000]

                with capture_logs() as logs:
                    rig.downloader.handle(json.dumps([rig.host, "old.bin"]).encode())
                    await rig.server.stalled.wait()
                    rig.downloader.handle(json.dumps([rig.host, "new.bin"]).encode())
                    await wait_until(lambda: _finished(rig.downloader) == 2)

        assert rig.predictions() == [OTHER]
        counters = rig.downloader.counters
        assert counters["downloads_cancelled"] == 1
        assert counters["downloads_succeeded"] == 1
        assert counters["downloads_failed"] == 0
        events = [e["event"] for e in logs if e["event"].startswith("pgps_download")]
        assert events == [
            "pgps_download_started",
            "pgps_download_cancelled",
            "pgps_download_started",
            "pgps_download_succeeded",
        ]

    def test_reply_while_not_running_is_dropped(self) -> None:
        """Before ``run`` the reply is recorded and its download dropped."""
        received: list[tuple[str, bytes]] = []
        downloader = PgpsDownloader(lambda kind, data: received.append((kind, data)))

        downloader.handle(b'["127.0.0.1:1","f.bin"]')

        assert received == [("pgps", b'["127.0.0.1:1","f.bin"]')]
        assert downloader.counters["dropped"] == 1

    def test_scheme_is_checked(self) -> None:
        """Only http and https can download."""
        with pytest.raises(ValueError, match="scheme"):
            PgpsDownloader(lambda kind, data: None, scheme="ftp")
