"""Results follow the umask like any other file, so other users (dashboards, a shared cluster
file system) can read them; temp files are private only while they are written."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtsearch.files import write_atomic
from mtsearch.results.store import StudyStore


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_follow_the_umask(tmp_path: Path, umask_022: None) -> None:
    write_atomic(tmp_path / "space.yaml", "name: x\n")
    assert mode(tmp_path / "space.yaml") == 0o644
    os.umask(0o077)
    write_atomic(tmp_path / "private.yaml", "name: x\n")
    assert mode(tmp_path / "private.yaml") == 0o600


def test_parquet_tables_are_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    store = StudyStore(tmp_path / "study", {"loss.w_track": "float"})
    store.upsert_trial("t1", status="running", **{"loss.w_track": 5.0})
    store.add_epoch("t1", {"epoch": 1, "loss": 1.0})
    store.flush()
    for name in ("trials.parquet", "epochs.parquet"):
        assert mode(tmp_path / "study" / name) == 0o644, name
