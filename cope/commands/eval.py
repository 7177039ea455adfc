"""``cope eval``: retrieval R@1/5/10, median and mean rank in every direction between domains or modalities."""

from __future__ import annotations

import argparse

from cope.commands.embed import add_model_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="retrieval quality between domains/modalities of a labelled table",
                       description="Evaluate a stored table (or embed MANIFEST first) against a ground-truth key in "
                       "each row's metadata, in every direction between the groups present.")
    p.add_argument("manifests", nargs="*", help="labelled manifests to embed first (optional)")
    p.add_argument("--db", required=True)
    p.add_argument("--table", default="items")
    p.add_argument("--key", default="product_key", help="metadata field holding the ground truth (same key = match)")
    p.add_argument("--by", choices=["domain", "modality", "domain+modality"], default="domain")
    p.add_argument("--vector", choices=["vector", "image_vector", "text_vector"], default="vector",
                   help="vector column compared with --by domain")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    add_model_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.eval_table import evaluate_table, save_report

    if args.manifests:
        from cope.job import embed

        options = {"pretrained": args.pretrained} if args.pretrained else {}
        summary = embed(args.manifests, args.db, model=args.model, table=args.table, threads=args.threads,
                        device=args.device, progress=False if args.quiet else None, **options)
        print(summary)
    report = evaluate_table(args.db, args.table, key=args.key, by=args.by, vector=args.vector)
    print(f"table {report.table!r}, model {report.model_tag}, key {report.key!r}, {report.rows} rows "
          f"({report.rows_without_key} without the key)")
    print(report.table_text())
    if args.json_out:
        save_report(report, args.json_out)
        print(f"wrote {args.json_out}")
    return 0
