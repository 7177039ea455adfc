"""``cope errors --db DIR``: list the items that failed, with their reasons."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("errors", help="list failed items and invalid manifest rows with reasons")
    p.add_argument("--db", required=True)
    p.add_argument("--table", default="items")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.store import ItemStore

    errors = ItemStore.open(args.db, args.table).errors().sort_by("origin").to_pylist()
    for e in errors:
        print(f"{e['origin']}\t{e['stage']}\t{e['record_key']}\t{e['reason']}")
    print(f"{len(errors)} failures")
    return 0
