"""The Ray Data engine on a two-node Ray cluster vs the single-machine job, and 1 vs 2 encoder actors.

    .venv/bin/python benchmarks/bench_ray.py                                  # 2,000 images, tiny model + ViT-S-32
    .venv/bin/python benchmarks/bench_ray.py --images 200 --models test-tiny-16 --repeats 1 --small 32  # a quick look

Generates small JPEGs (64-128 px, PIL) under /tmp, starts a real two-node Ray cluster on this machine
(``ray.cluster_utils.Cluster``: two raylets and two object stores of 150 MiB, 1 CPU each, under a private
``RAY_TMPDIR``; ``--soft-limit``: see :func:`tests.ray_nodes.two_node_cluster`), and for each model, after one first Ray run that
starts the worker processes (timed apart), runs in A B C D A B C D order, into fresh tables:

- A: the local job (``cope.job.embed``, ``--threads`` torch threads, 2 extraction threads),
- B: ``embed_ray(address=cluster)`` with 1 actor (1 torch thread, 0.5 CPU), extraction tasks at 0.25 CPU,
- C: the same with 2 actors,
- D: B on the first ``--small`` images only: a Ray run's fixed cost, and so B's rate beyond it.

It prints ray/local time ratios and the 1 -> 2 actor speed-up (min and median over the rounds), the per-CPU rates
of the two stages measured alone in this process (decode + preprocess; the model on one thread: the per-actor
ceiling), the pickled size of each Ray stage, and writes ``benchmarks/results/bench_ray.json``. Random weights
(``pretrained=None``): speed does not depend on them. The machine is shared and has 2 cores: the two "nodes" share
them, so 2 actors can at best use the second core, and other processes make single timings noisy (hence the
alternation, min and median).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.conftest: the tiny model's config
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_embed: 800x800 photos

import numpy as np  # noqa: E402

from tests.media import photo  # noqa: E402
from tests.ray_nodes import two_node_cluster  # noqa: E402


def make_images(folder: Path, n: int, lo: int = 64, hi: int = 128) -> Path:
    """``n`` small photo-like JPEGs (gradient, noise, shapes; sides in [lo, hi]) and their image manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        if not path.exists():
            w, h = (int(v) for v in np.random.default_rng(i).integers(lo, hi + 1, 2))
            photo(w, h, seed=i, shapes=3).save(path, quality=90)
        lines.append(json.dumps({"domain": "image", "image_id": f"i{i}", "uri": path.name}))
    manifest = folder / f"images_{n}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


class _StageSizes(logging.Handler):
    """Keeps the stage payload sizes ``cope.ray_engine`` logs (``extra={"stage_bytes": ...}``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.sizes: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "stage_bytes"):
            self.sizes = dict(record.stage_bytes)


def stage_rates(model: str, manifest: Path, large: Path | None = None, n: int = 256) -> dict[str, float]:
    """Each stage alone on one CPU: decode + preprocess (``prepare_record``) of the benchmark's images (and of the
    800x800 JPEGs of ``large``) per second, the model's images/s on one thread, and its FLOPs per image (torch's
    FlopCounterMode: matmuls and convolutions), from which GPU rates are extrapolated in docs/distributed.md."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cope.content import ExtractOptions
    from cope.embedding import prepare_record
    from cope.encoders import create_encoder
    from cope.manifest import read_manifest

    def decode_rate(path: Path) -> tuple[float, list]:
        rows = [r for _, r in zip(range(n), read_manifest(path))]
        t0 = time.perf_counter()
        prepared = [prepare_record(r.record, r.where, "", encoder.preprocess, options) for r in rows]
        return len(rows) / (time.perf_counter() - t0), [t for p in prepared for per in p.tensors for t in per]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = create_encoder(model, threads=1)
        options = ExtractOptions(image_size=encoder.image_size)
        decode, tensors = decode_rate(manifest)
        out = {"decode_preprocess_per_cpu": decode}
        if large is not None:
            out["decode_preprocess_800px_per_cpu"] = decode_rate(large)[0]
        with FlopCounterMode(display=False) as flops:
            encoder.encode_image_tensors(torch.stack(tensors[:32]))  # also the warm-up
        out["image_gflops_per_image"] = flops.get_total_flops() / 32 / 1e9
        t0 = time.perf_counter()
        for i in range(0, len(tensors), 32):
            encoder.encode_image_tensors(torch.stack(tensors[i : i + 32]))
        out["model_per_thread"] = len(tensors) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    return out


def run_once(kind: str, db: Path, manifest: Path, images: int, *, local_cfg, ray_cfg, address: str,
             per_task: int) -> float:
    """Seconds of one run into a fresh table: ``local``, or ``ray<N>`` (N actors of 0.5 CPU on the cluster)."""
    from cope.job import embed
    from cope.ray_engine import embed_ray

    shutil.rmtree(db, ignore_errors=True)
    t = time.perf_counter()
    if kind == "local":
        s = embed(manifest, db, config=local_cfg)
    else:
        s = embed_ray([manifest], db, ray_cfg, address=address, actors=int(kind[3:]), cpus_per_actor=0.5,
                      cpus_per_task=0.25, records_per_task=per_task)
    seconds = time.perf_counter() - t
    assert (s.done, s.failed) == (images, 0), s
    shutil.rmtree(db, ignore_errors=True)
    return seconds


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--models", default="test-tiny-16,ViT-S-32", help="open_clip architectures, comma-separated")
    ap.add_argument("--repeats", default="3,2", help="rounds per model (one number, or one per model)")
    ap.add_argument("--small", type=int, default=64, help="images of the small Ray run (its fixed cost)")
    ap.add_argument("--soft-limit", type=int, default=8,
                    help="Ray's num_workers_soft_limit on the 1-CPU nodes (0: Ray's default, 1 here)")
    ap.add_argument("--large", type=int, default=64, help="800x800 JPEGs for the decode rate alone (0: skip)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the local job")
    ap.add_argument("--records-per-task", type=int, default=64)
    ap.add_argument("--work", default=None, help="folder for images and tables (default: a new one in /tmp)")
    args = ap.parse_args()

    from tests.conftest import TINY_CONFIG, TINY_MODEL

    archs = args.models.split(",")
    counts = [int(r) for r in str(args.repeats).split(",")]
    repeats = {a: counts[min(i, len(counts) - 1)] for i, a in enumerate(archs)}

    work = Path(args.work or tempfile.mkdtemp(prefix="cope-bench-ray-", dir="/tmp"))
    configs = work / "model_configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    t0 = time.perf_counter()
    manifest = make_images(work / "images", args.images)
    small = manifest.with_name(f"first_{args.small}.jsonl")
    small.write_text("".join(manifest.read_text().splitlines(keepends=True)[: args.small]))
    large = None
    if args.large:
        from bench_embed import catalog

        large = catalog(work / "large", args.large)
    print(f"{args.images} JPEGs (64-128 px) in {work / 'images'} ({time.perf_counter() - t0:.1f} s)", flush=True)


    from cope._torchvision_fix import ensure_torchvision_importable

    ensure_torchvision_importable()
    from cope.job import EmbedConfig

    sizes = _StageSizes()
    logging.getLogger("cope.ray_engine").addHandler(sizes)
    logging.getLogger("cope.ray_engine").setLevel(logging.INFO)

    t0 = time.perf_counter()
    with two_node_cluster(configs, args.soft_limit) as cluster:
        cluster_s = time.perf_counter() - t0
        print(f"two-node cluster up in {cluster_s:.1f} s at {cluster.address}", flush=True)
        results: dict = {"images": args.images, "cpus": os.cpu_count(), "cluster_start_s": cluster_s,
                         "num_workers_soft_limit": args.soft_limit or "ray default", "models": {}}
        for arch in archs:
            model = f"open_clip:{arch}"
            local_cfg = EmbedConfig(model=model, threads=args.threads, progress=False, compact=False)
            ray_cfg = local_cfg.model_copy(update={"threads": 1})
            run = functools.partial(run_once, local_cfg=local_cfg, ray_cfg=ray_cfg, address=cluster.address,
                                    per_task=args.records_per_task)
            # first Ray run of the model: worker processes start and import torch
            cold = run("ray1", work / "db_cold", small, args.small)
            times: dict[str, list[float]] = {"local": [], "ray1": [], "ray2": [], "ray1_small": []}
            for r in range(repeats[arch]):
                for kind in times:
                    m, n = (small, args.small) if kind.endswith("_small") else (manifest, args.images)
                    times[kind].append(run(kind.removesuffix("_small"), work / f"db_{kind}", m, n))
                print(f"  {arch} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()),
                      flush=True)
            rates = stage_rates(model, manifest, large)
            # a Ray run costs a fixed part (actor and worker start-up, model load, scheduling) plus a part per item:
            # the items beyond the small run over the time beyond it, per round
            marginal = [(args.images - args.small) / max(big - little, 1e-9)
                        for big, little in zip(times["ray1"], times["ray1_small"])]
            res = {
                "seconds": times, "cold_ray1_small_s": cold, "small_images": args.small,
                "ray1_over_local": summary([b / a for a, b in zip(times["local"], times["ray1"])]),
                "ray2_over_local": summary([c / a for a, c in zip(times["local"], times["ray2"])]),
                "speedup_1_to_2_actors": summary([b / c for b, c in zip(times["ray1"], times["ray2"])]),
                "items_per_s": {k: summary([args.images / t for t in v]) for k, v in times.items()
                                if not k.endswith("_small")},
                "ray1_marginal_items_per_s": summary(marginal),
                "ray1_fixed_s": summary([t - args.small / m for t, m in zip(times["ray1_small"], marginal)]),
                "stage_rates_per_cpu": rates, "stage_bytes": sizes.sizes,
            }
            results["models"][arch] = res
            ips = res["items_per_s"]
            print(f"{arch}, {args.images} images, {repeats[arch]} rounds (min / median):\n"
                  f"  items/s (median): local {ips['local']['median']:.0f} | ray 1 actor {ips['ray1']['median']:.0f} "
                  f"| ray 2 actors {ips['ray2']['median']:.0f} | first ray run ({args.small} images) {cold:.1f} s\n"
                  f"  time ray(1 actor)/local {res['ray1_over_local']['min']:.2f} / "
                  f"{res['ray1_over_local']['median']:.2f} | ray(2 actors)/local {res['ray2_over_local']['min']:.2f} / "
                  f"{res['ray2_over_local']['median']:.2f} | 1 -> 2 actors speed-up "
                  f"{res['speedup_1_to_2_actors']['min']:.2f} / {res['speedup_1_to_2_actors']['median']:.2f}\n"
                  f"  ray 1 actor: fixed {res['ray1_fixed_s']['min']:.1f} / {res['ray1_fixed_s']['median']:.1f} s "
                  f"per run + {res['ray1_marginal_items_per_s']['median']:.0f} items/s (median) beyond it\n"
                  f"  alone on 1 CPU: decode+preprocess {rates['decode_preprocess_per_cpu']:.0f} img/s "
                  f"({rates.get('decode_preprocess_800px_per_cpu', float('nan')):.0f} at 800x800), "
                  f"model {rates['model_per_thread']:.0f} img/s ({rates['image_gflops_per_image']:.2f} GFLOPs/img)"
                  " | stage payloads "
                  + ", ".join(f"{k} {v:,} B" for k, v in sizes.sizes.items()), flush=True)
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_ray.json").write_text(json.dumps(results, indent=2))
    print(f"written {out / 'bench_ray.json'}; images left in {work}")


if __name__ == "__main__":
    main()
