"""Single-machine job vs the Ray Data engine on the same catalog; Ray start-up cost.

    .venv/bin/python benchmarks/bench_ray.py --images 256 --arch ViT-S-32

Both runs embed the same generated 800x800 JPEG catalog into fresh tables; the ratio is ray / local wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embed import catalog


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--arch", default="ViT-S-32")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gpus-per-actor", type=float, default=0.0)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="cope-bench-ray-"))
    manifest = catalog(work / "photos", args.images)

    import ray

    from cope.job import EmbedConfig, embed
    from cope.ray_engine import embed_ray

    config = EmbedConfig(model=f"open_clip:{args.arch}", threads=args.threads, progress=False, compact=False,
                         device="cuda" if args.gpus_per_actor else "cpu")
    t0 = time.perf_counter()
    local = embed(manifest, work / "db_local", config=config)
    local_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False)
    startup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    dist = embed_ray([manifest], work / "db_ray", config, actors=args.actors, gpus_per_actor=args.gpus_per_actor)
    ray_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = embed_ray([manifest], work / "db_ray", config, actors=args.actors, gpus_per_actor=args.gpus_per_actor)
    rerun_s = time.perf_counter() - t0
    ray.shutdown()
    res = {"images": args.images, "arch": args.arch, "cpus": os.cpu_count(), "local_s": local_s,
           "local_ips": local.items / local_s, "ray_startup_s": startup_s, "ray_s": ray_s, "ray_ips": dist.items / ray_s,
           "ray_over_local": ray_s / local_s, "ray_rerun_noop_s": rerun_s, "rerun_skipped": again.skipped}
    print(f"{args.images} images, {args.arch}: local {local_s:.1f} s ({res['local_ips']:.1f} img/s) | "
          f"ray {ray_s:.1f} s ({res['ray_ips']:.1f} img/s) + start-up {startup_s:.1f} s | "
          f"ray/local time {res['ray_over_local']:.2f} | no-op re-run on ray {rerun_s:.1f} s")
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ray.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
