"""Text for people: the cells, tables and key/value lists every command's renderer is made of.

Renderers take the daemon's answer exactly as ``--json`` prints it, so the text and the JSON can
never disagree about what the daemon said. Tables show any key the daemon sends, after the
columns a command prefers, so that a field added to an answer shows up without a change here.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.3g}"
    if isinstance(value, Mapping):
        return ",".join(f"{k}={format_cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(format_cell(v) for v in value) or "-"
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(rows: Sequence[Mapping[str, Any]],
                 columns: Sequence[tuple[str, str]] | None = None) -> str:
    """Rows as an aligned text table; numbers right-aligned, text left-aligned.

    ``columns`` is a list of (key, HEADER); by default every key that occurs, in order of first
    appearance, so that a field added to the daemon's answer shows up without a change here.
    """
    if columns is None:
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        columns = [(key, key.upper()) for key in keys]
    if not columns:
        return ""
    cells = [[format_cell(row.get(key)) for key, _ in columns] for row in rows]
    # A column is numeric when it holds numbers and nothing else but gaps; one of only gaps
    # ("-") is text, so that it lines up under its header like its neighbours.
    numeric = [any(is_number(row.get(key)) for row in rows)
               and all(is_number(row.get(key)) or row.get(key) is None for row in rows)
               for key, _ in columns]
    widths = [max([len(header)] + [len(line[i]) for line in cells])
              for i, (_, header) in enumerate(columns)]

    def render(values: Sequence[str]) -> str:
        parts = [value.rjust(width) if right else value.ljust(width)
                 for value, width, right in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [render([header for _, header in columns])]
    lines.extend(render(line) for line in cells)
    return "\n".join(lines)


def format_pairs(pairs: Mapping[str, Any]) -> str:
    width = max((len(key) for key in pairs), default=0)
    return "\n".join(f"{key + ':':<{width + 1}} {format_cell(value)}"
                     for key, value in pairs.items())


def columns(rows: Sequence[Mapping[str, Any]], preferred: Sequence[str]) -> list[tuple[str, str]]:
    """``preferred`` first, in that order, then any other key the daemon sent, so that a field
    the core adds later still shows."""
    keys: dict[str, None] = dict.fromkeys(preferred)
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [(key, key.upper()) for key in keys]


def table_of(preferred: Sequence[str]) -> Callable[[Sequence[Mapping[str, Any]]], str]:
    """A renderer of rows with ``preferred`` columns first; "(none)" when there are no rows."""

    def render(result: Sequence[Mapping[str, Any]]) -> str:
        if not result:
            return "(none)"
        return format_table(result, columns(result, preferred))

    return render


def render_rows(result: Any) -> str:
    """Any list of rows, or a mapping of names to rows, as a table."""
    if isinstance(result, Mapping):
        result = _named_rows(result, "name")
    if not result:
        return "(none)"
    return format_table(result)


def _named_rows(mapping: Mapping[str, Any], name_key: str) -> list[dict]:
    rows = []
    for name, value in mapping.items():
        row = {name_key: name}
        row.update(value if isinstance(value, Mapping) else {"value": value})
        rows.append(row)
    return rows
