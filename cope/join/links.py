"""Product keys of store items: a product is its own key; a video, image or live slice gets one from the platform's
link table when it has one, else from content (the nearest product vector, kept only above a threshold).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cope.errors import UsageError
from cope.join.config import JoinConfig
from cope.join.events import expand_inputs
from cope.join.sql import arrow_table, columns_of, ident, lit
from cope.store import ItemStore
from cope.store.item_store import sql_in
from cope.vectors import l2_normalize, to_numpy

logger = logging.getLogger(__name__)

LINK_CANDIDATES: dict[str, tuple[str, ...]] = {
    "domain": ("domain",),
    "id": ("id", "source_id", "content_id"),
    "product_id": ("product_id", "item_id", "product_key", "product"),
    "start": ("start", "start_s", "slice_start"),
    "end": ("end", "end_s", "slice_end"),
}

CONTENT_LINK_SCHEMA = pa.schema([("item_id", pa.string()), ("product_key", pa.string()),
                                 ("link_score", pa.float64())])


def load_link_tables(con: duckdb.DuckDBPyConnection, paths: Sequence[str | Path], config: JoinConfig) -> dict:
    """Read link tables into the temp table ``links(domain, id, product_id, start_s, end_s)``; return counts.

    A link table maps a video, image or live id to the item id of the product it shows or sells; a live link may
    carry ``start``/``end`` (seconds) to say when in the stream that product was on. Rows missing a field are counted
    and skipped (``invalid`` in the returned counts).
    """
    selects = []
    aliases = config.domain_aliases
    domain_case = ("CASE d " + " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in aliases.items())
                   + " ELSE d END") if aliases else "d"
    for src in expand_inputs(paths) if paths else []:
        if src.format == "parquet":
            rel = f"read_parquet({lit(src.path)})"
        elif src.format == "csv":
            rel = f"read_csv({lit(src.path)}, all_varchar=true, header=true)"
        else:
            rel = f"read_json({lit(src.path)}, format='newline_delimited')"
        available = [c for c, _ in columns_of(con, rel)]
        by_lower = {c.lower(): c for c in available}
        cols = {k: next((by_lower[c] for c in cand if c in by_lower), None) for k, cand in LINK_CANDIDATES.items()}
        missing = [k for k in ("domain", "id", "product_id") if cols[k] is None]
        if missing:
            raise UsageError(f"link table {src.path} lacks {missing} (columns: {', '.join(available)}); a link "
                             "table has columns domain, id, product_id and, for live streams, optional start/end")

        def text(k: str, cols: dict[str, str | None] = cols) -> str:
            return f"NULLIF(trim(CAST({ident(str(cols[k]))} AS VARCHAR)), '')"

        def num(k: str, cols: dict[str, str | None] = cols) -> str:
            return "NULL::DOUBLE" if cols[k] is None else f"TRY_CAST({text(k)} AS DOUBLE)"

        selects.append(f"SELECT lower({text('domain')}) AS d, {text('id')} AS id, {text('product_id')} AS product_id,"
                       f" {num('start')} AS start_s, {num('end')} AS end_s FROM {rel}")
    body = "\nUNION ALL\n".join(selects) if selects else (
        "SELECT NULL::VARCHAR AS d, NULL::VARCHAR AS id, NULL::VARCHAR AS product_id, "
        "NULL::DOUBLE AS start_s, NULL::DOUBLE AS end_s WHERE false")
    con.execute(f"CREATE OR REPLACE TEMP TABLE links_all AS SELECT {domain_case} AS domain, id, product_id, start_s, "
                f"end_s FROM ({body})")
    con.execute("CREATE OR REPLACE TEMP TABLE links AS SELECT * FROM links_all WHERE domain IN ('video', 'image', "
                "'live') AND id IS NOT NULL AND product_id IS NOT NULL")
    total, kept = con.execute("SELECT (SELECT count(*) FROM links_all), (SELECT count(*) FROM links)").fetchall()[0]
    if total != kept:
        logger.warning("link tables: skipped %d of %d rows without a video/image/live domain, id or product id",
                       total - kept, total)
    ambiguous = con.execute("SELECT count(*) FROM (SELECT domain, id FROM links WHERE start_s IS NULL AND end_s IS NULL "
                            "GROUP BY domain, id HAVING count(DISTINCT product_id) > 1)").fetchall()[0][0]
    if ambiguous:
        logger.warning("link tables: %d ids link to several products without a time range; the smallest product "
                       "id wins (give live links start/end to say when each product was on)", ambiguous)
    return {"rows": int(total), "invalid": int(total - kept), "ambiguous": int(ambiguous)}


def create_item_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Temp table ``item_keys(item_id, product_key, link_source, link_score)`` from ``items`` and ``links``.

    Products are their own key ('self'); other items take the link-table product ('link'): for a live slice, a link
    timed to overlap the slice beats an untimed one, then the larger overlap, then the smaller product id.
    """
    con.execute("""
        CREATE OR REPLACE TEMP TABLE item_keys AS
        SELECT item_id, source_id AS product_key, 'self' AS link_source, NULL::DOUBLE AS link_score
        FROM items WHERE domain = 'product'
        UNION ALL
        SELECT item_id, product_id, 'link', NULL::DOUBLE FROM (
            SELECT i.item_id, l.product_id FROM items i JOIN links l
              ON l.domain = i.domain AND l.id = i.source_id
            WHERE i.domain IN ('video', 'image')
            QUALIFY row_number() OVER (PARTITION BY i.item_id ORDER BY l.product_id) = 1)
        UNION ALL
        SELECT item_id, product_id, 'link', NULL::DOUBLE FROM (
            SELECT i.item_id, l.product_id,
                   least(i.slice_end, coalesce(l.end_s, 'infinity'::DOUBLE))
                   - greatest(i.slice_start, coalesce(l.start_s, '-infinity'::DOUBLE)) AS overlap
            FROM items i JOIN links l ON l.domain = 'live' AND l.id = i.source_id
            WHERE i.domain = 'live'
              AND (l.start_s IS NULL OR l.start_s < i.slice_end)
              AND (l.end_s IS NULL OR l.end_s > i.slice_start)
            QUALIFY row_number() OVER (PARTITION BY i.item_id
                                       ORDER BY (l.start_s IS NULL AND l.end_s IS NULL), overlap DESC,
                                                l.product_id) = 1)""")


def _matrix(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return to_numpy(col, col.type.list_size)


def nearest_products(store: ItemStore, item_ids: Sequence[str] | pa.Array, *, threshold: float,
                     vector_column: str = "vector", chunk_bytes: int = 256 << 20) -> pa.Table:
    """Nearest product (cosine, exact) of each item: ``item_id, product_key, link_score``.

    ``product_key`` is null where the best score is below ``threshold`` (the score is kept, to tune the threshold).
    Exact search costs items x products x dim multiply-adds: fine up to ~1e5 x 1e5 on two cores; beyond, link
    through a link table. Only ``vector_column`` and ids are read.

    >>> nearest_products(ItemStore.open("./db"), ["video:vid-p000"], threshold=0.5)  # doctest: +SKIP
    """
    ids = pa.array(item_ids, pa.string()) if not isinstance(item_ids, pa.Array) else item_ids
    if len(ids) == 0:
        return CONTENT_LINK_SCHEMA.empty_table()
    products = store.read(["source_id", vector_column], "domain = 'product'")
    if products.num_rows == 0:
        logger.warning("no product-domain items in the store: no content links")
        return CONTENT_LINK_SCHEMA.empty_table()
    products = products.sort_by("source_id")  # ties go to the smaller product id
    keys = products.column("source_id").combine_chunks()
    pmat = l2_normalize(_matrix(products.column(vector_column))).T.copy()  # dim x products
    per_chunk = max(1, chunk_bytes // (4 * pmat.shape[1]))
    out: list[pa.Table] = []
    for batch in _item_vectors(store, ids, vector_column):
        q = l2_normalize(_matrix(batch.column(vector_column)))
        for start in range(0, len(q), per_chunk):
            sims = q[start:start + per_chunk] @ pmat
            best = sims.argmax(axis=1)
            score = sims[np.arange(len(best)), best].astype(np.float64)
            key = keys.take(pa.array(best))
            key = pc.if_else(pa.array(score >= threshold), key, pa.nulls(len(key), pa.string()))
            out.append(pa.table({"item_id": batch.column("item_id").slice(start, len(best)),
                                 "product_key": key, "link_score": score}, schema=CONTENT_LINK_SCHEMA))
    result = pa.concat_tables(out) if out else CONTENT_LINK_SCHEMA.empty_table()
    logger.info("content links: %d items against %d products, %d above threshold %.3f", result.num_rows,
                pmat.shape[1], result.num_rows - result.column("product_key").null_count, threshold)
    return result


def _item_vectors(store: ItemStore, ids: pa.Array, vector_column: str, where: str | None = "domain != 'product'",
                  lookup_max: int = 20_000) -> Iterator[pa.Table]:
    """Batches of (item_id, vector) for ``ids``: looked up by id when few, else one filtered scan in batches."""
    if len(ids) <= lookup_max:
        values = ids.to_pylist()
        for start in range(0, len(values), 1000):
            yield store.read(["item_id", vector_column], sql_in("item_id", values[start:start + 1000]))
        return
    wanted = pc.unique(ids)
    query = store.table.search()
    if where:
        query = query.where(where)
    for batch in query.select(["item_id", vector_column]).limit(None).to_batches(200_000):
        keep = pc.is_in(batch.column("item_id"), value_set=wanted)
        if pc.any(keep).as_py():
            yield pa.Table.from_batches([batch]).filter(keep)


def read_item_vectors(store: ItemStore, ids: Sequence[str] | pa.Array,
                      vector_column: str = "vector") -> tuple[pa.Array, np.ndarray]:
    """(item ids, float32 matrix) of the stored items among ``ids`` (row i of the matrix is id i)."""
    ids = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids
    parts = list(_item_vectors(store, ids, vector_column, where=None))
    if not parts:
        return pa.array([], pa.string()), np.zeros((0, store.dim or 0), np.float32)
    table = pa.concat_tables(parts)
    return table.column("item_id").combine_chunks(), _matrix(table.column(vector_column))


def register_content_links(con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    con.register("content_links_arrow", table)
    con.execute("CREATE OR REPLACE TEMP TABLE content_links AS SELECT * FROM content_links_arrow")
    con.unregister("content_links_arrow")


def content_link_candidates(con: duckdb.DuckDBPyConnection) -> pa.Array:
    """Non-product items the valid events reach that have no link-table key (live: every slice of a reached stream)."""
    unkeyed = con.execute("SELECT count(*) FROM items i ANTI JOIN item_keys k ON k.item_id = i.item_id "
                          "WHERE i.domain <> 'product'").fetchall()[0][0]
    if not unkeyed:  # the link table covers the store: no need to look at the events
        return pa.array([], pa.string())
    rel = arrow_table(con, """
        WITH reached AS (SELECT DISTINCT domain, id FROM events_valid WHERE domain IN ('video', 'image', 'live'))
        SELECT i.item_id FROM items i SEMI JOIN reached r ON r.domain = i.domain AND r.id = i.source_id
        ANTI JOIN item_keys k ON k.item_id = i.item_id
        WHERE i.domain <> 'product'
        ORDER BY i.item_id""")
    return rel.column("item_id").combine_chunks()
