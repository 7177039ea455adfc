"""The LanceDB item table: idempotent upserts keyed on item id, one model per table, an errors table beside it."""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import lancedb
import pyarrow as pa

from cope.errors import InputNotFoundError, StoreMismatchError
from cope.sql import sql_in, sql_str
from cope.store.schema import ERROR_SCHEMA, META_DIM, META_MODEL_TAG, item_schema

logger = logging.getLogger(__name__)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ItemStore:
    """Item vectors in a LanceDB table ``table`` (default ``items``) and failures in ``<table>_errors``.

    >>> store = ItemStore.open("./cope.lancedb")  # doctest: +SKIP
    >>> store.count(), store.model_tag, store.dim  # doctest: +SKIP
    """

    def __init__(self, db: lancedb.DBConnection, uri: str, name: str, table: lancedb.table.Table | None) -> None:
        self.db = db
        self.uri = uri
        self.name = name
        self._table = table
        self._errors: lancedb.table.Table | None = None

    # -- opening -----------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, uri: str | os.PathLike[str], table: str = "items", *, model_tag: str | None = None, dim: int | None = None
    ) -> ItemStore:
        """Open (or prepare to create) a table. With ``model_tag``/``dim`` given, refuse a table of another model."""
        uri = str(uri)
        if "://" not in uri:
            Path(uri).mkdir(parents=True, exist_ok=True)
        db = lancedb.connect(uri)
        tbl = db.open_table(table) if table in _table_names(db) else None
        if tbl is not None and not {"item_id", "vector", "record_key"} <= set(tbl.schema.names):
            raise StoreMismatchError(
                f"table {table!r} in {uri} is not a cope item table (it has columns {tbl.schema.names[:8]}); "
                "pass the name of a table written by `cope embed` with --table"
            )
        store = cls(db, uri, table, tbl)
        if tbl is not None and (model_tag is not None or dim is not None):
            store.check_model(model_tag, dim)
        return store

    @property
    def exists(self) -> bool:
        return self._table is not None

    @property
    def table(self) -> lancedb.table.Table:
        if self._table is None:
            raise InputNotFoundError(
                f"no table {self.name!r} in {self.uri}; run `cope embed MANIFEST --db {self.uri}` first"
            )
        return self._table

    @property
    def model_tag(self) -> str | None:
        if self._table is None:
            return None
        return (self._table.schema.metadata or {}).get(META_MODEL_TAG, b"").decode() or None

    @property
    def dim(self) -> int | None:
        if self._table is None:
            return None
        raw = (self._table.schema.metadata or {}).get(META_DIM)
        return int(raw) if raw else None

    @property
    def metadata(self) -> dict[bytes, bytes]:
        """The table's schema metadata (model tag, dim and the pipeline spec that made its vectors)."""
        if self._table is None:
            return {}
        return dict(self._table.schema.metadata or {})

    def check_model(self, model_tag: str | None, dim: int | None) -> None:
        if self._table is None:
            return
        if (model_tag is not None and model_tag != self.model_tag) or (dim is not None and dim != self.dim):
            raise StoreMismatchError(
                f"table {self.name!r} in {self.uri} holds vectors of model {self.model_tag!r} (dim {self.dim}); "
                f"refusing to mix in vectors of {model_tag!r} (dim {dim}). Use the same model, another --table, "
                "or another --db."
            )

    def ensure_table(
        self, model_tag: str, dim: int, metadata: Mapping[bytes, bytes] | None = None
    ) -> lancedb.table.Table:
        """Create the table for vectors of ``model_tag`` (``metadata``: the pipeline spec) or check it holds them."""
        if self._table is None:
            schema = item_schema(dim, model_tag, metadata)
            self._table = self.db.create_table(self.name, schema=schema, exist_ok=True)
            logger.info("created table %r in %s for %s (dim %d)", self.name, self.uri, model_tag, dim)
        self.check_model(model_tag, dim)
        return self._table

    # -- reading -----------------------------------------------------------------------------------------------
    def count(self, where: str | None = None) -> int:
        return 0 if self._table is None else self._table.count_rows(where)

    def read(self, columns: Sequence[str], where: str | None = None) -> pa.Table:
        """Selected columns of the rows matching ``where`` (all rows without it), as Arrow."""
        if self._table is None:
            return pa.table({c: [] for c in columns})
        q = self._table.search().select(list(columns))
        if where:
            q = q.where(where)
        return q.limit(None).to_arrow()

    def stored_hashes(self, record_keys: Sequence[str], chunk: int = 1000) -> dict[str, set[str]]:
        """record_key -> record hashes stored for it (a key whose rows all share one hash maps to one hash)."""
        out: dict[str, set[str]] = {}
        if self._table is None or not record_keys:
            return out
        for start in range(0, len(record_keys), chunk):
            part = self.read(["record_key", "record_hash"], sql_in("record_key", record_keys[start : start + chunk]))
            for key, h in zip(part.column("record_key").to_pylist(), part.column("record_hash").to_pylist()):
                out.setdefault(key, set()).add(h)
        return out

    # -- writing -----------------------------------------------------------------------------------------------
    def upsert(self, rows: pa.Table) -> None:
        """Insert or replace rows by item id, in one commit, then drop stale items of the same records.

        Stale items are rows of a record written in this batch whose record hash is not the new one (a live
        stream re-sliced after its snapshots changed).
        """
        if rows.num_rows == 0:
            return
        tbl = self.table
        rows = rows.cast(tbl.schema) if rows.schema != tbl.schema else rows
        (tbl.merge_insert("item_id").when_matched_update_all().when_not_matched_insert_all().execute(rows))
        latest = dict(zip(rows.column("record_key").to_pylist(), rows.column("record_hash").to_pylist()))
        multi = {k: h for k, h in latest.items() if k.startswith("live:")}
        if multi:
            clause = " OR ".join(f"(record_key = {sql_str(k)} AND record_hash != {sql_str(h)})" for k, h in multi.items())
            tbl.delete(clause)
        self.clear_errors(list(latest))

    # -- errors ------------------------------------------------------------------------------------------------
    @property
    def errors_name(self) -> str:
        return f"{self.name}_errors"

    def _errors_table(self, create: bool) -> lancedb.table.Table | None:
        if self._errors is None:
            if self.errors_name in _table_names(self.db):
                self._errors = self.db.open_table(self.errors_name)
            elif create:
                self._errors = self.db.create_table(self.errors_name, schema=ERROR_SCHEMA, exist_ok=True)
        return self._errors

    def record_errors(self, errors: Sequence[dict]) -> None:
        """Upsert failures (record_key, origin, stage, reason, model_tag): the latest reason per record wins."""
        if not errors:
            return
        at = now_utc()
        latest = {e["record_key"]: e for e in errors}
        table = pa.Table.from_pylist([{**e, "at": at} for e in latest.values()], schema=ERROR_SCHEMA)
        tbl = self._errors_table(create=True)
        assert tbl is not None
        tbl.merge_insert("record_key").when_matched_update_all().when_not_matched_insert_all().execute(table)

    def clear_errors(self, record_keys: Sequence[str]) -> None:
        tbl = self._errors_table(create=False)
        if tbl is not None and record_keys:
            tbl.delete(sql_in("record_key", record_keys))

    def clear_manifest_errors(self, manifests: Sequence[str]) -> None:
        """Forget invalid-row reports of these manifests (a run re-validates every row)."""
        tbl = self._errors_table(create=False)
        if tbl is None:
            return
        keys = tbl.search().where("stage = 'manifest'").select(["record_key"]).limit(None).to_arrow()
        prefixes = tuple(f"manifest:{m}:" for m in manifests)
        stale = [k for k in keys.column("record_key").to_pylist() if k.startswith(prefixes)]
        if stale:
            tbl.delete(sql_in("record_key", stale))

    def errors(self) -> pa.Table:
        tbl = self._errors_table(create=False)
        if tbl is None:
            return ERROR_SCHEMA.empty_table()
        return tbl.search().limit(None).to_arrow()

    def compact(self, older_than: dt.timedelta = dt.timedelta(minutes=10)) -> None:
        """Merge small fragments from many upserts and delete versions older than ``older_than``.

        Versions younger than that are kept so that readers holding an older version (a notebook) keep working.
        """
        for tbl in (self._table, self._errors_table(create=False)):
            if tbl is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    tbl.optimize(cleanup_older_than=older_than)


def _table_names(db: lancedb.DBConnection) -> list[str]:
    lister = getattr(db, "list_tables", None)
    if lister is None:
        return list(db.table_names())
    result = lister()
    names = getattr(result, "tables", result)
    return list(names)
