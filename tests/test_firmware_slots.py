"""state.firmware: staging, the test swap, confirmation and revert."""

from __future__ import annotations

import json
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

    def test_corrupt_metadata_names_the_file(
        self, store: FirmwareStore, tmp_path: Path
    ) -> None:
        """A broken slot table is an error naming it; nothing is applied."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"x"))
        text = store.metadata_file.read_text()
        store.metadata_file.write_text(text[: len(text) // 2])

        with pytest.raises(FirmwareStoreError, match="slots.json"):
            store.activate_pending()

        assert store.metadata_file.read_text() == text[: len(text) // 2]
        assert len(list(store.directory.glob("img-*.bin"))) == 1

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
    def test_invalid_slot_table(
        self, store: FirmwareStore, tmp_path: Path, change: dict[str, object]
    ) -> None:
        """Every kind of invalid table is refused with the file's name."""
        store.stage("1.0.1", image(tmp_path, "a.bin", b"x"))
        raw = json.loads(store.metadata_file.read_text()) | change
        store.metadata_file.write_text(json.dumps(raw))

        with pytest.raises(FirmwareStoreError) as info:
            _ = store.running_version, store.pending

        assert str(store.metadata_file) in str(info.value)


class TestServiceWiring:
    async def test_boot_activates_and_cloud_setup_confirms(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """A staged image runs after the boot, reported and confirmed."""
        config = default_config()
        config = attrs.evolve(
            config, state=attrs.evolve(config.state, directory=tmp_path)
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
