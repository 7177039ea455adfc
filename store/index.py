"""ANN and scalar indexes of the item table: chosen by size, reported (indexed vs unindexed rows), kept fresh.

Below ``exact_below`` rows no vector index is built: LanceDB scans exactly, which is both exact and fast enough there.
Above it an IVF index (cosine) is trained with its partition count taken from the row count; the search settings that
reach the recall goal (``nprobes``, ``refine_factor``, ``ef``) are written into the vector column's field metadata
(``cope.index``) so that every reader searches the index the way it was tuned. Rows added after the build are still
found at once (LanceDB searches unindexed rows exactly and merges); :func:`optimize` folds them into the index
without retraining and deletes old table versions.

>>> from cope.store import ItemStore
>>> from cope.store.index import build_index, index_report, optimize
>>> store = ItemStore.open("./cope.lancedb")  # doctest: +SKIP
>>> build_index(store)  # doctest: +SKIP
>>> print(index_report(store))  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cope.errors import UsageError
from cope.store.schema import MODALITY_COLUMNS, VECTOR_COLUMNS, require_modalities

logger = logging.getLogger(__name__)

VectorIndexType = Literal["IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ"]
IndexChoice = Literal["auto", "none", "IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ"]
VECTOR_INDEX_TYPES: tuple[str, ...] = ("IVF_FLAT", "IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ")

#: below this many rows a vector column is searched exactly (no ANN index). An exact filtered scan costs ~1.2 us a
#: row at 512-d on 2 cores (17 ms at 10k rows, 64 ms at 50k, 1.1 s at 1M); IVF_FLAT answers in 3-4 ms from 10k up
#: and builds in under a second there (benchmarks/bench_search.py, docs/search.md)
EXACT_BELOW = 10_000
#: the index ``auto`` picks above the threshold (see docs/search.md for the measurements behind it)
AUTO_INDEX: VectorIndexType = "IVF_FLAT"
#: scalar indexes: bitmap for low-cardinality columns, btree for keys
SCALAR_INDEXES: dict[str, Literal["BITMAP", "BTREE"]] = {
    "domain": "BITMAP",
    "item_id": "BTREE",
    "record_key": "BTREE",
    "source_id": "BTREE",
}
#: field-metadata key on a vector column holding the search settings of its index
META_INDEX = "cope.index"
#: versions younger than this survive :func:`optimize`, so open readers (a notebook) keep working
DEFAULT_KEEP = dt.timedelta(minutes=10)


class SearchParams(BaseModel):
    """How to query a vector index: probes of IVF partitions, exact re-ranking factor, HNSW beam width."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nprobes: int | None = Field(default=None, ge=1)
    refine_factor: int | None = Field(default=None, ge=1)
    ef: int | None = Field(default=None, ge=1)


class IndexPlan(BaseModel):
    """What :func:`build_index` does for one vector column."""

    model_config = ConfigDict(extra="forbid")

    column: str
    num_rows: int
    dim: int
    index_type: VectorIndexType | None = None  # None: exact search, no index
    num_partitions: int | None = None
    num_sub_vectors: int | None = None
    distance_type: Literal["cosine"] = "cosine"
    search: SearchParams = Field(default_factory=SearchParams)
    reason: str = ""


class IndexState(BaseModel):
    """One index of the table and how fresh it is."""

    name: str
    column: str
    index_type: str
    kind: Literal["vector", "scalar"]
    indexed_rows: int
    unindexed_rows: int
    distance_type: str | None = None
    search: SearchParams | None = None

    @property
    def fresh(self) -> bool:
        return self.unindexed_rows == 0


class IndexReport(BaseModel):
    """Rows of the table and, per index, how many rows it covers; vector columns searched exactly without one."""

    num_rows: int
    indexes: list[IndexState] = Field(default_factory=list)
    exact_columns: list[str] = Field(default_factory=list)
    seconds: float | None = None

    @property
    def unindexed_rows(self) -> int:
        """Rows not yet in the vector indexes (the maximum over vector indexes)."""
        return max((i.unindexed_rows for i in self.indexes if i.kind == "vector"), default=0)

    def vector_index(self, column: str = "vector") -> IndexState | None:
        return next((i for i in self.indexes if i.kind == "vector" and i.column == column), None)

    def __str__(self) -> str:
        lines = [f"{self.num_rows} rows"]
        for i in sorted(self.indexes, key=lambda i: (i.kind != "vector", i.column)):
            extra = f" {i.distance_type}" if i.distance_type else ""
            if i.search is not None:
                extra += " " + " ".join(f"{k}={v}" for k, v in i.search.model_dump(exclude_none=True).items())
            lines.append(
                f"  {i.column:<12} {i.index_type:<12} indexed {i.indexed_rows}, unindexed {i.unindexed_rows}{extra}"
            )
        for c in self.exact_columns:
            lines.append(f"  {c:<12} {'exact':<12} no ANN index (exact search)")
        if self.unindexed_rows:
            lines.append(f"  {self.unindexed_rows} rows not in the vector index yet (found by exact search): "
                         "run `cope index --optimize` to fold them in")
        return "\n".join(lines)


def _table(target: Any) -> Any:
    """The lancedb Table of an ItemStore, or the table itself."""
    return getattr(target, "table", target) if not hasattr(target, "search") else target


def _dim(table: Any, column: str) -> int:
    import pyarrow as pa

    field = table.schema.field(column)
    if not pa.types.is_fixed_size_list(field.type):
        raise ValueError(f"column {column!r} is not a fixed-size vector column ({field.type})")
    return int(field.type.list_size)


def num_partitions_for(num_rows: int, index_type: VectorIndexType) -> int:
    """IVF partitions for ``num_rows``: about sqrt(rows) (1000 for 1M); a few large ones for HNSW."""
    if index_type == "IVF_HNSW_SQ":
        return max(1, round(num_rows / 250_000))
    return max(8, min(4096, round(math.sqrt(num_rows))))


def search_params_for(index_type: VectorIndexType, num_partitions: int) -> SearchParams:
    """Query settings that reached recall@10 >= 0.95 in ``benchmarks/bench_search.py`` (see docs/search.md)."""
    # Without a refine step SQ/PQ/RQ indexes return approximate (SQ, PQ: squared-L2, i.e. 2x cosine) distances,
    # which would neither be cosine scores nor merge correctly with the exact distances of unindexed rows:
    # every quantised index therefore re-ranks candidates on the stored vectors. 8-bit SQ loses ~1.5% recall@10
    # with refine_factor 1 (0.985 at 100k rows) and none with 4; PQ/RQ need 10.
    if index_type == "IVF_HNSW_SQ":
        return SearchParams(nprobes=max(1, min(num_partitions, 4)), ef=64, refine_factor=4)
    nprobes = max(10, min(num_partitions, math.ceil(num_partitions * 0.02)))
    if index_type in ("IVF_PQ", "IVF_RQ"):
        return SearchParams(nprobes=nprobes, refine_factor=10)
    if index_type == "IVF_SQ":
        return SearchParams(nprobes=nprobes, refine_factor=4)
    return SearchParams(nprobes=nprobes)


def plan_index(
    num_rows: int, dim: int, index_type: IndexChoice = "auto", *, column: str = "vector", exact_below: int = EXACT_BELOW
) -> IndexPlan:
    """Choose the vector index of a column from its row count and dimension.

    >>> plan_index(1_000_000, 512).index_type, plan_index(1_000_000, 512).num_partitions
    ('IVF_FLAT', 1000)
    >>> plan_index(5_000, 512).index_type is None
    True
    """
    if index_type == "none" or (index_type == "auto" and num_rows < exact_below):
        why = "asked for no index" if index_type == "none" else f"{num_rows} rows < {exact_below}: exact search"
        return IndexPlan(column=column, num_rows=num_rows, dim=dim, reason=why)
    kind: VectorIndexType = AUTO_INDEX if index_type == "auto" else index_type
    min_rows = 256 if kind != "IVF_PQ" else 256 * 8
    if num_rows < min_rows:
        rows = f"{num_rows} rows" if column == "vector" else f"{num_rows} rows with that part"
        if index_type == "auto":
            fix = (f"--exact-below {exact_below} asks for one at this size: leave it at its default {EXACT_BELOW} "
                   "(exact search below it, which is exact and fast there) or add rows first")
        else:
            fix = (f"at this size exact search is both exact and fast: use --type auto (index_type='auto': no ANN "
                   f"index below {exact_below} rows) or --type none, or add rows first"
                   + ("; IVF_FLAT and IVF_SQ train on 256 rows" if kind == "IVF_PQ" else ""))
        raise UsageError(f"{kind} needs at least {min_rows} rows to train; column {column!r} has {rows}: {fix}")
    partitions = min(num_partitions_for(num_rows, kind), max(1, num_rows // 256))
    sub_vectors = None
    if kind == "IVF_PQ":
        sub_vectors = next(s for s in (dim // 8, dim // 4, dim // 2, dim, 1) if s and dim % s == 0)
    return IndexPlan(
        column=column, num_rows=num_rows, dim=dim, index_type=kind, num_partitions=partitions,
        num_sub_vectors=sub_vectors, search=search_params_for(kind, partitions),
        reason=f"{num_rows} rows >= {exact_below}" if index_type == "auto" else "asked for",
    )


def _config(plan: IndexPlan) -> Any:
    """The lancedb index config. Partitions are given as ``target_partition_size`` (rows per partition), which Lance
    stores with the index: ``optimize`` then keeps that layout (splitting partitions that grow too big). Given as
    ``num_partitions``, Lance's optimize would "join undersized" partitions to its default size (316 partitions of a
    100k-row index became 7), silently making every query scan ~45x more vectors."""
    from lancedb.index import IvfFlat, IvfHnswSq, IvfPq, IvfRq, IvfSq

    assert plan.num_partitions
    size = max(1, math.ceil(plan.num_rows / plan.num_partitions))
    common = {"distance_type": plan.distance_type, "target_partition_size": size}
    if plan.index_type == "IVF_FLAT":
        return IvfFlat(**common)
    if plan.index_type == "IVF_SQ":
        return IvfSq(**common)
    if plan.index_type == "IVF_PQ":
        return IvfPq(**common, num_sub_vectors=plan.num_sub_vectors)
    if plan.index_type == "IVF_RQ":
        return IvfRq(**common)
    if plan.index_type == "IVF_HNSW_SQ":
        return IvfHnswSq(**common)
    raise ValueError(f"unknown index type {plan.index_type!r}; choose one of {', '.join(VECTOR_INDEX_TYPES)}")


def _write_search_params(table: Any, column: str, params: SearchParams | None, index_type: str | None = None) -> None:
    value = None if params is None else json.dumps({"index_type": index_type, **params.model_dump(exclude_none=True)})
    try:
        table.update_field_metadata({"path": column, "metadata": {META_INDEX: value}})
    except Exception:  # an older lancedb without update_field_metadata: readers fall back to the defaults
        logger.debug("could not write search settings into %s's metadata", column, exc_info=True)


def set_search_params(target: Any, params: SearchParams, column: str = "vector") -> None:
    """Store tuned search settings for the column's index (e.g. more ``nprobes`` for a higher recall)."""
    table = _table(target)
    state = next((i for i in _list_indices(table) if i.kind == "vector" and i.column == column), None)
    if state is None:
        raise ValueError(f"column {column!r} has no vector index (searched exactly); build one with `cope index`")
    _write_search_params(table, column, params, state.index_type)


def search_params(target: Any, column: str = "vector") -> SearchParams | None:
    """Search settings of the column's vector index (``None`` when it has no index: exact search).

    Read from the settings :func:`build_index` stored; for an index built elsewhere, derived from its size.
    """
    table = _table(target)
    state = next((i for i in _list_indices(table) if i.kind == "vector" and i.column == column), None)
    if state is None:
        return None
    raw = (table.schema.field(column).metadata or {}).get(META_INDEX.encode())
    if raw:
        stored = json.loads(raw)
        if stored.get("index_type") in (None, state.index_type):
            stored.pop("index_type", None)
            return SearchParams(**stored)
    kind = state.index_type if state.index_type in VECTOR_INDEX_TYPES else "IVF_FLAT"
    rows = state.indexed_rows + state.unindexed_rows
    return search_params_for(kind, num_partitions_for(rows, kind))  # type: ignore[arg-type]


def _normalise_type(name: str) -> str:
    """lancedb reports ``IvfFlat``/``IVF_FLAT``/``IvfHnswSq``...: map them onto cope's names."""
    key = name.upper().replace("_", "")
    mapping = {t.replace("_", ""): t for t in VECTOR_INDEX_TYPES}
    mapping.update({"HNSWSQ": "IVF_HNSW_SQ", "BITMAP": "BITMAP", "BTREE": "BTREE", "LABELLIST": "LABEL_LIST"})
    return mapping.get(key, name)


def _list_indices(table: Any) -> list[IndexState]:
    states = []
    for cfg in table.list_indices():
        column = cfg.columns[0] if cfg.columns else ""
        stats = table.index_stats(cfg.name)
        index_type = _normalise_type(str(getattr(stats, "index_type", None) or cfg.index_type))
        is_vector = index_type in VECTOR_INDEX_TYPES or "IVF" in index_type or "HNSW" in index_type
        states.append(
            IndexState(
                name=cfg.name, column=column, index_type=index_type, kind="vector" if is_vector else "scalar",
                indexed_rows=int(stats.num_indexed_rows) if stats else int(cfg.num_indexed_rows or 0),
                unindexed_rows=int(stats.num_unindexed_rows) if stats else int(cfg.num_unindexed_rows or 0),
                distance_type=getattr(stats, "distance_type", None) if is_vector else None,
            )
        )
    return states


def index_report(target: Any) -> IndexReport:
    """Per index: rows it covers and rows added since (searched exactly until :func:`optimize`)."""
    table = _table(target)
    states = _list_indices(table)
    for s in states:
        if s.kind == "vector":
            s.search = search_params(table, s.column)
    indexed = {s.column for s in states if s.kind == "vector"}
    names = set(table.schema.names)
    exact = [c for c in VECTOR_COLUMNS if c in names and c not in indexed]
    return IndexReport(num_rows=table.count_rows(), indexes=states, exact_columns=exact)


def build_scalar_indexes(target: Any, columns: dict[str, str] | None = None, *, replace: bool = True) -> list[str]:
    """Bitmap on ``domain``, btree on ``item_id``/``record_key``/``source_id`` (those the table has)."""
    from lancedb.index import Bitmap, BTree

    table = _table(target)
    names = set(table.schema.names)
    built = []
    for column, kind in (columns or SCALAR_INDEXES).items():
        if column not in names:
            continue
        table.create_index(column, config=Bitmap() if kind.upper() == "BITMAP" else BTree(), replace=replace)
        built.append(column)
    return built


def build_index(
    target: Any,
    *,
    columns: Sequence[str] = ("vector",),
    index_type: IndexChoice = "auto",
    exact_below: int = EXACT_BELOW,
    scalar: bool = True,
    replace: bool = True,
) -> IndexReport:
    """Build the indexes the table's size calls for and return the resulting :class:`IndexReport`.

    ``index_type="auto"``: no vector index below ``exact_below`` rows (an existing one is dropped, so searches are
    exact), IVF above it with partitions from the row count. ``scalar`` adds the bitmap/btree indexes used by filters.

    >>> from cope.store.index import build_index
    >>> report = build_index(store, index_type="auto")  # doctest: +SKIP
    >>> print(report)  # doctest: +SKIP
    """
    table = _table(target)
    start = time.perf_counter()
    num_rows = table.count_rows()
    existing = {s.column: s for s in _list_indices(table) if s.kind == "vector"}
    for column in columns:
        if column in MODALITY_COLUMNS[:2] and column not in table.schema.names:
            require_modalities(table.schema, str(getattr(table, "name", "")), f"cope index --column {column}",
                               fix="index --column vector")
        if column not in table.schema.names:
            have = [c for c in VECTOR_COLUMNS if c in table.schema.names]
            raise UsageError(f"no vector column {column!r}; the table's vector columns are {', '.join(have)}")
        rows = num_rows if column == "vector" else _rows_with_modality(table, column, num_rows)
        plan = plan_index(rows, _dim(table, column), index_type, column=column, exact_below=exact_below)
        if plan.index_type is None:
            if column in existing:
                table.drop_index(existing[column].name)
                _write_search_params(table, column, None)
                logger.info("dropped the index on %s: %s", column, plan.reason)
            else:
                logger.info("no index on %s: %s", column, plan.reason)
            continue
        if column in existing and not replace:
            logger.info("%s already has an index (%s); replace=False keeps it", column, existing[column].index_type)
            continue
        t0 = time.perf_counter()
        table.create_index(column, config=_config(plan), replace=True)
        _write_search_params(table, column, plan.search, plan.index_type)
        logger.info("built %s on %s (%d rows, %d partitions) in %.1f s", plan.index_type, column, rows,
                    plan.num_partitions, time.perf_counter() - t0)
    if scalar:
        build_scalar_indexes(table, replace=True)
    report = index_report(table)
    report.seconds = time.perf_counter() - start
    return report


def _rows_with_modality(table: Any, column: str, num_rows: int) -> int:
    flag = {"image_vector": "has_image", "text_vector": "has_text"}.get(column)
    if flag and flag in table.schema.names:
        return table.count_rows(f"{flag} = true")
    return num_rows


def optimize(target: Any, *, cleanup_older_than: dt.timedelta | None = DEFAULT_KEEP) -> IndexReport:
    """Fold rows added since the last build into the existing indexes (no retraining), merge small fragments and
    delete table versions older than ``cleanup_older_than`` (``None`` keeps every version).

    >>> from cope.store.index import optimize
    >>> print(optimize(store))  # doctest: +SKIP
    """
    table = _table(target)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        table.optimize(cleanup_older_than=cleanup_older_than)
    report = index_report(table)
    report.seconds = time.perf_counter() - start
    logger.info("optimized in %.1f s; %d rows unindexed", report.seconds, report.unindexed_rows)
    return report


def disk_size(uri: str, table_name: str) -> int | None:
    """Bytes the table's folder takes on a local disk (``None`` for remote tables)."""
    import os

    if "://" in uri:
        return None
    path = os.path.join(uri, f"{table_name}.lance")
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


__all__: list[str] = [
    "EXACT_BELOW", "IndexChoice", "IndexPlan", "IndexReport", "IndexState", "SearchParams", "VectorIndexType",
    "build_index", "build_scalar_indexes", "disk_size", "index_report", "num_partitions_for", "optimize",
    "plan_index", "search_params", "search_params_for", "set_search_params",
]
