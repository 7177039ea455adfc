"""``cope demo``: generate a small catalog of all four domains and embed it with the default model."""

from __future__ import annotations

import argparse
from pathlib import Path

from cope.commands.embed import add_model_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate a demo catalog (all four domains) and embed it")
    p.add_argument("--out", default="cope-demo", help="folder for the catalog and its LanceDB (default ./cope-demo)")
    p.add_argument("--products", type=int, default=8)
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.demo import make_demo_catalog
    from cope.job import embed

    out = Path(args.out)
    manifest = make_demo_catalog(out / "catalog", n_products=args.products)
    db = out / "cope.lancedb"
    options = {"pretrained": args.pretrained} if args.pretrained else {}
    summary = embed(manifest, db, model=args.model, threads=args.threads, device=args.device,
                    progress=False if args.quiet else None, **options)
    print(summary)
    print(f"catalog: {manifest}\ntable:   {db} (table 'items')")
    return summary.exit_code
