"""state.firmware: staging, the test swap, confirmation and revert."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from state.firmware import FirmwareStore, FirmwareStoreError
from tracker.config import default_config
from tracker.service import Service


def image(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def legacy_table(directory: Path) -> dict[str, object]:
    """A valid slots.json of the older releases (its image file written)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "img-0123456789abcdef.bin").write_bytes(b"staged")
    return {
        "format": 1,
        "primary": {"version": "1.0.0", "image": None},
        "secondary": {"version": "1.0.1", "image": "img-0123456789abcdef.bin"},
        "pending": True,
        "confirmed": True,
    }


@pytest.fixture
def store(tmp_path: Path) -> FirmwareStore:
    return FirmwareStore(tmp_path / "firmware")


class TestFirmwareStore:
    def test_fresh_device_runs_the_default_without_writing(
        self, store: FirmwareStore
    ) -> None:
        """A store without files runs the default version, confirmed."""
        store.confirm()

        nothing = store.activate_pending()

        assert nothing is None
        assert store.running_version == "0.0.0-development"
        assert store.confirmed and store.pending is None
        assert not store.directory.exists()
        assert not store.database_file.exists()

    def test_staged_image_waits_for_activate(
        self, store: FirmwareStore, tmp_path: Path
    ) -> None:
        """A staged image never replaces the running one before a boot."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"new image"))

        running = store.running_version

        assert running == "0.0.0-development"
        assert store.pending == "1.0.1"
        assert store.running_image is None

    def test_activate_swaps_then_confirm_keeps(
        self, store: FirmwareStore, tmp_path: Path
    ) -> None:
        """The swapped image runs unconfirmed; once confirmed it stays."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"new image"))

        swapped = store.activate_pending()
        unconfirmed = store.confirmed
        store.confirm()
        again = store.activate_pending()

        assert swapped == "1.0.1" and not unconfirmed
        assert again is None
        assert store.running_version == "1.0.1" and store.confirmed
        assert store.running_image is not None
        assert store.running_image.read_bytes() == b"new image"
        assert store.pending is None
        assert len(list(store.directory.glob("img-*.bin"))) == 1

    def test_unconfirmed_image_reverts_on_the_next_boot(
        self, store: FirmwareStore, tmp_path: Path
    ) -> None:
        """An image booted once and never confirmed is reverted."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"one"))
        store.activate_pending()
        store.confirm()
        store.stage("1.0.2", image(tmp_path, "b.bin", b"two"))
        store.activate_pending()

        reverted = store.activate_pending()

        assert reverted == "1.0.1"
        assert store.running_version == "1.0.1" and store.confirmed
        assert store.running_image is not None
        assert store.running_image.read_bytes() == b"one"
        assert store.activate_pending() is None

    def test_commit_checks_the_size(self, store: FirmwareStore) -> None:
        """A short staging file is not committed, and nothing changes."""
        with store.open_staging() as f:
            f.write(b"abc")
        with store.open_staging(append=True) as f:
            f.write(b"de")

        with pytest.raises(FirmwareStoreError, match="holds 5 bytes, expected 6"):
            store.commit_staged("1.0.1", 6)

        assert store.staged_size() == 5
        assert store.pending is None
        store.commit_staged("1.0.1", 5)
        assert store.pending == "1.0.1"

    def test_corrupt_legacy_table_names_the_file(
        self, store: FirmwareStore
    ) -> None:
        """A broken slots.json is an error naming it; nothing is applied."""
        text = json.dumps(legacy_table(store.directory))
        store.metadata_file.write_text(text[: len(text) // 2])

        with pytest.raises(FirmwareStoreError, match="slots.json: not valid JSON"):
            store.activate_pending()

        assert store.metadata_file.read_text() == text[: len(text) // 2]
        assert len(list(store.directory.glob("img-*.bin"))) == 1
        assert store.database_file.exists()
        with sqlite3.connect(store.database_file) as db:
            assert db.execute("SELECT count(*) FROM firmware_slots").fetchone() == (0,)

    @pytest.mark.parametrize(
        "change",
        [
            {"format": 2},
            {"primary": None},
            {"primary": {"version": "", "image": None}},
            {"pending": "yes"},
            {"secondary": {"version": "1", "image": "../escape"}},
            {"secondary": {"version": "1", "image": "img-missing.bin"}},
            {"secondary": None},
        ],
    )
    def test_invalid_legacy_table(
        self, store: FirmwareStore, change: dict[str, object]
    ) -> None:
        """Every kind of invalid slots.json is refused with the file's name."""
        raw = legacy_table(store.directory) | change
        store.metadata_file.write_text(json.dumps(raw))

        with pytest.raises(FirmwareStoreError) as info:
            _ = store.running_version, store.pending

        assert str(store.metadata_file) in str(info.value)
        assert store.metadata_file.exists()

    @pytest.mark.parametrize(
        ("sql", "problem"),
        [
            ("UPDATE firmware_slots SET version = '' WHERE slot = 'primary'",
             "primary.version"),
            ("DELETE FROM firmware_slots WHERE slot = 'primary'", "'primary'"),
            ("UPDATE firmware_slots SET image = '../x' WHERE slot = 'secondary'",
             "secondary.image is not a plain file name"),
            ("UPDATE firmware_slots SET image = 'img-0.bin' WHERE slot = 'secondary'",
             "'img-0.bin', which is missing"),
            ("UPDATE firmware_swap SET pending = 2", "must be booleans"),
            ("UPDATE firmware_swap SET confirmed = 'yes'", "must be booleans"),
            ("DELETE FROM firmware_slots WHERE slot = 'secondary'",
             "pending but the slot is empty"),
            ("DELETE FROM firmware_swap", "without firmware_swap"),
        ],
    )  # fmt: skip
    def test_invalid_rows(
        self, store: FirmwareStore, tmp_path: Path, sql: str, problem: str
    ) -> None:
        """Rows that make no slot table are refused, naming the database."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"x"))
        with sqlite3.connect(store.database_file) as db:
            db.execute(sql)

        with pytest.raises(FirmwareStoreError) as info:
            store.activate_pending()

        assert f"{store.database_file}: firmware_slots" in str(info.value)
        assert problem in str(info.value)
        assert len(list(store.directory.glob("img-*.bin"))) == 1

    def test_slots_live_in_the_state_database(
        self, store: FirmwareStore, tmp_path: Path
    ) -> None:
        """The default database is the state directory's; no JSON is written."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"x"))
        store.activate_pending()

        with sqlite3.connect(tmp_path / "state.db") as db:
            rows = db.execute(
                "SELECT slot, version FROM firmware_slots ORDER BY slot"
            ).fetchall()
            swap = db.execute("SELECT pending, confirmed FROM firmware_swap")
            flags = swap.fetchone()

        assert store.database_file == tmp_path / "state.db"
        assert rows == [("primary", "1.0.1"), ("secondary", "0.0.0-development")]
        assert flags == (0, 0)
        assert not store.metadata_file.exists()

    def test_explicit_database(self, tmp_path: Path) -> None:
        """``database=`` puts the rows elsewhere; another store sees them."""
        database = tmp_path / "elsewhere" / "device.db"
        store = FirmwareStore(tmp_path / "firmware", database=database)
        store.stage("1.0.1", image(tmp_path, "a.bin", b"x"))

        again = FirmwareStore(tmp_path / "firmware", database=database)

        assert again.pending == "1.0.1"
        assert database.exists() and not (tmp_path / "state.db").exists()

    def test_status_round_trip(self, store: FirmwareStore) -> None:
        """A FOTA client's status is kept per key; absent keys are None."""
        assert store.load_status("client") is None
        assert not store.database_file.exists()

        store.save_status("client", {"state": 1, "uri": "https://h/a"})
        store.save_status("client", {"state": 2, "uri": "https://h/a"})
        store.save_status("other", {"state": 0})

        again = FirmwareStore(store.directory)
        assert again.load_status("client") == {"state": 2, "uri": "https://h/a"}
        assert again.load_status("other") == {"state": 0}
        assert again.load_status("missing") is None

    @pytest.mark.parametrize("body", ["{not json", "[1, 2]"])
    def test_corrupt_status_names_database_and_key(
        self, store: FirmwareStore, body: str
    ) -> None:
        """A stored status that is not a JSON object is refused, by name."""
        store.save_status("client", {"state": 1})
        with sqlite3.connect(store.database_file) as db:
            db.execute("UPDATE fota_status SET body = ?", (body,))

        with pytest.raises(FirmwareStoreError) as info:
            store.load_status("client")

        assert f"{store.database_file}: fota_status 'client'" in str(info.value)


class TestServiceWiring:
    async def test_boot_activates_and_cloud_setup_confirms(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """A staged image runs after the boot, reported and confirmed."""
        config = default_config()
        config = attrs.evolve(
            config,
            state=attrs.evolve(config.state, directory=tmp_path),
            # The scripted cloud: no sockets under the autojump clock.
            cloud=attrs.evolve(config.cloud, service="simulated"),
        )
        store = FirmwareStore(tmp_path / "firmware")
        store.stage("1.0.1", image(tmp_path, "a.bin", b"image"))
        service = Service(config)

        with capture_logs() as logs, trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.booted.wait()
                await trio.sleep(10)
                device = service.device
                assert device is not None
                version = device.modem.driver.app_version  # type: ignore[attr-defined]
                service.request_stop()

        assert version == "1.0.1"
        assert store.running_version == "1.0.1" and store.confirmed
        assert {
            "event": "firmware_activated",
            "previous": "0.0.0-development",
            "running": "1.0.1",
        }.items() <= next(
            e for e in logs if e["event"] == "firmware_activated"
        ).items()
