"""Product keys of store items: a product is its own key; a video, image or live slice gets one from the platform's
link table when it has one, else from content (the nearest product vector, kept only above a threshold).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import logging
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cope.errors import InputNotFoundError, UsageError
from cope.join.config import JoinConfig
from cope.join.events import _RAW_LINES, EventSource, expand_inputs
from cope.join.logfiles import EventLogError, TextScan, read_error, scan_text
from cope.join.sql import arrow_table, columns_of, ident, json_path, lit
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


#: why a link-table row is skipped, in the order the checks run (the report counts rows per reason)
LINK_REASONS = ("malformed CSV row", "lines inside an unclosed or multi-line quote", "invalid JSON",
                "not a JSON object", "domain is not text", "id is not text or a whole number",
                "product id is not text or a whole number", "start is not a number", "end is not a number",
                "control character or bytes that are not UTF-8", "missing domain", "not a video, image or live link",
                "missing id", "missing product id", "end before start")
_JSON_TEXT = ("VARCHAR", "BIGINT", "UBIGINT")
_JSON_NUMBER = ("VARCHAR", "BIGINT", "UBIGINT", "DOUBLE")
_NESTED = re.compile(r"STRUCT|MAP|UNION|\[\]|^JSON$|^BLOB$", re.IGNORECASE)
_REQUIRED = ("domain", "id", "product_id")
#: characters no id holds: control characters and U+FFFD (what NUL bytes, bytes that are not UTF-8 and carriage
#: returns inside a line become when a text file is read, see :func:`cope.join.logfiles.scan_text`)
_BAD_CHARS = r"[\x00-\x1f\x7f\x{FFFD}]"


def load_link_tables(con: duckdb.DuckDBPyConnection, paths: Sequence[str | Path], config: JoinConfig,
                     stage_dir: str | Path | None = None) -> dict:
    """Read link tables into the temp table ``links(domain, id, product_id, start_s, end_s)``; return counts.

    A link table maps a video, image or live id to the item id of the product it shows or sells; a live link may
    carry ``start``/``end`` (seconds) to say when in the stream that product was on. A row that cannot be used
    (a malformed CSV row, a line that is not a JSON object, a missing field, a ``start`` that is not a number, bytes
    that are not UTF-8...) is skipped and counted by reason (``invalid``, ``invalid_by_reason``), with one warning
    per file. A file that cannot be read at all (no header naming the columns, not text, an unreadable Parquet
    file) stops the run with a :class:`~cope.errors.UsageError` naming it. ``stage_dir``: where copies of text files
    with bad bytes are written while they are read (default: a temporary folder).
    """
    sources = _link_sources(paths) if paths else []
    with contextlib.ExitStack() as stack:
        if stage_dir is None and any(src.format != "parquet" for src in sources):
            stage_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cope-links-"))
        lost: list[tuple[int, str, int]] = []  # (source, reason, rows) skipped before they became rows
        for i, src in enumerate(sources):
            if src.format == "parquet":
                _stage_parquet_links(con, i, src.path)
            elif src.format == "csv":
                lost += _stage_csv_links(con, i, src.path, config, Path(str(stage_dir)))
            else:
                lost += _stage_jsonl_links(con, i, src.path, Path(str(stage_dir)))
    body = "\nUNION ALL\n".join(f"SELECT {i} AS _src, * FROM link_src_{i}" for i in range(len(sources))) or (
        "SELECT 0 AS _src, NULL::VARCHAR AS d, NULL::VARCHAR AS id, NULL::VARCHAR AS product_id, "
        "NULL::VARCHAR AS start_raw, NULL::VARCHAR AS end_raw, NULL::VARCHAR AS bad WHERE false")
    aliases = config.domain_aliases
    domain = "lower(d)"
    if aliases:
        domain = ("CASE lower(d) " + " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in aliases.items())
                  + " ELSE lower(d) END")
    every = "concat(coalesce(d, ''), coalesce(id, ''), coalesce(product_id, ''), coalesce(start_raw, ''), " \
            "coalesce(end_raw, ''))"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE links_all AS
        WITH typed AS (SELECT _src, d, {domain} AS domain, id, product_id, start_raw, end_raw, bad,
                              TRY_CAST(start_raw AS DOUBLE) AS start_s, TRY_CAST(end_raw AS DOUBLE) AS end_s
                       FROM ({body}))
        SELECT _src, domain, id, product_id, start_s, end_s,
               CASE WHEN bad IS NOT NULL THEN bad
                    WHEN start_raw IS NOT NULL AND NOT isfinite(coalesce(start_s, 'nan'::DOUBLE))
                         THEN 'start is not a number'
                    WHEN end_raw IS NOT NULL AND NOT isfinite(coalesce(end_s, 'nan'::DOUBLE))
                         THEN 'end is not a number'
                    WHEN regexp_matches({every}, {lit(_BAD_CHARS)})
                         THEN 'control character or bytes that are not UTF-8'
                    WHEN domain IS NULL THEN 'missing domain'
                    WHEN domain NOT IN ('video', 'image', 'live') THEN 'not a video, image or live link'
                    WHEN id IS NULL THEN 'missing id'
                    WHEN product_id IS NULL THEN 'missing product id'
                    WHEN end_s < start_s THEN 'end before start'
               END AS reason
        FROM typed""")
    for i in range(len(sources)):
        con.execute(f"DROP TABLE IF EXISTS link_src_{i}")
    con.execute("CREATE OR REPLACE TEMP TABLE links AS SELECT domain, id, product_id, start_s, end_s FROM links_all "
                "WHERE reason IS NULL")
    per_source: dict[int, dict[str, int]] = {}
    rows = dict.fromkeys(range(len(sources)), 0)
    for src_i, reason, n in con.execute("SELECT _src, reason, count(*) FROM links_all GROUP BY ALL").fetchall():
        rows[src_i] += n
        if reason is not None:
            per_source.setdefault(src_i, {})[reason] = n
    for src_i, reason, n in lost:
        rows[src_i] += n
        per_source.setdefault(src_i, {})[reason] = per_source.get(src_i, {}).get(reason, 0) + n
    by_reason: dict[str, int] = {}
    for src_i, reasons in sorted(per_source.items()):
        ordered = sorted(reasons.items(), key=lambda kv: LINK_REASONS.index(kv[0]))
        logger.warning("link table %s: skipped %d of %d rows (%s)", sources[src_i].path, sum(reasons.values()),
                       rows[src_i], ", ".join(f"{r}: {n}" for r, n in ordered))
        for r, n in ordered:
            by_reason[r] = by_reason.get(r, 0) + n
    total = sum(rows.values())
    invalid = sum(by_reason.values())
    ambiguous = con.execute("SELECT count(*) FROM (SELECT domain, id FROM links WHERE start_s IS NULL AND end_s IS NULL "
                            "GROUP BY domain, id HAVING count(DISTINCT product_id) > 1)").fetchall()[0][0]
    if ambiguous:
        logger.warning("link tables: %d ids link to several products without a time range; the smallest product "
                       "id wins (give live links start/end to say when each product was on)", ambiguous)
    by_reason = dict(sorted(by_reason.items(), key=lambda kv: LINK_REASONS.index(kv[0])))
    return {"rows": int(total), "invalid": int(invalid), "ambiguous": int(ambiguous), "invalid_by_reason": by_reason}


def _link_sources(paths: Sequence[str | Path]) -> list[EventSource]:
    for raw in paths:
        if not Path(raw).exists() and not glob.glob(str(raw)):
            raise InputNotFoundError(f"link table {raw} does not exist (--links)")
    try:
        return expand_inputs(paths)
    except FileNotFoundError as e:  # a folder without a table in it
        raise InputNotFoundError(f"--links: {e}".replace("event logs", "link tables")) from None


def _columns(path: str, available: Sequence[str]) -> dict[str, str | None]:
    """Link field -> column of one file (matched case-insensitively); a UsageError when a required one is absent."""
    by_lower = {c.lower(): c for c in available}
    cols = {k: next((by_lower[c] for c in cand if c in by_lower), None) for k, cand in LINK_CANDIDATES.items()}
    missing = [k for k in _REQUIRED if cols[k] is None]
    if missing:
        raise UsageError(f"link table {path} lacks {missing} (columns: {', '.join(available) or 'none'}); a link "
                         "table has columns domain, id, product_id and, for live streams, optional start/end")
    return cols


def _text(column: str | None) -> str:
    return "NULL::VARCHAR" if column is None else f"NULLIF(trim(CAST({ident(column)} AS VARCHAR)), '')"


def _stage_parquet_links(con: duckdb.DuckDBPyConnection, i: int, path: str) -> None:
    relation = f"read_parquet({lit(path)})"
    try:
        types = dict(columns_of(con, relation))
    except duckdb.Error as e:
        raise _read_error(path, e) from e
    cols = _columns(path, list(types))
    nested = {c: types[c] for c in cols.values() if c is not None and _NESTED.search(types[c])}
    if nested:
        c, t = next(iter(nested.items()))
        raise UsageError(f"link table {path}: column {c!r} is {t}, not text or a number; write domain, id and "
                         "product_id as text (or whole numbers) and start/end as numbers")
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE link_src_{i} AS SELECT {_text(cols['domain'])} AS d, "
                    f"{_text(cols['id'])} AS id, {_text(cols['product_id'])} AS product_id, "
                    f"{_text(cols['start'])} AS start_raw, {_text(cols['end'])} AS end_raw, NULL::VARCHAR AS bad "
                    f"FROM {relation}")
    except duckdb.Error as e:  # e.g. text that is not UTF-8: the file cannot be read
        raise _read_error(path, e) from e


def _read_error(path: str, e: duckdb.Error) -> UsageError:
    return UsageError(f"link table {read_error(path, e)}")


def _scan(path: str, copy: Path) -> TextScan:
    try:
        return scan_text(path, copy)
    except EventLogError as e:  # not text at all
        raise UsageError(f"link table {e}") from None


def _csv_header(path: str, preferred: str) -> tuple[list[str], str]:
    """The header of a CSV link table and its delimiter: ``preferred`` (``--csv-delimiter``; a tab for .tsv), else
    the first of , tab ; | that names the required columns."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    if not first.strip():
        raise UsageError(f"link table {path} has no header line; the first line must name its columns (domain, id, "
                         "product_id and, for live streams, optional start/end)")
    headers = {}
    for delim in dict.fromkeys((preferred, ",", "\t", ";", "|")):
        header = [h.strip() for h in next(csv.reader([first], delimiter=delim), [])]
        headers[delim] = header
        try:
            _columns(path, header)
        except UsageError:
            continue
        if len(set(header)) != len(header):
            raise UsageError(f"link table {path} repeats column names in its header: {header}")
        return header, delim
    _columns(path, headers[preferred])  # raises, naming the columns as the preferred delimiter splits them
    raise AssertionError  # pragma: no cover


def _stage_csv_links(con: duckdb.DuckDBPyConnection, i: int, path: str, config: JoinConfig,
                     stage: Path) -> list[tuple[int, str, int]]:
    """CSV rows as text into ``link_src_<i>``; malformed rows (wrong number of fields, an unclosed quote) are left
    to DuckDB's rejects table and counted. Returns the rows that never became rows, by reason."""
    scan = _scan(path, stage / f"links_{i}{Path(path).suffix}")
    if scan.bad and scan.bad[0][0] == 1:
        raise UsageError(f"{path}:1: cannot read the header line of this link table ({scan.bad[0][1]}); link "
                         "tables are UTF-8 text: convert the file (e.g. iconv -f <its encoding> -t UTF-8)")
    header, delim = _csv_header(scan.path, "\t" if path.lower().endswith(".tsv") else config.csv_delimiter)
    cols = _columns(path, header)
    rej = f"link_rejects_{i}"
    columns = "{" + ", ".join(f"{lit(h)}: 'VARCHAR'" for h in header) + "}"
    reader = (f"read_csv({lit(scan.path)}, columns={columns}, header=true, delim={lit(delim)}, quote='\"', "
              f"escape='\"', auto_detect=false, store_rejects=true, rejects_table={lit(rej)}, "
              f"rejects_scan={lit(rej + '_scan')})")
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE link_src_{i} AS SELECT {_text(cols['domain'])} AS d, "
                    f"{_text(cols['id'])} AS id, {_text(cols['product_id'])} AS product_id, "
                    f"{_text(cols['start'])} AS start_raw, {_text(cols['end'])} AS end_raw, NULL::VARCHAR AS bad "
                    f"FROM {reader}")
        records = con.execute(f"SELECT count(*) FROM link_src_{i}").fetchall()[0][0]
        rejected = con.execute(f"SELECT count(DISTINCT line) FROM {rej}").fetchall()[0][0]
        blank = con.execute(f"SELECT count(*) FILTER (WHERE j IS NULL) FROM read_csv({lit(scan.path)}, "
                            f"{_RAW_LINES})").fetchall()[0][0]
    except duckdb.Error as e:
        raise _read_error(path, e) from e
    finally:
        con.execute(f"DROP TABLE IF EXISTS {rej}")
        con.execute(f"DROP TABLE IF EXISTS {rej}_scan")
    # every line after the header is blank, a record, or part of a malformed row or of a quote over several lines
    unaccounted = max(0, scan.lines - 1 - blank - records - rejected)
    return [(i, r, n) for r, n in (("malformed CSV row", rejected),
                                    ("lines inside an unclosed or multi-line quote", unaccounted)) if n]


def _stage_jsonl_links(con: duckdb.DuckDBPyConnection, i: int, path: str, stage: Path) -> list[tuple[int, str, int]]:
    """One JSON object per line into ``link_src_<i>``: each field looked up under every name it may have (keys in
    any case seen in the first 1000 objects), its JSON type checked (a missing key or null is a missing value)."""
    scan = _scan(path, stage / f"links_{i}{Path(path).suffix}")
    lines = (f"(SELECT j, CASE WHEN json_valid(j) THEN json_type(j) END AS t "
             f"FROM read_csv({lit(scan.path)}, {_RAW_LINES}) WHERE j IS NOT NULL AND trim(j) <> '')")
    try:
        keys = [r[0] for r in con.execute(
            f"SELECT DISTINCT unnest(json_keys(j)) FROM (SELECT j FROM {lines} WHERE t = 'OBJECT' LIMIT 1000)"
        ).fetchall()]
        n_lines, n_objects = con.execute(f"SELECT count(*), count(*) FILTER (WHERE t = 'OBJECT') FROM {lines}"
                                         ).fetchall()[0]
    except duckdb.Error as e:
        raise _read_error(path, e) from e
    if n_lines and not n_objects:
        raise UsageError(f"link table {path}: none of its {n_lines} lines is a JSON object; a .jsonl link table "
                         'has one object per line: {"domain": "video", "id": "v1", "product_id": "p1"}')
    if keys:
        _columns(path, sorted(keys))
    by_lower: dict[str, list[str]] = {}
    for k in sorted(keys):
        by_lower.setdefault(k.lower(), []).append(k)
    paths: list[str] = []  # every name of every field, extracted in one pass over each line
    chosen: dict[str, str] = {}  # field -> the JSON value under its first name present and not null
    for fld, candidates in LINK_CANDIDATES.items():
        names = list(dict.fromkeys([n for c in candidates for n in by_lower.get(c, [])] + list(candidates)))
        slots = [f"x[{len(paths) + k + 1}]" for k in range(len(names))]
        paths += names
        chosen[fld] = "CASE " + " ".join(f"WHEN json_type({v}) <> 'NULL' THEN {v}" for v in slots) + " END"
    checks = [("domain", _JSON_TEXT, "domain is not text"), ("id", _JSON_TEXT, "id is not text or a whole number"),
              ("product_id", _JSON_TEXT, "product id is not text or a whole number"),
              ("start", _JSON_NUMBER, "start is not a number"), ("end", _JSON_NUMBER, "end is not a number")]
    bad = ("CASE WHEN t IS NULL THEN 'invalid JSON' WHEN t <> 'OBJECT' THEN 'not a JSON object' "
           + " ".join(f"WHEN json_type(v_{f}) NOT IN ({', '.join(map(lit, ok))}) THEN {lit(reason)}"
                      for f, ok, reason in checks) + " END")
    fields = ", ".join(f"NULLIF(trim(v_{f} ->> '$'), '') AS {a}" for f, a in (
        ("domain", "d"), ("id", "id"), ("product_id", "product_id"), ("start", "start_raw"), ("end", "end_raw")))
    extracted = (f"(SELECT t, CASE WHEN t = 'OBJECT' THEN json_extract(j, [{', '.join(json_path(n) for n in paths)}]) "
                 f"END AS x FROM {lines})")
    values = f"(SELECT t, {', '.join(f'{e} AS v_{f}' for f, e in chosen.items())} FROM {extracted})"
    lines = values
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE link_src_{i} AS SELECT {fields}, {bad} AS bad FROM {lines}")
    except duckdb.Error as e:
        raise _read_error(path, e) from e
    return []


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
