"""Apply trained heads to stored vectors: a new table in the heads' space, without re-running any encoder.

The new table has its own model tag, ``<base tag>;heads=<fingerprint>``, and dimension (the heads' ``dim``), so it
never mixes with the base vectors. ``vector`` is the fused item vector; ``image_vector`` / ``text_vector`` are the
image-only / text-only projections through the same domain head (zeros where the part is absent).

>>> summary = reproject("./cope.lancedb", "heads/", "items_cope")  # doctest: +SKIP

The embed job can project rows before writing them with :class:`HeadsProjector`::

    projector = HeadsProjector.load("heads/", model_tag=encoder_tag, dim=encoder.dim)
    rows = projector.project_rows(rows)   # dicts as written to the store; model_tag and vectors replaced
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from cope.training.checkpoint import check_compatible, heads_model_tag, load_heads
from cope.training.heads import CopeHeads
from cope.training.pairs import fixed_size_to_numpy

logger = logging.getLogger(__name__)


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
        self.domain_overrides = dict(domain_overrides or {})
        self.default_domain = default_domain
        self.batch_size = batch_size

    @classmethod
    def load(cls, path: str | Path, *, model_tag: str | None = None, dim: int | None = None,
             device: str = "cpu", **options: Any) -> HeadsProjector:
        """Load a checkpoint, refusing one trained on another base model tag or dimension."""
        return cls(load_heads(path, model_tag=model_tag, dim=dim, device=device), **options)

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

    def spec(self, base_spec: Mapping[str, Any] | None = None, source: str | None = None) -> dict[str, Any]:
        """Model spec for the new table: the base encoder's spec plus where the heads come from."""
        return {**dict(base_spec or {}), "heads": {"fingerprint": self.fingerprint, "base_model_tag": self.base_model_tag,
                                                   "dim": self.dim, "domains": self.heads.config.domains,
                                                   "path": source}}

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
            fixed_size_to_numpy(rows.column("image_vector"), in_dim), fixed_size_to_numpy(rows.column("text_vector"), in_dim),
            rows.column("has_image").to_numpy(zero_copy_only=False), rows.column("has_text").to_numpy(zero_copy_only=False),
            rows.column("domain").to_pylist(), rows.column("item_id").to_pylist(),
        )
        vtype = pa.list_(pa.float32(), self.dim)
        out = rows
        for name, values in (("vector", vec), ("image_vector", img), ("text_vector", txt)):
            arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), self.dim)
            out = out.set_column(out.schema.get_field_index(name), pa.field(name, vtype, nullable=False), arr)
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


@dataclass
class ReprojectSummary:
    rows: int
    table: str
    model_tag: str
    dim: int
    seconds: float

    def __str__(self) -> str:
        return (f"wrote {self.rows} rows to table {self.table!r} (model {self.model_tag}, dim {self.dim}) "
                f"in {self.seconds:.1f} s")


def reproject(
    db: str | Path,
    heads: str | Path | HeadsProjector,
    table: str,
    *,
    source_table: str = "items",
    domain_overrides: Mapping[str, str] | None = None,
    default_domain: str | None = None,
    batch_rows: int = 4096,
    progress: bool | None = None,
    compact: bool = True,
) -> ReprojectSummary:
    """Write every row of ``source_table`` through the heads into ``table`` (same db), upserting by item id.

    Refuses heads made for another base model tag or dimension than the source table's, and a target table that
    holds vectors of another model. Re-running with the same heads rewrites the same rows (idempotent).
    """
    from store import ItemStore

    if table == source_table:
        raise ValueError(f"--table {table!r} is the source table: pick a new table name for the projected vectors")
    src = ItemStore.open(db, source_table)
    base_tag, base_dim = src.model_tag, src.dim
    _ = src.table
    if isinstance(heads, HeadsProjector):
        check_compatible(heads.heads.config, base_tag, base_dim, f"table {source_table!r}")
        projector = heads
        source = None
    else:
        projector = HeadsProjector.load(heads, model_tag=base_tag, dim=base_dim, domain_overrides=domain_overrides,
                                        default_domain=default_domain)
        source = str(heads)
    dst = ItemStore.open(db, table, model_tag=projector.model_tag, dim=projector.dim)
    dst.ensure_table(projector.model_tag, projector.dim, projector.spec(src.model_spec, source))
    show = progress if progress is not None else logger.isEnabledFor(logging.INFO)
    start = time.perf_counter()
    n = 0
    total = src.count()
    with tqdm(total=total, desc="reproject", unit="row", disable=not show, dynamic_ncols=True) as bar:
        for batch in src.table.search().limit(None).to_batches(batch_rows):
            rows = pa.Table.from_batches([batch])
            if "_distance" in rows.column_names:
                rows = rows.drop_columns(["_distance"])
            rows = rows.select(src.table.schema.names)
            dst.upsert(projector.project_table(rows, dst.table.schema))
            n += rows.num_rows
            bar.update(rows.num_rows)
    if compact and n:
        dst.compact()
    summary = ReprojectSummary(n, table, projector.model_tag, projector.dim, time.perf_counter() - start)
    logger.info("%s", summary)
    return summary


def domain_overrides_from(path: str | Path | None) -> dict[str, str]:
    """item id -> training domain from a labels file's ``domain`` column (empty without a file or column)."""
    if path is None:
        return {}
    from cope.training.pairs import read_labels

    return read_labels(path).domain


__all__ = ["HeadsProjector", "ReprojectSummary", "domain_overrides_from", "reproject"]
