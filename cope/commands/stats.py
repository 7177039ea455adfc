"""``cope stats --db DIR``: rows per domain, model tag, dimension, index state and disk size of a table."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="rows per domain, model, dimension, index state, disk size")
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--table", default="items")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def table_stats(db: str, table: str = "items") -> dict[str, Any]:
    """The numbers ``cope stats`` prints, as a dict."""
    from collections import Counter

    from cope.pipeline import PipelineSpec
    from cope.store import ItemStore
    from cope.store.index import disk_size, index_report

    store = ItemStore.open(db, table)
    tbl = store.table
    spec = PipelineSpec.from_metadata(store.metadata)
    domains = Counter(store.read(["domain"]).column("domain").to_pylist())
    report = index_report(tbl)
    errors = store.errors().num_rows
    return {
        "db": store.uri,
        "table": store.name,
        "rows": report.num_rows,
        "rows_per_domain": dict(sorted(domains.items())),
        "model_tag": store.model_tag,
        "dim": store.dim,
        "pipeline": spec.model_dump(mode="json") if spec is not None else None,
        "version": tbl.version,
        "disk_bytes": disk_size(store.uri, store.name),
        "failed_records": errors,
        "indexes": [i.model_dump() for i in report.indexes],
        "exact_columns": report.exact_columns,
        "unindexed_rows": report.unindexed_rows,
    }


def _size(n: int | None) -> str:
    if n is None:
        return "n/a (remote)"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def run(args: argparse.Namespace) -> int:
    from cope.store import ItemStore
    from cope.store.index import index_report

    s = table_stats(args.db, args.table)
    if args.json:
        print(json.dumps(s, default=str, indent=2))
        return 0
    print(f"table      {s['table']} in {s['db']} (version {s['version']})")
    print(f"rows       {s['rows']}  " + ", ".join(f"{d}: {n}" for d, n in s["rows_per_domain"].items()))
    print(f"model      {s['model_tag']}")
    print(f"dim        {s['dim']}")
    print(f"disk       {_size(s['disk_bytes'])}")
    if s["failed_records"]:
        print(f"failed     {s['failed_records']} records (cope errors --db {args.db} --table {args.table})")
    print("indexes")
    print("\n".join(str(index_report(ItemStore.open(args.db, args.table))).splitlines()[1:])
          or "  none")
    return 0
