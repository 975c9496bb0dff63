"""The SQLite state store: schema versions, configuration, reboots, crashes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import attrs
import pytest

from protocols.config import DeviceConfig, NoData
from state.store import (
    CONFIG_KEY,
    MIGRATIONS,
    SCHEMA_VERSION,
    StateStore,
    StateStoreError,
)

WRITER = """
import sys
from pathlib import Path
from protocols.config import DeviceConfig
from state.store import StateStore
store = StateStore(Path(sys.argv[1]))
n = 1
print("ready", flush=True)
while True:
    store.save_config(DeviceConfig(active_wait_timeout=n))
    n += 1
"""


# The configuration an older release stored.
OLD_CONFIG = DeviceConfig(location_timeout=90)


def old_database(path: Path, version: int) -> None:
    """A database as the release with schema ``version`` left it, with data."""
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:version]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {version}")
        db.execute(
            "INSERT INTO config (key, value, updated) VALUES (?, ?, 1.0)",
            (CONFIG_KEY, json.dumps(attrs.asdict(OLD_CONFIG), sort_keys=True)),
        )
        db.execute(
            "INSERT INTO reboots (at, reason, cause) VALUES (2.0, 'generic', 'x')"
        )
        if version >= 2:
            db.execute(
                "INSERT INTO samples (kind, body, state, updated) "
                "VALUES ('bat', '{\"v\": 3600}', 'queued', 3.0)"
            )
    db.close()


def tables(path: Path) -> set[str]:
    """The tables of the database at ``path``."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        names = {str(name) for (name,) in rows}
    db.close()
    return names


class TestMigrations:
    @pytest.mark.parametrize("version", [1, 2])
    def test_old_database_keeps_its_rows(self, tmp_path: Path, version: int) -> None:
        """v1 and v2 migrate to the newest schema; nothing stored is lost."""
        path = tmp_path / "state.db"
        old_database(path, version)

        store = StateStore(path)

        assert store.schema_version == SCHEMA_VERSION == 3
        assert store.load_config() == OLD_CONFIG
        assert [(r.at, r.reason, r.cause) for r in store.reboots()] == [
            (2.0, "generic", "x")
        ]
        expected = [(1, "bat", '{"v": 3600}')] if version >= 2 else []
        assert store.pending_samples() == expected
        assert {"firmware_slots", "firmware_swap", "fota_status"} <= tables(path)
        with sqlite3.connect(path) as db:
            for table in ("firmware_slots", "firmware_swap", "fota_status"):
                assert db.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        db.close()

    def test_failed_migration_changes_nothing(self, tmp_path: Path) -> None:
        """A migration that fails halfway is rolled back whole."""
        path = tmp_path / "state.db"
        old_database(path, 2)
        with sqlite3.connect(path) as db:
            # Migration 3 creates two tables, then fails on this one.
            db.execute("CREATE TABLE fota_status (x)")
        db.close()

        with pytest.raises(StateStoreError, match="fota_status already exists"):
            StateStore(path)

        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone() == (2,)
        db.close()
        assert "firmware_slots" not in tables(path)
        assert "samples" in tables(path)

    def test_concurrent_openers_migrate_once(self, tmp_path: Path) -> None:
        """Connections opening an old database together all succeed."""
        path = tmp_path / "state.db"
        old_database(path, 1)
        start = threading.Barrier(6)
        opened: list[int] = []
        failed: list[BaseException] = []

        def open_it() -> None:
            start.wait()
            try:
                store = StateStore(path)
                opened.append(store.schema_version)
                store.close()
            except BaseException as exc:  # reported by the assertion below
                failed.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert failed == []
        assert opened == [SCHEMA_VERSION] * 6
        assert StateStore(path).load_config() == OLD_CONFIG


class TestStateStore:
    def test_new_database_has_the_current_schema_and_no_config(
        self, tmp_path: Path
    ) -> None:
        """A fresh file is migrated to the newest schema and holds nothing."""
        store = StateStore(tmp_path / "state.db")

        assert store.schema_version == SCHEMA_VERSION
        assert store.load_config() is None
        assert store.reboots() == []

    def test_config_survives_reopening(self, tmp_path: Path) -> None:
        """What was saved is what the next process loads."""
        config = DeviceConfig(active_mode=False, no_data=NoData(gnss=True))
        store = StateStore(tmp_path / "state.db")
        store.save_config(config)
        store.close()

        loaded = StateStore(tmp_path / "state.db").load_config()

        assert loaded == config

    def test_reboots_are_kept_in_order(self, tmp_path: Path) -> None:
        """Each reboot's reason and cause are kept across reopening."""
        store = StateStore(tmp_path / "state.db")
        store.record_reboot("generic", "CLOUD_EVT_ERROR(-101)")
        store.record_reboot("fota_update", "CLOUD_EVT_FOTA_DONE")
        store.close()

        records = StateStore(tmp_path / "state.db").reboots()

        assert [(r.reason, r.cause) for r in records] == [
            ("generic", "CLOUD_EVT_ERROR(-101)"),
            ("fota_update", "CLOUD_EVT_FOTA_DONE"),
        ]

    @pytest.mark.parametrize(
        "value",
        ["not json", "[]", '{"active_mode": true}', '{"no_data": {}}'],
    )
    def test_corrupt_config_names_file_and_key(
        self, tmp_path: Path, value: str
    ) -> None:
        """A stored value that is not a configuration is refused, by name."""
        path = tmp_path / "state.db"
        StateStore(path).close()
        with sqlite3.connect(path) as db:
            db.execute(
                "INSERT INTO config (key, value, updated) VALUES (?, ?, 0)",
                (CONFIG_KEY, value),
            )

        with pytest.raises(StateStoreError, match=f"{path}: {CONFIG_KEY}"):
            StateStore(path).load_config()

    def test_wrongly_typed_field_is_refused(self, tmp_path: Path) -> None:
        """A string where an integer belongs is not taken as a configuration."""
        path = tmp_path / "state.db"
        StateStore(path).save_config(DeviceConfig())
        with sqlite3.connect(path) as db:
            db.execute(
                "UPDATE config SET value = replace(value, '\"location_timeout\": 300',"
                " '\"location_timeout\": \"300\"')"
            )

        with pytest.raises(StateStoreError, match="location_timeout"):
            StateStore(path).load_config()

    def test_newer_schema_is_refused(self, tmp_path: Path) -> None:
        """A database from a newer release is not opened."""
        path = tmp_path / "state.db"
        with sqlite3.connect(path) as db:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

        with pytest.raises(StateStoreError, match="newer than this release"):
            StateStore(path)

    def test_not_a_database_is_refused(self, tmp_path: Path) -> None:
        """A file that is not SQLite gives an error naming it."""
        path = tmp_path / "state.db"
        path.write_bytes(b"this is not a database" * 100)

        with pytest.raises(StateStoreError, match=str(path)):
            StateStore(path)

    def test_sigkill_while_writing_leaves_a_whole_config(
        self, tmp_path: Path
    ) -> None:
        """A writer killed mid-stream leaves the last committed value, intact."""
        path = tmp_path / "state.db"
        with subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        ) as writer:
            assert writer.stdout is not None
            assert writer.stdout.readline() == b"ready\n"
            time.sleep(0.5)

            writer.send_signal(signal.SIGKILL)
        assert writer.returncode == -signal.SIGKILL
        loaded = StateStore(path).load_config()

        assert loaded is not None
        assert loaded.active_wait_timeout > 1
        assert loaded == DeviceConfig(active_wait_timeout=loaded.active_wait_timeout)
