"""The LanceDB item table: idempotent upserts keyed on item id, one model per table, an errors table beside it.

An item id appears once in the table. Three things keep it so: a run holds the table's write lease
(:mod:`cope.store.lease`, one writer per table); ``item_id`` is declared the table's (unenforced) primary key, so
LanceDB treats two concurrent ``merge_insert`` commits that insert the same new id as a conflict and re-runs the
later one against the table it missed, instead of inserting the id twice; and an upsert resolves duplicate ids
inside its own batch (the last row wins). :meth:`ItemStore.duplicates` and :meth:`ItemStore.repair_duplicates`
(``cope check``) find and remove the duplicates older versions left (the newest row of an id is kept).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cope.errors import InputNotFoundError, StoreMismatchError
from cope.sql import sql_in, sql_str
from cope.store.lancedb_import import lancedb
from cope.store.lease import TableLease
from cope.store.schema import ERROR_SCHEMA, META_DIM, META_MODEL_TAG, item_schema

logger = logging.getLogger(__name__)

#: the field-metadata key LanceDB sets on a column declared (part of) the unenforced primary key
PRIMARY_KEY_META = b"lance-schema:unenforced-primary-key"
#: ids per SQL ``IN`` list
_CHUNK = 1000


@dataclass
class StoredRecords:
    """What the table holds for some records: their record hashes, and item ids stored more than once."""

    hashes: dict[str, set[str]] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ItemStore:
    """Item vectors in a LanceDB table ``table`` (default ``items``) and failures in ``<table>_errors``.

    >>> store = ItemStore.open("./cope.lancedb")  # doctest: +SKIP
    >>> store.count(), store.model_tag, store.dim  # doctest: +SKIP
    """

    def __init__(self, db: lancedb.DBConnection | None, uri: str, name: str, table: lancedb.table.Table | None) -> None:
        self._db = db  # None: a local folder that does not exist yet (created by the first write, never by reads)
        self.uri = uri
        self.name = name
        self._table = table
        self._errors: lancedb.table.Table | None = None
        self._lease: TableLease | None = None
        self._keyed: set[str] = set()  # tables whose primary key this store has declared or seen declared

    # -- opening -----------------------------------------------------------------------------------------------
    @classmethod
    def open(
        cls, uri: str | os.PathLike[str], table: str = "items", *, model_tag: str | None = None, dim: int | None = None
    ) -> ItemStore:
        """Open (or prepare to create) a table. With ``model_tag``/``dim`` given, refuse a table of another model.

        Opening creates nothing: a missing local folder is created by the first write (reading commands on a
        mistyped path leave no folder behind).
        """
        uri = str(uri)
        if "://" not in uri and not Path(uri).is_dir():
            return cls(None, uri, table, None)
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
    def db(self) -> lancedb.DBConnection:
        """The LanceDB connection (connecting creates a missing local folder: only writers ask for it)."""
        if self._db is None:
            if "://" not in self.uri:
                Path(self.uri).mkdir(parents=True, exist_ok=True)
            self._db = lancedb.connect(self.uri)
        return self._db

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
        self, model_tag: str, dim: int, metadata: Mapping[bytes, bytes] | None = None, *, ocr: bool = False
    ) -> lancedb.table.Table:
        """Create the table for vectors of ``model_tag`` (``metadata``: the pipeline spec; ``ocr``: with the columns
        of text read in pictures) or check it holds them."""
        if self._table is None:
            schema = _with_key(item_schema(dim, model_tag, metadata, ocr=ocr), "item_id")
            self._table = self._create(self.name, schema)
            logger.info("created table %r in %s for %s (dim %d)", self.name, self.uri, model_tag, dim)
        self.check_model(model_tag, dim)
        self._declare_key(self._table, "item_id")
        return self._table

    def _create(self, name: str, schema: pa.Schema) -> lancedb.table.Table:
        """Create a table, or open it when another writer created it meanwhile (its schema may differ in metadata:
        its primary key declared or not; the caller checks the model)."""
        try:
            return self.db.create_table(name, schema=schema, exist_ok=True)
        except ValueError:
            if name not in _table_names(self.db):
                raise
            return self.db.open_table(name)

    # -- one writer ------------------------------------------------------------------------------------------------
    @property
    def lease(self) -> TableLease | None:
        """The write lease this store holds (taken by :meth:`acquire_lease`), or None."""
        return self._lease if self._lease is not None and self._lease.held else None

    def acquire_lease(self, wait: float | None = None, *, purpose: str = "cope", ttl: float | None = None,
                      kind: str | None = None, take_over_own: bool = False) -> TableLease:
        """Take the table's write lease for this store's run (idempotent); a second writer waits ``wait`` seconds
        (default ``COPE_LEASE_WAIT``, 0) and then gets :class:`~cope.errors.TableBusyError` naming the holder.
        ``take_over_own``: see :meth:`TableLease.acquire`.

        It is released by :meth:`release_lease`, at the latest when this store is garbage-collected or the process
        ends. Writers working for the holder (Ray tasks of the same run) upsert through their own stores without it.
        """
        if self.lease is not None:
            return self._lease  # type: ignore[return-value]
        lease = TableLease.open(self.uri, self.name, kind=kind, purpose=purpose, ttl=ttl)  # type: ignore[arg-type]
        self._lease = lease.acquire(wait, take_over_own=take_over_own)
        if self._table is not None:
            self._declare_key(self._table, "item_id")  # a table of an older version: declare it now
        return lease

    @property
    def primary_key_declared(self) -> bool:
        """Whether ``item_id`` is declared the table's primary key (older versions did not declare it)."""
        if self._table is None:
            return False
        return any(k.startswith(PRIMARY_KEY_META) for k in (self._table.schema.field("item_id").metadata or {}))

    def release_lease(self) -> None:
        if self._lease is not None:
            self._lease.release()
            self._lease = None

    def _declare_key(self, tbl: lancedb.table.Table, column: str) -> None:
        """Declare ``column`` the table's unenforced primary key (once; a no-op when it is declared already)."""
        if tbl.name in self._keyed:
            return
        try:
            if not any(k.startswith(PRIMARY_KEY_META) for k in (tbl.schema.field(column).metadata or {})):
                tbl.set_unenforced_primary_key(column)
                logger.info("declared %r the primary key of table %r (concurrent upserts cannot duplicate it)",
                            column, tbl.name)
        except AttributeError:  # an older lancedb: the lease alone keeps writers apart
            logger.warning("this lancedb cannot declare %r a primary key of %r; upgrade lancedb so that racing "
                           "upserts cannot duplicate ids", column, tbl.name)
        self._keyed.add(tbl.name)

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

    def stored_hashes(self, record_keys: Sequence[str], chunk: int = _CHUNK) -> dict[str, set[str]]:
        """record_key -> record hashes stored for it (a key whose rows all share one hash maps to one hash)."""
        return self.stored_records(record_keys, chunk).hashes

    def stored_records(self, record_keys: Sequence[str], chunk: int = _CHUNK) -> StoredRecords:
        """The stored hashes of these records and the item ids among their rows that are stored more than once."""
        out = StoredRecords()
        if self._table is None or not record_keys:
            return out
        for start in range(0, len(record_keys), chunk):
            part = self.read(["record_key", "record_hash", "item_id"],
                             sql_in("record_key", record_keys[start : start + chunk]))
            for key, h in zip(part.column("record_key").to_pylist(), part.column("record_hash").to_pylist()):
                out.hashes.setdefault(key, set()).add(h)
            ids = part.column("item_id").to_pylist()
            if len(set(ids)) < len(ids):
                out.duplicates.update(i for i, n in Counter(ids).items() if n > 1)
        return out

    # -- duplicates ------------------------------------------------------------------------------------------------
    def duplicates(self) -> dict[str, int]:
        """Item ids stored more than once, with their number of rows (reads the ``item_id`` column)."""
        ids = self.read(["item_id"]).column("item_id").to_pylist()
        return {i: n for i, n in Counter(ids).items() if n > 1}

    def repair_duplicates(self, item_ids: Sequence[str] | None = None) -> int:
        """Keep the newest row (``updated_at``; any one of equals) of each id stored more than once, among
        ``item_ids`` (default: all). Returns the number of rows removed.

        One commit per 1000 ids: a ``merge_insert`` on (item_id, updated_at) whose source is the kept rows with
        ``updated_at`` one microsecond later, deleting every other row of those ids, so the table never lacks an
        id. Run it while holding the lease (``cope check --repair`` does): a row written between the read and the
        commit would be replaced by the kept one.
        """
        if self._table is None:
            return 0
        ids = sorted(self.duplicates()) if item_ids is None else sorted(set(item_ids))
        return sum(_keep_newest(self._table, "item_id", "updated_at", ids[s : s + _CHUNK])
                   for s in range(0, len(ids), _CHUNK))

    def error_duplicates(self) -> dict[str, int]:
        """Record keys with more than one row in the errors table (older versions could leave them)."""
        tbl = self._errors_table(create=False)
        if tbl is None:
            return {}
        keys = tbl.search().select(["record_key"]).limit(None).to_arrow().column("record_key").to_pylist()
        return {k: n for k, n in Counter(keys).items() if n > 1}

    def repair_error_duplicates(self) -> int:
        """Keep the latest failure (``at``) of each record key reported more than once; rows removed."""
        tbl = self._errors_table(create=False)
        keys = sorted(self.error_duplicates())
        if tbl is None or not keys:
            return 0
        self._declare_key(tbl, "record_key")
        return sum(_keep_newest(tbl, "record_key", "at", keys[s : s + _CHUNK]) for s in range(0, len(keys), _CHUNK))

    # -- writing -----------------------------------------------------------------------------------------------
    def upsert(self, rows: pa.Table) -> None:
        """Insert or replace rows by item id, in one commit, then drop stale items of the same records.

        Ids repeated in ``rows`` are resolved first: the last row wins (with a warning), so the batch is never
        ambiguous and never inserts an id twice. Stale items are rows of a record written in this batch whose
        record hash is not the new one (a live stream re-sliced after its snapshots changed).
        """
        if rows.num_rows == 0:
            return
        if self._lease is not None:
            self._lease.check()  # a run that lost its lease stops before writing
        tbl = self.table
        self._declare_key(tbl, "item_id")
        rows = dedupe_rows(rows)
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
        if self._db is None and not create:
            return None  # no database folder: no errors either
        if self._errors is None:
            if self.errors_name in _table_names(self.db):
                self._errors = self.db.open_table(self.errors_name)
            elif create:
                self._errors = self._create(self.errors_name, _with_key(ERROR_SCHEMA, "record_key"))
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
        self._declare_key(tbl, "record_key")
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


def _with_key(schema: pa.Schema, column: str) -> pa.Schema:
    """``schema`` with ``column`` declared the (unenforced, single-column) primary key, as LanceDB records it."""
    i = schema.get_field_index(column)
    f = schema.field(i)
    return schema.set(i, f.with_metadata({**(f.metadata or {}), PRIMARY_KEY_META + b":position": b"1"}))


def dedupe_rows(rows: pa.Table) -> pa.Table:
    """One row per item id, the last one (and only the rows of a record's last hash), with a warning if any went.

    >>> t = pa.table({"item_id": ["a", "b", "a"], "record_key": ["a", "b", "a"], "record_hash": ["1", "2", "3"]})
    >>> dedupe_rows(t).to_pydict()["record_hash"]
    ['2', '3']
    """
    ids = rows.column("item_id").to_pylist()
    keys = rows.column("record_key").to_pylist()
    hashes = rows.column("record_hash").to_pylist()
    last_hash = dict(zip(keys, hashes))
    if len(set(ids)) == len(ids) and len(last_hash) == len(set(zip(keys, hashes))):
        return rows
    keep: dict[str, int] = {}
    for i, (item, key, h) in enumerate(zip(ids, keys, hashes)):
        if last_hash[key] == h:  # rows of an earlier version of a record repeated in the batch go as a whole
            keep[item] = i
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    dropped = rows.num_rows - len(keep)
    logger.warning("%d rows of %d item ids repeated in one write were dropped: the last row of each wins (%s%s)",
                   dropped, len(repeated), ", ".join(repeated[:5]), ", ..." if len(repeated) > 5 else "")
    return rows.take(pa.array(sorted(keep.values()), pa.int64()))


def _keep_newest(tbl: lancedb.table.Table, key: str, ts: str, ids: Sequence[str]) -> int:
    """Reduce the rows of each id in ``ids`` to its newest (by ``ts``) in one commit; the number of rows removed."""
    if not ids:
        return 0
    where = sql_in(key, ids)
    rows = tbl.search().where(where).limit(None).to_arrow()
    if rows.num_rows <= len(set(rows.column(key).to_pylist())):
        return 0
    best: dict[str, int] = {}
    stamps = rows.column(ts).to_pylist()
    for i, k in enumerate(rows.column(key).to_pylist()):
        if k not in best or stamps[i] > stamps[best[k]]:
            best[k] = i
    kept = rows.take(pa.array(sorted(best.values()), pa.int64()))
    # one microsecond later: no stored row matches a kept one, so every stored row of these ids is deleted and the
    # kept rows inserted, in the same commit (equal timestamps cannot leave two rows behind)
    bumped = pc.add(kept.column(ts), pa.scalar(dt.timedelta(microseconds=1), pa.duration("us")))
    col = kept.schema.get_field_index(ts)
    kept = kept.set_column(col, kept.schema.field(ts), bumped.cast(kept.schema.field(ts).type))
    kept = kept.cast(tbl.schema) if kept.schema != tbl.schema else kept
    (tbl.merge_insert([key, ts]).when_matched_update_all().when_not_matched_insert_all()
     .when_not_matched_by_source_delete(where).execute(kept))
    return rows.num_rows - kept.num_rows


def _table_names(db: lancedb.DBConnection) -> list[str]:
    lister = getattr(db, "list_tables", None)
    if lister is None:
        return list(db.table_names())
    result = lister()
    names = getattr(result, "tables", result)
    return list(names)
