"""Parsing untrusted YAML and JSON text (session files, inputs files) with bounds.

Files given to ``validate``, ``run`` and ``batch`` may be hostile or broken. PyYAML's
``safe_load`` shares an anchored node between its aliases, so a few hundred bytes of
nested aliases (a "billion laughs") load instantly and then expand to gigabytes when
the data is validated or stored; deep nesting overflows the interpreter stack; and
both YAML and JSON silently keep the last of two equal keys. This module owns the one
loader every file reader uses, which rejects all of these (and self-containing
aliases) with a :class:`LoadError` naming the line.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "MAX_NODES", "LoadError", "load_json", "load_yaml"]

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists accepted (sessions nest about 6 deep)."""
MAX_NODES = 100_000
"""Most values a document may hold once every alias is expanded (a session has a few
hundred; a 388-byte alias bomb has a billion)."""


class LoadError(ValueError):
    """The text is not acceptable YAML/JSON; ``line`` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts depth and expanded size while composing, and refuses
    duplicate keys while constructing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        # Expanded size of each composed node; an alias reuses its anchor's node, so
        # its size counts again wherever it is referenced.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            if self._depth > MAX_DEPTH:
                raise LoadError(f"nested deeper than {MAX_DEPTH} levels", _line(event.start_mark))
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if node is None:
            return None
        size = self._sizes.get(id(node))
        if size is None and isinstance(event, yaml.AliasEvent):
            # The anchor is still being composed: the data would contain itself. (The
            # line is the alias's own: the node it returned is the anchor's.)
            raise LoadError("an alias refers to a value that contains it", _line(event.start_mark))
        if size is None:
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self._sizes.get(id(child), 1) for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(
                    self._sizes.get(id(k), 1) + self._sizes.get(id(v), 1) for k, v in node.value
                )
            if size > MAX_NODES:
                raise LoadError(
                    f"expands to more than {MAX_NODES} values through aliases"
                    " (alias bound exceeded)",
                    _line(node.start_mark),
                )
            self._sizes[id(node)] = size
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<" merges are meant to be overridden by explicit keys
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if duplicate:
                raise LoadError(f"duplicate key {key!r}", _line(key_node.start_mark))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _line(mark: Any) -> int | None:
    """The 1-based line of a PyYAML mark (0-based; the pure or the C one), if any."""
    return mark.line + 1 if mark is not None else None


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON, which YAML mostly contains) with the bounds above.

    Raises:
        LoadError: a duplicate key, too deep, too many values after alias expansion,
            or not YAML at all.
    """
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(str(exc.problem or exc).split())
        raise LoadError(f"not valid YAML: {detail}", _line(mark)) from None
    except yaml.YAMLError as exc:
        raise LoadError(f"not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()


def load_json(text: str) -> Any:
    """Parse JSON with the depth bound, refusing duplicate keys.

    Raises:
        LoadError: a duplicate key, too deep, or not JSON.
    """
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as exc:
        raise LoadError(f"not valid JSON: {exc.msg}", exc.lineno) from None
    except RecursionError:
        raise LoadError(f"nested deeper than {MAX_DEPTH} levels") from None
    except _DuplicateKey as exc:
        # The JSON parser gives no position per key; YAML reads JSON and gives one.
        try:
            load_yaml(text)
        except LoadError as located:
            if located.message.startswith("duplicate key"):
                raise located from None
        raise LoadError(f"duplicate key {exc.key!r}") from None
    if _depth(data) > MAX_DEPTH:
        raise LoadError(f"nested deeper than {MAX_DEPTH} levels")
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (the data may be deep)."""
    deepest = 0
    stack = [(data, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, level)
            stack.extend((item, level + 1) for item in value)
    return deepest
