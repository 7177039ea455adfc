"""``cope reproject --db DIR --heads CKPT --table NEW``: write a table's vectors through trained heads (no encoder)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproject", help="project stored vectors through trained heads into a new table",
        description="Apply heads from `cope train` to the stored image/text vectors of a table and write the "
        "results as a new table with its own model tag (<base tag>;heads=<fingerprint>). The image and text "
        "encoders are not run. Refuses heads trained on another base model or dimension.",
    )
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--heads", required=True, help="checkpoint folder written by `cope train --out`")
    p.add_argument("--table", required=True, help="new table for the projected vectors")
    p.add_argument("--source-table", default="items", help="table with the base vectors (default items)")
    p.add_argument("--pairs", default=None, help="labels file whose 'domain' column overrides stored domains "
                   "(as used in training)")
    p.add_argument("--default-domain", default=None, help="head for items of a domain the heads were not trained on")
    p.add_argument("--batch-rows", type=int, default=4096)
    p.add_argument("--no-compact", action="store_true", help="skip merging fragments at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.training.reprojection import domain_overrides_from, reproject

    summary = reproject(
        args.db, args.heads, args.table, source_table=args.source_table,
        domain_overrides=domain_overrides_from(args.pairs), default_domain=args.default_domain,
        batch_rows=args.batch_rows, progress=False if args.quiet else None, compact=not args.no_compact,
    )
    print(summary)
    return 0
