"""``cope embed MANIFEST... --db DIR``: the resumable batch embedding job."""

from __future__ import annotations

import argparse
import sys

from cope.encoders import DEFAULT_MODEL


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"encoder: a registered name, open_clip:<arch> or local-dir:<folder> (default {DEFAULT_MODEL})")
    p.add_argument("--pretrained", default=None,
                   help="open_clip weights: a .pt/.safetensors file, local-dir:<folder>, or a hub tag")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed manifests into a LanceDB table (resumable)",
                       description="Embed product pages, images, videos and live streams into a LanceDB table. "
                       "Re-running skips items already stored with the same content and model. "
                       "Exit code 3 means some items failed (see `cope errors`).")
    p.add_argument("manifests", nargs="+", help="JSONL, CSV or Parquet manifests")
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    p.add_argument("--table", default="items")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="extraction threads")
    p.add_argument("--write-every", type=int, default=512, help="rows per upsert")
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    p.add_argument("--frames-per-slice", type=int, default=4, help="frames per live slice from a recording")
    p.add_argument("--video-decoder", choices=["auto", "decord", "av"], default="auto")
    p.add_argument("--image-weight", type=float, default=0.5, help="weight of the image part in the unified vector")
    p.add_argument("--text-weight", type=float, default=0.5, help="weight of the text part in the unified vector")
    p.add_argument("--domain", choices=["product", "image", "video", "live"], default=None,
                   help="domain of rows that have no 'domain' column")
    p.add_argument("--no-compact", action="store_true", help="skip merging fragments at the end")
    p.add_argument("--heads", default=None, help="trained heads (cope train --out) applied before writing")
    ray = p.add_argument_group("distributed (Ray Data; needs cope[ray])")
    ray.add_argument("--engine", choices=["local", "ray"], default="local")
    ray.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    ray.add_argument("--actors", type=int, default=1, help="encoder actors (one model each)")
    ray.add_argument("--cpus-per-actor", type=float, default=1.0)
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="> 0 puts the actors on GPUs")
    ray.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per extraction task")
    ray.add_argument("--records-per-task", type=int, default=64)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cope.content import ExtractOptions
    from cope.fusion import FusionConfig
    from cope.job import EmbedConfig, embed

    config = EmbedConfig(
        model=args.model, pretrained=args.pretrained, table=args.table, batch_size=args.batch_size,
        workers=args.workers, threads=args.threads, device=args.device, write_every=args.write_every,
        fusion=FusionConfig(image_weight=args.image_weight, text_weight=args.text_weight),
        extract=ExtractOptions(frames_per_video=args.frames, frames_per_slice=args.frames_per_slice,
                               video_decoder=args.video_decoder),
        default_domain=args.domain, progress=False if args.quiet else None, compact=not args.no_compact,
        heads=args.heads,
    )
    if args.engine == "ray":
        if args.heads:
            raise ValueError("--heads is not supported with --engine ray yet: embed, then `cope reproject`")
        try:
            from cope.ray_engine import embed_ray
        except ImportError as e:
            raise ValueError(f"the Ray engine needs Ray Data: pip install 'cope[ray]' ({e})") from None
        summary = embed_ray(args.manifests, args.db, config, address=args.address, actors=args.actors,
                            cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor,
                            cpus_per_task=args.cpus_per_task, records_per_task=args.records_per_task)
    else:
        summary = embed(args.manifests, args.db, config=config)
    print(summary)
    if summary.errors:
        print(f"{summary.failed + summary.invalid} failures; first ones:", file=sys.stderr)
        for line in summary.errors[:5]:
            print(f"  {line}", file=sys.stderr)
        print(f"all of them: cope errors --db {args.db} --table {args.table}", file=sys.stderr)
    return summary.exit_code
