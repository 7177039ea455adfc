"""OCR: speed with and without ``--ocr``, the share of time OCR takes, the no-text fast path, and retrieval quality
(Magento and the sample photos from ../shared/data, plus generated covers whose titles are printed on them).

    .venv/bin/python benchmarks/bench_ocr.py [--model cope-default] [--repeats 2]

Each contender runs into a fresh database (so the OCR cache starts empty), alternating A B A B; min and median are
printed. Run it on a quiet machine: other processes make the timings meaningless on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.magento import read_jsonl, write_inputs  # noqa: E402
from cope.content import ExtractOptions  # noqa: E402
from cope.evaluation import retrieval_metrics  # noqa: E402
from cope.fusion import FusionConfig, fuse  # noqa: E402
from cope.job import embed  # noqa: E402
from cope.store import ItemStore  # noqa: E402

DATA = (REPO / ".." / "shared" / "data").resolve()
KS = (1, 5, 10)
EN = ["RIVER", "STONE", "LIGHT", "GARDEN", "WINTER", "SILVER", "OCEAN", "FOREST", "CITY", "NIGHT", "SUMMER",
      "MOUNTAIN", "GOLDEN", "SHADOW", "EMPIRE", "DREAM", "FIRE", "GLASS", "PAPER", "ISLAND"]
ZH = ["红色", "皮球", "咖啡", "绿茶", "山水", "月光", "花园", "城市", "海洋", "森林", "冬天", "夏天", "黄金", "梦想"]


def font(size: int) -> Any:
    import importlib.util

    from PIL import ImageFont

    spec = importlib.util.find_spec("mplfonts")
    assert spec and spec.submodule_search_locations, "pip install mplfonts (cope[dev]) for a CJK font"
    return ImageFont.truetype(str(Path(spec.submodule_search_locations[0]) / "fonts" / "NotoSansCJKsc-Regular.otf"),
                              size)


def make_covers(root: Path, n: int, seed: int = 0) -> Path:
    """n generated 'covers': a coloured picture with a printed 2-word title (English or Chinese) and a shape."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    rows, f = [], font(40)
    for i in range(n):
        words = rng.sample(ZH, 2) if i % 2 else rng.sample(EN, 2)
        title = ("" if i % 2 else " ").join(words)
        im = Image.new("RGB", (420, 560), tuple(rng.randint(120, 250) for _ in range(3)))
        d = ImageDraw.Draw(im)
        d.text((30, 40), title, font=f, fill=(15, 15, 15))
        x, y = rng.randint(60, 250), rng.randint(200, 380)
        d.ellipse((x, y, x + 110, y + 110), fill=tuple(rng.randint(0, 200) for _ in range(3)))
        im.save(root / f"cover{i:03d}.jpg", quality=90)
        rows.append({"domain": "image", "image_id": f"cover{i:03d}", "uri": f"cover{i:03d}.jpg", "title": title})
    rows.append({"domain": "image", "image_id": "blank", "uri": "blank.jpg"})
    Image.new("RGB", (420, 560), (200, 200, 200)).save(root / "blank.jpg")
    (root / "covers.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "title"},
                                                          ensure_ascii=False) + "\n" for r in rows))
    (root / "titles.json").write_text(json.dumps({r["image_id"]: r.get("title") for r in rows}, ensure_ascii=False))
    return root / "covers.jsonl"


def samples_manifest(out: Path) -> Path:
    rows = [{"domain": "image", "image_id": r["id"], "uri": str(DATA / r["path"])}
            for r in read_jsonl(DATA / "sample_images" / "manifest.jsonl")]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def vectors(db: Path, ocr_weight: float | None = None) -> dict[str, dict[str, Any]]:
    """Stored rows by id; with ``ocr_weight``, ``vector`` is re-fused from the stored parts with that OCR weight
    (image and text at the defaults): what a table written with ``--ocr-weight`` would hold, without reading a
    picture or running an encoder again."""
    store = ItemStore.open(db)
    columns = ["item_id", "vector", "metadata", "has_image"]
    if ocr_weight is not None:
        columns += ["image_vector", "text_vector", "ocr_vector", "has_text", "has_ocr"]
    rows = store.read(columns).to_pylist()
    out = {r["item_id"]: {**r, "metadata": json.loads(r["metadata"] or "{}")} for r in rows}
    if ocr_weight is not None:
        config = FusionConfig(ocr_weight=ocr_weight)
        for r in out.values():
            part = {k: np.asarray(r[f"{k}_vector"], np.float32) if r[f"has_{k}"] else None
                    for k in ("image", "text", "ocr")}
            r["vector"] = fuse(part["image"], part["text"], config, part["ocr"])
    return out


def run(manifest: Path, model: str, ocr: bool, workers: int) -> tuple[Path, Any, float]:
    db = Path(tempfile.mkdtemp(prefix="bench-ocr-")) / "db"
    start = time.perf_counter()
    summary = embed(manifest, db, model=model, extract=ExtractOptions(ocr=ocr), workers=workers, progress=False,
                    compact=False)
    return db, summary, time.perf_counter() - start


def text_queries(db: Path, model: str, texts: list[str]) -> np.ndarray:
    from cope.api import open_db

    return open_db(db).encode(texts, kind="text", as_domain="image")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="cope-default")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--covers", type=int, default=60)
    ap.add_argument("--sweep", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.5],
                    help="OCR weights to re-fuse the stored parts with (Magento and covers quality)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-ocr-data-"))
    covers = make_covers(work, args.covers)
    titles = json.loads((work / "titles.json").read_text())
    have_data = (DATA / "products_magento").is_dir()
    magento = write_inputs(DATA, work, description=False, prefix="magento_")[0] if have_data else None

    # -- the no-text fast path and a text picture, engine alone
    from PIL import Image

    from cope.extractors.ocr import read_picture

    options = ExtractOptions(ocr=True)
    blank, text = Image.open(work / "blank.jpg").convert("RGB"), Image.open(work / "cover000.jpg").convert("RGB")
    read_picture(text, options)  # warm-up (loads the engine)
    per = {"no text": [], "printed title": []}
    for _ in range(5):
        for name, im in (("no text", blank), ("printed title", text)):
            t = time.perf_counter()
            read_picture(im, options)
            per[name].append(time.perf_counter() - t)
    print("OCR per picture (engine alone, 1 thread):",
          {k: f"min {min(v) * 1000:.0f} ms, median {statistics.median(v) * 1000:.0f} ms" for k, v in per.items()})

    # -- speed with and without OCR, alternating, fresh databases
    speed_set = magento or covers
    times: dict[bool, list[float]] = {False: [], True: []}
    last: dict[bool, tuple[Path, Any]] = {}
    for _ in range(args.repeats):
        for ocr in (False, True):
            db, summary, seconds = run(speed_set, args.model, ocr, args.workers)
            times[ocr].append(seconds)
            last[ocr] = (db, summary)
    n = last[False][1].done
    for ocr in (False, True):
        t = times[ocr]
        print(f"{'with' if ocr else 'without'} --ocr on {speed_set.name}: {n / min(t):.1f} items/s best, "
              f"{n / statistics.median(t):.1f} median (wall min {min(t):.1f} s, median {statistics.median(t):.1f} s)")
    s = last[True][1]
    share = s.ocr_ms / 1000 / args.workers / max(min(times[True]), 1e-9)
    print(f"ratio with/without (median wall): {statistics.median(times[True]) / statistics.median(times[False]):.2f}x;"
          f" OCR read {s.ocr_read} pictures in {s.ocr_ms / 1000:.1f} worker-s, ~{share:.0%} of the run's wall "
          f"({args.workers} workers)")

    # -- quality: Magento title -> main image, extra view -> main image; sample photos; covers
    def magento_metrics(db: Path, ocr_weight: float | None = None) -> dict[str, float]:
        v = vectors(db, ocr_weight)
        prods = [r for r in v.values() if r["item_id"].startswith("product:")]
        mains = [r for r in v.values() if r["metadata"].get("role") == "main"]
        extra = [r for r in v.values() if r["metadata"].get("role") == "extra_view"]
        def part(rows: list[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
            return np.array([r["vector"] for r in rows]), [r["metadata"]["product_key"] for r in rows]

        (q, qk), (g, gk), (e, ek) = part(prods), part(mains), part(extra)
        t2i = retrieval_metrics(q, qk, g, gk, KS)
        e2m = retrieval_metrics(e, ek, g, gk, KS)
        return {"title->main R@1": t2i.recall[1], "title->main R@10": t2i.recall[10],
                "extra->main R@1": e2m.recall[1]}

    report: dict[str, Any] = {}
    if magento:
        report["magento"] = {ocr: magento_metrics(last[ocr][0]) for ocr in (False, True)}
        samples = read_jsonl(DATA / "sample_images" / "manifest.jsonl")
        sm = samples_manifest(work / "samples.jsonl")
        report["samples"] = {}
        for ocr in (False, True):
            db, _, _ = run(sm, args.model, ocr, args.workers)
            v = vectors(db)
            ids = [f"image:{r['id']}" for r in samples]
            qv = text_queries(db, args.model, [r["text"] for r in samples])
            res = retrieval_metrics(qv, ids, np.array([v[i]["vector"] for i in ids]), ids, KS)
            report["samples"][ocr] = {"description->photo R@1": res.recall[1]}
    report["covers"] = {}
    sweep: dict[float, dict[str, float]] = {}
    for ocr in (False, True):
        db, _, _ = run(covers, args.model, ocr, args.workers)
        v = vectors(db)
        ids = [k for k in v if k != "image:blank"]
        qv = text_queries(db, args.model, [titles[i.split(":", 1)[1]] for i in ids])
        res = retrieval_metrics(qv, ids, np.array([v[i]["vector"] for i in ids]), ids, KS)
        report["covers"][ocr] = {"title->cover R@1": res.recall[1], "title->cover R@10": res.recall[10],
                                 "chance R@1": 1 / len(ids)}
        for w in args.sweep if ocr else ():  # other OCR weights from the stored parts: no picture read again
            vw = vectors(db, w)
            res = retrieval_metrics(qv, ids, np.array([vw[i]["vector"] for i in ids]), ids, KS)
            sweep[w] = {"covers title->cover R@1": res.recall[1]}
            if magento:
                sweep[w].update({f"magento {k}": x for k, x in magento_metrics(last[True][0], w).items()})
    for name, by in report.items():
        for key in by[False]:
            a, b = by[False][key], by[True][key]
            print(f"{name:8s} {key:24s} without {a:.3f}  with --ocr {b:.3f}  ({b - a:+.3f})")
    for w, metrics in sweep.items():
        print(f"--ocr-weight {w:g} (re-fused from the stored parts): "
              + ", ".join(f"{k} {x:.3f}" for k, x in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
