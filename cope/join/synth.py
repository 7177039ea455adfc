"""Synthetic stores and behaviour logs with known answers, for tests, benchmarks and the downstream check.

Products sit in categories (a centroid plus spread); each video, image and live slice is a noisy copy of its
product's vector, so content links have a right answer. Users favour a category, act on all four domains, and
(optionally) end with a purchase of a product they saw elsewhere. Everything is generated with numpy and pyarrow
in whole arrays, fast enough for 1M items and 10M events.

>>> cat = write_synthetic_store("/tmp/synth.lancedb", n_products=100)  # doctest: +SKIP
>>> log = make_event_log(cat, n_events=10_000, n_users=500)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cope.records import DOMAINS
from cope.store import ItemStore
from cope.vectors import l2_normalize, to_fixed_list

logger = logging.getLogger(__name__)

SYNTHETIC_MODEL_TAG = "synthetic/hand-made-vectors"
_ACTIONS = {"product": "click", "image": "view", "video": "play", "live": "watch"}


@dataclass
class SyntheticCatalog:
    """What was written, with the ground truth: per domain the ids and the index of their product."""

    product_ids: pa.Array
    product_category: np.ndarray
    image_ids: pa.Array
    image_product: np.ndarray
    video_ids: pa.Array
    video_product: np.ndarray
    live_ids: pa.Array  # one per slice (the stream's id)
    slice_start: np.ndarray
    slice_end: np.ndarray
    slice_product: np.ndarray
    slice_item_ids: pa.Array
    n_categories: int
    dim: int
    model_tag: str

    @property
    def n_items(self) -> int:
        return len(self.product_ids) + len(self.image_ids) + len(self.video_ids) + len(self.live_ids)

    def link_table(self, domains: tuple[str, ...] = ("video", "image", "live"), share: float = 1.0,
                   seed: int = 0) -> pa.Table:
        """The platform's link table (domain, id, product_id, start, end) for a ``share`` of the items.

        Live links are timed: one row per slice, saying which product was on between ``start`` and ``end``.
        """
        rng = np.random.default_rng(seed)
        parts = []
        spec = {"video": (self.video_ids, self.video_product, None, None),
                "image": (self.image_ids, self.image_product, None, None),
                "live": (self.live_ids, self.slice_product, self.slice_start, self.slice_end)}
        for d in domains:
            ids, prod, start, end = spec[d]
            keep = rng.random(len(ids)) < share
            n = int(keep.sum())
            parts.append(pa.table({
                "domain": pa.array([d] * n, pa.string()), "id": ids.filter(pa.array(keep)),
                "product_id": self.product_ids.take(pa.array(prod[keep])),
                "start": pa.array(start[keep] if start is not None else np.full(n, np.nan), pa.float64()),
                "end": pa.array(end[keep] if end is not None else np.full(n, np.nan), pa.float64())}))
        table = pa.concat_tables(parts)
        return table.set_column(3, "start", pc.if_else(pc.is_nan(table["start"]), None, table["start"])) \
                    .set_column(4, "end", pc.if_else(pc.is_nan(table["end"]), None, table["end"]))


def _ids(prefix: str, n: int, width: int = 7) -> pa.Array:
    return pa.array([f"{prefix}{i:0{width}d}" for i in range(n)], pa.string())


def write_synthetic_store(db: str | Path, *, n_products: int = 200, videos_per_product: int = 2,
                          images_per_product: int = 1, n_lives: int = 4, slices_per_live: int = 12,
                          slice_seconds: float = 30.0, dim: int = 32, n_categories: int = 10,
                          spread: float = 0.7, noise: float = 0.3, seed: int = 0, table: str = "items",
                          model_tag: str = SYNTHETIC_MODEL_TAG, batch_rows: int = 250_000) -> SyntheticCatalog:
    """Write a store of products, images, videos and live slices with hand-made vectors; return the truth.

    ``spread`` is how far products sit from their category centre, ``noise`` how far an image/video/slice sits
    from its product (both as the norm of a random offset). Rows go in with ``table.add`` in big Arrow batches.
    """
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((n_categories, dim), dtype=np.float32))
    category = rng.integers(0, n_categories, n_products)
    products = l2_normalize(centres[category] + spread * rng.standard_normal((n_products, dim), dtype=np.float32)
                     / np.sqrt(dim))
    image_product = np.repeat(np.arange(n_products), images_per_product)
    video_product = np.repeat(np.arange(n_products), videos_per_product)
    n_lives * slices_per_live
    live_category = np.arange(n_lives) % n_categories
    by_cat = _category_index(category, n_categories)
    slice_cat = np.repeat(live_category, slices_per_live)
    slice_product = _pick_in_category(rng, by_cat, slice_cat, n_products)
    slice_no = np.tile(np.arange(slices_per_live), n_lives)
    slice_start = slice_no * float(slice_seconds)
    slice_end = slice_start + float(slice_seconds)
    live_ids = pa.array(np.repeat(np.asarray(_ids("live", n_lives, 5).to_pylist(), dtype=object), slices_per_live),
                        pa.string())
    from cope.records import slice_item_id

    slice_item_ids = pa.array([slice_item_id(lv, s, e) for lv, s, e in
                               zip(live_ids.to_pylist(), slice_start.tolist(), slice_end.tolist())], pa.string())
    cat = SyntheticCatalog(
        product_ids=_ids("p", n_products), product_category=category,
        image_ids=_ids("img", len(image_product)), image_product=image_product,
        video_ids=_ids("vid", len(video_product)), video_product=video_product,
        live_ids=live_ids, slice_start=slice_start, slice_end=slice_end, slice_product=slice_product,
        slice_item_ids=slice_item_ids, n_categories=n_categories, dim=dim, model_tag=model_tag)

    store = ItemStore.open(db, table)
    tbl = store.ensure_table(model_tag, dim)  # synthetic vectors: no pipeline made them
    schema = tbl.schema
    blocks = [
        ("product", cat.product_ids, cat.product_ids, np.arange(n_products), None, None, 0.0),
        ("image", cat.image_ids, cat.image_ids, image_product, None, None, noise),
        ("video", cat.video_ids, cat.video_ids, video_product, None, None, noise),
        ("live", slice_item_ids, live_ids, slice_product, slice_start, slice_end, noise),
    ]
    for domain, item_src, source_ids, prod, s0, s1, sigma in blocks:
        for start in range(0, len(source_ids), batch_rows):
            stop = min(start + batch_rows, len(source_ids))
            p = prod[start:stop]
            vec = products[p]
            if sigma:
                vec = l2_normalize(vec + sigma * rng.standard_normal(vec.shape, dtype=np.float32) / np.sqrt(dim))
            item_ids = (item_src.slice(start, stop - start) if domain == "live" else
                        pc.binary_join_element_wise(domain, source_ids.slice(start, stop - start), ":"))
            keys = cat.product_ids.take(pa.array(p))
            tbl.add(_rows(schema, domain, item_ids, source_ids.slice(start, stop - start), vec, keys, model_tag,
                          None if s0 is None else s0[start:stop], None if s1 is None else s1[start:stop]))
    logger.info("wrote a synthetic store of %d items (dim %d) to %s", cat.n_items, dim, db)
    return cat


def _rows(schema: pa.Schema, domain: str, item_ids: pa.Array, source_ids: pa.Array, vec: np.ndarray,
          product_keys: pa.Array, model_tag: str, s0: np.ndarray | None, s1: np.ndarray | None) -> pa.Table:
    n, dim = vec.shape
    vectors = to_fixed_list(vec, dim)
    meta = pc.binary_join_element_wise('{"product_key": "', product_keys, '"}', "")
    record_keys = pc.binary_join_element_wise(domain, source_ids, ":")
    return pa.table({
        "item_id": item_ids, "record_key": record_keys, "domain": pa.array([domain] * n, pa.string()),
        "source_id": source_ids, "slice_start": pa.array(s0, pa.float64()) if s0 is not None else pa.nulls(n, pa.float64()),
        "slice_end": pa.array(s1, pa.float64()) if s1 is not None else pa.nulls(n, pa.float64()),
        "vector": vectors, "image_vector": vectors, "text_vector": vectors,
        "has_image": pa.array(np.ones(n, bool)), "has_text": pa.array(np.ones(n, bool)),
        "n_images": pa.array(np.ones(n, np.int32)), "text": pa.nulls(n, pa.string()),
        "media_uri": pa.nulls(n, pa.string()), "content_hash": item_ids, "record_hash": record_keys,
        "model_tag": pa.array([model_tag] * n, pa.string()), "origin": pa.array(["synthetic"] * n, pa.string()),
        "metadata": meta, "updated_at": pa.array(np.zeros(n, "int64"), pa.timestamp("us", tz="UTC")),
    }).cast(schema)


def write_items(db: str | Path, items: list[dict], *, dim: int, table: str = "items",
                model_tag: str = SYNTHETIC_MODEL_TAG) -> ItemStore:
    """Upsert hand-made items: dicts with domain, source_id, vector and, for live slices, slice_start/slice_end
    (item ids follow the store's convention). For tests that need exact similarities.

    >>> write_items("/tmp/db", [{"domain": "product", "source_id": "p1", "vector": [1, 0]}], dim=2)  # doctest: +SKIP
    """
    from cope.records import slice_item_id

    store = ItemStore.open(db, table)
    schema = store.ensure_table(model_tag, dim).schema
    rows = []
    for it in items:
        d, sid = it["domain"], it["source_id"]
        vec = l2_normalize(np.asarray(it["vector"], np.float32).reshape(1, dim))
        item_id = slice_item_id(sid, it["slice_start"], it["slice_end"]) if d == "live" else f"{d}:{sid}"
        rows.append(_rows(schema, d, pa.array([item_id]), pa.array([sid]), vec,
                          pa.array([it.get("product_key", "")]), model_tag,
                          np.array([it["slice_start"]]) if d == "live" else None,
                          np.array([it["slice_end"]]) if d == "live" else None))
    store.upsert(pa.concat_tables(rows))
    return store


def _category_index(category: np.ndarray, n_categories: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(category, kind="stable")
    counts = np.bincount(category, minlength=n_categories)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order, starts, counts


def _pick_in_category(rng: np.random.Generator, by_cat: tuple[np.ndarray, np.ndarray, np.ndarray],
                      cats: np.ndarray, n_fallback: int, skew: float = 1.0) -> np.ndarray:
    """One member of each requested category (a random one where a category is empty); skew > 1 favours the first."""
    order, starts, counts = by_cat
    c = counts[cats]
    local = np.floor(rng.random(len(cats)) ** skew * np.maximum(c, 1)).astype(np.int64)
    picked = order[np.minimum(starts[cats] + local, len(order) - 1)] if len(order) else np.zeros(len(cats), int)
    empty = c == 0
    if empty.any():
        picked[empty] = rng.integers(0, n_fallback, int(empty.sum()))
    return picked


def make_event_log(cat: SyntheticCatalog, *, n_events: int, n_users: int, seed: int = 0,
                   mix: dict[str, float] | None = None, favourite_share: float = 0.8, unknown_share: float = 0.0,
                   interval_share: float = 0.3, purchase: bool = False, revisit_share: float = 0.6,
                   start: str = "2026-01-01", days: int = 30) -> pa.Table:
    """A behaviour log over ``cat``: user_id, ts, domain, id, offset, start, end, action, weight, plus the truth
    (``true_item_id``, ``true_product_key``; live: the slice holding ``offset``/``start``).

    With ``purchase=True`` each user ends with a product event one hour after their last one: with probability
    ``revisit_share`` the product of one of their earlier events, else a product of their favourite category.
    ``unknown_share`` of events get ids missing from the store (truth null).
    """
    rng = np.random.default_rng(seed)
    mix = mix or {"video": 0.45, "live": 0.2, "image": 0.15, "product": 0.2}
    doms = DOMAINS
    probs = np.array([mix.get(d, 0.0) for d in doms])
    n = int(n_events)
    user = np.floor(n_users * rng.random(n) ** 1.5).astype(np.int64)  # some users far more active
    favourite = rng.integers(0, cat.n_categories, n_users)
    category = np.where(rng.random(n) < favourite_share, favourite[user], rng.integers(0, cat.n_categories, n))
    dom = rng.choice(4, size=n, p=probs / probs.sum())
    by_cat = _category_index(cat.product_category, cat.n_categories)
    product = _pick_in_category(rng, by_cat, category, len(cat.product_ids), skew=2.0)
    # local index within each domain's id array
    ipp = len(cat.image_ids) // max(len(cat.product_ids), 1)
    vpp = len(cat.video_ids) // max(len(cat.product_ids), 1)
    local = product.copy()
    is_img, is_vid, is_live = dom == 1, dom == 2, dom == 3
    local[is_img] = product[is_img] * ipp + rng.integers(0, max(ipp, 1), int(is_img.sum()))
    local[is_vid] = product[is_vid] * vpp + rng.integers(0, max(vpp, 1), int(is_vid.sum()))
    slice_cat = cat.product_category[cat.slice_product]
    slice_pick = _pick_in_category(rng, _category_index(slice_cat, cat.n_categories), category[is_live],
                                   len(cat.slice_product))
    local[is_live] = slice_pick
    sizes = np.array([len(cat.product_ids), len(cat.image_ids), len(cat.video_ids), len(cat.live_ids)])
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    g = offsets[dom] + local
    all_ids = pa.concat_arrays([cat.product_ids, cat.image_ids, cat.video_ids, cat.live_ids])
    all_items = pa.concat_arrays([pc.binary_join_element_wise("product", cat.product_ids, ":"),
                                  pc.binary_join_element_wise("image", cat.image_ids, ":"),
                                  pc.binary_join_element_wise("video", cat.video_ids, ":"), cat.slice_item_ids])
    all_products = np.concatenate([np.arange(len(cat.product_ids)), cat.image_product, cat.video_product,
                                   cat.slice_product])
    true_product = all_products[g]

    # live offsets: a point inside the slice, or an interval starting there
    offset = np.full(n, np.nan)
    istart = np.full(n, np.nan)
    iend = np.full(n, np.nan)
    if is_live.any():
        s0, s1 = cat.slice_start[slice_pick], cat.slice_end[slice_pick]
        t = s0 + rng.random(len(s0)) * (s1 - s0)
        interval = rng.random(len(t)) < interval_share
        o = np.where(interval, np.nan, t)
        offset[is_live], istart[is_live] = o, np.where(interval, t, np.nan)
        iend[is_live] = np.where(interval, t + rng.random(len(t)) * 2 * (s1 - s0), np.nan)

    t0 = int(np.datetime64(start, "s").astype(np.int64))
    ts = t0 + rng.integers(0, days * 86400, n)

    if purchase:
        last = np.full(n_users, -1, np.int64)
        np.maximum.at(last, user, ts)
        perm = rng.permutation(n)
        users_seen, first = np.unique(user[perm], return_index=True)
        seen_product = true_product[perm[first]]
        fav_product = _pick_in_category(rng, by_cat, favourite[users_seen], len(cat.product_ids), skew=2.0)
        bought = np.where(rng.random(len(users_seen)) < revisit_share, seen_product, fav_product)
        m = len(users_seen)
        user = np.concatenate([user, users_seen])
        ts = np.concatenate([ts, last[users_seen] + 3600])
        dom = np.concatenate([dom, np.zeros(m, dom.dtype)])
        g = np.concatenate([g, bought])
        true_product = np.concatenate([true_product, bought])
        offset, istart, iend = (np.concatenate([a, np.full(m, np.nan)]) for a in (offset, istart, iend))
        is_purchase = np.concatenate([np.zeros(n, bool), np.ones(m, bool)])
        n += m
    else:
        is_purchase = np.zeros(n, bool)

    ids = all_ids.take(pa.array(g))
    truth_item = all_items.take(pa.array(g))
    truth_key = cat.product_ids.take(pa.array(true_product))
    if unknown_share > 0:
        unknown = (rng.random(n) < unknown_share) & ~is_purchase
        k = rng.integers(0, 50, n)
        names = pc.binary_join_element_wise(pa.array(np.asarray(doms, dtype=object)[dom], pa.string()),
                                            pa.array(k.astype(str), pa.string()), "-unknown-")
        mask = pa.array(unknown)
        ids = pc.if_else(mask, names, ids)
        truth_item = pc.if_else(mask, pa.nulls(n, pa.string()), truth_item)
        truth_key = pc.if_else(pa.array(unknown & (dom != 0)), pa.nulls(n, pa.string()),
                               pc.if_else(mask, names, truth_key))  # a product id is its own key
    user_names = _ids("u", n_users)
    actions = np.asarray([_ACTIONS[d] for d in doms], dtype=object)[dom]
    actions[is_purchase] = "buy"

    def nullable(a: np.ndarray) -> pa.Array:
        return pa.array(a, pa.float64(), from_pandas=True)

    return pa.table({
        "user_id": user_names.take(pa.array(user)),
        "ts": pa.array(ts * 1000, pa.timestamp("ms", tz="UTC")),
        "domain": pa.array(np.asarray(doms, dtype=object)[dom], pa.string()),
        "id": ids, "offset": nullable(offset), "start": nullable(istart), "end": nullable(iend),
        "action": pa.array(actions, pa.string()),
        "weight": pa.array(np.where(is_purchase, 3.0, 1.0), pa.float64()),
        "true_item_id": truth_item, "true_product_key": truth_key,
    })


def write_events(table: pa.Table, path: str | Path) -> Path:
    """Write a log as Parquet, CSV or JSONL (by suffix); JSON/CSV timestamps are ISO 8601."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        pq.write_table(table, path, compression="zstd")
    elif suffix == ".csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif suffix in (".jsonl", ".ndjson"):
        with path.open("w") as f:
            for row in table.to_pylist():  # small logs only: tests and examples
                f.write(json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()
                                    if v is not None}) + "\n")
    else:
        raise ValueError(f"write events as .parquet, .csv or .jsonl, not {path.name}")
    return path
