"""The firmware store in the state database: JSON import, crashes, SIGKILL.

Installs of older releases keep their slot table in ``slots.json`` and
object 5's state in ``lwm2m_fota.json``; the first open imports both into
the state database (schema 3) and renames them aside.  The SIGKILL test
kills a child process that loops stage / activate / confirm / revert on a
real store, several times, and checks after each kill that the store holds
the state before or after the operation in flight, with every image it
names present and whole.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from backends.lwm2m_fota import (
    STATE_FILE,
    STATUS_KEY,
    FirmwareUpdateObject,
    Result,
    State,
)
from protocols.config import DeviceConfig
from protocols.lwm2m_objects import ObjectStore
from state.firmware import FirmwareStore, FirmwareStoreError
from state.store import CONFIG_KEY, MIGRATIONS, SCHEMA_VERSION, StateStore
from tracker.config import default_config
from tracker.service import Service

ROOT = Path(__file__).resolve().parent.parent

# The image file an older release left in the secondary slot.
IMAGE_NAME = "img-00112233445566aa.bin"
IMAGE = bytes(range(256)) * 64

# What a release before schema 3 stored after an LwM2M Update execute: the
# image pending, object 5 Updating.
LEGACY_SLOTS = {
    "format": 1,
    "primary": {"version": "1.0.0", "image": None},
    "secondary": {"version": "1.0.1", "image": IMAGE_NAME},
    "pending": True,
    "confirmed": True,
}
LEGACY_FOTA = {
    "format": 1,
    "state": 3,
    "result": 0,
    "uri": "https://example.com/app-1.0.1.bin",
    "name": "app-1.0.1.bin",
    "version": "1.0.1",
    "size": len(IMAGE),
    "sha256": hashlib.sha256(IMAGE).hexdigest(),
    "verify": "",
}


def legacy_install(state: Path, *, version: int = 2) -> Path:
    """A state directory as an older release left it; returns ``firmware``."""
    state.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(state / "state.db") as db:
        for script in MIGRATIONS[:version]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute(
            "INSERT INTO config (key, value, updated) VALUES (?, ?, 1.0)",
            (CONFIG_KEY, json.dumps(attrs.asdict(DeviceConfig(active_mode=False)))),
        )
        db.execute("INSERT INTO reboots (at, reason, cause) VALUES (2, 'fota', 'x')")
        if version >= 2:
            db.execute(
                "INSERT INTO samples (kind, body, state, updated) "
                "VALUES ('bat', '{}', 'sent', 3.0)"
            )
    db.close()
    firmware = state / "firmware"
    firmware.mkdir()
    (firmware / IMAGE_NAME).write_bytes(IMAGE)
    (firmware / "slots.json").write_text(json.dumps(LEGACY_SLOTS))
    (firmware / STATE_FILE).write_text(json.dumps(LEGACY_FOTA))
    return firmware


def rows(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as db:
        result = db.execute(sql).fetchall()
    db.close()
    return result


class TestImport:
    @pytest.mark.parametrize("version", [1, 2])
    def test_old_install_is_imported_and_kept(
        self, tmp_path: Path, version: int
    ) -> None:
        """v1/v2 plus JSON files -> v3 with the slots; nothing else lost."""
        firmware = legacy_install(tmp_path / "state", version=version)
        store = FirmwareStore(firmware)

        with capture_logs() as logs:
            pending = store.pending

        assert pending == "1.0.1" and store.running_version == "1.0.0"
        assert store.load_status(STATUS_KEY) == LEGACY_FOTA
        assert not (firmware / "slots.json").exists()
        assert not (firmware / STATE_FILE).exists()
        assert (firmware / "slots.json.migrated").exists()
        assert (firmware / f"{STATE_FILE}.migrated").exists()
        assert (firmware / IMAGE_NAME).read_bytes() == IMAGE
        imported = next(e for e in logs if e["event"] == "firmware_state_imported")
        assert sorted(imported["files"]) == sorted(["slots.json", STATE_FILE])
        state = StateStore(tmp_path / "state" / "state.db")
        assert state.schema_version == SCHEMA_VERSION
        assert state.load_config() == DeviceConfig(active_mode=False)
        assert [r.reason for r in state.reboots()] == ["fota"]
        assert len(state.samples()) == (1 if version >= 2 else 0)
        assert rows(
            store.database_file, "SELECT slot, version, image FROM firmware_slots"
            " ORDER BY slot"
        ) == [("primary", "1.0.0", None), ("secondary", "1.0.1", IMAGE_NAME)]

    def test_reimport_after_a_crash_before_the_rename(self, tmp_path: Path) -> None:
        """JSON files still there after the commit are imported again, same."""
        firmware = legacy_install(tmp_path / "state")
        assert FirmwareStore(firmware).pending == "1.0.1"
        # The crash: the commit happened, the renames did not.
        for name in ("slots.json", STATE_FILE):
            shutil.copy(firmware / f"{name}.migrated", firmware / name)

        again = FirmwareStore(firmware)

        assert again.pending == "1.0.1" and again.running_version == "1.0.0"
        assert again.load_status(STATUS_KEY) == LEGACY_FOTA
        assert not (firmware / "slots.json").exists()
        assert len(rows(again.database_file, "SELECT * FROM firmware_slots")) == 2
        assert len(rows(again.database_file, "SELECT * FROM fota_status")) == 1
        assert (firmware / IMAGE_NAME).read_bytes() == IMAGE

    def test_import_is_one_transaction(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failure inside the import commits nothing and renames nothing."""
        firmware = legacy_install(tmp_path / "state")

        def crash(*args: object) -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(FirmwareStore, "_put_status", staticmethod(crash))
        with pytest.raises(OSError, match="disk gone"):
            FirmwareStore(firmware).activate_pending()
        monkeypatch.undo()

        database = tmp_path / "state" / "state.db"
        assert rows(database, "SELECT * FROM firmware_slots") == []
        assert rows(database, "SELECT * FROM fota_status") == []
        assert (firmware / "slots.json").exists() and (firmware / STATE_FILE).exists()
        store = FirmwareStore(firmware)
        assert store.activate_pending() == "1.0.1"

    def test_corrupt_slots_json_imports_nothing(self, tmp_path: Path) -> None:
        """A broken slot table names the file; the status file waits too."""
        firmware = legacy_install(tmp_path / "state")
        (firmware / "slots.json").write_text('{"format": 1, "primary": ')
        store = FirmwareStore(firmware)

        with pytest.raises(FirmwareStoreError) as info:
            store.activate_pending()

        assert f"{firmware / 'slots.json'}: not valid JSON" in str(info.value)
        assert (firmware / STATE_FILE).exists()
        database = tmp_path / "state" / "state.db"
        assert rows(database, "SELECT * FROM fota_status") == []
        # Repaired by hand: the next open imports both.
        (firmware / "slots.json").write_text(json.dumps(LEGACY_SLOTS))
        assert store.pending == "1.0.1"
        assert store.load_status(STATUS_KEY) == LEGACY_FOTA

    def test_corrupt_status_file_is_set_aside(self, tmp_path: Path) -> None:
        """A broken status file is logged and renamed; the slots import."""
        firmware = legacy_install(tmp_path / "state")
        (firmware / STATE_FILE).write_text("{broken")
        store = FirmwareStore(firmware)

        with capture_logs() as logs:
            pending = store.pending

        assert pending == "1.0.1"
        assert store.load_status(STATUS_KEY) is None
        assert (firmware / f"{STATE_FILE}.rejected").read_text() == "{broken"
        (problem,) = [e for e in logs if e["log_level"] == "error"]
        assert problem["file"] == str(firmware / STATE_FILE)
        assert "not valid JSON" in problem["error"]

    def test_orphan_images_are_collected(self, tmp_path: Path) -> None:
        """Image files no row names (a crash before a commit) are removed."""
        firmware = legacy_install(tmp_path / "state")
        orphan = firmware / "img-ffffffffffffffff.bin"
        orphan.write_bytes(b"half")
        unrelated = firmware / "notes.txt"
        unrelated.write_bytes(b"kept")

        FirmwareStore(firmware).activate_pending()

        assert not orphan.exists()
        assert unrelated.exists()
        assert (firmware / IMAGE_NAME).read_bytes() == IMAGE

    def test_lwm2m_update_of_an_old_release_completes(self, tmp_path: Path) -> None:
        """Updating in the old files: after the boot, result 1 (success)."""
        firmware = legacy_install(tmp_path / "state")
        store = FirmwareStore(firmware)

        activated = store.activate_pending()
        objects = ObjectStore()
        fota = FirmwareUpdateObject(objects, store, lambda event: None)

        assert activated == "1.0.1"
        assert (fota.state, fota.result) == (State.IDLE, Result.SUCCESS)
        saved = FirmwareStore(firmware).load_status(STATUS_KEY)
        assert saved is not None
        assert (saved["state"], saved["result"]) == (0, 1)
        # Not confirmed yet: the digest is kept to catch a revert.
        assert saved["verify"] == LEGACY_FOTA["sha256"]


class TestServiceUpgrade:
    async def test_service_boots_an_old_install(
        self, autojump_clock: trio.testing.MockClock, tmp_path: Path
    ) -> None:
        """The service on an older release's state: imported, swapped, kept."""
        firmware = legacy_install(tmp_path / "state")
        config = default_config()
        config = attrs.evolve(
            config,
            state=attrs.evolve(config.state, directory=tmp_path / "state"),
            cloud=attrs.evolve(config.cloud, service="simulated"),
        )
        service = Service(config)

        with trio.fail_after(1000):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.run)
                await service.booted.wait()
                await trio.sleep(10)
                device = service.device
                assert device is not None
                version = device.modem.driver.app_version  # type: ignore[attr-defined]
                service.request_stop()

        assert version == "1.0.1"
        assert service.firmware.running_version == "1.0.1"
        assert service.firmware.confirmed
        assert (firmware / "slots.json.migrated").exists()
        assert service.state is not None
        assert service.state.load_config() == DeviceConfig(active_mode=False)
        assert [r.reason for r in service.state.reboots()] == ["fota"]
        assert service.firmware.load_status(STATUS_KEY) == LEGACY_FOTA


# -- SIGKILL in the middle of update cycles ---------------------------------

# Child: stage, activate, then confirm (two cycles in three) or boot again
# without confirming (a revert).  Each operation is announced on stderr
# ("begin OP VERSION") and acknowledged ("end") once it returned.
CYCLER = """
import hashlib, sys
from pathlib import Path
from state.firmware import FirmwareStore

def content(version):
    seed = hashlib.sha256(version.encode()).digest()
    return seed * (2000 + 97 * int(version.rsplit(".", 1)[1]) % 1500)

directory = Path(sys.argv[1])
n = int(sys.argv[2])
store = FirmwareStore(directory)
source = directory.parent / "source.bin"
directory.parent.mkdir(parents=True, exist_ok=True)

def step(op, version=""):
    # One write per line: print() would write its pieces one by one, and a
    # kill could land between them.
    sys.stderr.write(f"begin {op} {version}\\n")
    sys.stderr.flush()
    if op == "stage":
        store.stage(version, source)
    elif op == "activate":
        store.activate_pending()
    else:
        store.confirm()
    sys.stderr.write("end\\n")
    sys.stderr.flush()

print("ready", file=sys.stderr, flush=True)
while True:
    version = f"1.0.{n}"
    source.write_bytes(content(version))
    step("stage", version)
    step("activate")
    step("confirm" if n % 3 else "activate")
    n += 1
"""

# Real-time run of each child before the kill, in seconds: kills land in
# different operations.
KILL_AFTER = (0.15, 0.4, 0.25, 0.5, 0.3, 0.2)

Model = tuple[str, str | None, bool, bool]
"""(primary version, secondary version, pending, confirmed)."""


def content(version: str) -> bytes:
    """The image of ``version`` (as the child makes it)."""
    seed = hashlib.sha256(version.encode()).digest()
    return seed * (2000 + 97 * int(version.rsplit(".", 1)[1]) % 1500)


def model_of(store: FirmwareStore) -> Model:
    # The private reader: the public API hides the slot kept for a revert.
    meta = store._read()
    secondary = None if meta.secondary is None else meta.secondary.version
    return (meta.primary.version, secondary, meta.pending, meta.confirmed)


def after(state: Model, op: str, version: str) -> Model:
    """The slot table after ``op``: the module docstring's rules, restated."""
    primary, secondary, pending, confirmed = state
    if op == "stage":
        return (primary, version, True, confirmed)
    if op == "confirm":
        return (primary, secondary if pending else None, pending, True)
    if not confirmed:
        if secondary is None:
            return (primary, None, pending, True)
        return (secondary, None, False, True)
    if pending and secondary is not None:
        return (secondary, primary, False, False)
    return state


def check_images(store: FirmwareStore) -> set[str]:
    """Every image the store names is present and whole; returns the names."""
    meta = store._read()
    named = set()
    for slot in (meta.primary, meta.secondary):
        if slot is not None and slot.image is not None:
            data = (store.directory / slot.image).read_bytes()
            assert data == content(slot.version), slot
            named.add(slot.image)
    return named


class TestSigkill:
    def test_kills_mid_cycle_leave_old_or_new_state(self, tmp_path: Path) -> None:
        """After each SIGKILL: the state before or after the operation."""
        directory = tmp_path / "state" / "firmware"
        operations = 0
        for round_, delay in enumerate(KILL_AFTER):
            store = FirmwareStore(directory)
            state = model_of(store)
            store.close()
            with subprocess.Popen(
                [sys.executable, "-c", CYCLER, str(directory), str(round_ * 1000)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            ) as child:
                assert child.stderr is not None
                assert child.stderr.readline() == b"ready\n"
                time.sleep(delay)
                child.send_signal(signal.SIGKILL)
                # A kill can cut the last line short: only whole lines count.
                lines = child.stderr.read().decode().split("\n")[:-1]
            assert child.returncode == -signal.SIGKILL

            in_flight: Model | None = None
            for line in lines:
                if line == "end":
                    assert in_flight is not None
                    state, in_flight = in_flight, None
                    operations += 1
                else:
                    _, op, *version = line.split()
                    in_flight = after(state, op, *(version or [""]))
            store = FirmwareStore(directory)
            found = model_of(store)
            assert found in (state, in_flight), (lines[-2:], found)
            check_images(store)
            store.close()

        # Enough work for the kills to land inside operations.
        assert operations > 3 * len(KILL_AFTER)
        # The next commit removes what a kill left unnamed.
        store = FirmwareStore(directory)
        (tmp_path / "last.bin").write_bytes(content("2.0.0"))
        store.stage("2.0.0", tmp_path / "last.bin")
        names = {path.name for path in directory.glob("img-*.bin")}
        assert names == check_images(store)
