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


def test_no_function_in_the_package_runs_over_80_lines() -> None:
    """Short functions each do one job; a long one is split where its parts have names."""
    import ast

    long = []
    for path in sorted((ROOT / "mtsearch").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_the_package_cites_no_issue_numbers() -> None:
    """The issue tracker is not part of the repository: code says why in its own words."""
    import re

    cited = [f"{path.relative_to(ROOT)}:{number}" for path in sorted((ROOT / "mtsearch").rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if re.search(r"\bissues? [0-9]|\bissue-[0-9]", line, re.IGNORECASE)]
    assert not cited, cited
