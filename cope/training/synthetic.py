"""A synthetic cross-domain catalog written straight into a LanceDB item table (no encoder): for tests and demos.

Each product has a latent vector ``z``. An item of domain ``d`` stores ``image = normalize(A_d z + noise)`` and
``text = normalize(B_d z + noise)``, where every ``A_d``/``B_d`` mixes one map shared by all domains (weight
``shared``) with a domain-specific distortion: the base vectors of two domains of the same product are only weakly
alike, which is what trained heads must undo. ``metadata.product_key`` holds the product.

>>> store = make_synthetic_store("/tmp/synth.lancedb", n_products=50)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from cope.store import ItemStore
from cope.store.item_store import now_utc
from cope.vectors import l2_normalize

SYNTHETIC_TAG = "synthetic/latent-v1"


def make_synthetic_store(
    db: str | Path,
    *,
    table: str = "items",
    n_products: int = 200,
    domains: Sequence[str] = ("product", "video", "live"),
    items_per_domain: int = 1,
    dim: int = 64,
    latent_dim: int = 16,
    shared: float = 0.3,
    noise: float = 0.5,
    missing: float = 0.1,
    seed: int = 0,
    model_tag: str = SYNTHETIC_TAG,
) -> ItemStore:
    """Write a synthetic table and return its store. ``missing``: chance that a product lacks a non-first domain.

    Products in domain ``live`` and ``video`` get ``items_per_domain`` items each; ``image`` items have no text.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n_products, latent_dim))
    common_i, common_t = rng.standard_normal((2, dim, latent_dim))
    maps = {d: (shared * common_i + (1 - shared) * rng.standard_normal((dim, latent_dim)),
                shared * common_t + (1 - shared) * rng.standard_normal((dim, latent_dim))) for d in domains}
    rows = []
    at = now_utc()
    for p in range(n_products):
        key = f"p{p:04d}"
        for di, d in enumerate(domains):
            if di > 0 and rng.random() < missing:
                continue
            n_items = items_per_domain if d in ("video", "live") else 1
            for j in range(n_items):
                a, b = maps[d]
                img = l2_normalize(a @ z[p] + noise * rng.standard_normal(dim) * np.linalg.norm(a @ z[p]) / np.sqrt(dim))
                has_text = d != "image"
                txt = l2_normalize(b @ z[p] + noise * rng.standard_normal(dim) * np.linalg.norm(b @ z[p]) / np.sqrt(dim))
                txt = txt if has_text else np.zeros(dim, np.float32)
                vec = l2_normalize(0.5 * img + 0.5 * txt)
                item_id = {"product": f"product:{key}", "image": f"image:img-{key}",
                           "video": f"video:vid-{key}-{j}", "live": f"live:live-{key}:{10 * j}-{10 * j + 10}"}.get(
                    d, f"{d}:{key}-{j}")
                record_key = item_id.rsplit(":", 1)[0] if d == "live" else item_id
                rows.append({
                    "item_id": item_id, "record_key": record_key, "domain": d, "source_id": record_key.split(":", 1)[1],
                    "slice_start": float(10 * j) if d == "live" else None,
                    "slice_end": float(10 * j + 10) if d == "live" else None,
                    "vector": vec, "image_vector": img, "text_vector": txt, "has_image": True, "has_text": has_text,
                    "n_images": 1, "text": None, "media_uri": None, "content_hash": f"{item_id}#v1",
                    "record_hash": f"{record_key}#v1", "model_tag": model_tag, "origin": "synthetic",
                    "metadata": json.dumps({"product_key": key}), "updated_at": at,
                })
    store = ItemStore.open(db, table)
    store.ensure_table(model_tag, dim)  # synthetic vectors: no pipeline made them
    store.upsert(pa.Table.from_pylist(rows, schema=store.table.schema))
    return store
