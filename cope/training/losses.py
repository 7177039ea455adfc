"""COPE losses: symmetric InfoNCE over every pair of domains in a batch, and a CosFace product-ID classifier.

A batch is a grid: ``index[p, d]`` is the row of ``z`` holding product ``p`` in domain ``d`` (or -1). For each
pair of domains (a, b), every product that has both is a query; the gallery is every item of the other domain in
the batch (products that lack the query's domain are still negatives).

>>> import torch
>>> z = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
>>> index = torch.tensor([[0, 1], [2, 3]])  # 2 products x 2 domains
>>> loss, n = multi_domain_info_nce(z, index, torch.tensor(0.05))
>>> n
1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def multi_domain_info_nce(
    z: torch.Tensor, index: torch.Tensor, temperature: torch.Tensor, label_smoothing: float = 0.0
) -> tuple[torch.Tensor, int]:
    """Mean over domain pairs of the symmetric InfoNCE loss; returns (loss, number of domain pairs used).

    ``z``: (M, dim) unit vectors; ``index``: (P, n_domains) long, row of ``z`` or -1; ``temperature``: scalar.
    Pairs are weighted by the number of products that have both domains; a pair with fewer than two such
    products is skipped (one positive and no negative teaches nothing).
    """
    n_domains = index.shape[1]
    total = z.new_zeros(())
    weight = 0
    pairs = 0
    for a in range(n_domains):
        for b in range(a + 1, n_domains):
            has_a, has_b = index[:, a] >= 0, index[:, b] >= 0
            both = has_a & has_b
            n = int(both.sum())
            if n < 2:
                continue
            # a -> b: queries are a-items of products with both; gallery is every b-item in the batch
            za, zb = z[index[has_a, a]], z[index[has_b, b]]
            qa = torch.cumsum(has_a.long(), 0)[both] - 1  # positions of the queries among the a-items
            tb = torch.cumsum(has_b.long(), 0)[both] - 1  # positions of their positives among the b-items
            logits = za @ zb.T / temperature
            loss_ab = F.cross_entropy(logits[qa], tb, label_smoothing=label_smoothing)
            loss_ba = F.cross_entropy(logits.T[tb], qa, label_smoothing=label_smoothing)
            total = total + n * (loss_ab + loss_ba) / 2
            weight += n
            pairs += 1
    if weight == 0:
        return total, 0
    return total / weight, pairs


class CosFaceLoss(nn.Module):
    """Product-ID classification with an additive cosine margin (CosFace): ``s * (cos - m)`` for the true class.

    >>> loss = CosFaceLoss(dim=8, n_classes=3)
    >>> loss(torch.nn.functional.normalize(torch.randn(2, 8), dim=1), torch.tensor([0, 2])).item() > 0
    True
    """

    def __init__(self, dim: int, n_classes: int, margin: float = 0.2, scale: float = 20.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim, generator=generator) / dim**0.5)
        self.margin = margin
        self.scale = scale

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).T
        cos = cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return F.cross_entropy(self.scale * cos, labels)
