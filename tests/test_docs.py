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


def _import_graph() -> dict[str, set[str]]:
    """mtsearch module -> the mtsearch modules it imports anywhere in its text (at the top, inside
    a function, or by name through importlib.import_module)."""
    import ast

    def name_of(path: Path) -> str:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name_of(path): path for path in (ROOT / "mtsearch").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else (node.module or "")
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
                  and node.args and isinstance(node.args[0], ast.Constant)):
                targets = [str(node.args[0].value)]
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def test_the_package_has_no_import_circles() -> None:
    """No two modules import each other, however far round (lazy imports count: a lazy import
    that closes a circle is a circle that only hides)."""
    graph = _import_graph()
    circles, done = [], set()
    for start in sorted(graph):
        stack, on_path = [(start, iter(sorted(graph[start])))], [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.pop()
                done.add(node)
            elif child in on_path:
                circles.append(" -> ".join(on_path[on_path.index(child):] + [child]))
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                on_path.append(child)
    assert not circles, sorted(set(circles))


def test_the_top_level_modules_import_no_layer_above_them() -> None:
    """config, records, settings, space and the other top-level modules sit under every
    subpackage (DESIGN.md): none of them imports one, not even by name (`__main__`, the entry
    point, runs the CLI)."""
    graph = _import_graph()
    layers = ("data", "model", "train", "search", "results", "cli")
    up = [f"{name} -> {dep}" for name, deps in graph.items()
          if name.count(".") == 1 and name != "mtsearch.__main__" and not (ROOT / name.replace(".", "/")).is_dir()
          for dep in deps if dep.split(".")[1] in layers]
    assert not up, up
