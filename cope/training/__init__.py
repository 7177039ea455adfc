"""COPE training: light heads on frozen stored vectors, trained with cross-domain InfoNCE, and re-projection.

>>> from cope.training import fit, reproject  # doctest: +SKIP
>>> result = fit("./cope.lancedb", pairs=None, seed=0)  # doctest: +SKIP
>>> result.save("./heads")  # doctest: +SKIP
>>> reproject("./cope.lancedb", "./heads", "items_cope")  # doctest: +SKIP

``pairs=None`` takes the labels from ``metadata.product_key`` of the stored rows.

Importing this package imports torch.
"""

from __future__ import annotations

from cope.heads.checkpoint import (
    HeadsMismatchError,
    heads_model_tag,
    load_heads,
    read_heads_config,
    save_heads,
)
from cope.heads.model import CopeHeads, HeadsConfig
from cope.training.losses import CosFaceLoss, multi_domain_info_nce
from cope.training.pairs import (
    ItemVectors,
    Labels,
    ProductSplit,
    labels_from_pairs,
    load_item_vectors,
    read_labels,
    split_products,
)
from cope.training.reproject import HeadsProjector, ReprojectSummary, reproject
from cope.training.trainer import (
    TrainConfig,
    TrainResult,
    evaluate,
    fit,
    format_comparison,
    mean_metrics,
    project,
    train,
)

__all__ = [
    "CopeHeads",
    "CosFaceLoss",
    "HeadsConfig",
    "HeadsMismatchError",
    "HeadsProjector",
    "ItemVectors",
    "Labels",
    "ProductSplit",
    "ReprojectSummary",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "fit",
    "format_comparison",
    "heads_model_tag",
    "labels_from_pairs",
    "load_heads",
    "load_item_vectors",
    "mean_metrics",
    "multi_domain_info_nce",
    "project",
    "read_heads_config",
    "read_labels",
    "reproject",
    "save_heads",
    "split_products",
    "train",
]
