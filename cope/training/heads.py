"""Light COPE heads on frozen per-modality vectors: image and text projections, a learned per-domain fusion of the
two parts, and a per-domain head into one shared L2-normalised space.

For an item of domain ``d`` with stored image vector ``x_i`` and text vector ``x_t`` (either may be absent)::

    z_i = normalize(P_i(x_i)),  z_t = normalize(P_t(x_t))          # modality projections, input_dim -> dim
    w   = softmax(gate[d]) over the parts present                    # learned fusion weights per domain
    out = normalize(H_d(w_i * z_i + w_t * z_t))                      # per-domain head, dim -> dim

With ``shared_projection=True`` (default) ``P_i``/``P_t`` are shared by all domains and ``H_d`` is a per-domain
linear map initialised at the identity; with ``False`` every domain has its own ``P_i``/``P_t`` and no ``H_d``.
All projections start as the same random orthogonal map, so untrained heads keep the base model's geometry
(up to the random projection) and training starts from the base model rather than from noise.

>>> import torch
>>> heads = CopeHeads(HeadsConfig(base_model_tag="m", input_dim=16, dim=8, domains=["product", "video"]))
>>> x = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
>>> on = torch.ones(3, dtype=torch.bool)
>>> heads(x, x, on, on, torch.tensor([0, 1, 1])).shape
torch.Size([3, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

HEADS_FORMAT = "cope-heads"
HEADS_VERSION = 1


class HeadsConfig(BaseModel):
    """What the heads are: the base model they were trained on, sizes and domains. Saved beside the weights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = HEADS_FORMAT
    version: int = HEADS_VERSION
    base_model_tag: str = Field(description="model tag of the table whose vectors the heads were trained on")
    input_dim: int = Field(ge=1, description="dimension of the stored image/text vectors")
    dim: int = Field(default=128, ge=2, description="output dimension of the shared space")
    domains: list[str] = Field(min_length=1, description="domains with a head, in index order")
    shared_projection: bool = True
    hidden: int = Field(default=0, ge=0, description="0: linear projections; >0: plus a residual MLP of this width")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    default_domain: str | None = Field(default=None, description="head used for domains without their own")

    @model_validator(mode="after")
    def _check(self) -> HeadsConfig:
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"duplicate domains: {self.domains}")
        if self.default_domain is not None and self.default_domain not in self.domains:
            raise ValueError(f"default_domain {self.default_domain!r} is not one of {self.domains}")
        return self

    def domain_index(self, domain: str) -> int:
        if domain in self.domains:
            return self.domains.index(domain)
        if self.default_domain is not None:
            return self.domains.index(self.default_domain)
        raise ValueError(
            f"the heads have no head for domain {domain!r} (they have {self.domains}); "
            "pass a default domain (e.g. --default-domain) or train with items of that domain"
        )


def _orthogonal(rows: int, cols: int, generator: torch.Generator | None) -> torch.Tensor:
    """A (rows, cols) matrix with orthonormal rows (or columns, whichever is fewer), scaled to keep unit norms."""
    a = torch.randn(max(rows, cols), min(rows, cols), generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    w = q if rows >= cols else q.T
    if rows < cols:  # a projection down: scale so a unit vector keeps (in expectation) a unit norm
        w = w * (cols / rows) ** 0.5
    return w.contiguous()


class _Projection(nn.Module):
    """Linear ``in -> out`` without bias, plus an optional residual MLP whose output layer starts at zero."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float, init: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(init)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mlp: nn.Module | None = None
        if hidden > 0:
            last = nn.Linear(hidden, out_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        y = self.linear(x)
        return y + self.mlp(x) if self.mlp is not None else y


class CopeHeads(nn.Module):
    """Per-domain heads and fusion: ``(image, text, has_image, has_text, domain index) -> (N, dim)`` unit vectors."""

    def __init__(self, config: HeadsConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)
        init = _orthogonal(config.dim, config.input_dim, g)
        n = len(config.domains)

        def proj() -> _Projection:
            return _Projection(config.input_dim, config.dim, config.hidden, config.dropout, init)

        if config.shared_projection:
            self.image_proj = nn.ModuleList([proj()])
            self.text_proj = nn.ModuleList([proj()])
            self.domain_head = nn.ModuleList([nn.Linear(config.dim, config.dim) for _ in range(n)])
            for head in self.domain_head:
                with torch.no_grad():
                    head.weight.copy_(torch.eye(config.dim))
                    head.bias.zero_()
        else:
            self.image_proj = nn.ModuleList([proj() for _ in range(n)])
            self.text_proj = nn.ModuleList([proj() for _ in range(n)])
            self.domain_head = nn.ModuleList()
        #: fusion logits per domain: [image, text]; softmax over the parts an item has
        self.fusion = nn.Parameter(torch.zeros(n, 2))

    @property
    def dim(self) -> int:
        return self.config.dim

    def domain_indices(self, domains: Sequence[str]) -> torch.Tensor:
        """Head index of each domain name (unknown ones go to ``default_domain`` or raise)."""
        cache: dict[str, int] = {}
        for d in dict.fromkeys(domains):
            cache[d] = self.config.domain_index(d)
        return torch.tensor([cache[d] for d in domains], dtype=torch.long)

    def fusion_weights(self) -> dict[str, tuple[float, float]]:
        """The learned (image, text) weights of each domain when both parts are present."""
        w = torch.softmax(self.fusion.detach(), dim=1).tolist()
        return {d: (round(a, 4), round(b, 4)) for d, (a, b) in zip(self.config.domains, w)}

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        has_image: torch.Tensor,
        has_text: torch.Tensor,
        domain: torch.Tensor,
    ) -> torch.Tensor:
        out = image.new_zeros(len(image), self.config.dim)
        shared = self.config.shared_projection
        if shared:
            zi_all = F.normalize(self.image_proj[0](image), dim=1)
            zt_all = F.normalize(self.text_proj[0](text), dim=1)
        for d in torch.unique(domain).tolist():
            rows = (domain == d).nonzero(as_tuple=True)[0]
            if shared:
                zi, zt = zi_all[rows], zt_all[rows]
            else:
                zi = F.normalize(self.image_proj[d](image[rows]), dim=1)
                zt = F.normalize(self.text_proj[d](text[rows]), dim=1)
            present = torch.stack([has_image[rows], has_text[rows]], dim=1)
            logits = self.fusion[d].unsqueeze(0).expand(len(rows), 2).masked_fill(~present, float("-inf"))
            w = torch.nan_to_num(torch.softmax(logits, dim=1), nan=0.0)  # an item with no part gets zeros
            fused = w[:, :1] * zi + w[:, 1:] * zt
            if shared:
                fused = self.domain_head[d](fused)
            out = out.index_copy(0, rows, F.normalize(fused, dim=1))
        return out
