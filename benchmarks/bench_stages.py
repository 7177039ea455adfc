"""Embedding speed per stage, against the serial bound and against LanceDB's open-clip embedding function.

    .venv/bin/python benchmarks/bench_stages.py                                    # 256 JPEGs, 3 rounds, both models
    .venv/bin/python benchmarks/bench_stages.py --images 64 --repeats 1 --models open_clip:ViT-S-32   # smoke run

In one run, on the same generated 800x800 JPEGs and the same model (open_clip archs with random weights: speed does
not depend on them; ``cope-default`` with its packaged weights), each round times, one after the other (A B A B):

* decode alone: the job's own ``load_image`` (draft decoding to the encoder's size hint), in ``--workers`` threads;
* preprocess alone: the encoder's ``preprocess`` on the decoded pictures, in ``--workers`` threads;
* model alone: ``encode_image_tensors`` on the preprocessed batches (``--threads`` torch threads);
* the cope job: ``cope.embed`` into a fresh table (hash, decode, preprocess, encode, fuse, write; no compaction);
* LanceDB: its ``open-clip`` embedding function (``lancedb.embeddings`` registry; it decodes, preprocesses and
  encodes one image per forward pass in a thread pool) on the same files, with the same model in it (for
  ``cope-default``, the function's model is swapped for an adapter calling cope-default's image tower, with timm's
  own preprocessing), then the vectors added to a fresh LanceDB table.

The serial bound is decode + preprocess + model, each timed alone. It prints min and median wall seconds per
contender (and median CPU seconds of the process), the job's seconds per stage, and the ratios job/serial bound
(goal >= 0.9) and job/LanceDB (goal >= 1.8), from the medians (and from the minima). Results go to
``benchmarks/results/bench_stages.json``. Run it on a quiet machine: other processes' load skews wall-clock ratios
(LanceDB's many threads then take a larger share of the cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # LanceDB's function shows a bar per batch
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_embed import catalog  # noqa: E402
from cope.embed_config import STAGES  # noqa: E402

CONTENDERS = ("decode", "preprocess", "model", "job", "lancedb")


class _ImageTowerAsOpenClip:
    """The ``encode_image`` an open_clip model offers LanceDB's function, backed by a cope encoder."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def encode_image(self, batch: Any) -> Any:
        import torch

        return torch.from_numpy(self.encoder.encode_image_tensors(batch))


def lancedb_function(model: str, encoder: Any) -> Any:
    """LanceDB's registered ``open-clip`` function running ``encoder``'s model (and the model library's own
    preprocessing: ``encoder.reference_transform``)."""
    from cope._torchvision_fix import ensure_torchvision_importable

    ensure_torchvision_importable()
    from lancedb.embeddings import get_registry

    arch = model.split(":", 1)[1] if model.startswith("open_clip:") else "ViT-S-32"
    func = get_registry().get("open-clip").create(name=arch, pretrained="")  # "" = random weights, no hub
    if model.startswith("open_clip:"):
        func._model = encoder.model  # the very weights cope uses
    else:
        func._model = _ImageTowerAsOpenClip(encoder)
    func._preprocess = encoder.reference_transform
    return func


def timed_run(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (this process, all threads) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def bench_model(model: str, n: int, batch: int, threads: int, workers: int, repeats: int, work: Path) -> dict:
    import lancedb
    import numpy as np
    import torch

    from cope.encoders import create_encoder
    from cope.extractors.image import load_image
    from cope.job import embed

    manifest = catalog(work / "photos", n)
    paths = [str(work / "photos" / f"{i}.jpg") for i in range(n)]
    encoder = create_encoder(model, threads=threads)
    torch.set_num_threads(threads)
    hint = encoder.image_size  # the job's decode hint (no OCR)
    pool = ThreadPoolExecutor(workers)
    images: list = []
    tensors: list = []

    def decode() -> None:
        images[:] = list(pool.map(lambda p: load_image(p, size_hint=hint), paths))

    def preprocess() -> None:
        tensors[:] = list(pool.map(encoder.preprocess, images))

    def model_only() -> None:
        for i in range(0, n, batch):
            encoder.encode_image_tensors(torch.stack(tensors[i : i + batch]))

    stages: list[dict[str, float]] = []

    def job(m: Path = manifest, tag: str = "job") -> None:
        db = work / f"db_{tag}"
        shutil.rmtree(db, ignore_errors=True)
        summary = embed(m, db, encoder=encoder, batch_size=batch, workers=workers, threads=threads, progress=False,
                        compact=False)
        assert summary.done == summary.items and summary.failed == 0, summary
        if tag == "job":
            stages.append(dict(summary.stages))

    func = lancedb_function(model, encoder)

    def lancedb_run(p: list[str] = paths) -> None:
        folder = work / "db_lancedb"
        shutil.rmtree(folder, ignore_errors=True)
        vectors = func.compute_source_embeddings(p)
        lancedb.connect(folder).create_table("t", [{"image_uri": u, "vector": np.asarray(v, np.float32)}
                                                  for u, v in zip(p, vectors)])

    # warm-up: every contender once, small
    decode()
    preprocess()
    encoder.encode_image_tensors(torch.stack(tensors[:batch]))
    job(catalog(work / "photos", min(n, batch)), "warmup")
    lancedb_run(paths[:8])

    runs: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    cpu: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    for r in range(repeats):
        for name, fn in zip(CONTENDERS, (decode, preprocess, model_only, job, lancedb_run)):
            wall, cpu_s = timed_run(fn)
            runs[name].append(wall)
            cpu[name].append(cpu_s)
            logging.getLogger("bench").info("%s round %d %s: %.2f s (%.2f CPU-s)", model, r + 1, name, wall, cpu_s)
    pool.shutdown()

    def summarise(values: dict[str, list[float]], pick: Callable[[list[float]], float]) -> dict[str, float]:
        s = {c: pick(values[c]) for c in CONTENDERS}
        s["serial_bound"] = s["decode"] + s["preprocess"] + s["model"]
        return s

    med, best, med_cpu = summarise(runs, statistics.median), summarise(runs, min), summarise(cpu, statistics.median)
    job_stages = {k: statistics.median(s.get(k, 0.0) for s in stages) for k in STAGES if k in stages[-1]}
    return {"model": model, "images": n, "batch": batch, "threads": threads, "workers": workers, "repeats": repeats,
            "decoded_size": list(images[0].size), "runs_s": runs, "median_s": med, "min_s": best,
            "cpu_runs_s": cpu, "median_cpu_s": med_cpu,
            "job_stages_s": job_stages,
            "job_vs_serial_bound": med["serial_bound"] / med["job"], "job_vs_lancedb": med["lancedb"] / med["job"],
            "job_vs_serial_bound_min": best["serial_bound"] / best["job"],
            "job_vs_lancedb_min": best["lancedb"] / best["job"]}


def report(r: dict) -> None:
    n, med, best, cpu = r["images"], r["median_s"], r["min_s"], r["median_cpu_s"]
    print(f"\n{r['model']}: {n} JPEGs 800x800 (decoded at {r['decoded_size'][0]}x{r['decoded_size'][1]}), batch "
          f"{r['batch']}, {r['threads']} torch threads, {r['workers']} extraction threads, {r['repeats']} rounds")
    for c in (*CONTENDERS, "serial_bound"):
        print(f"  {c:13s} median {med[c]:7.2f} s ({n / med[c]:7.1f} img/s)   min {best[c]:7.2f} s "
              f"({n / best[c]:7.1f} img/s)   CPU {cpu[c]:7.2f} s")
    print("  job stages (s, median over rounds; decode/preprocess summed over threads): "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["job_stages_s"].items()))
    print(f"  CPU seconds, job / serial bound: {cpu['job'] / cpu['serial_bound']:.2f} (work the job adds; a cross-check "
          "that load from other processes does not skew)")
    print(f"  job / serial bound: {r['job_vs_serial_bound']:.2f} (min-based {r['job_vs_serial_bound_min']:.2f}; "
          f"goal >= 0.9)")
    print(f"  job / LanceDB open-clip function: {r['job_vs_lancedb']:.2f}x (min-based {r['job_vs_lancedb_min']:.2f}x;"
          f" goal >= 1.8)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of all contenders (A B A B)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--workers", type=int, default=2, help="extraction threads (the job's default)")
    ap.add_argument("--models", nargs="+", default=["cope-default", "open_clip:ViT-S-32"])
    ap.add_argument("--work", default=None, help="folder for generated data (default: a temp folder)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log each timing and the job's INFO lines")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    work = Path(args.work or tempfile.mkdtemp(prefix="cope-bench-stages-"))
    results = {"cpu_count": os.cpu_count(), "models": []}
    for model in args.models:
        r = bench_model(model, args.images, args.batch, args.threads, args.workers, args.repeats, work)
        results["models"].append(r)
        report(r)
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_stages.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
