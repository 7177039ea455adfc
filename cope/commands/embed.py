"""``cope embed MANIFEST... --db DIR``: the resumable batch embedding job."""

from __future__ import annotations

import argparse
import sys

from cope.commands.options import add_field
from cope.content import ExtractOptions
from cope.embed_config import EmbedConfig
from cope.errors import MissingExtraError
from cope.fusion import FusionConfig
from cope.manifest import parse_columns
from cope.media import RemoteOptions
from cope.records import DOMAINS


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    add_field(p, EmbedConfig, "model")
    add_field(p, EmbedConfig, "pretrained")
    add_field(p, EmbedConfig, "threads")
    add_field(p, EmbedConfig, "device")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="embed manifests into a LanceDB table (resumable)",
                       description="Embed product pages, images, videos and live streams into a LanceDB table. "
                       "Re-running skips items already stored with the same content and pipeline. "
                       "Exit code 3 means some items failed (see `cope errors`).")
    p.add_argument("manifests", nargs="+", help="manifests (JSONL, JSON arrays, CSV/TSV, Parquet), folders (their "
                   "manifests, or the pictures and videos in them) or globs; see docs/ingest.md")
    p.add_argument("--db", required=True, help="LanceDB directory or URI")
    add_field(p, EmbedConfig, "table")
    add_model_arguments(p)
    for name in ("batch_size", "text_batch_size", "workers", "write_every"):
        add_field(p, EmbedConfig, name)
    add_field(p, ExtractOptions, "frames_per_video", "--frames")
    add_field(p, ExtractOptions, "frames_per_slice")
    add_field(p, ExtractOptions, "max_images_per_product")
    add_field(p, ExtractOptions, "video_decoder", choices=["auto", "decord", "av"])
    add_field(p, FusionConfig, "image_weight", help="weight of the image part in the unified vector")
    add_field(p, FusionConfig, "text_weight", help="weight of the text part in the unified vector")
    ocr = p.add_argument_group("text in pictures (OCR; needs cope[ocr])")
    add_field(ocr, ExtractOptions, "ocr", help="read text written in pictures (product images, video frames, "
              "live snapshots) into an `ocr` part of the unified vector")
    add_field(ocr, FusionConfig, "ocr_weight", help="weight of the OCR part in the unified vector")
    add_field(ocr, ExtractOptions, "ocr_max_side")
    add_field(ocr, ExtractOptions, "ocr_images")
    add_field(ocr, ExtractOptions, "ocr_body_text")
    add_field(p, EmbedConfig, "default_domain", "--domain", choices=DOMAINS)
    cols = p.add_argument_group("manifest columns and media paths (docs/ingest.md)")
    add_field(cols, EmbedConfig, "columns", "--column", action="append", default=[], metavar="FIELD=NAME",
              help=EmbedConfig.model_fields["columns"].description + "; without it, common names are recognised "
              "(id, sku, name, image_path, url, caption...)")
    add_field(cols, EmbedConfig, "media_root")
    remote = p.add_argument_group("remote media: http(s)://, s3://, gs://, az:// (needs cope[remote])")
    add_field(remote, RemoteOptions, "timeout_s", "--remote-timeout", dest="remote_timeout_s")
    add_field(remote, RemoteOptions, "total_timeout_s", "--remote-total-timeout", dest="remote_total_timeout_s")
    add_field(remote, RemoteOptions, "retries", "--remote-retries", dest="remote_retries")
    add_field(remote, RemoteOptions, "backoff_s", "--remote-backoff", dest="remote_backoff_s")
    add_field(remote, RemoteOptions, "per_host", "--remote-per-host", dest="remote_per_host")
    p.add_argument("--no-compact", action="store_true", help="skip merging fragments at the end")
    add_field(p, EmbedConfig, "heads")
    add_field(p, EmbedConfig, "projection")
    ray = p.add_argument_group("distributed (Ray Data; needs cope[ray])")
    ray.add_argument("--engine", choices=["local", "ray"], default="local")
    ray.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    ray.add_argument("--actors", type=int, default=1, help="encoder actors (one model each)")
    ray.add_argument("--cpus-per-actor", type=float, default=1.0)
    ray.add_argument("--gpus-per-actor", type=float, default=0.0, help="> 0 puts the actors on GPUs")
    ray.add_argument("--cpus-per-task", type=float, default=1.0, help="CPUs per extraction task")
    ray.add_argument("--records-per-task", type=int, default=64)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> EmbedConfig:
    """The run's :class:`EmbedConfig` from parsed flags (pydantic validates the values)."""
    return EmbedConfig(
        model=args.model, pretrained=args.pretrained, table=args.table, batch_size=args.batch_size,
        text_batch_size=args.text_batch_size, workers=args.workers, threads=args.threads, device=args.device,
        write_every=args.write_every,
        fusion=FusionConfig(image_weight=args.image_weight, text_weight=args.text_weight, ocr_weight=args.ocr_weight),
        extract=ExtractOptions(frames_per_video=args.frames_per_video, frames_per_slice=args.frames_per_slice,
                               max_images_per_product=args.max_images_per_product, video_decoder=args.video_decoder,
                               ocr=args.ocr, ocr_max_side=args.ocr_max_side, ocr_images=args.ocr_images,
                               ocr_body_text=args.ocr_body_text),
        default_domain=args.default_domain, progress=False if args.quiet else None, compact=not args.no_compact,
        heads=args.heads, projection=args.projection, columns=parse_columns(args.columns or []), media_root=args.media_root,
        remote=RemoteOptions(timeout_s=args.remote_timeout_s, total_timeout_s=args.remote_total_timeout_s,
                             retries=args.remote_retries, backoff_s=args.remote_backoff_s,
                             per_host=args.remote_per_host),
    )


def run(args: argparse.Namespace) -> int:
    from cope import media
    from cope.manifest import check_inputs, expand_inputs

    config = config_from_args(args)
    media.configure(config.remote)
    inputs = expand_inputs(args.manifests)  # globs, folders; a missing input is an error before anything loads
    check_inputs(inputs, config.manifest_options())  # one usage error for unmappable columns, before any model
    args.manifests = [str(p) for p in inputs]
    from cope.job import embed  # LanceDB and the job load only once the inputs are known to be usable

    if args.engine == "ray":
        try:
            from cope.ray_engine import embed_ray
        except ImportError as e:
            raise MissingExtraError(f"the Ray engine needs Ray Data: pip install 'cope[ray]' ({e})") from None
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
