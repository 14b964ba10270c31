"""Shared pieces for one-line "file: field: msg (line N)" messages about YAML files that failed validation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml


def line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest node along `loc` (a missing key points at its parent)."""
    import yaml  # here: `charter --help` imports this module, and yaml costs it 12 ms

    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        node = child
    if node is not None:
        line = node.start_mark.line + 1
    return line


def loc_str(loc: tuple[Any, ...]) -> str:
    """A pydantic error location as a dotted path: `steps[0].model`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def error_msg(item: Any) -> str:
    """A pydantic error's message, lower-cased and without the "Value error, " prefix."""
    msg = str(item["msg"]).removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]  # "Field required" -> "field required"
