"""COPE training: light heads on frozen stored vectors, trained with cross-domain InfoNCE, and re-projection.

>>> from cope.training import fit, reproject  # doctest: +SKIP
>>> result = fit("./cope.lancedb", pairs=None, seed=0)  # doctest: +SKIP
>>> result.save("./heads")  # doctest: +SKIP
>>> reproject("./cope.lancedb", "./heads", "items_cope")  # doctest: +SKIP

``pairs=None`` takes the labels from ``metadata.product_key`` of the stored rows. Names load on first use
(training imports torch; the CLI reads :class:`TrainConfig` without it).
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it
_EXPORTS = {
    "TrainConfig": "cope.training.config",
    "CopeHeads": "cope.heads.model", "HeadsConfig": "cope.heads.model",
    "HeadsMismatchError": "cope.errors",
    "heads_model_tag": "cope.heads.checkpoint", "load_heads": "cope.heads.checkpoint",
    "read_heads_config": "cope.heads.checkpoint", "save_heads": "cope.heads.checkpoint",
    "HeadsProjector": "cope.heads.projector",
    "CosFaceLoss": "cope.training.losses", "multi_domain_info_nce": "cope.training.losses",
    "ItemVectors": "cope.training.pairs", "Labels": "cope.training.pairs", "ProductSplit": "cope.training.pairs",
    "labels_from_pairs": "cope.training.pairs", "load_item_vectors": "cope.training.pairs",
    "read_labels": "cope.training.pairs", "split_products": "cope.training.pairs",
    "ReprojectSummary": "cope.training.reprojection", "reproject": "cope.training.reprojection",
    "TrainResult": "cope.training.trainer", "evaluate": "cope.training.trainer", "fit": "cope.training.trainer",
    "format_comparison": "cope.training.trainer", "mean_metrics": "cope.training.trainer",
    "project": "cope.training.trainer", "train": "cope.training.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cope.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return __all__
