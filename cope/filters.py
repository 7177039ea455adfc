r"""Typed search filters: every value stays a ``lancedb.expr`` literal from the caller to LanceDB, never SQL text.

>>> Filters(domains=["video"], source_ids=["it's"]).expr()  # doctest: +SKIP
Expr(((domain IN ('video')) AND (source_id IN ('it''s'))))

Why ``where=`` (raw SQL) is refused together with typed filters: LanceDB 0.40 has no way to turn a SQL string into
an expression node. To AND a SQL string with an ``Expr`` it renders the ``Expr`` back to SQL text with
``Expr.to_sql()`` (``lancedb.query._combine_where`` in Python, and the Rust query builder the same way), and that
rendering does not round-trip: a quote after a backslash is not escaped, so the rest of the value is read as SQL
(``item_ids=["x\\')) OR 1=1 --"]`` matched every row), and NUL becomes a space. An ``Expr`` passed on its own is
bound as a literal. So a filter is either typed (an ``Expr``) or a trusted SQL string, never both.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from cope.errors import UsageError
from cope.records import Domain

MetadataValue = str | int | float | bool | None

#: a per-modality vector column and the flag of rows that have that modality (the others store a zero vector)
MODALITY_FLAG = {"image_vector": "has_image", "text_vector": "has_text"}

#: the filters whose values come from the caller and are bound as literals
TYPED_FILTERS = ("domains", "item_ids", "exclude_ids", "source_ids", "updated_after", "updated_before",
                 "slice_between", "metadata")


class Filters(BaseModel):
    """Typed filters, combined with AND; every value is bound as a literal, never pasted into SQL.

    ``slice_between=(a, b)`` keeps live slices overlapping ``[a, b]`` seconds (and so only live rows).
    ``metadata={"product_key": "p001"}`` compares top-level keys of the JSON ``metadata`` column for equality: rows
    are narrowed in LanceDB by a bound substring test on the JSON-encoded value, then checked exactly in Python.
    ``where`` is raw SQL for trusted callers only, and cannot be combined with the typed filters (a
    :class:`~cope.errors.UsageError` says so): put the whole filter in ``where``, or use typed filters only.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    domains: tuple[Domain, ...] | None = None
    item_ids: tuple[str, ...] | None = None
    exclude_ids: tuple[str, ...] | None = None
    source_ids: tuple[str, ...] | None = None
    updated_after: dt.datetime | None = None
    updated_before: dt.datetime | None = None
    slice_between: tuple[float, float] | None = None
    metadata: dict[str, MetadataValue] | None = None
    where: str | None = None

    @field_validator("domains", "item_ids", "exclude_ids", "source_ids", mode="before")
    @classmethod
    def _listify(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("updated_after", "updated_before")
    @classmethod
    def _utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=dt.timezone.utc)  # the column is UTC; naive datetimes are taken as UTC
        return v

    # -- checks ------------------------------------------------------------------------------------------------------
    def typed(self) -> list[str]:
        """Names of the typed filters that are set."""
        return [name for name in TYPED_FILTERS if getattr(self, name) is not None]

    def check(self) -> Filters:
        """Refuse what cannot be filtered safely (raises :class:`~cope.errors.UsageError`); returns ``self``."""
        typed = self.typed()
        if self.where is not None and self.where.strip() and typed:
            raise UsageError(
                f"where= (raw SQL) cannot be combined with the typed filters {', '.join(n + '=' for n in typed)}: "
                "LanceDB would have to paste their values into SQL text, which is not safe. Either use typed "
                "filters only, or write the whole filter in where= yourself (trusted SQL, e.g. "
                "\"domain = 'video' AND n_images > 1\")"
            )
        for name in ("item_ids", "exclude_ids", "source_ids"):
            for value in getattr(self, name) or ():
                _check_text(value, name)
        for key, value in (self.metadata or {}).items():
            _check_text(key, "metadata key")
            if isinstance(value, str):
                _check_text(value, f"metadata[{key!r}]")
        if self.slice_between is not None and any(math.isnan(x) for x in self.slice_between):
            raise UsageError(f"slice_between={self.slice_between}: the bounds must be numbers of seconds, not NaN")
        return self

    # -- LanceDB -----------------------------------------------------------------------------------------------------
    def expr(self, *, vector_column: str = "vector", columns: Sequence[str] = ()) -> Any:
        """The filter for LanceDB's ``where()``: a ``lancedb.expr.Expr`` built from typed filters, the raw ``where``
        string, or ``None`` (no filter).

        Searching a per-modality column adds ``has_image = true`` / ``has_text = true`` (when the table has that
        column): as an expression to typed filters, and as that constant clause, which holds no value, to ``where``.
        """
        from lancedb.expr import col, lit

        self.check()
        flag = MODALITY_FLAG.get(vector_column)
        flag = flag if flag and (not columns or flag in columns) else None
        if self.where is not None and self.where.strip():
            return f"({flag} = true) AND ({self.where})" if flag else self.where
        parts = []
        if self.domains is not None:
            parts.append(col("domain").isin(list(self.domains)))
        if self.item_ids is not None:
            parts.append(col("item_id").isin(list(self.item_ids)))
        if self.exclude_ids:
            parts.append(~col("item_id").isin(list(self.exclude_ids)))
        if self.source_ids is not None:
            parts.append(col("source_id").isin(list(self.source_ids)))
        if self.updated_after is not None:
            parts.append(col("updated_at") >= lit(self.updated_after))
        if self.updated_before is not None:
            parts.append(col("updated_at") < lit(self.updated_before))
        if self.slice_between is not None:
            start, end = self.slice_between
            parts.append((col("slice_end") > lit(float(start))) & (col("slice_start") < lit(float(end))))
        if flag:
            parts.append(col(flag) == lit(True))  # rows without that modality hold zero vectors
        for value in (self.metadata or {}).values():
            if isinstance(value, str):  # a necessary condition: both JSON encodings of the value, as bound literals
                narrow = None
                for encoded in dict.fromkeys((json.dumps(value, ensure_ascii=False), json.dumps(value))):
                    c = col("metadata").contains(lit(encoded))
                    narrow = c if narrow is None else narrow | c
                parts.append(narrow)
        expr = None
        for p in parts:
            expr = p if expr is None else expr & p
        return expr

    # -- Python ------------------------------------------------------------------------------------------------------
    def matches_metadata(self, raw: str | None) -> bool:
        """The exact metadata test on a row's JSON ``metadata`` text (LanceDB only narrowed the candidates)."""
        if not self.metadata:
            return True
        try:
            meta = json.loads(raw) if raw else {}
        except ValueError:
            return False
        if not isinstance(meta, dict):
            return False
        return all(k in meta and _same(meta[k], v) for k, v in self.metadata.items())


def _check_text(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UsageError(f"{what}: {value[:40]!r} is not valid Unicode text ({e.reason})") from None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def merge_filters(filters: Filters | None, **kwargs: Any) -> Filters:
    """``filters`` updated with the keyword filters that are not ``None``, checked (:meth:`Filters.check`)."""
    given = {k: v for k, v in kwargs.items() if v is not None}
    if filters is None:
        return Filters(**given).check()
    return filters.model_copy(update=Filters(**given).model_dump(exclude_unset=True)).check()


__all__ = ["MODALITY_FLAG", "TYPED_FILTERS", "Filters", "MetadataValue", "merge_filters"]
