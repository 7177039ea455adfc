"""``cope reproject --db DIR --heads CKPT --table NEW``: write a table's vectors through trained heads (no encoder).

``cope reproject --db DIR --pca 256 --float16 --table NEW``: a compact copy through a PCA fitted on the table and/or
in float16 / unified-vector-only storage (:mod:`cope.training.compact`, docs/compact.md)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproject", help="project stored vectors through trained heads or a fitted PCA into a new table",
        description="Apply heads from `cope train` to the stored image/text vectors of a table and write the "
        "results as a new table with its own model tag (<base tag>;heads=<fingerprint>). The image and text "
        "encoders are not run. Refuses heads trained on another base model or dimension. "
        "With --pca DIM instead: fit a PCA on a sample of the table's unified vectors and write every vector "
        "through it (<tag>;pca=<fingerprint>, searchable by text/image/video like the source); --float16 and "
        "--vector-only shrink the storage (alone: a copy of the same vectors). See docs/compact.md.",
    )
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--heads", default=None, help="checkpoint folder written by `cope train --out`")
    p.add_argument("--table", required=True, help="new table for the projected vectors")
    p.add_argument("--source-table", default="items", help="table with the base vectors (default items)")
    p.add_argument("--pairs", default=None, help="labels file whose 'domain' column overrides stored domains "
                   "(as used in training)")
    p.add_argument("--default-domain", default=None, help="head for items of a domain the heads were not trained on")
    p.add_argument("--batch-rows", type=int, default=4096)
    p.add_argument("--no-compact", action="store_true", help="skip merging fragments at the end")
    small = p.add_argument_group("compact tables (docs/compact.md)")
    small.add_argument("--pca", type=int, default=None, metavar="DIM",
                       help="fit a PCA keeping DIM directions on the source table's unified vectors")
    small.add_argument("--projection", default=None, metavar="FOLDER",
                       help="a fitted projection (<db>/_cope_projections/<fingerprint>) instead of --pca")
    small.add_argument("--float16", action="store_true", help="store every vector column in float16")
    small.add_argument("--vector-only", action="store_true",
                       help="keep only the unified vector (no image_vector/text_vector: no per-modality search, "
                       "`cope train` or heads on the new table)")
    small.add_argument("--sample", type=int, default=100_000, help="rows the PCA is fitted on (default 100000)")
    small.add_argument("--seed", type=int, default=0, help="seed of the PCA's row sample (default 0)")
    small.add_argument("--center", action="store_true", help="centre the PCA (default: uncentred, which keeps "
                       "cross-modal rankings; see docs/compact.md)")
    small.add_argument("--save-to", default=None, metavar="FOLDER",
                       help="also save the fitted PCA here (required for a remote --db)")
    p.set_defaults(func=run)


def run_compact(args: argparse.Namespace) -> int:
    from cope.errors import UsageError
    from cope.training.compact import compact_table

    if args.pairs or args.default_domain:
        raise UsageError("--pairs and --default-domain choose heads by domain; a PCA has none")
    if not (args.pca or args.projection or args.float16 or args.vector_only):
        raise UsageError("say what to write: --heads CKPT, --pca DIM, --projection FOLDER, --float16 or "
                         "--vector-only")
    summary = compact_table(
        args.db, args.table, source_table=args.source_table, pca=args.pca, projection=args.projection,
        float16=args.float16, vector_only=args.vector_only, sample=args.sample, seed=args.seed,
        center=args.center, save_to=args.save_to, batch_rows=args.batch_rows,
        progress=False if args.quiet else None, compact=not args.no_compact,
    )
    print(summary)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.heads is None:
        return run_compact(args)
    if args.pca or args.projection or args.float16 or args.vector_only:
        from cope.errors import UsageError

        raise UsageError("--heads writes the heads' space as it is: shrink the heads table in a second step "
                         "(`cope reproject --source-table HEADS_TABLE --float16 --table NEW`)")
    from cope.training.reprojection import domain_overrides_from, reproject

    summary = reproject(
        args.db, args.heads, args.table, source_table=args.source_table,
        domain_overrides=domain_overrides_from(args.pairs), default_domain=args.default_domain,
        batch_rows=args.batch_rows, progress=False if args.quiet else None, compact=not args.no_compact,
    )
    print(summary)
    return 0
