"""Helpers for the exploration notebook: thumbnails, a neighbour grid, a 2-D map and same-product@k.

Needs the ``notebook`` extra (matplotlib, pandas): ``pip install 'cope[notebook]'``.

>>> from cope.notebook_utils import neighbour_grid, same_product_at_k  # doctest: +SKIP
>>> fig = neighbour_grid(db, ["product:p001", "video:vid-p002"], k=4)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cope.records import DOMAINS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from PIL import Image

    from cope.api import CopeDB

logger = logging.getLogger(__name__)

DOMAIN_COLOURS = {"product": "#1f77b4", "image": "#2ca02c", "video": "#d62728", "live": "#9467bd"}
_VIDEO_SUFFIXES = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"}


def thumbnail(media_uri: str | None, *, slice_start: float | None = None, slice_end: float | None = None,
              size: int = 128) -> Image.Image:
    """A picture of an item: its image, the middle frame of its video, or its slice snapshot (the middle of the
    slice for a recorded live stream). A grey placeholder when the file is missing or unreadable."""
    from PIL import Image

    try:
        if not media_uri:
            raise FileNotFoundError("no media")
        if Path(media_uri).suffix.lower() in _VIDEO_SUFFIXES:
            from cope.extractors.video import read_video_frames

            if slice_start is not None and slice_end is not None:
                frames, _ = read_video_frames(media_uri, times=[(slice_start + slice_end) / 2], short_side=size)
            else:
                frames, _ = read_video_frames(media_uri, count=1, short_side=size)  # the middle frame
            im = frames[0]
        else:
            from cope.extractors.image import load_image

            im = load_image(media_uri, size_hint=size)
        im = im.copy()
        im.thumbnail((size, size))
        return im
    except Exception as e:  # noqa: BLE001  (a thumbnail must never break the notebook)
        logger.debug("no thumbnail for %s: %s", media_uri, e)
        return Image.new("RGB", (size, size), (200, 200, 200))


def _title(row: dict[str, Any], width: int = 22) -> str:
    meta = row.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta else {}
    name = (meta.get("title") or meta.get("product_title") or meta.get("name")
            or (row.get("text") or "").split("\n")[0] or row["item_id"])
    if row.get("domain") == "live" and row.get("slice_start") is not None:
        name = f"[{row['slice_start']:g}-{row['slice_end']:g}s] {name}"
    return name if len(name) <= width else name[: width - 1] + "…"


def neighbour_grid(db: CopeDB, item_ids: Sequence[str], k: int = 5, *, cross_domain: bool = True,
                   size: int = 96) -> Figure:
    """One row per query item: its thumbnail, then its ``k`` neighbours with domain, title and score.

    ``cross_domain`` shows only neighbours of other domains than the query's (products for a video...).
    """
    import matplotlib.pyplot as plt

    queries = db.get(list(item_ids)).to_pylist()
    all_domains = list(DOMAINS)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.9 * (k + 1), 2.2 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        domains = [d for d in all_domains if d != q["domain"]] if cross_domain else None
        hits = db.similar(q["item_id"], k=k, domains=domains).table.to_pylist()
        cells = [(q, None)] + [(h, h["score"]) for h in hits]
        for c in range(k + 1):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(cells):
                ax.axis("off")
                continue
            row, score = cells[c]
            ax.imshow(thumbnail(row.get("media_uri"), slice_start=row.get("slice_start"),
                                slice_end=row.get("slice_end"), size=size))
            colour = DOMAIN_COLOURS.get(row.get("domain", ""), "black")
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if score is None else 1.5)
            head = "query" if score is None else f"{score:.3f}"
            ax.set_title(f"{head} · {row.get('domain')}\n{_title(row)}", fontsize=7, color=colour)
    fig.tight_layout()
    return fig


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Project rows onto their first two principal components (numpy SVD)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    _u, _s, vt = np.linalg.svd(x, full_matrices=False)
    out = x @ vt[:2].T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def catalog_frame(db: CopeDB, *, with_vectors: bool = True, limit: int | None = None) -> pd.DataFrame:
    """All items (or the first ``limit``) as a DataFrame with ``product_key`` parsed from the metadata."""

    columns = ["item_id", "domain", "source_id", "slice_start", "slice_end", "text", "media_uri", "metadata"]
    if with_vectors:
        columns.append("vector")
    columns = [c for c in columns if c in db.table.schema.names]
    table = db.table.search().select(columns).limit(limit).to_arrow()
    df: pd.DataFrame = table.drop_columns(["vector"]).to_pandas() if with_vectors else table.to_pandas()
    df["metadata"] = df["metadata"].map(lambda s: json.loads(s) if s else {})
    df["product_key"] = df["metadata"].map(lambda m: m.get("product_key"))
    if with_vectors:
        from cope.vectors import to_numpy

        df["vector"] = list(to_numpy(table.column("vector"), db.dim))
    return df


DOMAIN_MARKERS = {"product": "o", "image": "s", "video": "^", "live": "D"}


def _draw_map(ax: Any, df: pd.DataFrame, *, annotate: bool, title: str, colour_by: str | None = None) -> None:
    xy = pca_2d(np.stack(df["vector"].to_list()))
    if "product_key" in df:
        for idx in df.groupby("product_key").indices.values():
            if len(idx) > 1:
                pts = xy[idx]
                centre = pts.mean(axis=0)
                for p in pts:
                    ax.plot([centre[0], p[0]], [centre[1], p[1]], color="#bbbbbb", lw=0.6, zorder=1)
    if colour_by:  # colour by a metadata field (e.g. category), marker by domain
        import matplotlib.pyplot as plt

        values = df["metadata"].map(lambda m: (m or {}).get(colour_by)).map(lambda v: "(none)" if v is None else str(v))
        palette = plt.get_cmap("tab20")
        for i, value in enumerate(sorted(values.unique())):
            for domain, marker in DOMAIN_MARKERS.items():
                mask = ((values == value) & (df["domain"] == domain)).to_numpy()
                if mask.any():
                    ax.scatter(xy[mask, 0], xy[mask, 1], color=palette(i % 20), marker=marker, s=36, zorder=2,
                               edgecolors="white", linewidths=0.5,
                               label=f"{value} ({domain})")
    else:
        for domain, colour in DOMAIN_COLOURS.items():
            mask = (df["domain"] == domain).to_numpy()
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], c=colour, label=f"{domain} ({mask.sum()})", s=36, zorder=2,
                           edgecolors="white", linewidths=0.5)
    if annotate and len(df) <= 60:
        for (x, y), key in zip(xy, df.get("product_key", df["item_id"])):
            if isinstance(key, str) and key:
                ax.annotate(str(key), (x, y), fontsize=6, alpha=0.7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="best", fontsize=8)


def domain_map(df: pd.DataFrame, *, annotate: bool = True, colour_by: str | None = None) -> Figure:
    """Scatter of the catalog's vectors (PCA to 2-D) coloured by domain (or by the metadata field ``colour_by``, e.g.
    ``"category"``, with one marker per domain); items of one product joined by lines."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    _draw_map(ax, df, annotate=annotate, colour_by=colour_by,
              title="catalog vectors, PCA to 2-D (grey lines join items of one product)")
    fig.tight_layout()
    return fig


def before_after_map(before: pd.DataFrame, after: pd.DataFrame, *, annotate: bool = True) -> Figure:
    """The same items as two 2-D maps: base vectors (left) and the trained heads' space (right)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, df, name in ((axes[0], before, "base vectors"), (axes[1], after, "after COPE heads")):
        gap = modality_gap(df)
        _draw_map(ax, df, annotate=annotate, title=f"{name}: same product {gap['same_product']:.2f}, "
                  f"other product {gap['other_product']:.2f} (mean cosine across domains)")
    fig.tight_layout()
    return fig


def modality_gap(df: pd.DataFrame) -> dict[str, float]:
    """Mean cosine between items of *different* domains: of the same product, and of other products. Before
    training both are high when a modality gap dominates (domains cluster); after, the same product should win."""
    x = np.stack(df["vector"].to_list()).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    domains = df["domain"].to_numpy()
    keys = df["product_key"].to_numpy() if "product_key" in df else np.array([None] * len(df))
    cross = domains[:, None] != domains[None, :]
    labelled = np.array([isinstance(k, str) and bool(k) for k in keys])
    both = labelled[:, None] & labelled[None, :]
    same = (keys[:, None] == keys[None, :]) & both & cross
    other = (keys[:, None] != keys[None, :]) & both & cross
    return {"same_product": float(sim[same].mean()) if same.any() else float("nan"),
            "other_product": float(sim[other].mean()) if other.any() else float("nan")}


def same_product_at_k(db: CopeDB, df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Per (query domain -> target domain): share of queries with an item of the same ``product_key`` among their
    ``k`` neighbours in the target domain, with the number of queries. Items without a product key are skipped
    as queries; a pair whose target domain holds no item of the query's product is left out for that query."""
    import pandas as pd

    labelled = df[df["product_key"].notna()]
    keys_in = {d: set(g["product_key"]) for d, g in labelled.groupby("domain")}
    rows = []
    for qd, group in labelled.groupby("domain"):
        for td in sorted(keys_in):
            if td == qd:
                continue
            queries = group[group["product_key"].isin(keys_in[td])]
            if queries.empty:
                continue
            results = db.similar_many(queries["item_id"].tolist(), k=k, domains=[td])
            hits = [
                any((json.loads(m) if m else {}).get("product_key") == key
                    for m in r.table.column("metadata").to_pylist())
                for key, r in zip(queries["product_key"], results)
            ]
            rows.append({"query": qd, "target": td, f"same_product@{k}": float(np.mean(hits)), "queries": len(hits)})
    out = pd.DataFrame(rows, columns=["query", "target", f"same_product@{k}", "queries"])
    return out


def magento_manifest(data_dir: str | Path, out: str | Path, limit: int | None = None) -> Path:
    """A cope manifest of the Magento products in ``data_dir`` (``../shared/data``): one product page per product
    (title, description, main image) and one image item per extra view, all with ``product_key``."""
    data = Path(data_dir)
    products = [json.loads(line) for line in (data / "products_magento" / "manifest.jsonl").open() if line.strip()]
    images = {}
    for line in (data / "products_magento" / "images.jsonl").open():
        if line.strip():
            im = json.loads(line)
            images[im["id"]] = im
    products = products[:limit] if limit else products
    rows = []
    for p in products:
        main = images.get(p.get("main_image_id", ""))
        rows.append({"domain": "product", "item_id": p["id"], "title": p.get("title", ""),
                     "description": p.get("description", ""), "attributes": p.get("attributes") or {},
                     "images": [str(data / main["path"])] if main else [], "product_key": p["id"],
                     "category": p.get("category")})
        for image_id in p.get("image_ids", []):
            im = images.get(image_id)
            if im and im.get("role") == "extra_view":
                rows.append({"domain": "image", "image_id": im["id"], "uri": str(data / im["path"]),
                             "product_key": p["id"], "category": im.get("category")})
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def find_shared_data() -> Path | None:
    """``../shared/data`` (relative to the working directory or the repository) when it exists."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (Path.cwd() / ".." / "shared" / "data", here / ".." / "shared" / "data",
                      Path.cwd().parent / ".." / "shared" / "data"):
        if (candidate / "products_magento" / "manifest.jsonl").is_file():
            return candidate.resolve()
    return None


def show(fig: Figure, dpi: int = 100) -> None:
    """Display a figure as PNG in Jupyter under any backend (Agg included), then close it."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image as IPImage
    from IPython.display import display

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(IPImage(data=buf.getvalue(), format="png"))
