"""COPE-style training of light heads on frozen stored vectors, with the every-direction evaluation.

Products (not items) are split into train / validation / test. Each step samples products, then one item of each
of their domains, and minimises symmetric InfoNCE over every pair of domains in the batch (plus an optional CosFace
product-ID loss). Validation retrieval (mean over directed domain pairs) drives early stopping; the held-out test
products give the before (stored vectors) vs after (heads) comparison.

>>> result = fit("./cope.lancedb", epochs=50, seed=0)  # doctest: +SKIP
>>> print(format_comparison(result.before, result.after))  # doctest: +SKIP
>>> result.save("heads/")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cope.errors import UsageError
from cope.evaluation import RetrievalResult, evaluate_directions
from cope.heads.checkpoint import fingerprint, heads_model_tag, save_heads
from cope.heads.model import CopeHeads, HeadsConfig
from cope.records import DOMAINS
from cope.training.config import TrainConfig
from cope.training.losses import CosFaceLoss, multi_domain_info_nce
from cope.training.pairs import (
    ItemVectors,
    Labels,
    ProductSplit,
    load_item_vectors,
    read_labels,
    split_products,
)

logger = logging.getLogger(__name__)

_DOMAIN_ORDER = DOMAINS
Direction = tuple[str, str]


@dataclass
class EpochLog:
    epoch: int
    loss: float
    temperature: float
    seconds: float
    val: dict[str, float] = field(default_factory=dict)  # mean R@k and MRR over directions


def ordered_domains(domains: Any) -> list[str]:
    """Domains present, the four standard ones first in their usual order, then the others by name."""
    present = {str(d) for d in domains}
    return sorted(present, key=lambda d: (_DOMAIN_ORDER.index(d) if d in _DOMAIN_ORDER else len(_DOMAIN_ORDER), d))


def _tensors(data: ItemVectors, device: str) -> tuple[torch.Tensor, ...]:
    return (torch.from_numpy(data.image).to(device), torch.from_numpy(data.text).to(device),
            torch.from_numpy(data.has_image).to(device), torch.from_numpy(data.has_text).to(device))


@torch.no_grad()
def project(heads: CopeHeads, data: ItemVectors, batch_size: int = 8192) -> np.ndarray:
    """Vectors of ``data`` in the heads' space, (N, dim) float32 unit rows."""
    was_training = heads.training
    heads.eval()
    device = next(heads.parameters()).device
    domains = heads.domain_indices(list(data.domains))
    out = []
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        out.append(heads(torch.from_numpy(data.image[sl]).to(device), torch.from_numpy(data.text[sl]).to(device),
                         torch.from_numpy(data.has_image[sl]).to(device), torch.from_numpy(data.has_text[sl]).to(device),
                         domains[sl].to(device)).cpu().numpy())
    heads.train(was_training)
    return np.concatenate(out or [np.zeros((0, heads.dim), np.float32)]).astype(np.float32, copy=False)


def evaluate(vectors: np.ndarray, data: ItemVectors, ks: tuple[int, ...] = (1, 5, 10)) -> dict[Direction, RetrievalResult]:
    """Retrieval metrics for every directed pair of domains in ``data`` (same product key = relevant)."""
    return evaluate_directions(vectors, list(data.keys), [str(d) for d in data.domains], ids=data.item_ids, ks=ks)


def mean_metrics(results: Mapping[Direction, RetrievalResult]) -> dict[str, float]:
    """Unweighted mean over directions of R@k, MRR, median and mean rank."""
    if not results:
        return {}
    rs = list(results.values())
    out = {f"R@{k}": float(np.mean([r.recall[k] for r in rs])) for k in rs[0].ks}
    out["mrr"] = float(np.mean([r.mrr for r in rs]))
    out["median_rank"] = float(np.mean([r.median_rank for r in rs]))
    out["mean_rank"] = float(np.mean([r.mean_rank for r in rs]))
    return out


def format_comparison(before: Mapping[Direction, RetrievalResult], after: Mapping[Direction, RetrievalResult]) -> str:
    """One row per direction: R@k, median and mean rank before -> after, plus a mean row."""
    if not before and not after:
        return "(no held-out products to evaluate)"
    ks = sorted({k for r in [*before.values(), *after.values()] for k in r.ks})
    header = ["direction", "n_q", "n_gal", *[f"R@{k}" for k in ks], "med rank", "mean rank"]
    rows = [header]

    def cell(b: float | None, a: float | None, fmt: str) -> str:
        return f"{'-' if b is None else format(b, fmt)} -> {'-' if a is None else format(a, fmt)}"

    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key), after.get(key)
        ref = a or b
        assert ref is not None
        rows.append([f"{key[0]}->{key[1]}", str(ref.n_queries), str(ref.n_gallery),
                     *[cell(b.recall[k] if b else None, a.recall[k] if a else None, ".3f") for k in ks],
                     cell(b.median_rank if b else None, a.median_rank if a else None, "g"),
                     cell(b.mean_rank if b else None, a.mean_rank if a else None, ".1f")])
    mb, ma = mean_metrics(before), mean_metrics(after)
    rows.append(["mean", "", "", *[cell(mb.get(f"R@{k}"), ma.get(f"R@{k}"), ".3f") for k in ks],
                 cell(mb.get("median_rank"), ma.get("median_rank"), ".1f"),
                 cell(mb.get("mean_rank"), ma.get("mean_rank"), ".1f")])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class _Batches:
    """Per epoch: products in random order, cut into batches; per product, one random item of each domain."""

    def __init__(self, data: ItemVectors, domains: list[str], batch_products: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.batch_products = batch_products
        self.n_domains = len(domains)
        dom_idx = {d: i for i, d in enumerate(domains)}
        self.products = sorted(set(data.keys))
        prod_idx = {k: i for i, k in enumerate(self.products)}
        self.items: list[list[list[int]]] = [[[] for _ in domains] for _ in self.products]
        for row, (key, dom) in enumerate(zip(data.keys, data.domains)):
            self.items[prod_idx[key]][dom_idx[dom]].append(row)
        # products seen in two or more domains make positive pairs; the others only add negatives
        self.multi = np.array([sum(1 for x in per if x) >= 2 for per in self.items], dtype=bool)

    def __len__(self) -> int:
        return math.ceil(len(self.products) / self.batch_products)

    def epoch(self):  # -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]
        order = self.rng.permutation(len(self.products))
        for start in range(0, len(order), self.batch_products):
            chosen = order[start : start + self.batch_products]
            rows: list[int] = []
            grid = np.full((len(chosen), self.n_domains), -1, dtype=np.int64)
            for p, prod in enumerate(chosen):
                for d, candidates in enumerate(self.items[prod]):
                    if candidates:
                        grid[p, d] = len(rows)
                        rows.append(candidates[int(self.rng.integers(len(candidates)))])
            yield np.asarray(rows, dtype=np.int64), grid, chosen


@dataclass
class TrainResult:
    """Trained heads, the product split, per-epoch history and the before/after test evaluation."""

    heads: CopeHeads
    config: TrainConfig
    split: ProductSplit
    history: list[EpochLog]
    best_epoch: int
    before: dict[Direction, RetrievalResult]
    after: dict[Direction, RetrievalResult]
    seconds: float
    domain_counts: dict[str, int]
    labels_source: str = ""

    @property
    def base_model_tag(self) -> str:
        return self.heads.config.base_model_tag

    def report(self) -> dict[str, Any]:
        """A JSON-able summary: settings, split sizes, history, before/after per direction and their means."""
        fp = self.heads.fingerprint
        return {
            "base_model_tag": self.base_model_tag,
            "heads_fingerprint": fp,
            "heads_model_tag": heads_model_tag(self.base_model_tag, fp) if fp else None,
            "labels": self.labels_source,
            "config": self.config.model_dump(),
            "split_products": self.split.counts(),
            "domain_items": self.domain_counts,
            "train_seconds": round(self.seconds, 3),
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "fusion_weights": self.heads.fusion_weights(),
            "history": [asdict(h) for h in self.history],
            "before": {f"{s}->{d}": r.summary() for (s, d), r in self.before.items()},
            "after": {f"{s}->{d}": r.summary() for (s, d), r in self.after.items()},
            "mean_before": mean_metrics(self.before),
            "mean_after": mean_metrics(self.after),
        }

    def save(self, out: str | Path, report_path: str | Path | None = None) -> Path:
        """Save the checkpoint folder and the evaluation JSON (default ``<out>/eval.json``); return the folder."""
        training = {k: v for k, v in self.report().items() if k not in ("history", "before", "after")}
        folder = save_heads(self.heads, out, extra=training)
        path = Path(report_path) if report_path else folder / "eval.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.report(), indent=2, default=str) + "\n")
        return folder


def _cap(data: ItemVectors, max_products: int, seed: int) -> ItemVectors:
    keys = sorted(set(data.keys))
    if len(keys) <= max_products:
        return data
    keep = set(np.random.default_rng(seed).choice(keys, size=max_products, replace=False).tolist())
    return data.subset(np.array([k in keep for k in data.keys], dtype=bool))


def train(
    data: ItemVectors, config: TrainConfig | None = None, *, split: ProductSplit | None = None,
    labels_source: str = "", **options: Any,
) -> TrainResult:
    """Train heads on labelled item vectors. Options are :class:`TrainConfig` fields.

    >>> result = train(load_item_vectors(ItemStore.open("db")), epochs=100)  # doctest: +SKIP
    """
    config = TrainConfig.model_validate({**(config or TrainConfig()).model_dump(), **options})
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(data, config, split, labels_source)
    finally:
        torch.set_num_threads(threads)


def _train(data: ItemVectors, config: TrainConfig, split: ProductSplit | None, labels_source: str) -> TrainResult:
    start = time.perf_counter()
    if config.dim > data.dim:
        raise UsageError(
            f"--dim {config.dim} is larger than the table's {data.dim}-d vectors: heads project down (a larger space "
            f"adds nothing to learn from); use --dim {data.dim} or less"
        )
    domains = ordered_domains(data.domains)
    if len(domains) < 2:
        raise UsageError(f"training needs labelled items of at least two domains; the labelled items are all "
                         f"{domains}: label items of another domain with the same product keys, or pass --pairs "
                         "FILE with a domain column that splits them (e.g. main image vs extra views)")
    per_product: dict[str, set[str]] = {}
    for k, d in zip(data.keys, data.domains):
        per_product.setdefault(k, set()).add(d)
    multi = {k: len(v) >= 2 for k, v in per_product.items()}
    if sum(multi.values()) < 2:
        raise UsageError("fewer than two products have items in two or more domains: nothing to learn from. "
                         "Check the product keys (metadata.product_key or --pairs).")
    if split is None:
        split = split_products(per_product, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                               seed=config.seed, eligible=multi)
    which = split.of(data.keys)
    train_data = data.subset(which == "train")
    val_data = _cap(data.subset(which == "val"), config.max_eval_products, config.seed)
    test_data = _cap(data.subset(which == "test"), config.max_eval_products, config.seed + 1)
    logger.info("training on %d items of %d products (%s); validation %d products, test %d products",
                len(train_data), len(split.train), data.domain_counts(), len(split.val), len(split.test))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        heads_config = HeadsConfig(base_model_tag=data.model_tag, input_dim=data.dim, dim=config.dim, domains=domains,
                                   shared_projection=config.shared_projection, hidden=config.hidden,
                                   dropout=config.dropout)
        heads = CopeHeads(heads_config, seed=config.seed).to(config.device)
        history, best_epoch = _fit(heads, train_data, val_data, config)
    heads.fingerprint = fingerprint(heads.state_dict())
    after = evaluate(project(heads, test_data), test_data, config.ks) if len(test_data) else {}
    before = evaluate(test_data.base, test_data, config.ks) if len(test_data) else {}
    seconds = time.perf_counter() - start
    if before:
        logger.info("held-out mean R@1 %.3f -> %.3f over %d directions (%.1f s)",
                    mean_metrics(before)["R@1"], mean_metrics(after)["R@1"], len(after), seconds)
    return TrainResult(heads.cpu().eval(), config, split, history, best_epoch, before, after, seconds,
                       data.domain_counts(), labels_source)


def _fit(heads: CopeHeads, train_data: ItemVectors, val_data: ItemVectors,
         config: TrainConfig) -> tuple[list[EpochLog], int]:
    device = config.device
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed + 1)
    batches = _Batches(train_data, heads.config.domains, config.batch_products, rng)
    image, text, has_image, has_text = _tensors(train_data, device)
    dom = heads.domain_indices(list(train_data.domains)).to(device)
    heads.init_from_data(image, text, has_image, has_text, dom, center=config.center, pca=config.init == "pca",
                         seed=config.seed)

    log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)),
                                   requires_grad=config.learn_temperature)
    cosface = (CosFaceLoss(config.dim, len(batches.products), config.cosface_margin, config.cosface_scale, gen).to(device)
               if config.cosface_weight > 0 else None)
    is_proj = lambda n: n.startswith(("image_proj.", "text_proj."))
    proj = [p for n, p in heads.named_parameters() if is_proj(n)]
    decay = [p for n, p in heads.named_parameters() if n.endswith("delta") and not is_proj(n)]
    no_decay = [p for n, p in heads.named_parameters() if not n.endswith("delta") and not is_proj(n)]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay + ([log_scale] if config.learn_temperature else []), "weight_decay": 0.0}]
    if config.projection_lr_scale > 0:
        groups.append({"params": proj, "weight_decay": config.weight_decay, "lr": config.lr * config.projection_lr_scale})
    else:
        for p in proj:
            p.requires_grad_(False)
    if cosface is not None:
        groups.append({"params": list(cosface.parameters()), "weight_decay": 0.0})
    optim = torch.optim.AdamW(groups, lr=config.lr)

    show = config.progress if config.progress is not None else logger.isEnabledFor(logging.INFO)
    history: list[EpochLog] = []
    best_score, best_epoch, best_state, stale = -math.inf, 0, copy.deepcopy(heads.state_dict()), 0
    max_scale = math.log(100.0)
    with tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not show, dynamic_ncols=True) as bar:
        for epoch in bar:
            t0 = time.perf_counter()
            heads.train()
            losses = []
            for rows_np, grid_np, products in batches.epoch():
                rows = torch.from_numpy(rows_np).to(device)
                z = heads(image[rows], text[rows], has_image[rows], has_text[rows], dom[rows])
                temperature = torch.exp(-log_scale.clamp(max=max_scale))
                loss, n_pairs = multi_domain_info_nce(z, torch.from_numpy(grid_np).to(device), temperature,
                                                      config.label_smoothing)
                if cosface is not None:
                    labels = torch.from_numpy(np.repeat(products, (grid_np >= 0).sum(axis=1))).to(device)
                    order = torch.from_numpy(grid_np[grid_np >= 0]).to(device)  # row of z of each (product, domain)
                    loss = loss + config.cosface_weight * cosface(z[order], labels)
                    n_pairs += 1
                if n_pairs == 0:
                    continue
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                losses.append(float(loss.detach()))
            log = EpochLog(epoch, float(np.mean(losses)) if losses else float("nan"),
                           float(torch.exp(-log_scale.detach().clamp(max=max_scale))), 0.0)
            if len(val_data):
                log.val = mean_metrics(evaluate(project(heads, val_data), val_data, config.ks))
            log.seconds = round(time.perf_counter() - t0, 4)
            history.append(log)
            postfix = {"loss": f"{log.loss:.3f}", "T": f"{log.temperature:.3f}"}
            if log.val:
                postfix.update({f"val_{k}": f"{v:.3f}" for k, v in log.val.items() if k.startswith("R@")})
            bar.set_postfix(postfix, refresh=False)
            logger.debug("epoch %d: %s", epoch, postfix)
            if not len(val_data):
                best_epoch = epoch
                continue
            score = log.val["mrr" if config.monitor == "mrr" else "R@1"]
            if score > best_score + 1e-4:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(heads.state_dict())
            else:
                stale += 1
                if stale >= config.patience:
                    logger.info("early stop at epoch %d: no validation gain since epoch %d", epoch, best_epoch)
                    break
    if len(val_data):
        heads.load_state_dict(best_state)
    if history and history[best_epoch - 1].val:
        logger.info("best epoch %d: validation %s", best_epoch,
                    ", ".join(f"{k} {v:.3f}" for k, v in history[best_epoch - 1].val.items() if k.startswith("R@")))
    return history, best_epoch


def fit(
    db: str | Path, *, table: str = "items", pairs: str | Path | Labels | None = None,
    config: TrainConfig | None = None, **options: Any,
) -> TrainResult:
    """Load the labelled vectors of a table and :func:`train` heads on them.

    ``pairs``: a labels file (see :func:`cope.training.pairs.read_labels`), :class:`Labels`, or ``None`` for
    ``metadata.product_key``.

    >>> result = fit("./cope.lancedb", pairs="pairs.csv", epochs=100, seed=1)  # doctest: +SKIP
    >>> result.save("./heads")  # doctest: +SKIP
    """
    from cope.store import ItemStore

    store = ItemStore.open(db, table)
    _ = store.table  # a clear error when the table does not exist
    labels = read_labels(pairs) if isinstance(pairs, (str, Path)) else pairs
    data = load_item_vectors(store, labels)
    return train(data, config, labels_source=labels.source if labels is not None else "metadata.product_key",
                 **options)
