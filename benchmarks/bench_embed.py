"""Throughput of `cope embed` vs the model alone and vs a naive per-item loop; video frames/s; RSS 1k vs 20k items.

    .venv/bin/python benchmarks/bench_embed.py                    # all parts, default sizes
    .venv/bin/python benchmarks/bench_embed.py --images 256 --archs ViT-S-32 --skip-rss

Random weights (speed does not depend on them). Every ratio is against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.media: photo-like pictures
from tests.media import photo  # noqa: E402


def make_photo(path: Path, i: int, size: int = 800) -> None:
    """A photo-like 800x800 JPEG (``tests.media.photo``: gradient, noise, shapes, so JPEG size is realistic)."""
    photo(size, size, seed=i, shapes=6).save(path, quality=90)


def catalog(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        p = folder / f"{i}.jpg"
        if not p.exists():
            make_photo(p, i)
        lines.append(json.dumps({"domain": "image", "image_id": f"i{i}", "uri": p.name}))
    manifest = folder / f"images_{n}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def bench_images(arch: str, n: int, batch: int, threads: int, work: Path) -> dict:
    import torch

    from cope.encoders import create_encoder
    from cope.extractors.image import load_image
    from cope.job import embed

    manifest = catalog(work / "photos", n)
    enc = create_encoder(f"open_clip:{arch}", threads=threads)
    torch.set_num_threads(threads)
    # 1. the model alone on pre-decoded, pre-processed tensors
    tensors = torch.stack([enc.preprocess(load_image(str(work / "photos" / f"{i % 64}.jpg"))) for i in range(batch)])
    enc.encode_image_tensors(tensors)  # warm-up

    def model_only() -> float:
        t0 = time.perf_counter()
        for _ in range(n // batch):
            enc.encode_image_tensors(tensors)
        return (n // batch) * batch / (time.perf_counter() - t0)

    # 2. naive: decode and encode one image at a time (before the job: nothing of the job runs in the background)
    m = min(n, 4 * batch)
    t0 = time.perf_counter()
    for i in range(m):
        im = Image.open(work / "photos" / f"{i}.jpg").convert("RGB")
        enc.encode_image_tensors(enc.preprocess(im).unsqueeze(0))
    naive_ips = m / (time.perf_counter() - t0)
    # 3. the job, end to end (decode, preprocess, encode, fuse, write), between two model-only runs (noisy machines)
    before = model_only()
    db = work / f"db_{arch}"
    shutil.rmtree(db, ignore_errors=True)
    summary = embed(manifest, db, encoder=enc, batch_size=batch, workers=2, progress=False, compact=False)
    job_ips = summary.items / summary.seconds
    model_ips = (before + model_only()) / 2
    return {"arch": arch, "images": n, "batch": batch, "threads": threads, "model_only_ips": model_ips,
            "job_ips": job_ips, "naive_ips": naive_ips, "job_vs_model": job_ips / model_ips,
            "job_vs_naive": job_ips / naive_ips}


def bench_video(arch: str, n_videos: int, threads: int, work: Path) -> dict:
    from cope.demo import write_video
    from cope.encoders import create_encoder
    from cope.job import embed

    folder = work / "videos"
    folder.mkdir(exist_ok=True)
    lines = []
    for i in range(n_videos):
        p = folder / f"v{i}.mp4"
        if not p.exists():  # 5 s of 640x360 at 24 fps
            frames = []
            for t in range(120):
                im = Image.new("RGB", (640, 360), (30 + i * 10 % 200, 60, 90))
                ImageDraw.Draw(im).ellipse([100 + 3 * t, 100, 220 + 3 * t, 220], fill=(200, 180, 40))
                frames.append(im)
            write_video(p, frames, fps=24)
        lines.append(json.dumps({"domain": "video", "video_id": f"v{i}", "uri": p.name, "title": f"video {i}"}))
    manifest = folder / "videos.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    enc = create_encoder(f"open_clip:{arch}", threads=threads)
    shutil.rmtree(work / f"db_video_{arch}", ignore_errors=True)
    s = embed(manifest, work / f"db_video_{arch}", encoder=enc, batch_size=32, progress=False, compact=False)
    return {"arch": arch, "videos": n_videos, "frames": s.images, "seconds": s.seconds, "frames_per_s": s.images / s.seconds,
            "videos_per_s": s.items / s.seconds}


_RSS_CHILD = """
import json, sys
from cope.job import embed
from cope.encoders import create_encoder
s = embed(sys.argv[1], sys.argv[2], encoder=create_encoder("open_clip:cope-tiny-16", threads=2), batch_size=64,
          write_every=512, progress=False)
# VmHWM, not ru_maxrss: a spawned child's ru_maxrss starts at its parent's peak on Linux
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"items": s.items, "seconds": s.seconds, "peak_rss_mb": hwm / 1024}))
"""


def bench_rss(sizes: list[int], work: Path) -> list[dict]:
    folder = work / "small"
    folder.mkdir(exist_ok=True)
    for i in range(64):
        if not (folder / f"{i}.png").exists():
            Image.new("RGB", (96, 96), (i * 4, 100, 200 - i * 3)).save(folder / f"{i}.png")
    out = []
    for n in sizes:
        manifest = folder / f"m{n}.jsonl"
        manifest.write_text("\n".join(json.dumps({"domain": "image", "image_id": f"i{k}", "uri": f"{k % 64}.png",
                                                   "text": f"item number {k}"}) for k in range(n)) + "\n")
        shutil.rmtree(work / f"db_rss_{n}", ignore_errors=True)
        res = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(manifest), str(work / f"db_rss_{n}")],
                             capture_output=True, text=True, check=True)
        out.append({"items": n, **json.loads(res.stdout.strip().splitlines()[-1])})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--archs", nargs="+", default=["ViT-S-32", "ViT-B-32"])
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--rss-sizes", type=int, nargs="+", default=[1000, 20000])
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--work", default=None, help="folder for generated data (default: a temp folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="cope-bench-"))
    results: dict = {"cpu_count": os.cpu_count(), "images": [], "video": [], "rss": []}
    for arch in args.archs:
        r = bench_images(arch, args.images, args.batch, args.threads, work)
        results["images"].append(r)
        print(f"{arch:9s} batch {r['batch']} threads {r['threads']}: model-only {r['model_only_ips']:.1f} img/s | "
              f"job {r['job_ips']:.1f} img/s | naive {r['naive_ips']:.1f} img/s | job/model {r['job_vs_model']:.2f} "
              f"(goal >= 0.9) | job/naive {r['job_vs_naive']:.2f} (goal >= 3)", flush=True)
    v = bench_video(args.archs[0], args.videos, args.threads, work)
    results["video"].append(v)
    print(f"video ({v['arch']}, 8 frames of 640x360 5 s clips): {v['frames_per_s']:.1f} frames/s, "
          f"{v['videos_per_s']:.2f} videos/s", flush=True)
    if not args.skip_rss:
        results["rss"] = bench_rss(args.rss_sizes, work)
        for r in results["rss"]:
            print(f"RSS: {r['items']:6d} items -> peak {r['peak_rss_mb']:.0f} MB ({r['items'] / r['seconds']:.0f} items/s)")
        a, b = results["rss"][0], results["rss"][-1]
        print(f"RSS ratio {b['items']}/{a['items']} items: {b['peak_rss_mb'] / a['peak_rss_mb']:.2f} (flat = 1.0)")
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_embed.json").write_text(json.dumps(results, indent=2))
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
