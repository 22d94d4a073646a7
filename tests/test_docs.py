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


def test_no_module_in_the_package_runs_over_450_lines() -> None:
    """A module over 450 lines does more than one job: split it where its parts have names."""
    long = [f"{path.relative_to(ROOT)} ({count} lines)" for path in sorted((ROOT / "mtsearch").rglob("*.py"))
            if (count := len(path.read_text(encoding="utf-8").splitlines())) > 450]
    assert not long, long


def test_old_formats_and_directions_each_have_one_home() -> None:
    """Only records.py knows an old format; only metrics.py compares a mode with max or min."""
    import re

    outside = []
    for path in sorted((ROOT / "mtsearch").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if path.name != "records.py" and re.search(r"predates_validation|with_thesis_tracking|_legacy", text):
            outside.append(f"{path.relative_to(ROOT)}: an old-format detector")
        if path.name != "metrics.py" and re.search(r"""==\s*["'](max|min)["']""", text):
            outside.append(f"{path.relative_to(ROOT)}: compares a mode")
    assert not outside, outside


def test_the_layers_import_only_downwards() -> None:
    """data/ and model/ know nothing of search or results; train/ nothing of Ray, search or
    results; results/ nothing of search (DESIGN.md's layout)."""
    import re

    forbidden = {"data": ("search", "results", "train", "cli", "ray"),
                 "model": ("search", "results", "train", "cli", "ray", "data"),
                 "train": ("search", "results", "cli", "ray"),
                 "results": ("search", "cli", "ray")}
    found = []
    for layer, banned in forbidden.items():
        for path in sorted((ROOT / "mtsearch" / layer).rglob("*.py")):
            for line in path.read_text(encoding="utf-8").splitlines():
                match = re.match(r"\s*(?:from|import) (mtsearch\.(\w+)|(ray)\b)", line)
                if match and (match.group(2) or match.group(3)) in banned:
                    found.append(f"{path.relative_to(ROOT)}: {line.strip()}")
    assert not found, found
