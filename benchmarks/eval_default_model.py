"""Measure ``cope-default`` (and a random-weight open_clip ViT-B-32 baseline) on the real data in ../shared/data.

Everything is computed with the encoders directly (no database): Magento title/description <-> main image,
extra view -> main image, same-category precision@5 of image neighbours, the 16 sample photos description -> image,
frames of the sample video against a few text queries, and encode speed.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python benchmarks/eval_default_model.py [--threads 2]

Prints tables and writes benchmarks/results/eval_default_model.json (gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cope.encoders import create_encoder  # noqa: E402
from cope.encoders.base import Encoder  # noqa: E402
from cope.evaluation import (  # noqa: E402
    RetrievalResult,
    evaluate_directions,
    format_table,
    precision_at_k,
    retrieval_metrics,
)

DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
KS = (1, 5, 10)
VIDEO_DISTRACTORS = [
    "a red motorcycle standing in a garage",
    "a cup of coffee on a saucer",
    "a page of text",
    "a rocket on a launchpad",
    "a close-up of a cat's face",
    "a pile of coins on a table",
]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_images(paths: list[Path]) -> list[Any]:
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(im.convert("RGB"))
    return out


def encode_images_timed(enc: Encoder, paths: list[Path], batch_size: int = 32) -> tuple[np.ndarray, float]:
    """Vectors of image files and images/s end to end (decode + preprocess + encode)."""
    import torch
    from PIL import Image

    start = time.perf_counter()
    chunks = []
    for i in range(0, len(paths), batch_size):
        tensors = []
        for p in paths[i : i + batch_size]:
            with Image.open(p) as im:
                tensors.append(enc.preprocess(im.convert("RGB")))
        chunks.append(enc.encode_image_tensors(torch.stack(tensors)))
    elapsed = time.perf_counter() - start
    return np.concatenate(chunks), len(paths) / elapsed


def encode_texts_timed(enc: Encoder, texts: list[str]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    vecs = enc.encode_texts(texts)
    return vecs, len(texts) / (time.perf_counter() - start)


def video_frames(path: Path, n: int = 6) -> list[Any]:
    """n frames spread evenly over the clip, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in idx]


def evaluate(enc: Encoder, data: Path) -> dict[str, Any]:
    products = read_jsonl(data / "products_magento" / "manifest.jsonl")
    images = read_jsonl(data / "products_magento" / "images.jsonl")
    samples = read_jsonl(data / "sample_images" / "manifest.jsonl")
    videos = read_jsonl(data / "videos" / "manifest.jsonl")

    # warm-up (first call pays for lazy initialisation), then timed passes
    enc.encode_texts(["warm up"])
    enc.encode_images(load_images([data / images[0]["path"]]))

    img_vecs, images_per_s = encode_images_timed(enc, [data / r["path"] for r in images])
    row = {r["id"]: i for i, r in enumerate(images)}
    titles, _ = encode_texts_timed(enc, [p["title"] for p in products])
    descs, _ = encode_texts_timed(enc, [p["description"] for p in products])
    speed_texts = [p["title"] for p in products] + [p["description"] for p in products]
    _, texts_per_s = encode_texts_timed(enc, speed_texts)
    keys = [p["id"] for p in products]
    main = img_vecs[[row[p["main_image_id"]] for p in products]]

    magento = evaluate_directions(
        np.concatenate([titles, descs, main]),
        keys * 3,
        ["title"] * len(keys) + ["description"] * len(keys) + ["main image"] * len(keys),
        ks=KS,
    )
    extra = [i for i, r in enumerate(images) if r["role"] == "extra_view"]
    results: dict[str, RetrievalResult] = {f"{s}->{d}": r for (s, d), r in magento.items()}
    results["extra view->main image"] = retrieval_metrics(
        img_vecs[extra], [images[i]["product_id"] for i in extra], main, keys, KS
    )
    cats = [r["category"] for r in images]
    p5_all = precision_at_k(img_vecs, cats, 5)
    p5_other = precision_at_k(img_vecs, cats, 5, exclude_keys=[r["product_id"] for r in images])

    sample_imgs = enc.encode_images(load_images([data / r["path"] for r in samples]))
    sample_txt = enc.encode_texts([r["text"] for r in samples])
    ids = [r["id"] for r in samples]
    results["sample description->photo"] = retrieval_metrics(sample_txt, ids, sample_imgs, ids, KS)
    results["sample photo->description"] = retrieval_metrics(sample_imgs, ids, sample_txt, ids, KS)
    sims = sample_txt @ sample_imgs.T
    sample_top1 = {r["id"]: ids[int(np.argmax(sims[i]))] for i, r in enumerate(samples)}

    video_report = []
    for v in videos:
        frames = video_frames(data / v["path"])
        fv = enc.encode_images(frames)
        queries = [v["text"], *VIDEO_DISTRACTORS]
        qv = enc.encode_texts(queries)
        clip = fv.mean(axis=0)
        clip /= np.linalg.norm(clip)
        scores = qv @ clip
        frame_best = [queries[int(np.argmax(qv @ f))] for f in fv]
        entry: dict[str, Any] = {
            "id": v["id"],
            "caption": v["text"],
            "caption_rank": int(1 + (scores > scores[0]).sum()),
            "n_queries": len(queries),
            "scores": {q: round(float(s), 4) for q, s in zip(queries, scores)},
            "frames_choosing_caption": sum(b == v["text"] for b in frame_best),
            "n_frames": len(frames),
        }
        if hasattr(enc, "classify_tensors"):
            import torch

            top = enc.classify_tensors(torch.stack([enc.preprocess(f) for f in frames]), top=1)
            entry["frame_top_class"] = [t[0][0] for t in top]
        video_report.append(entry)

    return {
        "model_tag": enc.model_tag,
        "dim": enc.dim,
        "retrieval": {name: r.summary() for name, r in results.items()},
        "precision_at_5": {"all images": p5_all.model_dump(), "other products only": p5_other.model_dump()},
        "sample_top1": sample_top1,
        "video": video_report,
        "speed": {"images_per_s_end_to_end": images_per_s, "texts_per_s": texts_per_s, "n_images": len(images),
                  "n_texts": len(speed_texts)},
        "_results": results,
    }


def print_report(name: str, rep: dict[str, Any]) -> None:
    print(f"\n=== {name}: {rep['model_tag']} (dim {rep['dim']}) ===")
    print(format_table(rep["_results"]))
    for label, p in rep["precision_at_5"].items():
        print(f"same-category P@5 ({label}): {p['precision']:.3f} (chance {p['chance']:.3f}, n={p['n']})")
    for v in rep["video"]:
        print(
            f"video {v['id']}: caption rank {v['caption_rank']}/{v['n_queries']}, "
            f"{v['frames_choosing_caption']}/{v['n_frames']} frames pick the caption"
            + (f"; frame classes {v['frame_top_class']}" if "frame_top_class" in v else "")
        )
    s = rep["speed"]
    print(f"speed: {s['images_per_s_end_to_end']:.1f} images/s end to end, {s['texts_per_s']:.0f} texts/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the random open_clip ViT-B-32 baseline")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_default_model.json")
    args = ap.parse_args(argv)

    if not (args.data / "products_magento" / "manifest.jsonl").is_file():
        print(
            f"shared data not found at {args.data}: this benchmark needs ../shared/data "
            "(products_magento, sample_images, videos); pass --data <folder>",
            file=sys.stderr,
        )
        return 2

    import torch

    torch.set_num_threads(args.threads)
    models: list[tuple[str, dict[str, Any]]] = [("cope-default", {"threads": args.threads})]
    if not args.no_baseline:
        models.append(("open_clip:ViT-B-32", {"pretrained": None, "threads": args.threads}))

    reports: dict[str, dict[str, Any]] = {}
    for name, options in models:
        t0 = time.perf_counter()
        enc = create_encoder(name, **options)
        load_s = time.perf_counter() - t0
        rep = evaluate(enc, args.data)
        rep["load_s"] = load_s
        reports[name] = rep
        print_report(name, rep)
        del enc

    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "data": str(args.data),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "models": {name: {k: v for k, v in rep.items() if not k.startswith("_")} for name, rep in reports.items()},
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
