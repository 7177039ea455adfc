"""A database-wide cache of text read in pictures, keyed by the picture's pixel hash and the reading settings.

Shared by every table of the database, so a re-run, another encoder or other fusion weights never read the same
picture twice. Knows nothing of OCR itself: keys and lines in, keys and lines out.

>>> cache = OcrCacheTable.open(new_db)
>>> cache.put_many({"k1": [("SALE", 0.98)]})  # buffered; flush() writes (the job flushes with its rows)
>>> cache.flush()
>>> OcrCacheTable.open(new_db).get_many(["k1", "k2"])
{'k1': [('SALE', 0.98)]}
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence

import pyarrow as pa

from cope.sql import sql_in
from cope.store.lancedb_import import lancedb

CACHE_TABLE = "_cope_ocr_cache"
CACHE_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("lines", pa.string(), nullable=False)])


class OcrCacheTable:
    """``get_many`` / ``put_many`` over a LanceDB table; safe to share between extraction threads. New results are
    buffered (and visible to ``get_many``) until :meth:`flush` writes them in one commit."""

    def __init__(self, db: lancedb.DBConnection) -> None:
        self._db = db
        self._table: lancedb.table.Table | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, list[tuple[str, float]]] = {}

    @classmethod
    def open(cls, uri: str | os.PathLike[str]) -> OcrCacheTable:
        return cls(lancedb.connect(str(uri)))

    def _get_table(self, create: bool) -> lancedb.table.Table | None:
        if self._table is None:
            try:
                self._table = self._db.open_table(CACHE_TABLE)
            except (FileNotFoundError, ValueError):
                if create:
                    self._table = self._db.create_table(CACHE_TABLE, schema=CACHE_SCHEMA, exist_ok=True)
        return self._table

    def get_many(self, keys: Sequence[str]) -> dict[str, list[tuple[str, float]]]:
        with self._lock:
            table = self._get_table(create=False)
            out = {k: self._pending[k] for k in keys if k in self._pending}
        wanted = [k for k in dict.fromkeys(keys) if k not in out]
        if table is None or not wanted:
            return out
        found = table.search().where(sql_in("key", wanted)).select(["key", "lines"]).limit(None).to_arrow()
        out.update({k: [(t, float(s)) for t, s in json.loads(v)]
                    for k, v in zip(found.column("key").to_pylist(), found.column("lines").to_pylist())})
        return out

    def put_many(self, results: Mapping[str, Sequence[tuple[str, float]]]) -> None:
        with self._lock:
            self._pending.update({k: list(v) for k, v in results.items()})

    def flush(self) -> None:
        """Write the buffered results (one commit)."""
        with self._lock:
            pending, self._pending = self._pending, {}
            if not pending:
                return
            rows = pa.table({"key": list(pending), "lines": [json.dumps([list(x) for x in v], ensure_ascii=False)
                                                              for v in pending.values()]}, schema=CACHE_SCHEMA)
            table = self._get_table(create=True)
            assert table is not None
            table.merge_insert("key").when_matched_update_all().when_not_matched_insert_all().execute(rows)
