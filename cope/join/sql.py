"""Small SQL helpers: literals and identifiers quoted the one way cope does it, and the DuckDB connection set-up."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from cope.sql import sql_str

lit = sql_str  # a SQL string literal with quotes escaped


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def str_list(values: Iterable[str]) -> str:
    """A DuckDB list literal of strings: ``['a', 'b']``."""
    return "[" + ", ".join(lit(v) for v in values) + "]"


def json_path(key: str) -> str:
    """A JSON path selecting a top-level key, whatever characters it holds."""
    return lit("$." + json.dumps(key))


def connect(memory_limit: str, threads: int | None, temp_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with bounded memory, spilling to ``temp_dir``, timestamps in UTC."""
    con = duckdb.connect(":memory:")
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    con.execute(f"SET memory_limit = {lit(memory_limit)}")
    con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
    con.execute(f"SET temp_directory = {lit(str(temp_dir))}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    return con


def arrow_table(con: duckdb.DuckDBPyConnection, query: str) -> pa.Table:
    """A query's result as one Arrow table (DuckDB 2.0 ``to_arrow_table``; older ``fetch_arrow_table``)."""
    rel = con.sql(query)
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return fetch()


def arrow_reader(con: duckdb.DuckDBPyConnection, query: str, batch_rows: int) -> pa.RecordBatchReader:
    """A query's result streamed as Arrow record batches of ``batch_rows`` rows."""
    rel = con.sql(query)
    fetch = getattr(rel, "to_arrow_reader", None) or rel.fetch_arrow_reader
    return fetch(batch_rows)


def columns_of(con: duckdb.DuckDBPyConnection, relation_sql: str) -> list[tuple[str, str]]:
    """(name, type) of the columns of ``SELECT * FROM <relation_sql>``."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()
    return [(r[0], r[1]) for r in rows]


def copy_to_parquet(con: duckdb.DuckDBPyConnection, query: str, path: str | Path,
                    metadata: dict[str, str] | None = None, row_group_size: int = 122_880) -> None:
    """Write a query to one Parquet file (zstd) atomically: to ``<path>.tmp`` first, then renamed."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    opts = ["FORMAT parquet", "COMPRESSION zstd", f"ROW_GROUP_SIZE {int(row_group_size)}"]
    if metadata:
        kv = ", ".join(f"{ident(k)}: {lit(v)}" for k, v in metadata.items())
        opts.append(f"KV_METADATA {{{kv}}}")
    con.execute(f"COPY ({query}) TO {lit(str(tmp))} ({', '.join(opts)})")
    os.replace(tmp, path)


def quote_paths(paths: Sequence[str | Path]) -> str:
    return str_list(str(p) for p in paths)
