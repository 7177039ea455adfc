"""Behaviour logs in, one validated DuckDB view out, with the line of every row kept for error reports.

Parquet files are scanned in place (``line`` is the 1-based row number). CSV and JSONL files are staged once into
Parquet under the temp folder, so that later passes do not parse text again; their ``line`` is the physical line
in the file (the header is line 1 of a CSV). Bad rows are never dropped silently: each gets a ``reason`` and ends up
in ``rejects.parquet`` and in the report.

Every file's rows are also counted independently of the parser (:attr:`EventLogs.counts`: Parquet row count from
the footer; text files: physical lines from :func:`~cope.join.logfiles.scan_text`, and for CSV the records those
lines hold by their quotes). Where the parser's records and malformed rows do not add up to that, or where it gave
up on the rest of a file (an unterminated quote), :class:`~cope.join.logfiles.EventLogError` stops the run.
"""

from __future__ import annotations

import csv
import glob
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from cope.errors import UsageError
from cope.join.config import DEFAULT_CANDIDATES, DOMAINS, REQUIRED_FIELDS, JoinConfig
from cope.join.logfiles import BAD_BYTE_REASONS, EventLogError, TextScan, read_error, scan_text
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

#: Event times outside [TS_MIN, TS_MAX) are rejected ("timestamp out of range"): every reader of a nanosecond
#: timestamp (pandas, Arrow ns) holds them, and no behaviour log is older than the Unix epoch.
TS_MIN, TS_MAX = "1970-01-01 00:00:00+00", "2262-01-01 00:00:00+00"
_TS_MAX_SECONDS = 9_214_646_400  # TS_MAX as epoch seconds (TS_MIN is 0)

#: Reasons a row is rejected, in the order they are checked.
REASONS = ("malformed CSV row", *BAD_BYTE_REASONS, "invalid JSON", "missing user id", "missing timestamp",
           "timestamp out of range", "bad timestamp", "missing domain", "unknown domain", "missing id", "bad weight",
           "bad live offset", "live event without offset or interval", "negative live offset",
           "interval ends before it starts")


@dataclass(frozen=True)
class EventSource:
    path: str
    format: Format


@dataclass
class FileCount:
    """Rows of one event log counted without the parser: ``rows`` is what the parser's valid and rejected rows must
    add up to (Parquet: rows in the footer; JSONL: non-blank lines; CSV: records, header excluded)."""

    rows: int
    lines: int | None = None  # physical lines of a text file
    blank_lines: int | None = None


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
                raise UsageError(f"cannot tell the format of {f}: name it *.parquet, *.csv, *.tsv or *.jsonl")
            out.append(EventSource(f, fmt))
    if not out:
        raise UsageError("no event logs given")
    return out


def resolve_columns(available: Sequence[str], config: JoinConfig, where: str) -> dict[str, str | None]:
    """Event field -> column name in one file (None for an absent optional field)."""
    by_lower = {c.lower(): c for c in available}
    chosen: dict[str, str | None] = {}
    for fld, candidates in DEFAULT_CANDIDATES.items():
        if fld in config.columns:
            name = config.columns[fld]
            if name.lower() not in by_lower:
                raise UsageError(f"{where} has no column {name!r} (mapped to {fld!r}); its columns: "
                                 f"{', '.join(available)}")
            chosen[fld] = by_lower[name.lower()]
            continue
        chosen[fld] = next((by_lower[c] for c in candidates if c in by_lower), None)
        if chosen[fld] is None and fld in REQUIRED_FIELDS:
            raise UsageError(f"{where} has no {fld!r} column (tried {', '.join(candidates)}; its columns: "
                             f"{', '.join(available)}); name it with --column {fld}=<name> "
                             f"(JoinConfig.columns={{'{fld}': '<name>'}})")
    return chosen


class EventLogs:
    """The validated union of all event logs as DuckDB views on ``con``.

    After :meth:`prepare`: the views ``events_checked`` (every row, typed, ``reason`` NULL for a good one),
    ``events_valid`` (the good ones), ``live_events`` (the good live ones) and ``events_rejects`` (_src, _line,
    reason, value, user_id, domain, id), and :attr:`counts`, each file's rows counted without the parser.

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
        self._parquet_columns: dict[str, list[str]] = {}
        self.counts: list[FileCount] = []

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
        try:  # the first scan of every row: Parquet text that is not UTF-8 fails here
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE events_side AS SELECT {cols}, reason, value, domain_raw "
                             "FROM events_checked WHERE reason IS NOT NULL OR domain = 'live'")
        except duckdb.InvalidInputException as e:
            raise self._scan_error(e) from e
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
            self._parquet_columns[src.path] = [c for c in dict.fromkeys(cols.values()) if c is not None]
            self.counts.append(FileCount(rows=pq.ParquetFile(src.path).metadata.num_rows))
            return self._select(i, f"(SELECT *, file_row_number + 1 AS _line FROM {relation})", cols, types,
                                staged=False)
        if src.format == "csv":
            return self._stage_csv(i, src)
        return self._stage_jsonl(i, src)

    def _scan_error(self, e: duckdb.Error) -> EventLogError:
        """The first full scan failed: say which file, and for Parquet text that is not UTF-8, which row."""
        m = re.search(r'Parquet file "(.*?)": value', str(e))
        if m and m.group(1) in self._parquet_columns:
            path = m.group(1)
            found = _first_invalid_utf8(path, self._parquet_columns[path])
            if found:
                row, column, value = found
                return EventLogError(f"{path}: row {row}, column {column!r}: text that is not valid UTF-8 "
                                     f"({value!r}); DuckDB cannot read this file: rewrite that column as UTF-8 "
                                     "text (or as binary)")
            return read_error(path, e)
        return read_error(", ".join(self.source_names) if len(self.sources) < 4 else "event logs", e)

    @staticmethod
    def _raw_lines(path: str) -> str:
        return f"read_csv({lit(path)}, {_RAW_LINES})"

    def _scan_text(self, i: int, src: EventSource) -> TextScan:
        """Physical lines, blank lines and unreadable lines of a text log (those get their bytes replaced in a
        staged copy and their rows rejected); a table ``bad_lines_<i>(ln, reason, value)`` when there are any."""
        scan = scan_text(src.path, self.stage_dir / f"clean_{i}{Path(src.path).suffix}")
        if scan.bad:
            logger.warning("%s: %d lines with NUL bytes, invalid UTF-8 or a carriage return inside (first: "
                           "line %d; reported in rejects)",
                           src.path, len(scan.bad), scan.bad[0][0])
            table = pa.table({"ln": pa.array([b[0] for b in scan.bad], pa.int64()),
                              "reason": [b[1] for b in scan.bad], "value": [b[2] for b in scan.bad]})
            self.con.register("bad_lines_arrow", table)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE bad_lines_{i} AS SELECT * FROM bad_lines_arrow")
            self.con.unregister("bad_lines_arrow")
        return scan

    @staticmethod
    def _csv_header(path: str, delim: str) -> list[str]:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
            header = next(csv.reader(f, delimiter=delim), None)
        if not header:
            raise EventLogError(f"CSV {path} has no header line; the first line must name the columns")
        if len(set(header)) != len(header):
            raise EventLogError(f"CSV {path} repeats column names in its header: {header}")
        return header

    def _stage_csv(self, i: int, src: EventSource) -> str:
        """Parse once into Parquet (all text); malformed rows go to DuckDB's rejects table, not away. The records
        and malformed rows must account for every line of the file (see :meth:`_csv_line_map`)."""
        delim = "\t" if src.path.lower().endswith(".tsv") else self.config.csv_delimiter
        scan = self._scan_text(i, src)
        if scan.bad and scan.bad[0][0] == 1:
            raise EventLogError(f"{src.path}:1: cannot read the header line ({scan.bad[0][1]}); cope reads CSV logs "
                                "as UTF-8 text with \\n or \\r\\n line ends: convert the file (e.g. iconv -f <its "
                                "encoding> -t UTF-8)")
        header = self._csv_header(src.path, delim)
        cols = resolve_columns(header, self.config, src.path)
        used = [c for c in dict.fromkeys(cols.values()) if c is not None]
        rej = f"csv_rejects_{i}"
        columns = "{" + ", ".join(f"{lit(h)}: 'VARCHAR'" for h in header) + "}"
        reader = (f"read_csv({lit(scan.path)}, columns={columns}, header=true, delim={lit(delim)}, quote='\"', "
                  f"escape='\"', auto_detect=false, store_rejects=true, rejects_table={lit(rej)}, "
                  f"rejects_scan={lit(rej + '_scan')})")
        stage = self.stage_dir / f"events_{i}.parquet"
        try:
            copy_to_parquet(self.con, f"SELECT row_number() OVER () AS _rec, {', '.join(ident(c) for c in used)} "
                                      f"FROM {reader}", stage)
        except duckdb.Error as e:
            raise read_error(src.path, e) from e
        n_records = pq.ParquetFile(stage).metadata.num_rows
        n_rejected = self.con.execute(f"SELECT count(DISTINCT line) FROM {rej}").fetchall()[0][0]
        if n_rejected:
            logger.warning("%s: %d malformed CSV rows (reported in rejects)", src.path, n_rejected)
        staged = f"read_parquet({lit(str(stage))})"
        if scan.lines == 1 + n_records and not n_rejected:
            # one line per record: lines = header + blank lines + the lines of each record, so as many records as
            # lines after the header, none malformed, leaves no blank line and no record of two lines; the record
            # number says the line
            relation = f"(SELECT *, _rec + 1 AS _line FROM {staged})"
            if scan.bad:
                relation = (f"(SELECT s.*, b.reason AS _bad, b.value AS _raw FROM {relation} s "
                            f"LEFT JOIN bad_lines_{i} b ON b.ln = s._line)")
            blank_lines = 0
        else:  # blank lines, quoted line breaks or malformed rows: map records onto physical lines
            relation, blank_lines = self._csv_line_map(i, src, scan, staged, rej, n_records, n_rejected)
        self.counts.append(FileCount(rows=n_records + n_rejected, lines=scan.lines, blank_lines=blank_lines))
        types = {c: "VARCHAR" for c in used}
        return self._select(i, relation, cols, types, staged=True, flagged=bool(scan.bad))

    def _csv_line_map(self, i: int, src: EventSource, scan: TextScan, staged: str, rej: str, n_records: int,
                      n_rejected: int) -> tuple[str, int]:
        """Physical line of each CSV record and of each malformed row, after checking that they account for every
        line of the file. Returns the staged relation with ``_line`` and the number of blank lines.

        A line starts a record when the quotes before it are balanced. DuckDB numbers such "logical" lines
        (blank ones included, continuation lines of a quoted field not) in its rejects; valid record k is the k-th
        logical line that is not the header, not blank and not rejected. The run stops (:class:`EventLogError`)
        when DuckDB sees another number of lines than the file has, when a quote is never closed and lines follow
        it, when a malformed row runs over several lines (the lines in it would be lost), or when the records and
        malformed rows the parser found are not the records the quotes delimit.
        """
        phys, table = f"csv_phys_{i}", f"csv_lines_{i}"
        try:
            self.con.execute(f"""
                CREATE OR REPLACE TEMP TABLE {phys} AS
                WITH raw AS (SELECT row_number() OVER () AS ln, j IS NULL AS blank,
                                    coalesce(length(j) - length(replace(j, '"', '')), 0) AS q
                             FROM {self._raw_lines(scan.path)}),
                cum AS (SELECT ln, blank, q, sum(q) OVER (ORDER BY ln ROWS UNBOUNDED PRECEDING) AS c FROM raw),
                marked AS (SELECT ln, blank, (c - q) % 2 = 1 AS inside, c % 2 = 1 AS open_after,
                                  max(ln) OVER () AS n_lines FROM cum)
                SELECT * FROM marked WHERE NOT inside OR ln = n_lines""")
        except duckdb.Error as e:
            raise read_error(src.path, e) from e
        n_lines, unterminated = self.con.execute(
            f"SELECT max(n_lines), bool_or(open_after AND ln = n_lines) FROM {phys}").fetchall()[0]
        n_lines = int(n_lines or 0)
        if n_lines != scan.lines:
            raise _line_count_error(src.path, n_lines, scan.lines)
        self.con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {table} AS
            SELECT ln, blank, row_number() OVER (ORDER BY ln) AS duck,
                   coalesce(lead(ln) OVER (ORDER BY ln), {n_lines} + 1) - ln AS span
            FROM {phys} WHERE NOT inside""")
        self.con.execute(f"DROP TABLE {phys}")
        rejected_lines = f"(SELECT DISTINCT line FROM {rej})"
        last, last_span, gave_up = self.con.execute(
            f"SELECT ln, span, duck IN {rejected_lines} FROM {table} ORDER BY ln DESC LIMIT 1").fetchall()[0]
        if unterminated and last_span > 1:
            if gave_up:
                raise EventLogError(
                    f"{src.path}:{last}: a quoted field opened on this line is never closed, so the CSV parser "
                    f"reads nothing after it: the {last_span - 1} lines after it would be lost. Close the quote (a "
                    'quote inside a field is written twice: "")')
            raise EventLogError(
                f"{src.path}:{last}: a quote on this line is never closed (the CSV parser read it as part of an "
                f"unquoted value, like 5\"x), so cope cannot tell which of the {last_span - 1} lines after it start "
                'records. Quote that field (write \"5\"\"x\")')
        multi = self.con.execute(f"SELECT ln, span FROM {table} WHERE duck IN {rejected_lines} AND span > 1 "
                                 "ORDER BY ln LIMIT 1").fetchall()
        if multi:
            ln, span = multi[0]
            raise EventLogError(
                f"{src.path}:{ln}: a malformed CSV row runs over {span} lines ({ln}-{ln + span - 1}): a quote opened "
                f"on line {ln} is closed only on line {ln + span - 1}, and the lines in between would be lost. Fix "
                'the quoting (a quote inside a field is written twice: "")')
        n_logical, n_mapped, blank_lines = self.con.execute(f"""
            SELECT count(*) FILTER (WHERE ln > 1 AND NOT blank),
                   count(*) FILTER (WHERE ln > 1 AND NOT blank AND duck IN {rejected_lines}),
                   count(*) FILTER (WHERE blank)
            FROM {table}""").fetchall()[0]
        if n_logical != n_records + n_rejected or n_mapped != n_rejected:
            raise EventLogError(
                f"{src.path}: the CSV parser read {n_records} records and {n_rejected} malformed rows, but the "
                f"line breaks outside quotes delimit {n_logical} records; cope stops rather than lose rows or give "
                "them the wrong line numbers. A quote inside an unquoted field (5\"x; write \"5\"\"x\") or a "
                "stray quote does this")
        self.con.execute(f"ALTER TABLE {table} ADD COLUMN is_record BOOLEAN")
        self.con.execute(f"UPDATE {table} SET is_record = ln > 1 AND NOT blank AND duck NOT IN {rejected_lines}")
        # a malformed row on a line with bad bytes: the bytes are the cause (the replacement may have made it
        # malformed: a carriage return inside a line splits it for DuckDB no more, but its fields stay joined)
        reason, bad_join = "'malformed CSV row'", ""
        if scan.bad:
            reason = "coalesce(any_value(b.reason), 'malformed CSV row')"
            bad_join = f" LEFT JOIN bad_lines_{i} b ON b.ln = m.ln"
        self._csv_rejects.append(
            f"SELECT {i}::INTEGER AS _src, m.ln::BIGINT AS _line, {reason} AS reason, "
            f"any_value(left(trim(r.csv_line, chr(10) || chr(13)), 200)) || ' (' || any_value(r.error_message) || ')' "
            f"AS value, NULL::VARCHAR AS user_id, NULL::VARCHAR AS domain, NULL::VARCHAR AS id "
            f"FROM {rej} r JOIN {table} m ON m.duck = r.line{bad_join} GROUP BY m.ln")
        relation = (f"(SELECT s.*, m._line FROM {staged} s JOIN "
                    f"(SELECT row_number() OVER (ORDER BY ln) AS _rec, ln AS _line FROM {table} WHERE is_record) m "
                    f"USING (_rec))")
        if scan.bad:  # a bad line rejects the record it is part of (a malformed row is rejected already)
            self.con.execute(f"""
                CREATE OR REPLACE TEMP TABLE bad_records_{i} AS
                SELECT m.ln AS _line, arg_min(b.reason, b.ln) AS reason, arg_min(b.value, b.ln) AS value
                FROM bad_lines_{i} b ASOF JOIN {table} m ON b.ln >= m.ln WHERE m.is_record GROUP BY m.ln""")
            relation = (f"(SELECT s.*, b.reason AS _bad, b.value AS _raw FROM {relation} s "
                        f"LEFT JOIN bad_records_{i} b USING (_line))")
        return relation, int(blank_lines)

    def _stage_jsonl(self, i: int, src: EventSource) -> str:
        """Parse each line once into Parquet. Keys are looked up per row under every candidate name (a key that
        first shows up late in the file still counts); the first 1000 objects only serve to fail early when a
        required field is absent under all its names. Blank lines are staged too (flagged), so that the staged
        rows can be checked against the file's line count."""
        scan = self._scan_text(i, src)
        raw = f"(SELECT row_number() OVER () AS _line, j FROM {self._raw_lines(scan.path)})"
        bad_reason = bad_value = "NULL"
        if scan.bad:
            raw = (f"(SELECT r._line, r.j, b.reason AS _bad_reason, b.value AS _bad_value FROM {raw} r "
                   f"LEFT JOIN bad_lines_{i} b ON b.ln = r._line)")
            bad_reason, bad_value = "_bad_reason", "_bad_value"
        lines = (f"(SELECT *, j IS NULL OR trim(j) = '' AS _blank FROM {raw})")
        objects = (f"(SELECT *, CASE WHEN NOT _blank AND json_valid(j) THEN json_type(j) END AS t FROM {lines})")
        try:
            keys = [r[0] for r in self.con.execute(
                f"SELECT DISTINCT unnest(json_keys(j)) FROM (SELECT j FROM {objects} WHERE t = 'OBJECT' LIMIT 1000)"
            ).fetchall()]
        except duckdb.Error as e:
            raise read_error(src.path, e) from e
        if keys:  # an empty or all-garbage file has no keys to check: its rows are reported one by one
            resolve_columns(sorted(keys), self.config, src.path)
        fields = []
        for fld, candidates in DEFAULT_CANDIDATES.items():
            names = [self.config.columns[fld]] if fld in self.config.columns else list(candidates)
            values = [f"json_extract_string(j, {json_path(n)})" for n in names]
            expr = values[0] if len(values) == 1 else f"coalesce({', '.join(values)})"
            fields.append(f"CASE WHEN t = 'OBJECT' THEN {expr} END AS {ident(fld)}")
        stage = self.stage_dir / f"events_{i}.parquet"
        bad_json = "NOT _blank AND t IS DISTINCT FROM 'OBJECT'"
        try:
            copy_to_parquet(self.con, f"SELECT _line, _blank, "
                                      f"coalesce({bad_reason}, CASE WHEN {bad_json} THEN 'invalid JSON' END) AS _bad, "
                                      f"coalesce({bad_value}, CASE WHEN {bad_json} THEN left(j, 200) END) AS _raw, "
                                      f"{', '.join(fields)} FROM {objects}", stage)
        except duckdb.Error as e:
            raise read_error(src.path, e) from e
        staged = f"read_parquet({lit(str(stage))})"
        n_lines, n_blank = self.con.execute(f"SELECT count(*), count(*) FILTER (WHERE _blank) FROM {staged}"
                                            ).fetchall()[0]
        if n_lines != scan.lines:
            raise _line_count_error(src.path, n_lines, scan.lines)
        self.counts.append(FileCount(rows=n_lines - n_blank, lines=scan.lines, blank_lines=n_blank))
        cols: dict[str, str | None] = {fld: fld for fld in DEFAULT_CANDIDATES}
        types = {fld: "VARCHAR" for fld in DEFAULT_CANDIDATES}
        return self._select(i, f"(SELECT * FROM {staged} WHERE NOT _blank)", cols, types, staged=True,
                            flagged=True)

    # -- normalisation ------------------------------------------------------------------------------------------
    def _select(self, i: int, relation: str, cols: dict[str, str | None], types: dict[str, str], *,
                staged: bool, flagged: bool = False) -> str:
        """Typed, named columns of one source. Text sources (staged CSV/JSONL) are trimmed; Parquet columns are
        used as they are (no casts to text on the hot path: ``*_raw`` texts are only computed for rejects).
        ``flagged``: the relation has ``_bad`` (a reason found while staging: invalid JSON, NUL byte, invalid
        UTF-8) and ``_raw`` (the offending text)."""
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
                 "_bad" if flagged else "NULL::VARCHAR AS _bad", "_raw" if flagged else "NULL::VARCHAR AS _raw",
                 f"{text('user_id')} AS user_id", *self._ts_exprs(cols['ts'], types),
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

    @staticmethod
    def _ts_exprs(col: str | None, types: dict[str, str]) -> tuple[str, str, str]:
        """The time as it comes: ``ts_typed`` (a Parquet timestamp/date), ``ts_num`` (a number: epoch) or
        ``ts_text`` (text: a timestamp or an epoch); :meth:`_checked_sql` converts and range-checks it."""
        assert col is not None
        c, typ = ident(col), types.get(col, "VARCHAR").upper()
        typed, num, text = "NULL::TIMESTAMPTZ", "NULL::DOUBLE", "NULL::VARCHAR"
        if typ.startswith(_TIMESTAMP_TYPES):
            typed = f"CAST({c} AS TIMESTAMPTZ)"
        elif typ.startswith(_NUMBER_TYPES):
            num = f"CAST({c} AS DOUBLE)"
        else:
            text = f"NULLIF(trim(CAST({c} AS VARCHAR)), '')"
        return f"{typed} AS ts_typed", f"{num} AS ts_num", f"{text} AS ts_text"

    def _epoch_seconds(self, x: str) -> str:
        unit = self.config.ts_unit
        div = {"s": "1", "ms": "1e3", "us": "1e6", "ns": "1e9"}
        if unit == "auto":
            return (f"CASE WHEN abs({x}) >= 1e17 THEN {x} / 1e9 WHEN abs({x}) >= 1e14 THEN {x} / 1e6 "
                    f"WHEN abs({x}) >= 1e11 THEN {x} / 1e3 ELSE {x} END")
        return f"{x} / {div[unit]}"

    def _checked_sql(self) -> str:
        aliases = self.config.domain_aliases
        domain = ("CASE domain_raw " + " ".join(f"WHEN {lit(k)} THEN {lit(v)}" for k, v in aliases.items())
                  + " ELSE domain_raw END") if aliases else "domain_raw"
        offsets = "concat_ws(' ', 'offset=' || offset_raw, 'start=' || start_raw, 'end=' || end_raw)"
        checks = [  # (condition, reason, offending value); the live checks nest under one test of the domain
            ("_bad IS NOT NULL", "_bad", "_raw"),
            ("user_id IS NULL", "'missing user id'", "NULL"),
            ("ts_missing", "'missing timestamp'", "NULL"),
            ("ts IS NULL AND ts_all IS NOT NULL", "'timestamp out of range'", "ts_raw"),
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
        # one layer per step, so that no expression is repeated, and text is cast to a number only where it is no
        # timestamp (coalesce and CASE evaluate lazily). ts_any: a timestamp; ts_x: else, a number (epoch);
        # ts_all: the time either stands for ('infinity' for a number that is no time: nan, inf, too large);
        # ts: the same within [TS_MIN, TS_MAX), else NULL (rejected as out of range)
        return f"""
            SELECT *, {reason} AS reason, {value} AS value,
                   {interval} AS is_interval,
                   CASE WHEN {interval} THEN start_v ELSE coalesce(offset_v, start_v) END AS lo,
                   CASE WHEN {interval} THEN end_v ELSE coalesce(offset_v, start_v) END AS hi,
                   coalesce(weight_v, 1.0) AS weight
            FROM (SELECT *, CASE WHEN ts_all >= TIMESTAMPTZ {lit(TS_MIN)} AND ts_all < TIMESTAMPTZ {lit(TS_MAX)}
                                 THEN ts_all END AS ts
            FROM (SELECT *, coalesce(ts_any, CASE WHEN ts_s >= 0 AND ts_s < {_TS_MAX_SECONDS} THEN to_timestamp(ts_s)
                                                  WHEN ts_s IS NOT NULL THEN 'infinity'::TIMESTAMPTZ END) AS ts_all
            FROM (SELECT *, {self._epoch_seconds('ts_x')} AS ts_s
            FROM (SELECT *, coalesce(ts_num, CASE WHEN ts_any IS NULL THEN TRY_CAST(ts_text AS DOUBLE) END) AS ts_x
            FROM (SELECT *, {domain} AS domain, coalesce(ts_typed, TRY_CAST(ts_text AS TIMESTAMPTZ)) AS ts_any
                  FROM events_norm)))))"""

    def source_case(self, column: str = "_src") -> str:
        """SQL turning the source index into the file path."""
        return f"{str_list(self.source_names)}[{column} + 1]"


def _line_count_error(path: str, duckdb_lines: int, file_lines: int) -> EventLogError:
    return EventLogError(f"{path}: DuckDB reads {duckdb_lines} lines but the file has {file_lines}; cope stops "
                         "rather than lose rows or give them the wrong line numbers")


def _first_invalid_utf8(path: str, columns: Sequence[str]) -> tuple[int, str, str] | None:
    """(1-based row, column, value) of the first text in ``columns`` of a Parquet file that is not UTF-8."""
    pf = pq.ParquetFile(path)
    names = [c for c in columns if c in pf.schema_arrow.names]
    row = 0
    for batch in pf.iter_batches(batch_size=65_536, columns=names):
        for name in batch.schema.names:
            arr = batch.column(name)
            if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
                continue
            try:
                arr.validate(full=True)
            except pa.ArrowInvalid:
                binary = arr.cast(pa.large_binary() if pa.types.is_large_string(arr.type) else pa.binary())
                for k, v in enumerate(binary.to_pylist()):
                    if v is not None and _not_utf8(v):
                        return row + k + 1, name, v.decode("utf-8", "replace")[:200]
        row += batch.num_rows
    return None


def _not_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
