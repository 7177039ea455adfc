"""Small SQL helpers: literals and identifiers quoted the one way cope does it, and the DuckDB connection set-up."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from cope.sql import sql_str

logger = logging.getLogger(__name__)

lit = sql_str  # a SQL string literal with quotes escaped

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: Memory the join process needs besides DuckDB's buffers: the streamed Arrow batches, the writers' queues and
#: allocator slack (measured on the 10M x 1M benchmark: 550-700 MiB above DuckDB's own limit, imports included).
STREAM_RESERVE = 640 << 20
MIN_DUCKDB_MEMORY = 256 << 20


def parse_size(text: str) -> int:
    """Bytes in a size like ``1.5GiB``, ``800MB`` or ``1024`` (decimal kB/MB/GB/TB, binary KiB/MiB/GiB/TiB).

    >>> parse_size("1.5GiB"), parse_size("800 MB")
    (1610612736, 800000000)
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"not a memory size: {text!r}; write e.g. 1.5GiB, 800MB or 2GB")
    return int(float(m.group(1)) * _UNITS[unit])


def process_rss() -> int:
    """Resident memory of this process in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def duckdb_memory(budget: str) -> int:
    """DuckDB's share of a process memory budget: the budget less what the process holds now and
    :data:`STREAM_RESERVE`, and at least :data:`MIN_DUCKDB_MEMORY` (DuckDB spills to disk beyond its share)."""
    return max(MIN_DUCKDB_MEMORY, parse_size(budget) - process_rss() - STREAM_RESERVE)


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
    """An in-memory DuckDB connection spilling to ``temp_dir``, timestamps in UTC, within a process memory budget
    ``memory_limit`` (DuckDB gets :func:`duckdb_memory` of it)."""
    share = duckdb_memory(memory_limit)
    con = duckdb.connect(":memory:")
    Path(temp_dir).mkdir(parents=True, exist_ok=True)
    logger.info("memory budget %s: DuckDB gets %d MiB, spilling to %s", memory_limit, share >> 20, temp_dir)
    con.execute(f"SET memory_limit = '{share >> 20}MiB'")
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
