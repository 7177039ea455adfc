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

from cope.errors import UsageError

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
        raise UsageError(
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
    """``x -> (base + delta) x``, plus an optional residual MLP whose output layer starts at zero.

    ``base`` is the starting map (a buffer); ``delta`` starts at zero, so weight decay pulls towards the start.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float, init: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("base", init.clone())
        self.delta = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mlp: nn.Module | None = None
        if hidden > 0:
            last = nn.Linear(hidden, out_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        y = F.linear(x, self.base + self.delta)
        return y + self.mlp(x) if self.mlp is not None else y


class _DomainHead(nn.Module):
    """``x -> x + delta x + bias``: starts as the identity; weight decay pulls it back towards the identity."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(dim, dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.linear(x, self.delta, self.bias)


class CopeHeads(nn.Module):
    """Per-domain heads and fusion: ``(image, text, has_image, has_text, domain index) -> (N, dim)`` unit vectors."""

    def __init__(self, config: HeadsConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        #: hash of the weights, set when saved or loaded (see :mod:`cope.heads.checkpoint`)
        self.fingerprint: str | None = None
        g = torch.Generator().manual_seed(seed)
        init = _orthogonal(config.dim, config.input_dim, g)
        n = len(config.domains)

        def proj() -> _Projection:
            return _Projection(config.input_dim, config.dim, config.hidden, config.dropout, init)

        if config.shared_projection:
            self.image_proj = nn.ModuleList([proj()])
            self.text_proj = nn.ModuleList([proj()])
            self.domain_head = nn.ModuleList([_DomainHead(config.dim) for _ in range(n)])
        else:
            self.image_proj = nn.ModuleList([proj() for _ in range(n)])
            self.text_proj = nn.ModuleList([proj() for _ in range(n)])
            self.domain_head = nn.ModuleList()
        #: fusion logits per domain: [image, text]; softmax over the parts an item has
        self.fusion = nn.Parameter(torch.zeros(n, 2))
        #: per domain, the centre of its image and text vectors, subtracted before projecting (see init_from_data)
        self.offset = nn.Parameter(torch.zeros(n, 2, config.input_dim))

    @torch.no_grad()
    def init_from_data(
        self, image: torch.Tensor, text: torch.Tensor, has_image: torch.Tensor, has_text: torch.Tensor,
        domain: torch.Tensor, *, center: bool = True, pca: bool = True, seed: int = 0,
    ) -> None:
        """Start from the training data instead of a random projection.

        ``center``: each domain's image and text vectors are centred on their mean (removes the offset every
        item of a domain or modality shares, which dominates raw cosines). ``pca``: every projection starts as the
        top ``dim`` principal directions of the centred vectors of both modalities (completed with random
        orthogonal directions when there are fewer), which keeps far more of the base geometry than a random map.
        """
        parts = []
        for d in range(len(self.config.domains)):
            for m, (x, has) in enumerate(((image, has_image), (text, has_text))):
                rows = (domain == d) & has
                if bool(rows.any()):
                    if center:
                        self.offset[d, m] = x[rows].mean(dim=0)
                    parts.append(x[rows] - self.offset[d, m])
        if not pca or not parts:
            return
        xs = torch.cat(parts).double()
        _, sv, vt = torch.linalg.svd(xs, full_matrices=False)
        k = int((sv > sv[0] * 1e-6).sum()) if len(sv) else 0
        basis = vt[: min(k, self.config.dim)]
        missing = self.config.dim - len(basis)
        if missing > 0:  # complete with random directions orthogonal to the principal ones
            g = torch.Generator().manual_seed(seed)
            r = torch.randn(self.config.input_dim, missing, generator=g, dtype=torch.float64)
            r -= basis.T @ (basis @ r)
            q, _ = torch.linalg.qr(r)
            basis = torch.cat([basis, q.T[:missing]])
        weight = (basis * (self.config.input_dim / self.config.dim) ** 0.5).float()
        for module in [*self.image_proj, *self.text_proj]:
            module.base.copy_(weight)
            module.delta.zero_()

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
        offset = self.offset[domain]  # (N, 2, input_dim)
        image, text = image - offset[:, 0], text - offset[:, 1]
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
