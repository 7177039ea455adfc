"""``cope train --db DIR [--pairs FILE] --out CKPT``: train COPE heads on stored vectors and report before vs after."""

from __future__ import annotations

import argparse
import logging

from cope.commands.options import add_field
from cope.training.config import TrainConfig

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train cross-domain heads on stored vectors (no encoder runs)",
        description="Train light per-domain heads on the stored image/text vectors of a table so that items of the "
        "same product meet across domains (symmetric InfoNCE over every pair of domains). Products are split into "
        "train/validation/test; the held-out test products are evaluated in every direction before and after.",
    )
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--table", default="items")
    p.add_argument("--pairs", default=None,
                   help="labels: CSV/TSV/Parquet/JSONL of item_id,product_key[,domain] or item_a,item_b pairs "
                   "(default: metadata.product_key of the stored rows)")
    p.add_argument("--out", required=True, help="checkpoint folder (heads.safetensors + config.json + eval.json)")
    p.add_argument("--report", default=None, help="evaluation JSON path (default: OUT/eval.json)")
    g = p.add_argument_group("model")
    for name in ("dim", "hidden", "dropout", "init", "center", "projection_lr_scale"):
        add_field(g, TrainConfig, name)
    g.add_argument("--per-domain-projection", action="store_true",
                   help="separate image/text projections per domain instead of shared ones + per-domain heads")
    g = p.add_argument_group("optimisation")
    for name in ("epochs", "batch_products", "lr", "weight_decay", "temperature", "label_smoothing",
                 "cosface_weight", "cosface_margin", "cosface_scale"):
        add_field(g, TrainConfig, name)
    g.add_argument("--fixed-temperature", action="store_true", help="do not learn the temperature")
    g = p.add_argument_group("split and stopping")
    for name in ("val_fraction", "test_fraction", "patience", "monitor", "seed", "threads", "device"):
        add_field(g, TrainConfig, name)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.evaluation import format_table
    from cope.training import fit, format_comparison, mean_metrics

    config = TrainConfig(
        dim=args.dim, shared_projection=not args.per_domain_projection, hidden=args.hidden, dropout=args.dropout,
        init=args.init, center=args.center, projection_lr_scale=args.projection_lr_scale,
        epochs=args.epochs, batch_products=args.batch_products, lr=args.lr, weight_decay=args.weight_decay,
        temperature=args.temperature, learn_temperature=not args.fixed_temperature,
        label_smoothing=args.label_smoothing, cosface_weight=args.cosface_weight,
        cosface_margin=args.cosface_margin, cosface_scale=args.cosface_scale, val_fraction=args.val_fraction,
        test_fraction=args.test_fraction, patience=args.patience, monitor=args.monitor, seed=args.seed,
        threads=args.threads, device=args.device, progress=False if args.quiet else None,
    )
    result = fit(args.db, table=args.table, pairs=args.pairs, config=config)
    folder = result.save(args.out, args.report)
    report = args.report or str(folder / "eval.json")
    print(f"heads {result.heads.fingerprint}: {result.base_model_tag} -> {config.dim}-d, "
          f"best epoch {result.best_epoch} of {len(result.history)}, {result.seconds:.1f} s; "
          f"products train/val/test {result.split.counts()}")
    if result.after:
        print("\nheld-out products, stored vectors -> trained heads:")
        print(format_comparison(result.before, result.after))
        if args.verbose:
            print("\nafter, with chance levels:")
            print(format_table(result.after))
        mb, ma = mean_metrics(result.before), mean_metrics(result.after)
        if ma["R@1"] <= mb["R@1"]:
            logger.warning("the heads do not beat the stored vectors on held-out products (mean R@1 %.3f -> %.3f)",
                           mb["R@1"], ma["R@1"])
    print(f"\ncheckpoint: {folder}\nreport: {report}")
    pairs = f" --pairs {args.pairs}" if args.pairs else ""
    print(f"apply: cope reproject --db {args.db} --table {args.table}_cope --source-table {args.table} "
          f"--heads {folder}{pairs}")
    return 0
