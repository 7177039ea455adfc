"""``cope check --db DIR [--table T] [--repair]``: audit a table for item ids stored more than once (older versions
could leave them: duplicate ids in one manifest, or two runs writing one table at once) and, with ``--repair``,
keep the newest row of each. Also reports who holds the table's write lease and whether ``item_id`` is declared
the table's primary key (``--repair`` declares it).

Exit codes: 0 clean (or repaired), 1 duplicates found and not repaired, 2 usage errors (or the table is busy).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXIT_DUPLICATES = 1


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="find (and with --repair remove) item ids stored more than once")
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--table", default="items")
    p.add_argument("--repair", action="store_true",
                   help="keep the newest row of each duplicated id (takes the table's write lease)")
    p.add_argument("--wait", type=float, default=None,
                   help="with --repair: seconds to wait for a running writer (default COPE_LEASE_WAIT, 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def check_table(db: str, table: str = "items", *, repair: bool = False, wait: float | None = None) -> dict[str, Any]:
    """What ``cope check`` prints, as a dict (``repair``: remove the duplicates under the write lease first)."""
    from cope.store import ItemStore
    from cope.store.lease import TableLease

    store = ItemStore.open(db, table)
    tbl = store.table  # a clear error when the table does not exist
    report: dict[str, Any] = {"db": store.uri, "table": store.name}
    removed = removed_errors = 0
    if repair:
        store.acquire_lease(wait, purpose="cope check --repair")
        try:
            removed = store.repair_duplicates()
            removed_errors = store.repair_error_duplicates()
        finally:
            store.release_lease()
        store = ItemStore.open(db, table)
        tbl = store.table
        holder = None
    else:
        holder = TableLease.open(store.uri, store.name).holder()
    dups = store.duplicates()
    err_dups = store.error_duplicates()
    report.update({
        "rows": tbl.count_rows(),
        "duplicate_ids": len(dups),
        "extra_rows": sum(n - 1 for n in dups.values()),
        "examples": dict(sorted(dups.items())[:10]),
        "duplicate_error_keys": len(err_dups),
        "removed_rows": removed,
        "removed_error_rows": removed_errors,
        "primary_key": store.primary_key_declared,
        "writer": holder,
    })
    return report


def run(args: argparse.Namespace) -> int:
    r = check_table(args.db, args.table, repair=args.repair, wait=args.wait)
    if args.json:
        print(json.dumps(r, default=str, indent=2))
    else:
        print(f"table      {r['table']} in {r['db']}: {r['rows']} rows")
        if args.repair:
            print(f"repaired   removed {r['removed_rows']} duplicate rows (kept the newest of each id) and "
                  f"{r['removed_error_rows']} duplicate failure reports")
        if r["duplicate_ids"]:
            examples = ", ".join(f"{k} x{n}" for k, n in r["examples"].items())
            print(f"duplicates {r['duplicate_ids']} item ids stored more than once ({r['extra_rows']} extra rows): "
                  f"{examples}{', ...' if r['duplicate_ids'] > len(r['examples']) else ''}")
            print(f"           run `cope check --db {args.db} --table {args.table} --repair` to keep the newest "
                  "row of each")
        else:
            print("duplicates none: every item id is stored once")
        if r["duplicate_error_keys"]:
            print(f"errors     {r['duplicate_error_keys']} record keys reported more than once (--repair keeps the "
                  "latest)")
        print(f"key        item_id {'is' if r['primary_key'] else 'is not yet'} the table's primary key"
              + ("" if r["primary_key"] else " (the next `cope embed` or `cope check --repair` declares it)"))
        w = r["writer"]
        if w:
            print(f"writer     {w.get('purpose')} (pid {w.get('pid')} on {w.get('host')}) holds the write lease")
    return EXIT_DUPLICATES if (r["duplicate_ids"] or r["duplicate_error_keys"]) else 0
