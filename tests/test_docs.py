"""docs/INTERFACES.md is generated from the code, so it cannot go stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_interfaces_page_matches_the_code() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "interfaces.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
