"""LanceDB storage of item vectors (installed as ``cope.store``). Knows records, not torch.

Names are loaded on first use, so ``cope.store.schema`` can be imported without LanceDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cope.store.item_store import ItemStore

__all__ = ["VECTOR_COLUMNS", "ItemStore", "StoreMismatchError", "item_schema", "sql_in", "sql_str"]


def __getattr__(name: str) -> Any:
    if name == "ItemStore":
        from cope.store.item_store import ItemStore

        return ItemStore
    if name in ("VECTOR_COLUMNS", "item_schema"):
        from cope.store import schema

        return getattr(schema, name)
    if name == "StoreMismatchError":
        from cope.errors import StoreMismatchError

        return StoreMismatchError
    if name in ("sql_in", "sql_str"):
        from cope import sql

        return getattr(sql, name)
    raise AttributeError(f"module 'cope.store' has no attribute {name!r}")
