"""User content profiles: the recency-weighted mean of the vectors of a user's events, L2-normalised.

:func:`write_profiles` streams the joined, user-sorted ``events.parquet`` once and sums ``weight x vector`` per
user with ``np.add.reduceat`` (memory: one batch plus the vectors of the items the events reach).
:func:`weighted_sums` is the same sum over any DuckDB query of (user, item, weight), for evaluations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cope.join.links import read_item_vectors
from cope.join.sql import arrow_reader, arrow_table
from cope.join.writers import BackgroundParquetWriter
from cope.store import ItemStore
from cope.vectors import l2_normalize, to_fixed_list

logger = logging.getLogger(__name__)


def register_vectors(con: duckdb.DuckDBPyConnection, store: ItemStore, item_ids_sql: str,
                     vector_column: str = "vector", name: str = "vec_ids") -> np.ndarray:
    """Read the vectors of the items ``item_ids_sql`` selects; register ``name(item_id, idx)``; return the matrix."""
    ids = arrow_table(con, item_ids_sql).column(0).combine_chunks()
    found, matrix = read_item_vectors(store, ids, vector_column)
    con.register(f"{name}_arrow", pa.table({"item_id": found, "idx": pa.array(np.arange(len(found), dtype=np.int64))}))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM {name}_arrow")
    con.unregister(f"{name}_arrow")
    return matrix


def weighted_sums(con: duckdb.DuckDBPyConnection, pairs_sql: str, matrix: np.ndarray, *, ids_table: str = "vec_ids",
                  batch_users: int = 8192) -> Iterator[tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray]]:
    """Per user (ascending id): ``sum(w * vector)`` over ``pairs_sql`` rows (user_id, item_id, w).

    Yields batches of (user ids, sums [n x dim] float32, distinct items per user, sum of weights).
    """
    query = f"""
        SELECT p.user_id, list({{'i': v.idx, 'w': p.w}}) AS iw, sum(p.w) AS w_sum
        FROM (SELECT user_id, item_id, sum(w) AS w FROM ({pairs_sql}) GROUP BY user_id, item_id) p
        JOIN {ids_table} v USING (item_id)
        GROUP BY p.user_id ORDER BY p.user_id"""
    for batch in arrow_reader(con, query, batch_users):
        if batch.num_rows == 0:
            continue
        lists = batch.column("iw")
        offsets = lists.offsets.to_numpy()
        flat = lists.flatten()
        idx = flat.field("i").to_numpy()
        w = flat.field("w").to_numpy().astype(np.float32)
        sums = np.add.reduceat(matrix[idx] * w[:, None], offsets[:-1] - offsets[0], axis=0)
        yield batch.column("user_id"), sums, np.diff(offsets), batch.column("w_sum").to_numpy()


def recency_pairs_sql(events_sql: str, half_life_hours: float) -> str:
    """(user_id, item_id, w): weight x slice share x 0.5^(hours before the user's last event / half-life)."""
    half_life_s = float(half_life_hours) * 3600.0
    return f"""
        SELECT user_id, item_id,
               weight * slice_share * pow(0.5, (max(epoch(ts)) OVER (PARTITION BY user_id) - epoch(ts))
                                              / {half_life_s}) AS w
        FROM ({events_sql}) WHERE item_id IS NOT NULL"""


def write_profiles(events_path: str | Path, store: ItemStore, out_path: str | Path, *, half_life_hours: float = 72.0,
                   vector_column: str = "vector", model_tag: str = "", batch_rows: int = 1 << 20,
                   group_rows: int = 65_536) -> int:
    """Write ``profiles.parquet`` from a joined ``events.parquet`` (sorted by user, time); return the user count.

    Columns: user_id, vector (L2-normalised sum of weight x slice share x 0.5^(hours before the user's last event /
    half-life) x item vector), n_events (matched event rows used), weight_sum, model_tag. One streaming read of the
    sorted file: a user's weights are known once their last row is, so the open user is carried to the next batch.

    >>> write_profiles("joined/events.parquet", ItemStore.open("./db"), "joined/profiles.parquet")  # doctest: +SKIP
    """
    events_path = Path(events_path)
    ids = pc.unique(pq.read_table(events_path, columns=["item_id"]).column("item_id")).drop_null()
    found, matrix = read_item_vectors(store, ids, vector_column)
    dim = matrix.shape[1] if matrix.size else (store.dim or 0)
    schema = pa.schema([("user_id", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
                        ("n_events", pa.int64()), ("weight_sum", pa.float64()), ("model_tag", pa.string())],
                       metadata={b"cope.model_tag": model_tag.encode()})
    writer = BackgroundParquetWriter(out_path, schema, compression="zstd", use_dictionary=["model_tag"],
                                     write_statistics=["user_id"])
    half_life_us = float(half_life_hours) * 3600e6
    carry: pa.Table | None = None
    n_users = 0

    def flush(table: pa.Table, final: bool) -> pa.Table | None:
        nonlocal n_users
        n = table.num_rows
        if n == 0:
            return None
        users = table.column("user_id").combine_chunks()
        change = pc.not_equal(users.slice(1), users.slice(0, n - 1)).to_numpy(zero_copy_only=False) if n > 1 else []
        starts = np.concatenate([[0], np.flatnonzero(change) + 1]).astype(np.int64)
        ends = np.append(starts[1:], n)
        done = len(starts) if final else len(starts) - 1
        if done:
            stop = int(ends[done - 1])
            ts = table.column("ts").slice(0, stop).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
            ts = ts.to_numpy(zero_copy_only=False).astype(np.float64)
            lengths = (ends - starts)[:done]
            last = np.repeat(ts[ends[:done] - 1], lengths)  # rows are in time order: a user's last row is latest
            w = (table.column("weight").slice(0, stop).to_numpy(zero_copy_only=False)
                 * table.column("slice_share").slice(0, stop).to_numpy(zero_copy_only=False)
                 * np.power(0.5, (last - ts) / half_life_us))
            idx = table.column("idx").slice(0, stop).to_numpy(zero_copy_only=False)
            sums = np.zeros((done, dim), np.float32)
            g = 0
            while g < done:  # chunks of whole users, so the gathered vectors stay small
                g_end = int(np.searchsorted(starts[:done], starts[g] + group_rows, side="right"))
                g_end = max(g_end, g + 1)
                a, b = int(starts[g]), int(ends[g_end - 1])
                part = matrix[idx[a:b]] * w[a:b, None].astype(np.float32)
                sums[g:g_end] = np.add.reduceat(part, starts[g:g_end] - a, axis=0)
                g = g_end
            vec = l2_normalize(sums).astype(np.float32)
            writer.write(pa.table({
                "user_id": users.take(pa.array(starts[:done])).cast(pa.string()),
                "vector": to_fixed_list(vec, dim),
                "n_events": pa.array(lengths, pa.int64()),
                "weight_sum": pa.array(np.add.reduceat(w, starts[:done]), pa.float64()),
                "model_tag": pa.array([model_tag] * done, pa.string())}, schema=schema))
            n_users += done
        return None if final else table.slice(int(starts[-1]))

    try:
        columns = ["user_id", "ts", "item_id", "weight", "slice_share"]
        for batch in pq.ParquetFile(events_path).iter_batches(batch_size=batch_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            idx = pc.index_in(table.column("item_id"), value_set=found)
            table = table.append_column("idx", idx).filter(pc.is_valid(idx)).drop_columns(["item_id"])
            if carry is not None:
                table = pa.concat_tables([carry, table])
            carry = flush(table.combine_chunks(), final=False)
        if carry is not None:
            flush(carry.combine_chunks(), final=True)
    except BaseException:
        writer.close(commit=False)
        raise
    writer.close()
    logger.info("wrote %d user profiles (dim %d) to %s", n_users, dim, out_path)
    return n_users
