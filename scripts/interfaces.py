"""Write docs/INTERFACES.md from the code: each module's first docstring line and its public names
(classes, functions, constants) with signatures and first docstring lines.

`python scripts/interfaces.py` rewrites the file; `--check` exits 1 when it is out of date (a test
runs that, so the page cannot go stale). Reads the source with `ast`: nothing is imported.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mtsearch"
TARGET = ROOT / "docs" / "INTERFACES.md"
HEADER = """# Internal interfaces (generated: `python scripts/interfaces.py`)

Data flows one way: space file -> validated config -> trial -> metrics -> Parquet -> reports.
Each module's job, then its public names: what other modules may use. Names that start with `_`
are the module's own. Do not edit by hand; a test checks that this page matches the code.
"""


def _first_line(node: ast.AST) -> str:
    doc = ast.get_docstring(node) or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    args = ast.unparse(node.args)
    returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
    return f"{node.name}({args}){returns}"


def _public(name: str) -> bool:
    return not name.startswith("_")


def _entries(tree: ast.Module) -> list[str]:
    lines = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
            doc = _first_line(node)
            lines.append(f"- `{_signature(node)}`" + (f": {doc}" if doc else ""))
        elif isinstance(node, ast.ClassDef) and _public(node.name):
            doc = _first_line(node)
            lines.append(f"- class `{node.name}`" + (f": {doc}" if doc else ""))
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(item.name):
                    lines.append(f"  - `{_signature(item)}`")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            names += [e.id for t in targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)]
            constants = [n for n in names if n.isupper() and _public(n)]
            if constants:
                lines.append("- " + ", ".join(f"`{n}`" for n in constants))
    return lines


def render() -> str:
    parts = [HEADER]
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        entries = _entries(tree)
        doc = _first_line(tree)
        if not entries and not doc:
            continue
        parts.append(f"\n## {module}\n")
        if doc:
            parts.append(f"{doc}\n")
        if entries:
            parts.append("\n" + "\n".join(entries) + "\n")
    return "".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/INTERFACES.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run python scripts/interfaces.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
