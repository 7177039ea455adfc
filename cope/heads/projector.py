"""Trained COPE heads as a projector of the embedding pipeline: (image, text) vectors of an item -> its vector in
the heads' shared space. The embed job, ``reproject`` and queries all project through this one class.

>>> projector = HeadsProjector.load("heads/", model_tag=store.model_tag, dim=store.dim)  # doctest: +SKIP
>>> rows = projector.project_rows(rows)   # dicts as written to the store; vectors and model_tag replaced  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from cope.heads.checkpoint import check_compatible, heads_model_tag, load_heads
from cope.heads.model import CopeHeads
from cope.vectors import to_fixed_list, to_numpy, vector_type


class HeadsProjector:
    """Project stored (image, text) vectors of items through trained heads.

    >>> projector = HeadsProjector.load("heads/", model_tag=store.model_tag, dim=store.dim)  # doctest: +SKIP
    >>> vec, img, txt = projector.project(image, text, has_image, has_text, domains)  # doctest: +SKIP
    """

    def __init__(self, heads: CopeHeads, *, domain_overrides: Mapping[str, str] | None = None,
                 default_domain: str | None = None, batch_size: int = 4096) -> None:
        if heads.fingerprint is None:
            raise ValueError("heads have no fingerprint: save them (save_heads) or load them (load_heads) first")
        if default_domain is not None and default_domain not in heads.config.domains:
            raise ValueError(f"--default-domain {default_domain!r} has no head; the heads have {heads.config.domains}")
        self.heads = heads.eval()
        #: the checkpoint folder the heads were loaded from (None: built in memory)
        self.path: Path | None = None
        self.domain_overrides = dict(domain_overrides or {})
        self.default_domain = default_domain
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, *, model_tag: str | None = None, dim: int | None = None,
             device: str = "cpu", **options: Any) -> HeadsProjector:
        """Load a checkpoint, refusing one trained on another base model tag or dimension."""
        projector = cls(load_heads(path, model_tag=model_tag, dim=dim, device=device), **options)
        projector.path = Path(path)
        return projector

    @property
    def dim(self) -> int:
        return self.heads.config.dim

    @property
    def fingerprint(self) -> str:
        assert self.heads.fingerprint is not None
        return self.heads.fingerprint

    @property
    def base_model_tag(self) -> str:
        return self.heads.config.base_model_tag

    @property
    def model_tag(self) -> str:
        """Model tag of the projected vectors."""
        return heads_model_tag(self.base_model_tag, self.fingerprint)

    def _domain_indices(self, domains: Sequence[str], item_ids: Sequence[str] | None) -> torch.Tensor:
        names = list(domains)
        if item_ids is not None and self.domain_overrides:
            names = [self.domain_overrides.get(i, d) for i, d in zip(item_ids, names)]
        if self.default_domain is not None:
            known = set(self.heads.config.domains)
            names = [d if d in known else self.default_domain for d in names]
        return self.heads.domain_indices(names)

    @torch.no_grad()
    def project(
        self, image: np.ndarray, text: np.ndarray, has_image: np.ndarray, has_text: np.ndarray,
        domains: Sequence[str], item_ids: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fused, image-only, text-only) vectors, each (N, dim) float32; absent parts give zero rows."""
        check_compatible(self.heads.config, None, int(image.shape[1]) if image.ndim == 2 else None, "the input")
        dom = self._domain_indices(domains, item_ids)
        device = next(self.heads.parameters()).device
        hi = np.asarray(has_image, dtype=bool)
        ht = np.asarray(has_text, dtype=bool)
        outs: list[list[np.ndarray]] = [[], [], []]
        none = np.zeros_like(hi)
        for start in range(0, len(image), self.batch_size):
            sl = slice(start, start + self.batch_size)
            args = [torch.from_numpy(np.array(a[sl], dtype=np.float32)).to(device) for a in (image, text)]
            d = dom[sl].to(device)
            for out, (mi, mt) in zip(outs, ((hi, ht), (hi, none), (none, ht))):
                out.append(self.heads(*args, torch.from_numpy(mi[sl]).to(device), torch.from_numpy(mt[sl]).to(device),
                                      d).cpu().numpy())
        empty = np.zeros((0, self.dim), np.float32)
        return tuple(np.concatenate(o) if o else empty for o in outs)  # type: ignore[return-value]

    def project_table(self, rows: pa.Table, schema: pa.Schema | None = None, model_tag: str | None = None) -> pa.Table:
        """Store rows of the base model -> the same rows in the heads' space (other columns unchanged)."""
        in_dim = rows.schema.field("image_vector").type.list_size
        check_compatible(self.heads.config, None, in_dim, "the rows")
        vec, img, txt = self.project(
            to_numpy(rows.column("image_vector"), in_dim), to_numpy(rows.column("text_vector"), in_dim),
            rows.column("has_image").to_numpy(zero_copy_only=False), rows.column("has_text").to_numpy(zero_copy_only=False),
            rows.column("domain").to_pylist(), rows.column("item_id").to_pylist(),
        )
        vtype = vector_type(self.dim)
        out = rows
        for name, values in (("vector", vec), ("image_vector", img), ("text_vector", txt)):
            out = out.set_column(out.schema.get_field_index(name), pa.field(name, vtype, nullable=False),
                                 to_fixed_list(values, self.dim))
        tag = model_tag or self.model_tag
        out = out.set_column(out.schema.get_field_index("model_tag"), pa.field("model_tag", pa.string(), nullable=False),
                             pa.array([tag] * out.num_rows, pa.string()))
        return out.cast(schema) if schema is not None else out

    def project_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Row dicts as the embed job builds them -> new dicts with projected vectors and the heads' model tag."""
        if not rows:
            return []
        image = np.stack([np.asarray(r["image_vector"], np.float32) for r in rows])
        text = np.stack([np.asarray(r["text_vector"], np.float32) for r in rows])
        vec, img, txt = self.project(image, text, [r["has_image"] for r in rows], [r["has_text"] for r in rows],
                                     [r["domain"] for r in rows], [r["item_id"] for r in rows])
        return [{**r, "vector": v, "image_vector": i, "text_vector": t, "model_tag": self.model_tag}
                for r, v, i, t in zip(rows, vec, img, txt)]
