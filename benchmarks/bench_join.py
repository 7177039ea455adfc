"""Benchmark of the behaviour join: 10M events x 1M items (dim 128), against a naive pandas merge.

Each phase runs in its own subprocess, which reports its wall time and its own peak RSS (``VmHWM`` of that
process, imports included), so the numbers of one phase do not leak into the next.

    .venv/bin/python benchmarks/bench_join.py --dir /tmp/bench_join            # everything (~5 min)
    .venv/bin/python benchmarks/bench_join.py --dir /tmp/bench_join --phases join,sequences

    .venv/bin/python benchmarks/bench_join.py --dir /tmp/bench_join --compare 3   # the memory goal (~6 min)

Phases: ``generate`` (store + log + link table, not part of the goal), ``join`` (cope join: validation, mapping,
live slices, product keys, events.parquet, per-user sequences, rejects, report; the goal is <= 30 s and <= 4 GiB on
2 cores), ``profiles`` (user profile vectors from the joined events), ``content`` (exact nearest-product links for
a sample of items, extrapolated), ``hand`` (the same join as a careful hand-written DuckDB query: the baseline of
the memory goal, <= 1.5 GiB peak at <= 1.2x the former time), ``pandas`` (the naive merge + sequences on a slice of the log, extrapolated) and
``downstream`` (next-product hit-rate@10, cross-domain vs product-only history, on a smaller generated log).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COUNTS = ("rows", "matched", "keyed", "users", "sequence_events", "events_checksum", "sequences_checksum")
PHASES = ("generate", "join", "hand", "profiles", "content", "pandas", "downstream")


def _rss_mib() -> float:
    """This process's peak RSS: VmHWM where there is /proc (``ru_maxrss`` of a spawned process starts at its
    parent's peak on Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- phases (each runs in a fresh process) ---------------------------------------------------------------------
def phase_generate(a: argparse.Namespace) -> dict:
    import pyarrow.parquet as pq

    from cope.join.synth import make_event_log, write_synthetic_store

    d = Path(a.dir)
    t = time.perf_counter()
    cat = write_synthetic_store(d / "db", n_products=a.products, videos_per_product=4, images_per_product=1,
                                n_lives=a.lives, slices_per_live=100, slice_seconds=30.0, dim=a.dim,
                                n_categories=500, seed=0)
    t_store = time.perf_counter() - t
    t = time.perf_counter()
    log = make_event_log(cat, n_events=a.events, n_users=a.users, unknown_share=0.01, seed=1)
    log = log.drop_columns(["true_item_id", "true_product_key"])
    pq.write_table(log, d / "events.parquet", compression="zstd", row_group_size=1 << 20)
    pq.write_table(cat.link_table(), d / "links.parquet")
    return {"items": cat.n_items, "events": log.num_rows, "store_s": round(t_store, 1),
            "log_s": round(time.perf_counter() - t, 1)}


def phase_join(a: argparse.Namespace) -> dict:
    from cope.join import join_behaviour

    d = Path(a.dir)
    r = join_behaviour(d / "events.parquet", d / "db", d / "joined", links=[str(d / "links.parquet")],
                       memory_limit=a.memory_limit, threads=a.threads, last_n=50)
    return {"counts": cope_counts(a), "seconds": r.report.seconds, "cpu_seconds": r.report.cpu_seconds, "events": r.report.events.valid, "users": r.report.users.users,
            "multi_domain_share": round(r.report.users.multi_domain_share, 3)}


def phase_hand(a: argparse.Namespace) -> dict:
    """The baseline of the join goal: a careful hand-written DuckDB query with the same outputs as ``cope join``
    (events.parquet: one row per event, or per slice for a live watch spanning several, with item id and product key,
    sorted by user and time; sequences.parquet: each user's last 50 matched events). DuckDB gets
    ``--hand-memory-limit`` (2GB, as when the goal was set), 2 threads; validation is reduced to dropping rows with
    a missing field (the log has none)."""
    import shutil

    import duckdb

    from cope.join.join import open_store

    d = Path(a.dir)
    out = d / "hand"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb.connect()
    con.execute(f"SET memory_limit = '{a.hand_memory_limit}'; SET threads = {a.threads}; "
                f"SET temp_directory = '{out / 'spill'}'; SET TimeZone = 'UTC'; SET preserve_insertion_order = false")
    items = open_store(d / "db", "items").read(["item_id", "domain", "source_id", "slice_start", "slice_end"])
    con.register("items_arrow", items)
    con.execute("CREATE TEMP TABLE items AS SELECT * FROM items_arrow")
    con.unregister("items_arrow")
    del items
    con.execute(f"CREATE TEMP TABLE links AS SELECT * FROM read_parquet('{d / 'links.parquet'}')")
    con.execute("""
        CREATE TEMP TABLE keys AS
        SELECT item_id, source_id AS product_key FROM items WHERE domain = 'product'
        UNION ALL
        SELECT i.item_id, min(l.product_id) FROM items i JOIN links l ON l.domain = i.domain AND l.id = i.source_id
        WHERE i.domain IN ('video', 'image') GROUP BY i.item_id
        UNION ALL
        SELECT item_id, product_id FROM (
            SELECT i.item_id, l.product_id FROM items i JOIN links l ON l.domain = 'live' AND l.id = i.source_id
            WHERE i.domain = 'live' AND (l.start IS NULL OR l.start < i.slice_end) AND (l."end" IS NULL OR l."end" >
                  i.slice_start)
            QUALIFY row_number() OVER (PARTITION BY i.item_id ORDER BY (l.start IS NULL AND l."end" IS NULL),
                least(i.slice_end, coalesce(l."end", 'infinity'::DOUBLE))
                - greatest(i.slice_start, coalesce(l.start, '-infinity'::DOUBLE)) DESC, l.product_id) = 1)""")
    con.execute(f"""
        CREATE TEMP TABLE ev AS
        SELECT row_number() OVER () AS line, user_id, ts, domain, id, "offset", start, "end", action,
               coalesce(weight, 1.0) AS weight,
               start IS NOT NULL AND "end" IS NOT NULL AND "end" > start AS is_interval
        FROM read_parquet('{d / 'events.parquet'}')
        WHERE user_id IS NOT NULL AND ts IS NOT NULL AND id IS NOT NULL
          AND domain IN ('product', 'video', 'image', 'live')""")
    con.execute(f"""
        COPY (
          WITH nl AS (
            SELECT e.line, 0 AS part, e.user_id, e.ts, e.domain, e.id, e.action, e.weight, 1.0 AS slice_share,
                   i.item_id
            FROM ev e LEFT JOIN items i ON i.domain = e.domain AND i.source_id = e.id WHERE e.domain <> 'live'),
          lv AS (
            SELECT e.*, CASE WHEN is_interval THEN start ELSE coalesce("offset", start) END AS lo,
                   CASE WHEN is_interval THEN "end" END AS hi FROM ev e WHERE e.domain = 'live'),
          lm AS (
            SELECT lv.line, coalesce(row_number() OVER (PARTITION BY lv.line ORDER BY i.slice_start) - 1, 0) AS part,
                   lv.user_id, lv.ts, lv.domain, lv.id, lv.action, lv.weight,
                   CASE WHEN lv.is_interval AND i.item_id IS NOT NULL
                        THEN (least(lv.hi, i.slice_end) - greatest(lv.lo, i.slice_start)) / (lv.hi - lv.lo)
                        ELSE 1.0 END AS slice_share, i.item_id
            FROM lv LEFT JOIN items i ON i.domain = 'live' AND i.source_id = lv.id
              AND CASE WHEN lv.is_interval THEN i.slice_start < lv.hi AND i.slice_end > lv.lo
                       ELSE i.slice_start <= lv.lo AND lv.lo < i.slice_end END),
          allrows AS (SELECT * FROM nl UNION ALL SELECT * FROM lm)
          SELECT a.line, a.part, a.user_id, a.ts, a.domain, a.id, a.action, a.weight, a.slice_share, a.item_id,
                 CASE WHEN a.domain = 'product' THEN a.id ELSE k.product_key END AS product_key
          FROM allrows a LEFT JOIN keys k USING (item_id)
          ORDER BY a.user_id, a.ts, a.line, a.part
        ) TO '{out / 'events.parquet'}' (FORMAT parquet, COMPRESSION zstd)""")
    con.execute(f"""
        COPY (
          WITH g AS (
            SELECT user_id, count(*) AS n_events, count(DISTINCT domain)::TINYINT AS n_domains,
                   list_sort(list((ts, line, part, item_id, domain, product_key, action, weight)))[-50:] AS s
            FROM read_parquet('{out / 'events.parquet'}') WHERE item_id IS NOT NULL GROUP BY user_id)
          SELECT user_id, n_events, n_domains, len(s)::INTEGER AS length,
                 list_transform(s, lambda x: x[4]) AS item_ids, list_transform(s, lambda x: x[5]) AS domains,
                 list_transform(s, lambda x: x[1]) AS timestamps, list_transform(s, lambda x: x[6]) AS product_keys,
                 list_transform(s, lambda x: x[7]) AS actions, list_transform(s, lambda x: x[8]) AS weights
          FROM g ORDER BY user_id
        ) TO '{out / 'sequences.parquet'}' (FORMAT parquet, COMPRESSION zstd)""")
    return output_counts(con, out)


def output_counts(con: Any, folder: Path) -> dict:
    """Counts and order-independent checksums of a join's ``events.parquet`` and ``sequences.parquet`` (two joins
    with equal ones wrote the same rows, whatever their order within a user)."""
    events, sequences = f"read_parquet('{folder / 'events.parquet'}')", f"read_parquet('{folder / 'sequences.parquet'}')"
    counts = con.execute(f"""
        SELECT (SELECT count(*) FROM {events}), (SELECT count(item_id) FROM {events}),
               (SELECT count(product_key) FROM {events}), (SELECT count(*) FROM {sequences}),
               (SELECT sum(length) FROM {sequences}),
               (SELECT bit_xor(hash(user_id, epoch_us(ts), item_id, product_key)) FROM {events}),
               (SELECT bit_xor(hash(user_id, item_ids, product_keys)) FROM {sequences})""").fetchall()[0]
    return dict(zip(COUNTS, (int(x) for x in counts)))


def cope_counts(a: argparse.Namespace) -> dict:
    """:func:`output_counts` of cope's outputs (to check they agree with the hand-written query's)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    return output_counts(con, Path(a.dir) / "joined")


def phase_profiles(a: argparse.Namespace) -> dict:
    from cope.join.join import open_store
    from cope.join.profiles import write_profiles

    d = Path(a.dir)
    store = open_store(d / "db", "items")
    n = write_profiles(d / "joined" / "events.parquet", store, d / "joined" / "profiles.parquet",
                       model_tag=store.model_tag or "")
    return {"users": n}


def phase_content(a: argparse.Namespace) -> dict:
    import duckdb

    from cope.join.join import open_store
    from cope.join.links import nearest_products

    d = Path(a.dir)
    store = open_store(d / "db", "items")
    con = duckdb.connect()
    con.execute(f"CREATE TABLE truth AS SELECT item_id, product_key FROM "
                f"read_parquet('{d / 'joined' / 'product_links.parquet'}') WHERE domain <> 'product'")
    ids = [r[0] for r in con.execute(f"SELECT item_id FROM truth USING SAMPLE {a.content_sample} ROWS "
                                     "(reservoir, 7) ORDER BY item_id").fetchall()]
    t = time.perf_counter()
    links = nearest_products(store, ids, threshold=0.5)
    s = time.perf_counter() - t
    con.register("links", links)
    agree = con.execute("SELECT avg((l.product_key IS NOT DISTINCT FROM t.product_key)::INT) "
                        "FROM links l JOIN truth t USING (item_id)").fetchall()[0][0]
    non_product = store.count("domain != 'product'")
    return {"items": len(ids), "products": store.count("domain = 'product'"), "seconds": round(s, 2),
            "items_per_s": round(len(ids) / s), "agrees_with_link_table": round(agree or 0, 4),
            "extrapolated_all_non_product_s": round(s * non_product / len(ids))}


def phase_pandas(a: argparse.Namespace) -> dict:
    """The naive way: pandas frames, merge on ids, live events merged with every slice of their stream then
    filtered by offset, sort, groupby for the last N. Run on the first ``--pandas-events`` rows."""
    import pandas as pd
    import pyarrow.parquet as pq

    from cope.join.join import open_store

    d = Path(a.dir)
    t = time.perf_counter()
    pf = pq.ParquetFile(d / "events.parquet")
    ev = next(pf.iter_batches(batch_size=a.pandas_events)).to_pandas()
    items = open_store(d / "db", "items").read(["item_id", "domain", "source_id", "slice_start", "slice_end"]
                                               ).to_pandas()
    links = pd.read_parquet(d / "links.parquet")
    nl = ev[ev["domain"] != "live"].merge(items[items["domain"] != "live"], how="left",
                                          left_on=["domain", "id"], right_on=["domain", "source_id"])
    lv = ev[ev["domain"] == "live"].merge(items[items["domain"] == "live"], how="left",
                                          left_on=["domain", "id"], right_on=["domain", "source_id"])
    lo = lv["offset"].fillna(lv["start"])
    hi = lv["end"].fillna(lo)
    lv = lv[(lv["slice_start"] < hi.where(hi > lo, lo + 1e-9)) & (lv["slice_end"] > lo)]
    out = pd.concat([nl, lv], ignore_index=True)
    keys = links.rename(columns={"id": "source_id"})[["domain", "source_id", "product_id", "start"]]
    out = out.merge(keys[keys["domain"] != "live"].drop(columns="start"), how="left", on=["domain", "source_id"])
    out = out.sort_values(["user_id", "ts"])
    out.to_parquet(d / "pandas_events.parquet")
    m = out[out["item_id"].notna()]
    seq = m.groupby("user_id").tail(50).groupby("user_id").agg(item_ids=("item_id", list), domains=("domain", list),
                                                                  ts=("ts", list))
    seq.to_parquet(d / "pandas_sequences.parquet")
    s = time.perf_counter() - t
    return {"events": len(ev), "rows_out": len(out), "users": len(seq), "seconds": round(s, 1),
            "extrapolated_10M_s": round(s * a.events / len(ev), 1)}


def phase_downstream(a: argparse.Namespace) -> dict:
    import shutil

    from cope.join import join_behaviour, next_product_hit_rate
    from cope.join.synth import make_event_log, write_events, write_synthetic_store

    d = Path(a.dir) / "downstream"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cat = write_synthetic_store(d / "db", n_products=5000, videos_per_product=2, images_per_product=1,
                                n_lives=50, slices_per_live=40, dim=64, n_categories=100, spread=0.9, noise=0.4,
                                seed=3)
    log = make_event_log(cat, n_events=100_000, n_users=10_000, purchase=True, revisit_share=0.6,
                         mix={"video": 0.45, "live": 0.2, "image": 0.2, "product": 0.15}, seed=4)
    write_events(log.drop_columns(["true_item_id", "true_product_key"]), d / "events.parquet")
    r = join_behaviour(d / "events.parquet", d / "db", d / "joined", threshold=0.6)  # content links only
    out = {"content_link_share": round(r.report.links.content_linked / max(r.report.links.content_candidates, 1), 3)}
    for k in (1, 10, 50):
        h = next_product_hit_rate(d / "joined" / "events.parquet", d / "db", k=k)
        out[f"k={k}"] = {"cross_domain": round(h.cross_domain, 4), "product_only": round(h.product_only, 4),
                         "product_only_on_users_with_product_history": round(h.product_only_on_those, 4),
                         "popularity": round(h.popularity, 4), "users": h.users,
                         "users_with_product_history": h.product_only_users}
    return out


# -- driver -----------------------------------------------------------------------------------------------------
def run_phase(a: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO if a.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    t, c = time.perf_counter(), _cpu_s()
    result = globals()[f"phase_{a.phase}"](a)
    print("RESULT " + json.dumps({"phase": a.phase, "wall_s": round(time.perf_counter() - t, 2),
                                  "cpu_s": round(_cpu_s() - c, 2), "peak_rss_mib": round(_rss_mib()),
                                  "load_avg_1m": round(os.getloadavg()[0], 1), **result}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/bench_join")
    p.add_argument("--phases", default=",".join(PHASES))
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--products", type=int, default=150_000, help="items = products x 6 + lives x 100")
    p.add_argument("--lives", type=int, default=1000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--memory-limit", default="1.5GiB", help="cope join's process budget (its default)")
    p.add_argument("--old-memory-limit", default="2.7GiB",
                   help="the budget that gives DuckDB the former fixed 2 GB (--compare's 'join@2GB' contender)")
    p.add_argument("--hand-memory-limit", default="2GB", help="DuckDB memory limit of the hand-written baseline")
    p.add_argument("--compare", type=int, default=0, metavar="ROUNDS",
                   help="instead of --phases: run cope join (default budget), cope join with DuckDB at 2 GB and "
                        "the hand-written DuckDB query alternately for ROUNDS rounds; print min/median and ratios")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--content-sample", type=int, default=20_000)
    p.add_argument("--pandas-events", type=int, default=1_000_000)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    if a.phase:
        run_phase(a)
        return
    Path(a.dir).mkdir(parents=True, exist_ok=True)
    results = []
    passthrough = without_flag(sys.argv[1:], "--phases")  # every other flag goes to the phase processes
    if a.compare:
        compare(a, passthrough)
        return
    for phase in a.phases.split(","):
        res = run_subprocess(phase, passthrough)
        results.append(res)
        print(json.dumps(res), flush=True)
    (Path(a.dir) / "results.json").write_text(json.dumps(results, indent=2))


def without_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for x in argv:
        if skip or x.startswith(flag + "="):
            skip = False
            continue
        if x == flag:
            skip = True
            continue
        out.append(x)
    return out


def run_subprocess(phase: str, args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--phase", phase, *args], capture_output=True, text=True,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{phase}: failed (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        sys.exit(1)
    return json.loads(lines[-1][len("RESULT "):])


def compare(a: argparse.Namespace, passthrough: list[str]) -> None:
    """Issue 15 part 4: cope join at its default budget (goal <= 1.5 GiB peak RSS) against the same join with
    DuckDB at the former 2 GB and the hand-written query, alternated (A B C A B C ...)."""
    import statistics

    args = without_flag(passthrough, "--compare")
    contenders = {"join": ("join", args),
                  "join@2GB": ("join", [*args, "--memory-limit", a.old_memory_limit]),
                  "hand": ("hand", args)}
    runs: dict[str, list[dict]] = {k: [] for k in contenders}
    for r in range(a.compare):
        for name, (phase, extra) in contenders.items():
            res = run_subprocess(phase, extra)
            runs[name].append(res)
            print(json.dumps({"round": r, "contender": name, **res}), flush=True)
    counts = {name: rs[-1].get("counts") or {k: rs[-1][k] for k in COUNTS} for name, rs in runs.items()}
    summary = {}
    for name, rs in runs.items():
        w = [x["wall_s"] for x in rs]
        summary[name] = {"wall_min": min(w), "wall_median": statistics.median(w),
                         "cpu_median": statistics.median(x["cpu_s"] for x in rs),
                         "peak_rss_mib_max": max(x["peak_rss_mib"] for x in rs)}
    for name in ("join", "join@2GB"):
        for base in ("join@2GB", "hand"):
            if name != base:
                summary[f"{name} / {base}"] = {
                    "wall_min": round(summary[name]["wall_min"] / summary[base]["wall_min"], 3),
                    "wall_median": round(summary[name]["wall_median"] / summary[base]["wall_median"], 3)}
    summary["same_outputs"] = counts["join"] == counts["hand"] == counts["join@2GB"]
    summary["counts"] = counts
    print(json.dumps(summary, indent=2))
    (Path(a.dir) / "compare.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
