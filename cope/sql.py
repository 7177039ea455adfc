"""SQL literals for the few internal statements that LanceDB and DuckDB only take as text (deletes, ``IN`` lists of
keys cope itself produced). User-supplied filter values never go through here: they stay typed expressions
(:mod:`cope.api`).

>>> sql_str("it's")
"'it''s'"
>>> sql_in("item_id", ["a", "b"])
"item_id IN ('a', 'b')"
"""

from __future__ import annotations

from collections.abc import Iterable


def sql_str(value: str) -> str:
    """A SQL string literal with quotes escaped (and NUL refused: no engine reads past it consistently)."""
    text = str(value)
    if "\x00" in text:
        raise ValueError("a NUL character cannot be part of a SQL string literal")
    return "'" + text.replace("'", "''") + "'"


def sql_in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(sql_str(v) for v in values)})"
