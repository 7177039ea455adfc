"""COPE heads on the Magento "Luma" products: held-out retrieval before vs after training, and training time.

Three "domains" of the same product: ``text`` (title + description, a product page without images), ``main`` (the
main image) and ``extra_view`` (other views and colours). Everything goes through the real pipeline: a manifest is
written, ``cope.job.embed`` stores the vectors in LanceDB (resumable: a re-run skips encoding), a pairs file maps
items to products and training domains, and ``cope.training.train`` runs once per fold of a k-fold split BY PRODUCT
(every product is held out exactly once; no product is in train and test of the same fold). Ranks of the held-out
queries are pooled over folds.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/train_magento.py --threads 1

Prints the tables and writes benchmarks/results/train_magento.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.magento import write_inputs  # noqa: E402
from cope.evaluation import RetrievalResult
from cope.store import ItemStore
from cope.training import (
    ProductSplit,
    TrainConfig,
    format_comparison,
    load_item_vectors,
    mean_metrics,
    read_labels,
    train,
)

DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
RESULTS = REPO / "benchmarks" / "results"
logger = logging.getLogger("train_magento")


def folds(keys: list[str], k: int, val_fraction: float, seed: int) -> list[ProductSplit]:
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    parts = [order[i::k] for i in range(k)]
    out = []
    for i, test in enumerate(parts):
        rest = [x for j, p in enumerate(parts) if j != i for x in p]
        n_val = max(2, round(val_fraction * len(keys))) if val_fraction > 0 else 0
        val = rest[:n_val]
        out.append(ProductSplit(frozenset(rest[n_val:]), frozenset(val), frozenset(test)))
    return out


def pooled(results: list[dict[tuple[str, str], RetrievalResult]], ks: tuple[int, ...]) -> dict[tuple[str, str], RetrievalResult]:
    """Pool per-query ranks of several folds per direction (chance levels averaged, weighted by queries)."""
    out: dict[tuple[str, str], RetrievalResult] = {}
    for key in dict.fromkeys(k for r in results for k in r):
        rs = [r[key] for r in results if key in r]
        ranks = np.concatenate([np.asarray(r.ranks) for r in rs])
        w = np.asarray([r.n_queries for r in rs], dtype=float)
        out[key] = RetrievalResult(
            n_queries=len(ranks), n_gallery=round(float(np.mean([r.n_gallery for r in rs]))), ks=list(ks),
            recall={k: float((ranks <= k).mean()) for k in ks},
            chance_recall={k: float(np.average([r.chance_recall[k] for r in rs], weights=w)) for k in ks},
            median_rank=float(np.median(ranks)), mean_rank=float(ranks.mean()), mrr=float((1.0 / ranks).mean()),
            chance_mean_rank=float(np.average([r.chance_mean_rank for r in rs], weights=w)), ranks=ranks.tolist(),
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=RESULTS / "train_magento", help="manifest, pairs and LanceDB")
    ap.add_argument("--model", default="cope-default", help="encoder for the base vectors (default cope-default)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one k-fold split and training per seed")
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512], help="output sizes to measure")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for training (1 is fastest here)")
    ap.add_argument("--embed-threads", type=int, default=2)
    ap.add_argument("--config", default="{}", help="JSON of TrainConfig overrides, e.g. '{\"lr\": 1e-3}'")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_magento.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("cope.training").setLevel(logging.WARNING)
    if not (args.data / "products_magento" / "manifest.jsonl").exists():
        print(f"no Magento data at {args.data}/products_magento: nothing to measure", file=sys.stderr)
        return 0

    manifest, pairs = write_inputs(args.data, args.work)
    db = args.work / "magento.lancedb"
    from cope.job import embed
    from cope.store.item_store import StoreMismatchError

    t0 = time.perf_counter()
    try:
        summary = embed(manifest, db, model=args.model, threads=args.embed_threads, progress=False)
    except StoreMismatchError as e:  # the cache holds vectors of an older model version: start over
        logger.info("re-embedding: %s", e)
        shutil.rmtree(db)
        summary = embed(manifest, db, model=args.model, threads=args.embed_threads, progress=False)
    embed_seconds = time.perf_counter() - t0
    logger.info("embed: %s (%.1f s, model %s)", summary, embed_seconds, summary.model_tag)

    store = ItemStore.open(db)
    data = load_item_vectors(store, read_labels(pairs))
    keys = sorted(set(data.keys))
    print(f"\nbase model {store.model_tag} (dim {store.dim}); {len(data)} items of {len(keys)} products "
          f"{data.domain_counts()}; {args.folds}-fold split by product x seeds {args.seeds}, held-out ranks pooled")
    runs: dict[str, Any] = {}
    for dim in args.dims:
        config = TrainConfig(threads=args.threads, progress=False, **{"dim": dim, **json.loads(args.config)})
        results_before, results_after, fold_info = [], [], []
        for seed in args.seeds:
            for i, split in enumerate(folds(keys, args.folds, config.val_fraction, seed)):
                result = train(data, config.model_copy(update={"seed": seed}), split=split, labels_source=str(pairs))
                results_before.append(result.before)
                results_after.append(result.after)
                fold_info.append({"seed": seed, "fold": i, "split_products": split.counts(),
                                  "train_seconds": round(result.seconds, 2), "best_epoch": result.best_epoch,
                                  "epochs_run": len(result.history), "mean_before": mean_metrics(result.before),
                                  "mean_after": mean_metrics(result.after)})
                logger.info("dim %d seed %d fold %d: R@1 %.3f -> %.3f, %d epochs, %.1f s", dim, seed, i,
                            fold_info[-1]["mean_before"]["R@1"], fold_info[-1]["mean_after"]["R@1"],
                            len(result.history), result.seconds)
        before, after = pooled(results_before, config.ks), pooled(results_after, config.ks)
        mb, ma = mean_metrics(before), mean_metrics(after)
        lift = {k: (ma[k] / mb[k] - 1) if mb.get(k) else None for k in mb if k.startswith("R@")}
        secs = [f["train_seconds"] for f in fold_info]
        epochs = [f["epochs_run"] for f in fold_info]
        table = format_comparison(before, after)
        print(f"\n== heads dim {dim}: stored {store.dim}-d vectors -> trained heads, held-out products ==")
        print(table)
        t2m = ("text", "main")
        print(f"mean R@1 {mb['R@1']:.3f} -> {ma['R@1']:.3f} ({100 * lift['R@1']:+.0f}% relative); "
              f"text->main R@1 {before[t2m].recall[1]:.3f} -> {after[t2m].recall[1]:.3f}; "
              f"training {np.mean(secs):.1f} s per run (min {min(secs):.1f}, max {max(secs):.1f}; "
              f"{np.mean(epochs):.0f} epochs incl. patience; threads {args.threads})")
        runs[str(dim)] = {
            "config": config.model_dump(), "runs": fold_info, "train_seconds_mean": float(np.mean(secs)),
            "before": {f"{s}->{d}": r.summary() for (s, d), r in before.items()},
            "after": {f"{s}->{d}": r.summary() for (s, d), r in after.items()},
            "mean_before": mb, "mean_after": ma, "relative_lift": lift, "table": table,
        }
    print(f"\nembedding {embed_seconds:.1f} s ({'cached: nothing re-encoded' if summary.done == 0 else 'computed'}); "
          f"load average at the end {tuple(round(x, 1) for x in os.getloadavg())} on {os.cpu_count()} cores")
    payload = {
        "command": "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/train_magento.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "loadavg_end": os.getloadavg()},
        "base_model_tag": store.model_tag, "dim": store.dim, "items": len(data), "products": len(keys),
        "domain_items": data.domain_counts(), "folds": args.folds, "seeds": args.seeds,
        "embed_seconds": round(embed_seconds, 1), "embedded_now": summary.done, "results": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
