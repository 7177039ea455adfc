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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cope.encoders import create_encoder
from cope.encoders.base import Encoder
from cope.evaluation import (
    RetrievalResult,
    evaluate_directions,
    format_table,
    precision_at_k,
    retrieval_metrics,
)

DEFAULT_DATA = (REPO / ".." / "shared" / "data").resolve()
DEFAULT_OUT = REPO / "benchmarks" / "results" / "eval_default_model.json"
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


def measure_speed(
    enc: Encoder, paths: list[Path], titles: list[str], descriptions: list[str], repeats: int
) -> dict[str, Any]:
    """Best-of-``repeats`` throughput (the least disturbed run on a shared machine), batch 32."""
    import torch
    from PIL import Image

    def best(fn: Any, n: int) -> tuple[float, float]:
        """(items per wall second, items per CPU second of this process), each from its best run."""
        wall, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return n / min(wall), n / min(cpu)

    tensors = []
    for p in paths:
        with Image.open(p) as im:
            tensors.append(enc.preprocess(im.convert("RGB")))
    batches = [torch.stack(tensors[i : i + 32]) for i in range(0, len(tensors), 32)]
    e2e = best(lambda: encode_images_timed(enc, paths), len(paths))
    model = best(lambda: [enc.encode_image_tensors(b) for b in batches], len(paths))
    tit = best(lambda: enc.encode_texts(titles), len(titles))
    desc = best(lambda: enc.encode_texts(descriptions), len(descriptions))
    return {
        "n_images": len(paths),
        "repeats": repeats,
        "images_per_s_end_to_end": e2e[0],
        "images_per_s_model_only": model[0],
        "titles_per_s": tit[0],
        "descriptions_per_s": desc[0],
        # CPU-time based: items per CPU second of this process; x threads estimates an undisturbed machine
        "images_per_cpu_s_end_to_end": e2e[1],
        "images_per_cpu_s_model_only": model[1],
        "titles_per_cpu_s": tit[1],
        "descriptions_per_cpu_s": desc[1],
    }


def video_frames(path: Path, n: int = 6) -> list[Any]:
    """n frames spread evenly over the clip, decoded with PyAV."""
    import av

    with av.open(str(path)) as container:
        frames = [f.to_image() for f in container.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, n).round().astype(int)
    return [frames[i] for i in idx]


def evaluate(enc: Encoder, data: Path, speed_images: int = 128, repeats: int = 3) -> dict[str, Any]:
    products = read_jsonl(data / "products_magento" / "manifest.jsonl")
    images = read_jsonl(data / "products_magento" / "images.jsonl")
    samples = read_jsonl(data / "sample_images" / "manifest.jsonl")
    videos = read_jsonl(data / "videos" / "manifest.jsonl")

    # warm-up (first call pays for lazy initialisation), then timed passes
    enc.encode_texts(["warm up"])
    enc.encode_images(load_images([data / images[0]["path"]]))

    img_vecs, _ = encode_images_timed(enc, [data / r["path"] for r in images])
    row = {r["id"]: i for i, r in enumerate(images)}
    titles = enc.encode_texts([p["title"] for p in products])
    descs = enc.encode_texts([p["description"] for p in products])
    speed = measure_speed(
        enc,
        [data / r["path"] for r in images[:speed_images]],
        [p["title"] for p in products],
        [p["description"] for p in products],
        repeats,
    )
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
        "speed": speed,
        "_results": results,
    }


SWEEP: dict[str, list[Any]] = {
    "prompt": ["a photo of a {}.", "{}", "a product photo of a {}."],
    "image_top_t": [1, 3, 5, 10, 20, 50, 1000],
    "image_temperature": [0.5, 1.0, 2.0],
    "text_top_k": [1, 5, 10, 20, 50],
    "text_temperature": [0.02, 0.05, 0.1, 0.2],
    "image_semantic_weight": [0.0, 0.1, 0.2, 0.3, 0.5, 1.0],
    "text_semantic_weight": [0.0, 0.5, 0.8, 0.9, 1.0],
}


def sweep(enc: Any, data: Path) -> list[dict[str, Any]]:
    """One-at-a-time sweep of the cope-default settings around their defaults, from features computed once."""
    import dataclasses

    import torch

    products = read_jsonl(data / "products_magento" / "manifest.jsonl")
    images = read_jsonl(data / "products_magento" / "images.jsonl")
    samples = read_jsonl(data / "sample_images" / "manifest.jsonl")
    pil = load_images([data / r["path"] for r in images] + [data / r["path"] for r in samples])
    feats = [
        enc.image_features(torch.stack([enc.preprocess(im) for im in pil[i : i + 32]]))
        for i in range(0, len(pil), 32)
    ]
    pooled = np.concatenate([f[0] for f in feats])
    logits = np.concatenate([f[1] for f in feats])
    use_titles = enc.use_vectors([p["title"] for p in products])
    use_descs = enc.use_vectors([p["description"] for p in products])
    use_samples = enc.use_vectors([r["text"] for r in samples])
    row = {r["id"]: i for i, r in enumerate(images)}
    main_rows = [row[p["main_image_id"]] for p in products]
    keys = [p["id"] for p in products]
    extra = [i for i, r in enumerate(images) if r["role"] == "extra_view"]
    extra_keys = [images[i]["product_id"] for i in extra]
    cats = [r["category"] for r in images]
    sids = [r["id"] for r in samples]
    n_mag = len(images)

    base = enc.settings
    variants = [("default", None)] + [
        (field, value) for field, values in SWEEP.items() for value in values if value != getattr(base, field)
    ]
    out = []
    for field, value in variants:
        settings = base if field == "default" else dataclasses.replace(base, **{field: value})
        prompts = enc.class_prompt_vectors(settings.prompt)
        img = enc.image_vectors_from_features(pooled, logits, settings, prompts)
        t_titles, t_descs, t_samples = (
            enc.text_vectors_from_use(u, settings, prompts) for u in (use_titles, use_descs, use_samples)
        )
        main = img[main_rows]
        title_img = retrieval_metrics(t_titles, keys, main, keys, KS)
        out.append(
            {
                "setting": field if field == "default" else f"{field}={value}",
                "title->img R@1": title_img.recall[1],
                "title->img R@10": title_img.recall[10],
                "title->img MRR": title_img.mrr,
                "desc->img MRR": retrieval_metrics(t_descs, keys, main, keys, KS).mrr,
                "img->title MRR": retrieval_metrics(main, keys, t_titles, keys, KS).mrr,
                "sample desc->photo R@1": retrieval_metrics(t_samples, sids, img[n_mag:], sids, KS).recall[1],
                "extra->main R@1": retrieval_metrics(img[extra], extra_keys, main, keys, KS).recall[1],
                "P@5": precision_at_k(img[:n_mag], cats, 5).precision,
                "title->desc R@1": retrieval_metrics(t_titles, keys, t_descs, keys, KS).recall[1],
            }
        )
    return out


def format_sweep(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    widths = [
        max(len(c), *(len(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c])) for r in rows))
        for c in cols
    ]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths)))]
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        )
    return "\n".join(lines)


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
    print_speed(rep["speed"])


def print_speed(s: dict[str, Any]) -> None:
    print(
        f"speed (best of {s['repeats']}, batch 32): {s['images_per_s_end_to_end']:.1f} images/s end to end "
        f"(JPEG decode + preprocess + encode), {s['images_per_s_model_only']:.1f} images/s model only, "
        f"{s['titles_per_s']:.0f} titles/s, {s['descriptions_per_s']:.0f} descriptions/s"
    )
    print(
        f"per CPU second: {s['images_per_cpu_s_end_to_end']:.1f} images end to end, "
        f"{s['images_per_cpu_s_model_only']:.1f} images model only, {s['titles_per_cpu_s']:.0f} titles, "
        f"{s['descriptions_per_cpu_s']:.0f} descriptions (x threads = estimate for idle cores)"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the shared data folder (default ../shared/data)"
    )
    ap.add_argument("--threads", type=int, default=2, help="torch / BLAS threads (default 2)")
    ap.add_argument(
        "--repeats", type=int, default=3, help="speed passes; the best one is reported (default 3)"
    )
    ap.add_argument("--speed-images", type=int, default=128, help="images in each speed pass (default 128)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a cope-default setting (DefaultModelSettings field), e.g. --set image_top_t=5; repeatable",
    )
    ap.add_argument(
        "--sweep", action="store_true", help="one-at-a-time sweep of the cope-default settings (no baseline)"
    )
    ap.add_argument(
        "--speed-only", action="store_true", help="measure encode speed only, no retrieval metrics"
    )
    ap.add_argument("--no-baseline", action="store_true", help="skip the random open_clip ViT-B-32 baseline")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (default {DEFAULT_OUT})")
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
    if args.sweep:
        enc = create_encoder("cope-default", threads=args.threads)
        rows = sweep(enc, args.data)
        print(f"one-at-a-time sweep around the defaults of {enc.model_tag}:\n{enc.settings}\n")
        print(format_sweep(rows))
        out = args.out.with_name("eval_default_model_sweep.json") if args.out == DEFAULT_OUT else args.out
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model_tag": enc.model_tag, "rows": rows}, indent=2))
        print(f"\nwrote {out}")
        return 0
    overrides: dict[str, Any] = {}
    for item in args.set:
        field, _, value = item.partition("=")
        number = value.strip()[:1] in tuple("0123456789.-")
        overrides[field.strip()] = json.loads(value) if number else value
    models: list[tuple[str, dict[str, Any]]] = [("cope-default", {"threads": args.threads, **overrides})]
    if not args.no_baseline:
        models.append(("open_clip:ViT-B-32", {"pretrained": None, "threads": args.threads}))

    reports: dict[str, dict[str, Any]] = {}
    for name, options in models:
        t0 = time.perf_counter()
        enc = create_encoder(name, **options)
        load_s = time.perf_counter() - t0
        if args.speed_only:
            products = read_jsonl(args.data / "products_magento" / "manifest.jsonl")
            images = read_jsonl(args.data / "products_magento" / "images.jsonl")[: args.speed_images]
            enc.encode_texts(["warm up"])
            enc.encode_images(load_images([args.data / images[0]["path"]]))
            rep = {
                "model_tag": enc.model_tag,
                "speed": measure_speed(
                    enc,
                    [args.data / r["path"] for r in images],
                    [p["title"] for p in products],
                    [p["description"] for p in products],
                    args.repeats,
                ),
            }
            print(f"\n=== {name}: {enc.model_tag} ===")
            print_speed(rep["speed"])
        else:
            rep = evaluate(enc, args.data, speed_images=args.speed_images, repeats=args.repeats)
            print_report(name, rep)
        rep["load_s"] = load_s
        reports[name] = rep
        del enc

    if args.speed_only and args.out == DEFAULT_OUT:
        args.out = args.out.with_name("eval_default_model_speed.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "data": str(args.data),
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "models": {
            name: {k: v for k, v in rep.items() if not k.startswith("_")} for name, rep in reports.items()
        },
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nload average {os.getloadavg()} (speed numbers are only comparable on an idle machine)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
