"""Behaviour logs in, one validated DuckDB view out, with the line of every row kept for error reports.

Parquet files are scanned in place (``line`` is the 1-based row number). CSV and JSONL files are staged once into
Parquet under the temp folder, so that later passes do not parse text again; their ``line`` is the physical line
in the file (the header is line 1 of a CSV). Bad rows are never dropped silently: each gets a ``reason`` and ends up
in ``rejects.parquet`` and in the report.
"""

from __future__ import annotations

import csv
import glob
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb

from cope.join.config import DEFAULT_CANDIDATES, DOMAINS, REQUIRED_FIELDS, JoinConfig
from cope.join.sql import columns_of, copy_to_parquet, ident, json_path, lit, str_list

logger = logging.getLogger(__name__)

Format = Literal["parquet", "csv", "jsonl"]
_SUFFIXES: dict[str, Format] = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv",
                                ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_NUMERIC_FIELDS = ("offset", "start", "end", "weight")
_TIMESTAMP_TYPES = ("TIMESTAMP", "DATE")
_NUMBER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL")
# One physical line per row: a delimiter and quote that never occur, so DuckDB's CSV scanner only splits lines.
_RAW_LINES = ("columns={'j': 'VARCHAR'}, header=false, delim=E'\\x1f\\x1e', quote='', escape='', "
              "strict_mode=false, auto_detect=false")

#: Reasons a row is rejected, in the order they are checked.
REASONS = ("malformed CSV row", "invalid JSON", "missing user id", "missing timestamp", "bad timestamp",
           "missing domain", "unknown domain", "missing id", "bad weight", "bad live offset",
           "live event without offset or interval", "negative live offset", "interval ends before it starts")


@dataclass(frozen=True)
class EventSource:
    path: str
    format: Format


def expand_inputs(paths: str | Path | Sequence[str | Path]) -> list[EventSource]:
    """Files, folders (every log file in them, sorted) and glob patterns -> event sources, in a stable order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[EventSource] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in _SUFFIXES)
            if not found:
                raise FileNotFoundError(f"no event logs (*.parquet, *.csv, *.jsonl) in folder {p}")
            files = [str(f) for f in found]
        elif p.exists():
            files = [str(p)]
        else:
            files = sorted(glob.glob(str(raw)))
            if not files:
                raise FileNotFoundError(f"event log {raw} does not exist")
        for f in files:
            fmt = _SUFFIXES.get(Path(f).suffix.lower())
            if fmt is None:
                raise ValueError(f"cannot tell the format of {f}: name it *.parquet, *.csv, *.tsv or *.jsonl")
            out.append(EventSource(f, fmt))
    if not out:
        raise ValueError("no event logs given")
    return out


def resolve_columns(available: Sequence[str], config: JoinConfig, where: str) -> dict[str, str | None]:
    """Event field -> column name in one file (None for an absent optional field)."""
    by_lower = {c.lower(): c for c in available}
    chosen: dict[str, str | None] = {}
    for fld, candidates in DEFAULT_CANDIDATES.items():
        if fld in config.columns:
            name = config.columns[fld]
            if name.lower() not in by_lower:
                raise ValueError(f"{where} has no column {name!r} (mapped to {fld!r}); its columns: "
                                 f"{', '.join(available)}")
            chosen[fld] = by_lower[name.lower()]
            continue
        chosen[fld] = next((by_lower[c] for c in candidates if c in by_lower), None)
        if chosen[fld] is None and fld in REQUIRED_FIELDS:
            raise ValueError(f"{where} has no {fld!r} column (tried {', '.join(candidates)}; its columns: "
                             f"{', '.join(available)}); name it with --column {fld}=<name> "
                             f"(JoinConfig.columns={{'{fld}': '<name>'}})")
    return chosen


class EventLogs:
    """The validated union of all event logs as DuckDB views on ``con``.

    After :meth:`prepare`: the views ``events_checked`` (every row, typed, ``reason`` NULL for a good one),
    ``events_valid`` (the good ones), ``live_events`` (the good live ones) and ``events_rejects`` (_src, _line,
    reason, value, user_id, domain, id).

    >>> import duckdb  # doctest: +SKIP
    >>> logs = EventLogs(duckdb.connect(), ["events.csv"], JoinConfig(), "/tmp/stage").prepare()  # doctest: +SKIP
    >>> duckdb.sql("SELECT count(*) FROM events_valid")  # doctest: +SKIP
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, paths: str | Path | Sequence[str | Path], config: JoinConfig,
                 stage_dir: str | Path) -> None:
        self.con = con
        self.config = config
        self.sources = expand_inputs(paths)
        self.stage_dir = Path(stage_dir)
        self._csv_rejects: list[str] = []

    @property
    def source_names(self) -> list[str]:
        return [s.path for s in self.sources]

    def prepare(self) -> EventLogs:
        """Stage text logs and define the views. One scan keeps the few rows that need more than a hash join
        (live events, which need their slices, and rejected rows) in the temp table ``events_side``; the bulk
        (video, image, product events) is read from the files by the join itself."""
        selects = [self._normalised(i, src) for i, src in enumerate(self.sources)]
        self.con.execute("CREATE OR REPLACE TEMP VIEW events_norm AS\n" + "\nUNION ALL\n".join(selects))
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW events_checked AS {self._checked_sql()}")
        cols = "_src, _line, user_id, ts, domain, id, lo, hi, is_interval, action, weight"
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW events_valid AS SELECT {cols} FROM events_checked "
                         "WHERE reason IS NULL")
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE events_side AS SELECT {cols}, reason, value, domain_raw "
                         "FROM events_checked WHERE reason IS NOT NULL OR domain = 'live'")
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW live_events AS SELECT {cols} FROM events_side "
                         "WHERE reason IS NULL")
        rejects = [("SELECT _src, _line, reason, value, user_id, domain_raw AS domain, id FROM events_side "
                   "WHERE reason IS NOT NULL")]
        rejects += self._csv_rejects
        self.con.execute("CREATE OR REPLACE TEMP VIEW events_rejects AS\n" + "\nUNION ALL\n".join(rejects))
        return self

    # -- per source ---------------------------------------------------------------------------------------------
    def _normalised(self, i: int, src: EventSource) -> str:
        if src.format == "parquet":
            relation = f"read_parquet({lit(src.path)}, file_row_number=true)"
            types = dict(columns_of(self.con, relation))
            types.pop("file_row_number", None)
            cols = resolve_columns(list(types), self.config, src.path)
            return self._select(i, f"(SELECT *, file_row_number + 1 AS _line FROM {relation})", cols, types,
                                staged=False)
        if src.format == "csv":
            return self._stage_csv(i, src)
        return self._stage_jsonl(i, src)

    def _raw_lines(self, src: EventSource) -> str:
        return f"read_csv({lit(src.path)}, {_RAW_LINES})"

    @staticmethod
    def _csv_header(path: str, delim: str) -> list[str]:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f, delimiter=delim), None)
        if not header:
            raise ValueError(f"CSV {path} has no header line; the first line must name the columns")
        if len(set(header)) != len(header):
            raise ValueError(f"CSV {path} repeats column names in its header: {header}")
        return header

    def _stage_csv(self, i: int, src: EventSource) -> str:
        """Parse once into Parquet (all text); malformed rows go to DuckDB's rejects table, not away."""
        delim = "\t" if src.path.lower().endswith(".tsv") else self.config.csv_delimiter
        header = self._csv_header(src.path, delim)
        cols = resolve_columns(header, self.config, src.path)
        used = [c for c in dict.fromkeys(cols.values()) if c is not None]
        rej = f"csv_rejects_{i}"
        columns = "{" + ", ".join(f"{lit(h)}: 'VARCHAR'" for h in header) + "}"
        reader = (f"read_csv({lit(src.path)}, columns={columns}, header=true, delim={lit(delim)}, quote='\"', "
                  f"escape='\"', auto_detect=false, store_rejects=true, rejects_table={lit(rej)}, "
                  f"rejects_scan={lit(rej + '_scan')})")
        stage = self.stage_dir / f"events_{i}.parquet"
        try:
            copy_to_parquet(self.con, f"SELECT row_number() OVER () AS _rec, {', '.join(ident(c) for c in used)} "
                                      f"FROM {reader}", stage)
        except duckdb.Error as e:
            raise ValueError(f"cannot read CSV {src.path}: {e}") from e
        n_records = self.con.execute(f"SELECT count(*) FROM read_parquet({lit(str(stage))})").fetchall()[0][0]
        n_lines = self.con.execute(f"SELECT count(*) FROM {self._raw_lines(src)}").fetchall()[0][0]
        n_rejected = self.con.execute(f"SELECT count(DISTINCT line) FROM {rej}").fetchall()[0][0]
        if n_rejected:
            logger.warning("%s: %d malformed CSV rows (reported in rejects)", src.path, n_rejected)
        if n_lines == 1 + n_records and not n_rejected:  # one line per record: the record number says the line
            relation = f"(SELECT *, _rec + 1 AS _line FROM read_parquet({lit(str(stage))}))"
        else:  # blank lines, quoted line breaks or malformed rows: map records onto physical lines
            relation = self._csv_line_map(i, src, stage, rej)
        types = {c: "VARCHAR" for c in used}
        return self._select(i, relation, cols, types, staged=True)

    def _csv_line_map(self, i: int, src: EventSource, stage: Path, rej: str) -> str:
        """Physical line of each CSV record and of each malformed row.

        A line starts a record when the quotes before it are balanced. DuckDB numbers such "logical" lines
        (blank ones included, continuation lines of a quoted field not) in its rejects; valid record k is the k-th
        logical line that is not the header, not blank and not rejected.
        """
        table = f"csv_lines_{i}"
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            WITH raw AS (SELECT row_number() OVER () AS ln, j FROM {self._raw_lines(src)}),
            parity AS (
                SELECT ln, j, coalesce(sum(coalesce(length(j) - length(replace(j, '"', '')), 0))
                    OVER (ORDER BY ln ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) % 2 AS inside
                FROM raw),
            logical AS (SELECT ln, j, sum(1) OVER (ORDER BY ln ROWS UNBOUNDED PRECEDING) AS duck
                        FROM parity WHERE inside = 0)
            SELECT ln, duck, ln > 1 AND j IS NOT NULL AND duck NOT IN (SELECT DISTINCT line FROM {rej}) AS is_record
            FROM logical""")
        self._csv_rejects.append(
            f"SELECT {i}::INTEGER AS _src, m.ln::BIGINT AS _line, 'malformed CSV row' AS reason, "
            f"any_value(left(trim(r.csv_line, chr(10) || chr(13)), 200)) || ' (' || any_value(r.error_message) || ')' "
            f"AS value, NULL::VARCHAR AS user_id, NULL::VARCHAR AS domain, NULL::VARCHAR AS id "
            f"FROM {rej} r JOIN {table} m ON m.duck = r.line GROUP BY m.ln")
        return (f"(SELECT s.*, m._line FROM read_parquet({lit(str(stage))}) s JOIN "
                f"(SELECT row_number() OVER (ORDER BY ln) AS _rec, ln AS _line FROM {table} WHERE is_record) m "
                f"USING (_rec))")

    def _stage_jsonl(self, i: int, src: EventSource) -> str:
        """Parse each line once into Parquet. Keys are looked up per row under every candidate name (a key that
        first shows up late in the file still counts); the first 1000 objects only serve to fail early when a
        required field is absent under all its names."""
        raw = f"(SELECT row_number() OVER () AS _line, j FROM {self._raw_lines(src)})"
        objects = (f"(SELECT _line, j, CASE WHEN json_valid(j) THEN json_type(j) END AS t FROM {raw} "
                   f"WHERE j IS NOT NULL AND trim(j) <> '')")
        keys = [r[0] for r in self.con.execute(
            f"SELECT DISTINCT unnest(json_keys(j)) FROM (SELECT j FROM {objects} WHERE t = 'OBJECT' LIMIT 1000)"
        ).fetchall()]
        if keys:  # an empty or all-garbage file has no keys to check: its rows are reported one by one
            resolve_columns(sorted(keys), self.config, src.path)
        fields = []
        for fld, candidates in DEFAULT_CANDIDATES.items():
            names = [self.config.columns[fld]] if fld in self.config.columns else list(candidates)
            values = [f"json_extract_string(j, {json_path(n)})" for n in names]
            expr = values[0] if len(values) == 1 else f"coalesce({', '.join(values)})"
            fields.append(f"CASE WHEN t = 'OBJECT' THEN {expr} END AS {ident(fld)}")
        stage = self.stage_dir / f"events_{i}.parquet"
        copy_to_parquet(self.con, f"SELECT _line, t IS DISTINCT FROM 'OBJECT' AS _bad_json, "
                                  f"CASE WHEN t IS DISTINCT FROM 'OBJECT' THEN left(j, 200) END AS _raw, "
                                  f"{', '.join(fields)} FROM {objects}", stage)
        cols: dict[str, str | None] = {fld: fld for fld in DEFAULT_CANDIDATES}
        types = {fld: "VARCHAR" for fld in DEFAULT_CANDIDATES}
        return self._select(i, f"read_parquet({lit(str(stage))})", cols, types, staged=True, json=True)

    # -- normalisation ------------------------------------------------------------------------------------------
    def _select(self, i: int, relation: str, cols: dict[str, str | None], types: dict[str, str], *,
                staged: bool, json: bool = False) -> str:
        """Typed, named columns of one source. Text sources (staged CSV/JSONL) are trimmed; Parquet columns are
        used as they are (no casts to text on the hot path: ``*_raw`` texts are only computed for rejects)."""
        def typ(fld: str) -> str:
            c = cols[fld]
            return "" if c is None else types.get(c, "VARCHAR").upper()

        def text(fld: str) -> str:
            c = cols[fld]
            if c is None:
                return "NULL::VARCHAR"
            if typ(fld) != "VARCHAR":
                return f"CAST({ident(c)} AS VARCHAR)"
            return f"NULLIF(trim({ident(c)}), '')" if staged else f"NULLIF({ident(c)}, '')"

        def missing(fld: str) -> str:
            c = cols[fld]
            if c is None:
                return "true"
            if typ(fld) != "VARCHAR":
                return f"({ident(c)} IS NULL)"
            return f"(trim({ident(c)}) = '' OR {ident(c)} IS NULL)" if staged else f"({ident(c)} = '' OR {ident(c)} IS NULL)"

        exprs = [f"{i}::INTEGER AS _src", "_line::BIGINT AS _line",
                 "_bad_json" if json else "false AS _bad_json", "_raw" if json else "NULL::VARCHAR AS _raw",
                 f"{text('user_id')} AS user_id", f"{self._ts_expr(cols['ts'], types)} AS ts",
                 f"{missing('ts')} AS ts_missing", f"{text('ts')} AS ts_raw",
                 f"lower({text('domain')}) AS domain_raw", f"{text('id')} AS id", f"{text('action')} AS action"]
        for fld in _NUMERIC_FIELDS:
            c = cols[fld]
            if c is None:
                exprs += [f"NULL::DOUBLE AS {fld}_v", f"false AS {fld}_bad", f"NULL::VARCHAR AS {fld}_raw"]
            elif typ(fld).startswith(_NUMBER_TYPES):
                exprs += [f"CAST({ident(c)} AS DOUBLE) AS {fld}_v",
                          f"coalesce(NOT isfinite(CAST({ident(c)} AS DOUBLE)), false) AS {fld}_bad",
                          f"CAST({ident(c)} AS VARCHAR) AS {fld}_raw"]
            else:
                raw = text(fld)
                exprs += [f"TRY_CAST({raw} AS DOUBLE) AS {fld}_v",
                          (f"({raw} IS NOT NULL AND NOT coalesce(isfinite(TRY_CAST({raw} AS DOUBLE)), false)) "
                          f"AS {fld}_bad"), f"{raw} AS {fld}_raw"]
        return f"SELECT {', '.join(exprs)} FROM {relation}"

    def _ts_expr(self, col: str | None, types: dict[str, str]) -> str:
        assert col is not None
        c, typ = ident(col), types.get(col, "VARCHAR").upper()
        if typ.startswith(_TIMESTAMP_TYPES):
            return f"CAST({c} AS TIMESTAMPTZ)"
        if typ.startswith(_NUMBER_TYPES):
            return self._epoch(f"CAST({c} AS DOUBLE)")
        s = f"NULLIF(trim(CAST({c} AS VARCHAR)), '')"
        return f"coalesce(TRY_CAST({s} AS TIMESTAMPTZ), {self._epoch(f'TRY_CAST({s} AS DOUBLE)')})"

    def _epoch(self, x: str) -> str:
        unit = self.config.ts_unit
        div = {"s": "1", "ms": "1e3", "us": "1e6", "ns": "1e9"}
        if unit == "auto":
            seconds = (f"CASE WHEN abs({x}) >= 1e17 THEN {x} / 1e9 WHEN abs({x}) >= 1e14 THEN {x} / 1e6 "
                       f"WHEN abs({x}) >= 1e11 THEN {x} / 1e3 ELSE {x} END")
        else:
            seconds = f"{x} / {div[unit]}"
        return f"try(to_timestamp({seconds}))"

    def _checked_sql(self) -> str:
        aliases = self.config.domain_aliases
        domain = ("CASE domain_raw " + " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in aliases.items())
                  + " ELSE domain_raw END") if aliases else "domain_raw"
        offsets = "concat_ws(' ', 'offset=' || offset_raw, 'start=' || start_raw, 'end=' || end_raw)"
        checks = [  # (condition, reason, offending value); the live checks nest under one test of the domain
            ("_bad_json", "'invalid JSON'", "_raw"),
            ("user_id IS NULL", "'missing user id'", "NULL"),
            ("ts_missing", "'missing timestamp'", "NULL"),
            ("ts IS NULL", "'bad timestamp'", "ts_raw"),
            ("domain_raw IS NULL", "'missing domain'", "NULL"),
            (f"domain NOT IN ({', '.join(lit(d) for d in DOMAINS)})", "'unknown domain'", "domain_raw"),
            ("id IS NULL", "'missing id'", "NULL"),
            ("weight_bad", "'bad weight'", "weight_raw"),
        ]
        live_checks = [
            ("offset_bad OR start_bad OR end_bad", "'bad live offset'", offsets),
            ("offset_v IS NULL AND start_v IS NULL", "'live event without offset or interval'", "NULL"),
            ("least(offset_v, start_v, end_v) < 0", "'negative live offset'", offsets),
            ("start_v IS NOT NULL AND end_v IS NOT NULL AND end_v < start_v", "'interval ends before it starts'",
             "concat_ws(' ', 'start=' || start_raw, 'end=' || end_raw)"),
        ]

        def case(k: int) -> str:
            inner = "CASE " + " ".join(f"WHEN {c[0]} THEN {c[k]}" for c in live_checks) + " END"
            return ("CASE " + " ".join(f"WHEN {c[0]} THEN {c[k]}" for c in checks)
                    + f" WHEN domain = 'live' THEN {inner} END")

        reason, value = case(1), case(2)
        interval = "(start_v IS NOT NULL AND end_v IS NOT NULL AND end_v > start_v)"
        return f"""
            SELECT *, {reason} AS reason, {value} AS value,
                   {interval} AS is_interval,
                   CASE WHEN {interval} THEN start_v ELSE coalesce(offset_v, start_v) END AS lo,
                   CASE WHEN {interval} THEN end_v ELSE coalesce(offset_v, start_v) END AS hi,
                   coalesce(weight_v, 1.0) AS weight
            FROM (SELECT *, {domain} AS domain FROM events_norm)"""

    def source_case(self, column: str = "_src") -> str:
        """SQL turning the source index into the file path."""
        return f"{str_list(self.source_names)}[{column} + 1]"
