"""Compact tables: bytes per item, search latency and retrieval quality of PCA / float16 / unified-only tables and of
trained heads, as ratios against the full ``cope-default`` table measured in the same run (docs/compact.md).

Three parts:

1. **Magento** (real data, ``../shared/data/products_magento``): 189 title-only product pages and 482 photos are
   embedded with ``cope-default`` (1792-d) into ``--work``/magento.lancedb (resumable: a re-run encodes nothing);
   every option is written by ``cope.training.compact.compact_table`` (the code behind ``cope reproject --pca``).
   Quality: title -> main image R@1/R@10 and extra view -> main image R@1 over the whole catalog, from the stored
   vectors; a few title queries also go through ``cope.open(db, table=...).search`` and must give the same top 10.
   Then a 3-fold split by product compares, on held-out products only, the full vectors, the PCA tables, a PCA fitted
   on the other folds (items it never saw) and COPE heads (``cope train``, 128-d) trained on the other folds.
2. **Synthetic, ``--rows`` (100k)**: clustered vectors with a power-law spectrum (exponent and mean share measured on
   the Magento vectors) in the full cope schema (three 1792-d float32 columns); each item is a "product" (its
   image and text views fused), each query another view of a product. Every option as in part 1, then per option:
   bytes on disk (data, then + IVF_FLAT index), p50/p95 latency exact and through the index, R@1/R@10 of the
   query's product, and overlap@10 with the exact top 10 of the full vectors.
3. **Synthetic, ``--big-rows`` (1M)**: the compact options only (a full-size 1M table would take 21 GB and hours
   on 2 cores): the PCA is fitted on the first 100k generated rows, rows are projected as they are generated;
   full-vector quality at 1M is computed with numpy over the generated vectors.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_compact.py                     # all three parts
    .venv/bin/python benchmarks/bench_compact.py --skip-magento --rows 20000 --big-rows 0 --queries 100   # quick

Prints markdown tables and writes ``--out`` (JSON, gitignored).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LANCEDB_LOG", "error")  # k-means on clustered data logs every empty partition at WARN

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.magento import write_inputs  # noqa: E402
from cope.evaluation import retrieval_metrics
from cope.pipeline import EncoderSpec, PipelineSpec
from cope.projection import PcaProjection, fit_pca, load_projection, locate_projection
from cope.store import ItemStore
from cope.store.index import build_index, disk_size
from cope.store.schema import Storage
from cope.training.compact import compact_table
from cope.vectors import l2_normalize, to_numpy

log = logging.getLogger("bench_compact")
DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
RESULTS = REPO / "benchmarks" / "results"
DIM = 1792  # cope-default


@dataclass(frozen=True)
class Option:
    name: str
    pca: int | None = None
    float16: bool = False
    vector_only: bool = False
    center: bool = False

    @property
    def table(self) -> str:
        return "items" if self.name == "full" else "c_" + "".join(c if c.isalnum() else "_" for c in self.name)


FULL = Option("full")
OPTIONS = [FULL, Option("full f16", float16=True), Option("pca512", 512), Option("pca256", 256),
           Option("pca256 f16", 256, True), Option("pca128 f16", 128, True), Option("pca64 f16", 64, True),
           Option("pca384 f16 unified-only", 384, True, True), Option("pca320 f16 unified-only", 320, True, True),
           Option("pca256 f16 unified-only", 256, True, True), Option("pca128 f16 unified-only", 128, True, True),
           Option("pca256 f16 centred", 256, True, center=True)]
SYNTH_OPTIONS = [o for o in OPTIONS
                 if o.name not in ("pca512", "pca64 f16", "pca256 f16 centred", "pca384 f16 unified-only")]
BIG_OPTIONS = [o for o in OPTIONS
               if o.name in ("pca256 f16", "pca128 f16", "pca320 f16 unified-only", "pca256 f16 unified-only")]


def make_option(db: Path, opt: Option, sample: int = 100_000) -> dict[str, Any]:
    """Write the option's table from ``items`` (the real `cope reproject` path); bytes with old versions removed."""
    t0 = time.perf_counter()
    if opt is not FULL:
        if opt.table in _tables(db):
            ItemStore.open(db, opt.table).db.drop_table(opt.table)
        compact_table(db, opt.table, pca=opt.pca, float16=opt.float16, vector_only=opt.vector_only, sample=sample,
                      center=opt.center, progress=False)
    seconds = time.perf_counter() - t0
    store = ItemStore.open(db, opt.table)
    _cleanup(store)
    rows = store.count()
    storage = Storage.of(store.table.schema)
    return {"option": opt.name, "table": opt.table, "dim": store.dim, "rows": rows, "reproject_s": round(seconds, 1),
            "vector_bytes": storage.bytes_per_item(store.dim or 0),
            "disk_bytes": disk_size(str(db), opt.table) / max(1, rows)}


def _tables(db: Path) -> list[str]:
    import lancedb

    result = lancedb.connect(str(db)).list_tables()
    return list(getattr(result, "tables", result))


def _cleanup(store: ItemStore) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store.table.optimize(cleanup_older_than=dt.timedelta(0), delete_unverified=True)


def projection_of(db: Path, table: str) -> PcaProjection | None:
    spec = PipelineSpec.from_metadata(ItemStore.open(db, table).metadata)
    if spec is None or spec.projection is None:
        return None
    return load_projection(locate_projection(spec.projection, db), spec.projection.fingerprint)


def table_vectors(db: Path, table: str, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    store = ItemStore.open(db, table)
    t = store.read([*columns, "vector"])
    return t, to_numpy(t.column("vector"), store.dim or 0)


# -- 1. Magento --------------------------------------------------------------------------------------------------
def magento_roles(t: pa.Table) -> tuple[list[str], np.ndarray]:
    """Product key and role (title / main / extra_view) of each row."""
    keys, roles = [], []
    for domain, meta in zip(t.column("domain").to_pylist(), t.column("metadata").to_pylist()):
        m = json.loads(meta or "{}")
        keys.append(str(m.get("product_key")))
        roles.append("title" if domain == "product" else ("main" if m.get("role") == "main" else "extra_view"))
    return keys, np.asarray(roles)


def magento_quality(x: np.ndarray, keys: list[str], roles: np.ndarray, subset: set[str] | None = None
                    ) -> dict[str, Any]:
    """title -> main R@1/R@10, extra view -> main R@1 (ranks kept for pooling); ``subset``: these products only."""
    keep = np.ones(len(keys), bool) if subset is None else np.array([k in subset for k in keys])
    k = np.asarray(keys, dtype=object)

    def ranks(src: str) -> np.ndarray:
        q, g = keep & (roles == src), keep & (roles == "main")
        r = retrieval_metrics(x[q], list(k[q]), x[g], list(k[g]), ks=(1, 10))
        return np.asarray(r.ranks)

    return {"title_ranks": ranks("title"), "extra_ranks": ranks("extra_view")}


def summarize(q: dict[str, Any]) -> dict[str, float]:
    t, e = np.asarray(q["title_ranks"]), np.asarray(q["extra_ranks"])
    return {"title_R@1": float((t <= 1).mean()), "title_R@10": float((t <= 10).mean()),
            "extra_R@1": float((e <= 1).mean()), "extra_R@10": float((e <= 10).mean())}


def magento(data: Path, work: Path, threads: int, folds: int, heads_dim: int, heads_threads: int) -> dict[str, Any]:
    from cope.job import embed

    manifest, pairs = write_inputs(data, work, description=False, prefix="magento_")
    db = work / "magento.lancedb"
    t0 = time.perf_counter()
    summary = embed(manifest, db, threads=threads, progress=False)
    log.info("magento embed: %s (%.0f s)", summary, time.perf_counter() - t0)
    base_t, base_x = table_vectors(db, "items", ["item_id", "domain", "metadata"])
    keys, roles = magento_roles(base_t)
    rows: list[dict[str, Any]] = []
    tables: dict[str, tuple[np.ndarray, list[str], np.ndarray]] = {}
    for opt in OPTIONS:
        row = make_option(db, opt)
        t, x = table_vectors(db, opt.table, ["item_id", "domain", "metadata"])
        k, r = magento_roles(t)
        tables[opt.name] = (x, k, r)
        pca = projection_of(db, opt.table)
        row.update(summarize(magento_quality(x, k, r)), explained=pca.explained if pca else None)
        rows.append(row)
        log.info("magento %s: %s", opt.name, row)
    api = api_check(db, "c_pca256_f16", base_t, roles, threads)

    # held-out products: 3 folds; heads and a PCA fitted on the other folds never see the test products
    import torch

    from cope.training import ProductSplit, TrainConfig, load_item_vectors, project, read_labels, train

    torch.set_num_threads(heads_threads)
    products = sorted(set(keys))
    order = [products[i] for i in np.random.default_rng(0).permutation(len(products))]
    parts = [order[i::folds] for i in range(folds)]
    store = ItemStore.open(db)
    data_v = load_item_vectors(store, read_labels(pairs))
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(name: str, q: dict[str, Any]) -> None:
        slot = pooled.setdefault(name, {"title_ranks": [], "extra_ranks": []})
        for key in slot:
            slot[key].append(np.asarray(q[key]))

    base_keys = np.asarray(keys, dtype=object)
    heads_seconds = []
    for i, test in enumerate(parts):
        rest = [p for j, part in enumerate(parts) if j != i for p in part]
        n_val = max(2, round(0.1 * len(products)))
        split = ProductSplit(frozenset(rest[n_val:]), frozenset(rest[:n_val]), frozenset(test))
        test_set = set(test)
        for name in ("full", "pca256 f16", "pca128 f16", "pca64 f16"):
            x, k, r = tables[name]
            add(name, magento_quality(x, k, r, test_set))
        train_rows = np.array([kk not in test_set for kk in base_keys])
        for dim in (256, 128):
            other = fit_pca(base_x[train_rows], dim, "items")
            x16 = other.apply(base_x).astype(np.float16).astype(np.float32)
            add(f"pca{dim} f16 fitted on other folds", magento_quality(x16, keys, roles, test_set))
        config = TrainConfig(dim=heads_dim, seed=0, threads=heads_threads, progress=False)
        t1 = time.perf_counter()
        result = train(data_v, config, split=split, labels_source=str(pairs))
        heads_seconds.append(time.perf_counter() - t1)
        hx = project(result.heads, data_v)
        hroles = np.array([{"text": "title"}.get(str(d), str(d)) for d in data_v.domains])
        hkeys = [str(kk) for kk in data_v.keys]
        add(f"heads{heads_dim}", magento_quality(hx, hkeys, hroles, test_set))
        add(f"heads{heads_dim} f16", magento_quality(hx.astype(np.float16).astype(np.float32), hkeys, hroles,
                                                     test_set))
        log.info("fold %d: heads trained in %.1f s", i, heads_seconds[-1])
    held_out = {name: {**summarize({k: np.concatenate(v) for k, v in q.items()}),
                       "queries_title": int(sum(len(a) for a in q["title_ranks"]))} for name, q in pooled.items()}
    heads_bytes = {f"heads{heads_dim}": Storage().bytes_per_item(heads_dim),
                   f"heads{heads_dim} f16": Storage(vector_dtype="float16").bytes_per_item(heads_dim)}
    return {"rows": rows, "held_out": held_out, "heads_seconds": heads_seconds, "heads_vector_bytes": heads_bytes,
            "api_check": api, "items": len(keys), "embed": str(summary),
            "explained": {d: fit_pca(base_x, d, "s").explained for d in (64, 128, 256, 512)},
            "spectrum": spectrum_shape(base_x, keys, roles)}


def spectrum_shape(x: np.ndarray, keys: list[str], roles: np.ndarray) -> dict[str, float]:
    """How product identity and view noise spread over the principal directions of the photos: power-law exponents
    of the between-product and within-product variances (directions 2..300 of the PCA of all vectors), the
    within-product share of the variance, and the mean's share of the squared norm."""
    mu = x.mean(axis=0)
    basis = np.linalg.svd(x - mu, full_matrices=False)[2]
    photos = roles != "title"
    k = np.asarray(keys, dtype=object)[photos]
    xi = x[photos]
    within, means = [], []
    for key in sorted(set(k)):
        g = xi[k == key]
        if len(g) >= 2:
            m = g.mean(axis=0)
            within.append((g - m) * np.sqrt(len(g) / (len(g) - 1)))
            means.append(m)
    w = ((np.concatenate(within) @ basis.T) ** 2).mean(axis=0)
    b = (((np.asarray(means) - np.mean(means, axis=0)) @ basis.T) ** 2).mean(axis=0)
    i = np.log(np.arange(1, len(w) + 1))
    sel = slice(1, min(300, len(w) - 1))
    return {"alpha_between": -float(np.polyfit(i[sel], np.log(b[sel] + 1e-30), 1)[0]),
            "alpha_within": -float(np.polyfit(i[sel], np.log(w[sel] + 1e-30), 1)[0]),
            "within": float(w.sum() / (w.sum() + b.sum())),
            "mean_share": float(mu @ mu / (np.sum(x * x) / len(x)))}


def api_check(db: Path, table: str, base_t: pa.Table, roles: np.ndarray, threads: int, n: int = 5) -> dict[str, Any]:
    """A few titles searched through cope.open(...).search on the compact table (the query is embedded and
    projected by the table's own pipeline) give the top 10 of the stored vectors ranked by hand."""
    import cope

    t, x = table_vectors(db, table, ["item_id", "domain", "text"])
    ids = np.asarray(t.column("item_id").to_pylist(), dtype=object)
    images = np.asarray([d == "image" for d in t.column("domain").to_pylist()])
    by_id = {i: v for i, v in zip(ids, x)}
    titles = [(i, s) for i, s, d in zip(t.column("item_id").to_pylist(), t.column("text").to_pylist(),
                                        t.column("domain").to_pylist()) if d == "product"][:n]
    small = cope.open(db, table=table)
    same = 0
    for item_id, title in titles:
        got = small.search(title, k=10, domains=["image"]).ids
        q = by_id[item_id] / np.linalg.norm(by_id[item_id])
        scores = x[images] @ q / np.linalg.norm(x[images], axis=1)
        want = list(ids[images][np.argsort(-scores, kind="stable")[:10]])
        same += got == want
    return {"table": table, "queries": len(titles), "same_top10": same}


# -- 2./3. synthetic -----------------------------------------------------------------------------------------------
class Generator:
    """Items ("products") and queries (other views of a product) with power-law covariance spectra.

    A product is ``c = m + z * s_between``; a view is ``normalize(c + z' * s_within)``, with per-axis scales
    ``s_between ~ i^(-alpha_between/2)`` and ``s_within ~ i^(-alpha_within/2)`` holding ``1 - within`` and ``within``
    of the variance, and a common mean ``m`` holding ``mean_share`` of the squared norm: all four measured on the
    cope-default Magento vectors (:func:`spectrum_shape`: product identity sits in the leading directions, view
    noise is flatter). An item stores an image view, a text view and their fusion; a query is a third view. PCA,
    cosine and IVF are rotation-invariant, so the axes are only permuted, not rotated.
    """

    def __init__(self, shape: dict[str, float], dim: int = DIM, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        i = np.arange(1, dim + 1, dtype=np.float64)

        def scales(alpha: float, share: float) -> np.ndarray:
            s = i ** (-alpha / 2)
            return s / np.sqrt(np.sum(s**2)) * np.sqrt(share)

        perm = rng.permutation(dim)  # the strong axes spread over the vector, as after a rotation
        within = shape["within"]
        self.s_between = scales(shape["alpha_between"], 1 - within)[perm].astype(np.float32)
        self.s_within = scales(shape["alpha_within"], within)[perm].astype(np.float32)
        mean = rng.standard_normal(dim)
        share = shape["mean_share"]
        self.mean = (mean / np.linalg.norm(mean) * np.sqrt(share / (1 - share))).astype(np.float32)
        self.dim, self.seed = dim, seed

    def chunk(self, index: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(centres, image views, text views, fused vectors) of chunk ``index``; deterministic per chunk."""
        rng = np.random.default_rng([self.seed, index])
        c = self.mean + rng.standard_normal((n, self.dim), dtype=np.float32) * self.s_between
        img = l2_normalize(c + rng.standard_normal((n, self.dim), dtype=np.float32) * self.s_within)
        txt = l2_normalize(c + rng.standard_normal((n, self.dim), dtype=np.float32) * self.s_within)
        return c, img, txt, l2_normalize(img + txt)

    def queries(self, centres: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 10**6])
        return l2_normalize(centres + rng.standard_normal(centres.shape, dtype=np.float32) * self.s_within)


SYNTH_SPEC = PipelineSpec(encoder=EncoderSpec(name="synthetic"), encoder_tag="synthetic/power-law", encoder_dim=DIM)


def synth_rows(start: int, img: np.ndarray, txt: np.ndarray, vec: np.ndarray, tag: str) -> pa.Table:
    """Rows in the cope item schema with realistic non-vector columns (ids, a title, hashes, metadata)."""
    n = len(vec)
    ids = [f"s{start + i:08d}" for i in range(n)]
    hashes = [hashlib.sha256(i.encode()).hexdigest() for i in ids]
    now = dt.datetime.now(dt.timezone.utc)
    d = len(vec[0])
    return pa.table({
        "item_id": [f"product:{i}" for i in ids], "record_key": [f"product:{i}" for i in ids],
        "domain": ["product"] * n, "source_id": ids,
        "slice_start": pa.nulls(n, pa.float64()), "slice_end": pa.nulls(n, pa.float64()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), d),
        "image_vector": pa.FixedSizeListArray.from_arrays(pa.array(img.reshape(-1)), d),
        "text_vector": pa.FixedSizeListArray.from_arrays(pa.array(txt.reshape(-1)), d),
        "has_image": [True] * n, "has_text": [True] * n, "n_images": pa.array([1] * n, pa.int32()),
        "text": [f"Synthetic product {i} in colour {int(i[1:]) % 17}" for i in ids],
        "media_uri": [f"media/{i}.jpg" for i in ids], "content_hash": hashes, "record_hash": hashes,
        "model_tag": [tag] * n, "origin": [f"synthetic.jsonl:{start + k + 1}" for k in range(n)],
        "metadata": [json.dumps({"product_key": i}) for i in ids],
        "updated_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    })


def exact_top(s: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Top-k columns of a score matrix (indices, scores), best first."""
    top = np.argpartition(-s, k, axis=1)[:, :k]
    sc = np.take_along_axis(s, top, axis=1)
    order = np.argsort(-sc, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(sc, order, axis=1)


def recall(scores: np.ndarray) -> dict[str, float]:
    """R@1/R@10 when query i's product is row i of ``scores``' columns (ties count against it)."""
    n = len(scores)
    true = scores[np.arange(n), np.arange(n)]
    ranks = 1 + np.sum(scores > true[:, None], axis=1)
    return {"R@1": float((ranks <= 1).mean()), "R@10": float((ranks <= 10).mean())}


def sensitivity(shape: dict[str, float], rows: int, n_queries: int, withins: list[float], seed: int
                ) -> list[dict[str, Any]]:
    """Quality only (numpy, no tables): full, float16 and PCA vectors at several view-noise levels, to show how
    much of a product's identity the dropped directions hold when views are noisier."""
    out = []
    for within in withins:
        gen = Generator({**shape, "within": within}, seed=seed)
        parts, centres = [], None
        for ci, start in enumerate(range(0, rows, 50_000)):
            c, _, _, vec = gen.chunk(ci, min(50_000, rows - start))
            centres = c[:n_queries].copy() if ci == 0 else centres
            parts.append(vec)
        x = np.concatenate(parts)
        assert centres is not None
        q = gen.queries(centres)
        row: dict[str, Any] = {"within": within, "full": recall(q @ x.T),
                               "full f16": recall(q @ x.astype(np.float16).astype(np.float32).T)}
        top = fit_pca(x[:100_000], 512, "s")  # the leading directions of one fit serve every size
        for dim in (512, 256, 128, 64):
            pca = PcaProjection(top.mean, top.components[:dim], "s")
            px, pq = pca.apply(x), pca.apply(q)
            row[f"pca{dim} f16"] = recall(pq @ px.astype(np.float16).astype(np.float32).T)
        out.append(row)
        log.info("sensitivity %s", row)
    return out


def measure_search(db: Path, table: str, queries: np.ndarray, truth_ids: list[str], full_top: list[list[str]],
                   k: int = 10, warmup: int = 5) -> dict[str, Any]:
    """p50/p95 latency, R@1/R@10 of the query's product and overlap@10 with the full vectors' exact top 10, exact
    (no index) and through the index the table has (``db.search``, its stored search settings)."""
    from cope.api import open_db

    db_ = open_db(db, table=table)
    out: dict[str, Any] = {}
    for mode in ("exact", "index"):
        if mode == "index" and db_.search_params() is None:
            continue
        lat, r1, r10, overlap = [], [], [], []
        for i, q in enumerate(queries):
            t0 = time.perf_counter()
            if mode == "exact":
                r = (db_.table.search(q, vector_column_name="vector").distance_type("cosine").bypass_vector_index()
                     .select(["item_id", "_distance"]).limit(k).to_arrow())
                ids = r.column("item_id").to_pylist()
            else:
                ids = db_.search(q, k=k, columns=["item_id"]).ids
            if i >= warmup:
                lat.append((time.perf_counter() - t0) * 1000)
            r1.append(ids[:1] == [truth_ids[i]])
            r10.append(truth_ids[i] in ids)
            overlap.append(len(set(ids) & set(full_top[i])) / k)
        out[mode] = {"p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                     "R@1": float(np.mean(r1)), "R@10": float(np.mean(r10)), "overlap@10": float(np.mean(overlap))}
    return out


def index_and_measure(db: Path, table: str, queries_full: np.ndarray, truth: list[str], full_top: list[list[str]]
                      ) -> dict[str, Any]:
    store = ItemStore.open(db, table)
    pca = projection_of(db, table)
    q = pca.apply(queries_full) if pca is not None else queries_full
    res: dict[str, Any] = {"exact": measure_search(db, table, q, truth, full_top)["exact"]}
    before = disk_size(str(db), table) or 0
    t0 = time.perf_counter()
    report = build_index(store, columns=("vector",), index_type="IVF_FLAT", scalar=False)
    res["index_build_s"] = round(time.perf_counter() - t0, 1)
    _cleanup(store)
    res["index_bytes"] = ((disk_size(str(db), table) or 0) - before) / max(1, store.count())
    res["index_type"] = report.vector_index().index_type if report.vector_index() else None
    res["index"] = measure_search(db, table, q, truth, full_top).get("index")
    return res


def synthetic(work: Path, rows: int, n_queries: int, shape: dict[str, float], seed: int) -> dict[str, Any]:
    gen = Generator(shape, seed=seed)
    db = work / f"synthetic_{rows}.lancedb"
    if db.exists():
        shutil.rmtree(db)
    store = ItemStore.open(db, "items")
    tag = SYNTH_SPEC.tag
    store.ensure_table(tag, DIM, SYNTH_SPEC.to_metadata())
    chunk = 50_000
    fused_all = np.zeros((rows, DIM), np.float32)
    t0 = time.perf_counter()
    centres_q = None
    for ci, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        c, img, txt, vec = gen.chunk(ci, n)
        if ci == 0:
            centres_q = c[:n_queries].copy()  # products are i.i.d.: the first ones are a random sample
        fused_all[start : start + n] = vec
        store.table.add(synth_rows(start, img, txt, vec, tag))
    _cleanup(store)
    log.info("synthetic %d rows written in %.0f s", rows, time.perf_counter() - t0)
    assert centres_q is not None
    queries = gen.queries(centres_q)
    truth = [f"product:s{i:08d}" for i in range(n_queries)]
    scores = queries @ fused_all.T  # query i is a view of product i (row i)
    top, _ = exact_top(scores)
    full_top = [[f"product:s{j:08d}" for j in row] for row in top]
    numpy_full = recall(scores)
    del fused_all, scores
    results = []
    for opt in SYNTH_OPTIONS:
        row = make_option(db, opt, sample=100_000)
        row.update(index_and_measure(db, opt.table, queries, truth, full_top))
        pca = projection_of(db, opt.table)
        row["explained"] = pca.explained if pca else None
        results.append(row)
        log.info("synthetic %s: %s", opt.name, row)
    return {"rows": rows, "queries": n_queries, "shape": shape, "numpy_full": numpy_full, "options": results}


def synthetic_big(work: Path, rows: int, n_queries: int, shape: dict[str, float], seed: int,
                  fit_rows: int = 100_000, options: list[Option] | None = None) -> dict[str, Any]:
    """Compact options at ``rows`` rows without a full-size table: PCA fitted on the first ``fit_rows`` rows."""
    gen = Generator(shape, seed=seed)
    db = work / f"synthetic_{rows}.lancedb"
    if db.exists():
        shutil.rmtree(db)
    chunk = 50_000
    stores: dict[str, tuple[ItemStore, PcaProjection, pa.Schema, str]] = {}
    queries = truth = None
    best_idx = best_sc = true_sc = None
    ranks = np.ones(n_queries, np.int64)  # of each query's product among all rows, by the full vectors
    t0 = time.perf_counter()
    for ci, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        c, img, txt, vec = gen.chunk(ci, n)
        if ci == 0:
            queries = gen.queries(c[:n_queries])
            truth = [f"product:s{i:08d}" for i in range(n_queries)]
            fit = [vec]
            for cj in range(1, -(-min(fit_rows, rows) // chunk)):
                fit.append(gen.chunk(cj, min(chunk, rows - cj * chunk))[3])
            sample = np.concatenate(fit)[:fit_rows]
            for opt in options or BIG_OPTIONS:
                assert opt.pca is not None
                pca = fit_pca(sample, opt.pca, SYNTH_SPEC.tag, sample=fit_rows)
                folder = pca.save(db / "_cope_projections" / pca.fingerprint)
                pca.path = folder
                spec = SYNTH_SPEC.with_projection(pca.ref())
                storage = Storage(vector_dtype="float16", modalities=not opt.vector_only)
                store = ItemStore.open(db, opt.table)
                store.ensure_table(spec.tag, spec.dim, {**spec.to_metadata(), **storage.to_metadata()})
                stores[opt.name] = (store, pca, store.table.schema, spec.tag)
            del sample, fit
        assert queries is not None
        scores = queries @ vec.T
        if ci == 0:  # query i is a view of product i (row i); its own score as this matmul rounds it
            true_sc = scores[np.arange(n_queries), np.arange(n_queries)].copy()
        ranks += np.sum(scores > true_sc[:, None], axis=1)
        top, sc = exact_top(scores)
        top = top + start
        if best_idx is None:
            best_idx, best_sc = top, sc
        else:
            idx = np.concatenate([best_idx, top], axis=1)
            scs = np.concatenate([best_sc, sc], axis=1)
            order = np.argsort(-scs, axis=1)[:, :10]
            best_idx, best_sc = np.take_along_axis(idx, order, axis=1), np.take_along_axis(scs, order, axis=1)
        base = synth_rows(start, img, txt, vec, SYNTH_SPEC.tag)
        for store, pca, schema, tag in stores.values():
            store.table.add(pca.project_table(base, schema, model_tag=tag))
        if (ci + 1) % 4 == 0:
            log.info("synthetic big: %d rows in %.0f s", start + n, time.perf_counter() - t0)
    assert queries is not None and truth is not None and best_idx is not None and true_sc is not None
    numpy_full = {"R@1": float((ranks <= 1).mean()), "R@10": float((ranks <= 10).mean())}
    full_top = [[f"product:s{j:08d}" for j in row] for row in best_idx]
    results = []
    for opt in options or BIG_OPTIONS:
        store, pca, _, _ = stores[opt.name]
        _cleanup(store)
        storage = Storage.of(store.table.schema)
        row = {"option": opt.name, "table": opt.table, "dim": store.dim, "rows": store.count(),
               "vector_bytes": storage.bytes_per_item(store.dim or 0),
               "disk_bytes": (disk_size(str(db), opt.table) or 0) / max(1, store.count()), "explained": pca.explained}
        row.update(index_and_measure(db, opt.table, queries, truth, full_top))
        results.append(row)
        log.info("synthetic big %s: %s", opt.name, row)
    return {"rows": rows, "queries": n_queries, "shape": shape, "fit_rows": fit_rows, "numpy_full": numpy_full,
            "write_s": round(time.perf_counter() - t0), "options": results}


# -- report ------------------------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def magento_table(m: dict[str, Any]) -> str:
    full = m["rows"][0]
    lines = ["| option | dim | vector B/item | disk B/item | x full | variance kept | title->main R@1 | R@10 | "
             "extra->main R@1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
        lines.append(
            f"| {r['option']} | {r['dim']} | {r['vector_bytes']} | {r['disk_bytes']:.0f} | "
            f"{r['disk_bytes'] / full['disk_bytes']:.3f} | {_f(r['explained'])} | {r['title_R@1']:.3f} | "
            f"{r['title_R@10']:.3f} ({100 * (r['title_R@10'] - full['title_R@10']):+.1f}) | {r['extra_R@1']:.3f} |")
    return "\n".join(lines)


def held_out_table(m: dict[str, Any]) -> str:
    lines = ["| option (held-out products, 3 folds pooled) | vector B/item | title->main R@1 | R@10 | extra->main R@1 |",
             "|---|---|---|---|---|"]
    full = m["held_out"]["full"]
    vb = {r["option"]: r["vector_bytes"] for r in m["rows"]}
    vb.update(m["heads_vector_bytes"])
    for name, r in m["held_out"].items():
        b = vb.get(name) or vb.get(name.replace(" fitted on other folds", ""), "-")
        lines.append(f"| {name} | {b} | {r['title_R@1']:.3f} | {r['title_R@10']:.3f} "
                     f"({100 * (r['title_R@10'] - full['title_R@10']):+.1f}) | {r['extra_R@1']:.3f} |")
    return "\n".join(lines)


def synth_table(s: dict[str, Any], full_ref: dict[str, Any] | None = None) -> str:
    full = full_ref or s["options"][0]
    lines = ["| option | dim | vector B/item | data B/item | + IVF B/item | x full | exact p50 ms | IVF p50 ms | "
             "R@1 | R@10 (exact) | R@10 (IVF) | overlap@10 |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["options"]:
        total = r["disk_bytes"] + r["index_bytes"]
        ivf = r.get("index") or {}
        lines.append(
            f"| {r['option']} | {r['dim']} | {r['vector_bytes']} | {r['disk_bytes']:.0f} | {r['index_bytes']:.0f} | "
            f"{total / (full['disk_bytes'] + full['index_bytes']):.3f} | {r['exact']['p50_ms']:.1f} | "
            f"{_f(ivf.get('p50_ms'), '.1f')} | {r['exact']['R@1']:.3f} | {r['exact']['R@10']:.3f} | "
            f"{_f(ivf.get('R@10'))} | {r['exact']['overlap@10']:.3f} |")
    return "\n".join(lines)


def sensitivity_table(rows: list[dict[str, Any]]) -> str:
    names = [k for k in rows[0] if k != "within"]
    lines = ["| within-product share | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['within']:.2f} | " + " | ".join(f"{r[n]['R@1']:.3f} / {r[n]['R@10']:.3f}" for n in names)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--work", type=Path, default=RESULTS / "bench_compact", help="databases (magento is kept)")
    ap.add_argument("--rows", type=int, default=100_000, help="synthetic rows with a full-size table (0: skip)")
    ap.add_argument("--big-rows", type=int, default=1_000_000, help="synthetic rows, compact options only (0: skip)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--within", type=float, default=None, help="within-product share of the synthetic variance "
                    "(default: as measured on Magento)")
    ap.add_argument("--sensitivity", type=float, nargs="*", default=[0.5, 0.6],
                    help="also measure quality (numpy only) at these within-product shares")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--heads-dim", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="encoder threads for the Magento embedding")
    ap.add_argument("--heads-threads", type=int, default=1, help="torch threads for training heads")
    ap.add_argument("--big-options", nargs="*", default=None, help="names of the compact options at --big-rows "
                    "(default: all of them)")
    ap.add_argument("--skip-magento", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic databases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "bench_compact.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("cope", "lance", "lancedb"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"command": " ".join(["benchmarks/bench_compact.py", *(argv or sys.argv[1:])]),
                           "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    # measured on the Magento vectors (used when part 1 is skipped)
    shape = {"alpha_between": 1.22, "alpha_within": 0.68, "within": 0.31, "mean_share": 0.32}
    if not args.skip_magento:
        if not (args.data / "products_magento" / "manifest.jsonl").is_file():
            print(f"no Magento data at {args.data}: pass --data or --skip-magento", file=sys.stderr)
            return 2
        m = magento(args.data, args.work, args.threads, args.folds, args.heads_dim, args.heads_threads)
        out["magento"] = m
        shape = dict(m["spectrum"])
        print(f"\n## Magento, cope-default (1792-d), {m['items']} items; spectrum: {shape}; "
              f"API check {m['api_check']}\n")
        print(magento_table(m))
        print()
        print(held_out_table(m))
    if args.within is not None:
        shape["within"] = args.within
    if args.rows:
        s = synthetic(args.work, args.rows, args.queries, shape, args.seed)
        out["synthetic"] = s
        print(f"\n## Synthetic, {args.rows} rows, {args.queries} queries (full vectors by numpy: {s['numpy_full']})\n")
        print(synth_table(s))
        if not args.keep:
            shutil.rmtree(args.work / f"synthetic_{args.rows}.lancedb", ignore_errors=True)
    if args.sensitivity:
        sens = sensitivity(shape, args.rows or 100_000, args.queries, [shape["within"], *args.sensitivity], args.seed)
        out["sensitivity"] = sens
        print(f"\n## Synthetic view noise vs quality ({args.rows or 100_000} rows, numpy): R@1 / R@10\n")
        print(sensitivity_table(sens))
    if args.big_rows:
        chosen = [o for o in BIG_OPTIONS if not args.big_options or o.name in args.big_options]
        b = synthetic_big(args.work, args.big_rows, args.queries, shape, args.seed, options=chosen)
        out["synthetic_big"] = b
        ref = next((o for o in out.get("synthetic", {}).get("options", []) if o["option"] == "full"), None)
        print(f"\n## Synthetic, {args.big_rows} rows, compact options only (full vectors by numpy: "
              f"{b['numpy_full']}; x full: against the full table of the {args.rows}-row run)\n")
        print(synth_table(b, ref) if ref else synth_table(b, b["options"][0]))
        if not args.keep:
            shutil.rmtree(args.work / f"synthetic_{args.big_rows}.lancedb", ignore_errors=True)
    out["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    print(f"\nwrote {args.out}; load average {tuple(round(x, 1) for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
