"""The behaviour join: logs -> store items and product keys -> events, per-user sequences, profiles, report.

Everything runs as DuckDB queries over Arrow and Parquet with a memory limit (DuckDB spills beyond it); only ids,
domains and slice bounds are read from the store, vectors only for content links and profiles.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cope.join.config import DOMAINS, JoinConfig
from cope.join.events import EventLogs
from cope.join.links import (
    content_link_candidates,
    create_item_keys,
    load_link_tables,
    nearest_products,
    register_content_links,
)
from cope.join.logfiles import EventLogError
from cope.join.report import JoinReport, SourceCounts, UserStats, build_report
from cope.join.sequences import SequenceBuilder
from cope.join.sql import arrow_reader, arrow_table, connect, copy_to_parquet, lit
from cope.join.writers import BackgroundParquetWriter
from cope.store import ItemStore
from cope.store.schema import require_modalities

logger = logging.getLogger(__name__)

META_MODEL_TAG = "cope.model_tag"
ITEM_COLUMNS = ["item_id", "domain", "source_id", "slice_start", "slice_end"]
OUTPUT_FILES = {"events": "events.parquet", "sequences": "sequences.parquet", "rejects": "rejects.parquet",
                "links": "product_links.parquet", "profiles": "profiles.parquet", "report": "report.json"}


@dataclass
class JoinResult:
    """Where the outputs are, and the report (also in ``report.json``)."""

    out: Path
    report: JoinReport
    paths: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.report.summary()


def open_store(db: str | Path, table: str) -> ItemStore:
    if "://" not in str(db) and not Path(db).exists():
        raise FileNotFoundError(f"no LanceDB directory {db}; embed a catalog first: cope embed MANIFEST --db {db}")
    store = ItemStore.open(db, table)
    if not store.exists:
        raise FileNotFoundError(f"no table {table!r} in {db}; embed a catalog first (cope embed MANIFEST --db {db}) "
                                "or pass --table")
    return store


def join_behaviour(events: str | Path | list[str | Path], db: str | Path, out: str | Path, *,
                   config: JoinConfig | None = None, **options: Any) -> JoinResult:
    """Join behaviour logs onto the item store; write Parquet outputs and a report to ``out``.

    Outputs: ``events.parquet`` (one row per event, or per slice for a live watch spanning several; ``item_id``
    null where the id is not in the store), ``sequences.parquet`` (last ``last_n`` matched events per user, ordered
    by time), ``rejects.parquet`` (bad rows with file and line), ``product_links.parquet`` (product key of each
    linked item), ``report.json`` and, with ``profiles=True``, ``profiles.parquet``. Each Parquet file carries the
    store's model tag (column ``model_tag`` and file metadata ``cope.model_tag``). Options are
    :class:`JoinConfig` fields. Re-running writes the same files.

    >>> import pathlib, tempfile
    >>> from cope.join.synth import make_event_log, write_events, write_synthetic_store
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> catalog = write_synthetic_store(d / "db", n_products=20)  # hand-made vectors, all four domains
    >>> _ = write_events(make_event_log(catalog, n_events=500, n_users=20), d / "events.parquet")
    >>> result = join_behaviour(d / "events.parquet", d / "db", d / "joined", threshold=0.8, last_n=20)
    >>> result.report.events.valid, result.report.domains["video"].matched_share
    (500, 1.0)
    >>> sorted(p.name for p in result.paths.values())[:3]
    ['events.parquet', 'product_links.parquet', 'rejects.parquet']
    """
    config = JoinConfig.model_validate({**(config or JoinConfig()).model_dump(), **options})
    store = open_store(db, config.table)
    if config.vector_column != "vector":
        require_modalities(store.table.schema, config.table, f"cope join --vector-column {config.vector_column}",
                           fix="--vector-column vector")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = Path(config.temp_dir) if config.temp_dir else out
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".cope-join-", dir=base))  # ours alone: removed at the end
    con = connect(config.memory_limit, config.threads, tmp / "duckdb")
    try:
        return _Join(con, store, config, out, tmp).run(events)
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


class _Join:
    def __init__(self, con: duckdb.DuckDBPyConnection, store: ItemStore, config: JoinConfig, out: Path,
                 tmp: Path) -> None:
        self.con, self.store, self.config, self.out, self.tmp = con, store, config, out, tmp
        self.model_tag = store.model_tag or ""
        self.paths = {k: out / v for k, v in OUTPUT_FILES.items()}
        self.seconds: dict[str, float] = {}
        self.source_counts: list[SourceCounts] = []
        self.cpu_seconds: dict[str, float] = {}
        self._cpu = time.process_time()

    def _phase(self, name: str, started: float) -> float:
        now, cpu = time.perf_counter(), time.process_time()
        self.seconds[name] = round(now - started, 3)
        self.cpu_seconds[name] = round(cpu - self._cpu, 3)
        self._cpu = cpu
        logger.info("%s: %.2f s (cpu %.2f s)", name, now - started, self.cpu_seconds[name])
        return now

    @property
    def _meta(self) -> dict[str, str]:
        return {META_MODEL_TAG: self.model_tag}

    def run(self, events: Any) -> JoinResult:
        t0 = t = time.perf_counter()
        stage = self.tmp / "stage"
        stage.mkdir(parents=True, exist_ok=True)
        logs = EventLogs(self.con, events, self.config, stage).prepare()
        t = self._phase("read_logs", t)

        items = self.store.read(ITEM_COLUMNS)
        items = items.append_column("idx", pa.array(np.arange(items.num_rows, dtype=np.int32)))
        self.con.register("items_arrow", items)
        self.con.execute("CREATE OR REPLACE TEMP TABLE items AS SELECT * FROM items_arrow")
        self.con.unregister("items_arrow")
        del items
        t = self._phase("read_items", t)

        link_counts = load_link_tables(self.con, self.config.links, self.config, stage)
        create_item_keys(self.con)
        content = {"content_candidates": 0, "content_linked": 0, "content_below_threshold": 0}
        if self.config.content_links:
            candidates = content_link_candidates(self.con)
            links = nearest_products(self.store, candidates, threshold=self.config.threshold,
                                     vector_column=self.config.vector_column)
            register_content_links(self.con, links)
            self.con.execute("INSERT INTO item_keys SELECT item_id, product_key, "
                             "CASE WHEN product_key IS NOT NULL THEN 'content' END, link_score FROM content_links")
            linked = links.num_rows - links.column("product_key").null_count
            content = {"content_candidates": len(candidates), "content_linked": linked,
                       "content_below_threshold": links.num_rows - linked}
        self._targets()
        t = self._phase("links", t)

        users = self._write_events_and_sequences(logs)
        t = self._phase("join_events_and_sequences", t)
        copy_to_parquet(self.con, f"SELECT {logs.source_case()} AS source, _line AS line, reason, value, user_id, "
                                  f"domain, id FROM events_rejects ORDER BY _src, _line", self.paths["rejects"])
        copy_to_parquet(self.con, f"""
            SELECT i.item_id, i.domain, i.source_id, i.slice_start, i.slice_end, k.product_key, k.link_source,
                   k.link_score, {lit(self.model_tag)} AS model_tag
            FROM item_keys k JOIN items i USING (item_id) ORDER BY i.item_id""", self.paths["links"], self._meta)
        t = self._phase("rejects_and_links", t)

        if self.config.profiles:
            from cope.join.profiles import write_profiles

            write_profiles(self.paths["events"], self.store, self.paths["profiles"],
                           half_life_hours=self.config.half_life_hours, vector_column=self.config.vector_column,
                           model_tag=self.model_tag)
            t = self._phase("profiles", t)
        else:
            self.paths.pop("profiles")
            (self.out / OUTPUT_FILES["profiles"]).unlink(missing_ok=True)  # a stale one from an earlier run

        report = build_report(self.con, self.paths["events"], self.paths["rejects"], users,
                              top_unmatched=self.config.top_unmatched, reject_examples=self.config.reject_examples)
        report.model_tag = self.model_tag
        report.inputs = logs.source_names
        report.events.sources = self.source_counts
        report.outputs = {k: str(p) for k, p in self.paths.items()}
        report.links = report.links.model_copy(update={
            "link_table_rows": link_counts["rows"], "link_table_invalid": link_counts["invalid"],
            "link_table_invalid_by_reason": link_counts["invalid_by_reason"],
            "link_table_ambiguous": link_counts["ambiguous"],
            "threshold": self.config.threshold if self.config.content_links else None, **content})
        t = self._phase("report", t)
        self.seconds["total"] = round(t - t0, 3)
        self.cpu_seconds["total"] = round(sum(self.cpu_seconds.values()), 3)
        report.seconds = dict(self.seconds)
        report.cpu_seconds = dict(self.cpu_seconds)
        report.write(self.paths["report"])
        logger.info("joined %d events (%d rejected) in %.1f s -> %s", report.events.valid, report.events.rejected,
                    t - t0, self.out)
        return JoinResult(out=self.out, report=report, paths=dict(self.paths))

    # -- SQL --------------------------------------------------------------------------------------------------
    def _targets(self) -> None:
        """What an event can point at, as one row number space ``idx``: store items (0..n-1) and, after them,
        linked video/image ids that are not in the store (no item, but a product key).

        ``targets`` (domain, source_id, idx) serves video/image/product events; ``slices`` (source_id, bounds,
        idx, rank) live events; :attr:`keys` holds item id, product key, link source and score per ``idx``, so the
        join and its sort carry one integer instead of four columns.
        """
        self.con.execute("""
            CREATE OR REPLACE TEMP TABLE keyed AS
            SELECT i.idx, i.domain, i.source_id, i.item_id, k.product_key, k.link_source, k.link_score
            FROM items i LEFT JOIN item_keys k USING (item_id)
            UNION ALL
            SELECT (SELECT count(*) FROM items) + row_number() OVER (ORDER BY l.domain, l.id) - 1,
                   l.domain, l.id, NULL, l.product_id, 'link', NULL
            FROM (SELECT domain, id, min(product_id) AS product_id FROM links
                  WHERE domain IN ('video', 'image') GROUP BY domain, id) l
            ANTI JOIN items i ON i.domain = l.domain AND i.source_id = l.id""")
        self.con.execute("CREATE OR REPLACE TEMP TABLE targets AS "
                         "SELECT domain, source_id, idx FROM keyed WHERE domain <> 'live'")
        self.con.execute("""
            CREATE OR REPLACE TEMP TABLE slices AS
            SELECT source_id, slice_start, slice_end, idx,
                   row_number() OVER (PARTITION BY source_id ORDER BY slice_start, item_id) AS rank
            FROM items WHERE domain = 'live' AND slice_start IS NOT NULL AND slice_end IS NOT NULL""")
        keyed = arrow_table(self.con, "SELECT item_id, product_key, link_source, link_score FROM keyed ORDER BY idx")
        self.keys = {c: keyed.column(c).combine_chunks() for c in keyed.column_names}
        self.con.execute("DROP TABLE keyed")

    def _events_sql(self, logs: EventLogs) -> str:
        """Valid events -> ``idx``. Live: the slice holding the offset, or every slice overlapping [start, end),
        found with two ASOF joins on the slice starts (no range join), then expanded by slice rank. Sorted by
        user and time; ``domain`` travels as an ENUM (one byte)."""
        domain = f"CAST(domain AS ENUM ({', '.join(lit(d) for d in DOMAINS)}))"
        return f"""
        WITH nl AS (
            SELECT e._src, e._line, 0 AS part, e.user_id, e.ts, e.domain, e.id, NULL::DOUBLE AS offset_s,
                   NULL::DOUBLE AS end_s, e.action, e.weight, 1.0::DOUBLE AS slice_share, t.idx
            FROM events_valid e LEFT JOIN targets t ON t.domain = e.domain AND t.source_id = e.id
            WHERE e.domain <> 'live'),
        a AS (SELECT lv.*, s.rank AS r_lo, s.slice_end AS end_lo
              FROM live_events lv ASOF LEFT JOIN slices s ON lv.id = s.source_id AND lv.lo >= s.slice_start),
        b AS (SELECT a.*, s.rank AS r_hi, s.slice_start AS start_hi
              FROM a ASOF LEFT JOIN slices s ON a.id = s.source_id AND a.hi >= s.slice_start),
        r AS (SELECT *,
                CASE WHEN NOT is_interval THEN CASE WHEN lo < end_lo THEN r_lo END
                     WHEN r_lo IS NULL THEN 1 WHEN end_lo <= lo THEN r_lo + 1 ELSE r_lo END AS ra,
                CASE WHEN NOT is_interval THEN CASE WHEN lo < end_lo THEN r_lo END
                     WHEN start_hi >= hi THEN r_hi - 1 ELSE r_hi END AS rb
              FROM b),
        x AS (SELECT *, unnest(CASE WHEN ra <= rb THEN range(ra, rb + 1) ELSE [NULL::BIGINT] END) AS rank FROM r),
        lm AS (
            SELECT x._src, x._line, coalesce(x.rank - x.ra, 0) AS part, x.user_id, x.ts, x.domain, x.id,
                   x.lo AS offset_s, CASE WHEN x.is_interval THEN x.hi END AS end_s, x.action, x.weight,
                   CASE WHEN x.is_interval AND s.idx IS NOT NULL
                        THEN (least(x.hi, s.slice_end) - greatest(x.lo, s.slice_start)) / (x.hi - x.lo)
                        ELSE 1.0 END AS slice_share, s.idx
            FROM x LEFT JOIN slices s ON s.source_id = x.id AND s.rank = x.rank),
        allrows AS (SELECT * FROM nl UNION ALL SELECT * FROM lm)
        SELECT _src, _line AS line, part::INTEGER AS part, user_id, ts, {domain} AS domain, id,
               offset_s, end_s, action, weight, slice_share, idx
        FROM allrows
        ORDER BY user_id, ts, _src, _line, part"""

    @staticmethod
    def _check_counts(logs: EventLogs, valid: np.ndarray, rejected: np.ndarray) -> list[SourceCounts]:
        """Every row of every file is an event or a reject: stop (before any output is kept) where one is not."""
        counts = []
        for k, (src, c) in enumerate(zip(logs.sources, logs.counts)):
            sc = SourceCounts(source=src.path, format=src.format, rows=c.rows, valid=int(valid[k]),
                              rejected=int(rejected[k]), lines=c.lines, blank_lines=c.blank_lines)
            if sc.valid + sc.rejected != sc.rows:
                raise EventLogError(
                    f"{src.path}: {sc.rows} rows in the file, but {sc.valid} were joined and {sc.rejected} rejected "
                    f"({sc.rows - sc.valid - sc.rejected:+d} unaccounted for); cope join stops rather than write "
                    "a result that loses or repeats rows: please report this with the file")
            counts.append(sc)
        return counts

    def _write_events_and_sequences(self, logs: EventLogs) -> UserStats:
        """Stream the sorted join once: each batch goes to ``events.parquet`` and to the sequence builder.

        DuckDB sorts narrow rows (file index, item row number, one-byte domain); the path, item id, product key,
        link source and score are put back here with vectorised takes, batch by batch.
        """
        rejected = np.zeros(len(logs.sources), np.int64)  # per source, to check against the files' own counts
        for src, count in self.con.execute("SELECT _src, count(*) FROM events_rejects GROUP BY _src").fetchall():
            rejected[src] = count
        reader = arrow_reader(self.con, self._events_sql(logs), self.config.batch_rows)
        sources = pa.array(logs.source_names, pa.string())
        tags = pa.array([self.model_tag], pa.string())
        keys = self.keys
        names = ["source", "line", "part", "user_id", "ts", "domain", "id", "offset_s", "end_s", "action", "weight",
                 "slice_share", "item_id", "product_key", "link_source", "link_score", "model_tag"]
        types = {"source": pa.dictionary(pa.int32(), pa.string()), "domain": pa.string(), "item_id": pa.string(),
                 "product_key": pa.string(), "link_source": pa.string(), "link_score": pa.float64(),
                 "model_tag": pa.dictionary(pa.int8(), pa.string())}
        fields = [pa.field(n, types.get(n) or reader.schema.field(n).type) for n in names]
        schema = pa.schema(fields, metadata={META_MODEL_TAG.encode(): self.model_tag.encode()})
        sequences = SequenceBuilder(self.paths["sequences"], last_n=self.config.last_n, model_tag=self.model_tag)
        writer = BackgroundParquetWriter(self.paths["events"], schema, compression="zstd",
                                         # dictionaries only where few values repeat
                                         use_dictionary=["source", "domain", "action", "link_source", "model_tag"],
                                         write_statistics=["user_id", "ts", "domain", "line"])
        valid = np.zeros(len(logs.sources), np.int64)
        n = 0
        try:
            for batch in reader:
                m = batch.num_rows
                first = batch.column("part").to_numpy() == 0  # one row per event (a live watch may have several)
                valid += np.bincount(batch.column("_src").to_numpy()[first], minlength=len(valid))
                idx = batch.column("idx")
                domain = batch.column("domain")
                domain = domain.dictionary_decode() if pa.types.is_dictionary(domain.type) else domain
                is_product = pc.equal(domain, "product")
                cols = {"source": pa.DictionaryArray.from_arrays(batch.column("_src").cast(pa.int32()), sources),
                        "domain": domain.cast(pa.string()),
                        "item_id": keys["item_id"].take(idx),
                        # a product event is its own key, in the store or not
                        "product_key": pc.if_else(is_product, batch.column("id"), keys["product_key"].take(idx)),
                        "link_source": pc.if_else(is_product, "self", keys["link_source"].take(idx)),
                        "link_score": keys["link_score"].take(idx),
                        "model_tag": pa.DictionaryArray.from_arrays(pa.array(np.zeros(m, np.int8)), tags)}
                arrays = [cols[nm] if nm in cols else batch.column(nm) for nm in names]
                out = pa.RecordBatch.from_arrays([a.cast(f.type) if a.type != f.type else a
                                                  for a, f in zip(arrays, fields)], schema=schema)
                writer.write(out)
                sequences.add(out)
                n += m
            self.source_counts = self._check_counts(logs, valid, rejected)
        except BaseException:
            writer.close(commit=False)
            sequences.abort()
            raise
        writer.close()
        users = sequences.close()
        logger.info("events: %d rows; sequences: %d users", n, sequences.written)
        return users
