"""LanceDB storage of item vectors. Knows nothing of torch."""

from store.item_store import ItemStore, StoreMismatchError, sql_in, sql_str
from store.schema import VECTOR_COLUMNS, item_schema

__all__ = ["VECTOR_COLUMNS", "ItemStore", "StoreMismatchError", "item_schema", "sql_in", "sql_str"]
