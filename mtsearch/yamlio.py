"""Safe YAML reading with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mtsearch.errors import InvalidInput


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    mapping: dict = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a list or mapping used as a key (keys are names)", key_node.start_mark
            ) from None
        if key in mapping:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        mapping[key] = loader.construct_object(value_node, deep=deep)
    return mapping


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely (no object tags, no duplicate keys); errors are `InvalidInput`."""
    path = Path(path)
    if not path.exists():
        raise InvalidInput(path, None, "file not found")
    if path.is_dir():
        raise InvalidInput(path, None, "is a folder, expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(path, None, f"not a UTF-8 text file (byte {exc.object[exc.start]:#04x} at offset "
                           f"{exc.start}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise InvalidInput(path, None, f"cannot read file: {exc.strerror or exc}") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, source: str | Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(source, None, f"invalid YAML: {where}{problem}") from None
    except RecursionError:
        raise InvalidInput(source, None, "invalid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # a value PyYAML matched but cannot build
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]  # (`2024-13-45`: month ...)
        raise InvalidInput(source, None, f"invalid YAML: {problem}") from None


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
