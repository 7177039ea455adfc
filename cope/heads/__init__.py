"""Trained COPE heads: the model (:class:`CopeHeads`), checkpoints, the projector the embedding pipeline applies,
and where a table finds its heads. Training them is :mod:`cope.training`. Importing this package imports torch.
"""

from __future__ import annotations

from cope.errors import HeadsMismatchError
from cope.heads.checkpoint import check_compatible, heads_model_tag, load_heads, read_heads_config, save_heads
from cope.heads.model import CopeHeads, HeadsConfig
from cope.heads.projector import HeadsProjector
from cope.heads.store import heads_ref, install_heads, locate_heads

__all__ = [
    "CopeHeads", "HeadsConfig", "HeadsMismatchError", "HeadsProjector", "check_compatible", "heads_model_tag",
    "heads_ref", "install_heads", "load_heads", "locate_heads", "read_heads_config", "save_heads",
]
