"""``cope index --db DIR``: build the ANN and scalar indexes the table's size calls for, or fold new rows in."""

from __future__ import annotations

import argparse
import os

from cope.store.index import EXACT_BELOW, VECTOR_INDEX_TYPES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="build vector and scalar indexes (or --optimize: fold new rows into them)",
        description="Build the vector index the table's size calls for (exact search below --exact-below rows, IVF "
        "above it, cosine) and scalar indexes on domain, item_id, record_key and source_id. With --optimize, add "
        "rows written since the last build to the existing indexes without retraining, compact, and delete old "
        "versions.",
    )
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--table", default="items")
    p.add_argument("--type", dest="index_type", default="auto", choices=["auto", "none", *VECTOR_INDEX_TYPES],
                   help="vector index type (default auto: chosen from the row count)")
    p.add_argument("--column", dest="columns", action="append", choices=["vector", "image_vector", "text_vector"],
                   help="vector column(s) to index (default: vector; repeat for more)")
    p.add_argument("--exact-below", type=int, default=EXACT_BELOW,
                   help=f"no vector index below this many rows (default {EXACT_BELOW})")
    p.add_argument("--no-scalar", action="store_true", help="skip the scalar indexes")
    p.add_argument("--optimize", action="store_true", help="fold new rows into existing indexes instead of building")
    p.add_argument("--keep-minutes", type=float, default=10.0,
                   help="with --optimize: keep table versions younger than this (default 10)")
    p.add_argument("--nprobes", type=int, default=None,
                   help="store this many IVF partitions to probe per query (more: higher recall, slower)")
    p.add_argument("--refine-factor", type=int, default=None, help="store this exact re-ranking factor")
    p.add_argument("--ef", type=int, default=None, help="store this HNSW search width (IVF_HNSW_SQ)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import datetime as dt

    from cope.store import ItemStore
    from cope.store.index import (
        SearchParams,
        build_index,
        index_report,
        optimize,
        search_params,
        set_search_params,
    )

    # k-means on real catalogs leaves some partitions empty and Lance logs each at WARN: keep the output readable
    os.environ.setdefault("LANCEDB_LOG", "error")
    store = ItemStore.open(args.db, args.table)
    store.table  # noqa: B018  (raises "run cope embed first" for a missing table)
    if args.optimize:
        print(f"before:\n{index_report(store)}")
        report = optimize(store, cleanup_older_than=dt.timedelta(minutes=args.keep_minutes))
        print(f"after optimize ({report.seconds:.1f} s):\n{report}")
    else:
        report = build_index(store, columns=args.columns or ["vector"], index_type=args.index_type,
                             exact_below=args.exact_below, scalar=not args.no_scalar)
        print(f"indexed in {report.seconds:.1f} s:\n{report}")
    tuned = {k: v for k, v in (("nprobes", args.nprobes), ("refine_factor", args.refine_factor), ("ef", args.ef))
             if v is not None}
    for column in args.columns or ["vector"]:
        if tuned and report.vector_index(column) is not None:
            current = search_params(store, column) or SearchParams()
            set_search_params(store, current.model_copy(update=tuned), column)
            print(f"{column}: search settings now {search_params(store, column)}")
        elif tuned:
            print(f"{column}: no vector index (exact search); --nprobes/--refine-factor/--ef ignored")
    return 0
