"""kill -9 of a running study at a chosen moment, for the tests that then `--resume` it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mtsearch.results.store import load_epochs


def kill_9_when(command: Sequence[str], study: Path, ready: Callable[[list[dict[str, Any]]], bool], *,
                settle_s: float = 0.0, timeout_s: float = 300.0) -> None:
    """Run `command` and kill -9 it `settle_s` after `ready(the study's epoch rows)` first holds;
    its output goes to a file beside the study, shown if `ready` never holds."""
    log = study.parent / f"{study.name}.killed.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        proc = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            time.sleep(0.3)
            if (study / "epochs.parquet").exists() and ready(load_epochs(study).to_pylist()):
                break
        else:
            proc.kill()
            proc.wait(timeout=30)
            raise AssertionError(log.read_text()[-5000:])
        time.sleep(settle_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def trials_at(rows: list[dict[str, Any]], epoch: int) -> int:
    """How many trials have reported epoch `epoch` or a later one."""
    return len({row["trial_id"] for row in rows if row["epoch"] >= epoch})
