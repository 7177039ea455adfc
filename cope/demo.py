"""A small generated catalog of all four domains (product pages, images, short videos, a live stream).

Each product is a coloured shape; its product page, a standalone photo, a short video and a live-stream slice all
show it, with light domain nuisance (other background, motion, overlay). ``metadata.product_key`` is the ground truth.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

_COLOURS = [("red", (220, 40, 40)), ("green", (40, 170, 60)), ("blue", (40, 70, 210)), ("yellow", (235, 200, 30)),
            ("purple", (140, 50, 170)), ("orange", (245, 130, 20)), ("teal", (20, 160, 160)), ("pink", (240, 110, 170))]
_SHAPES = ["circle", "square", "triangle", "diamond"]
_KINDS = {"circle": "ball", "square": "box", "triangle": "tent", "diamond": "kite"}


def draw_product(shape: str, colour: tuple[int, int, int], size: int = 128, background: tuple[int, int, int] = (245, 245, 245),
                 offset: tuple[int, int] = (0, 0), scale: float = 0.6) -> Image.Image:
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    r = size * scale / 2
    cx, cy = size / 2 + offset[0], size / 2 + offset[1]
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour)
    else:
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour)
    return im


def write_video(path: str | Path, frames: Sequence[Image.Image], fps: int = 8) -> None:
    """Write RGB frames to an mp4 with PyAV (H.264 when available, MPEG-4 Part 2 otherwise)."""
    import av

    w, h = frames[0].size
    with av.open(str(path), "w") as container:
        try:
            stream = container.add_stream("libx264", rate=fps)
        except Exception:  # an ffmpeg build without x264
            stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for im in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(im.convert("RGB")), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_demo_catalog(out_dir: str | Path, n_products: int = 8, image_size: int = 128, video_frames: int = 12,
                      live_slice_seconds: float = 10.0) -> Path:
    """Write images, videos, snapshots and ``catalog.jsonl`` under ``out_dir``; return the manifest path."""
    out = Path(out_dir)
    (out / "media").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    live_snapshots: list[dict] = []
    live_asr: list[dict] = []
    live_items: list[dict] = []
    for i in range(n_products):
        cname, colour = _COLOURS[i % len(_COLOURS)]
        shape = _SHAPES[(i // len(_COLOURS) + i) % len(_SHAPES)]
        key, title = f"p{i:03d}", f"{cname} {_KINDS[shape]}"
        main, side = out / "media" / f"{key}_main.jpg", out / "media" / f"{key}_side.png"
        draw_product(shape, colour, image_size).save(main, quality=90)
        draw_product(shape, colour, image_size, offset=(10, 5), scale=0.5).save(side)
        rows.append({"domain": "product", "item_id": key, "title": f"{title.title()}",
                     "description": f"A {title} from the cope demo shop.", "attributes": {"colour": cname},
                     "images": [f"media/{main.name}", f"media/{side.name}"], "product_key": key,
                     "category": _KINDS[shape]})
        photo = out / "media" / f"{key}_photo.jpg"
        draw_product(shape, colour, image_size, background=(200, 220, 235), scale=0.45).save(photo, quality=85)
        rows.append({"domain": "image", "image_id": f"img-{key}", "uri": f"media/{photo.name}",
                     "text": f"photo of a {title}", "product_key": key, "category": _KINDS[shape]})
        frames = [draw_product(shape, colour, image_size, background=(60, 60, 60), offset=(int(20 * np.sin(t / 2)), 0),
                               scale=0.5) for t in range(video_frames)]
        video = out / "media" / f"{key}_video.mp4"
        write_video(video, frames)
        rows.append({"domain": "video", "video_id": f"vid-{key}", "uri": f"media/{video.name}",
                     "title": f"unboxing the {title}", "caption": f"look at this {cname} {_KINDS[shape]}",
                     "product_key": key, "category": _KINDS[shape]})
        if i < 3:  # a live stream that sells the first three products, one per slice
            for j in range(2):
                snap = out / "media" / f"live_{key}_{j}.jpg"
                im = draw_product(shape, colour, image_size, background=(30, 30, 80), offset=(j * 6, -4), scale=0.55)
                ImageDraw.Draw(im).rectangle([0, image_size - 14, image_size, image_size], fill=(255, 255, 255))
                im.save(snap, quality=85)
                live_snapshots.append({"t": i * live_slice_seconds + 2 + 4 * j, "uri": f"media/{snap.name}"})
            live_asr.append({"start": i * live_slice_seconds, "end": i * live_slice_seconds + 8,
                             "text": f"now the {title}, only today"})
            live_items.append({"start": i * live_slice_seconds, "end": (i + 1) * live_slice_seconds, "item_id": key})
    rows.append({"domain": "live", "live_id": "live-001", "title": "demo shop live", "snapshots": live_snapshots,
                 "asr": live_asr, "items": live_items, "slice_seconds": live_slice_seconds})
    manifest = out / "catalog.jsonl"
    with manifest.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    write_demo_behaviour(out, n_products, live_slice_seconds)
    logger.info("wrote a demo catalog of %d records to %s", len(rows), manifest)
    return manifest


def write_demo_behaviour(out: Path, n_products: int, live_slice_seconds: float = 10.0, n_users: int = 12,
                         seed: int = 0) -> tuple[Path, Path]:
    """``events.csv`` (users viewing product pages, videos and live slices of the demo catalog) and ``links.csv``
    (the platform's links from videos and images to the products they show), for ``cope join``."""
    rng = np.random.default_rng(seed)
    events = ["user_id,ts,domain,id,offset"]
    start = 1_767_225_600  # 2026-01-01T00:00:00Z
    for u in range(n_users):
        liked = rng.choice(n_products, size=min(3, n_products), replace=False)
        for j in range(8):
            i = int(rng.choice(liked))
            key, t = f"p{i:03d}", start + u * 3600 + j * 60
            kind = rng.integers(0, 3)
            if kind == 0:
                events.append(f"u{u:02d},{t},product,{key},")
            elif kind == 1 or i >= 3:
                events.append(f"u{u:02d},{t},video,vid-{key},")
            else:  # the live stream sells the first three products, one per slice
                events.append(f"u{u:02d},{t},live,live-001,{i * live_slice_seconds + 3:g}")
    links = ["domain,id,product_id"] + [f"video,vid-p{i:03d},p{i:03d}" for i in range(n_products)] + [
        f"image,img-p{i:03d},p{i:03d}" for i in range(n_products)]
    (out / "events.csv").write_text("\n".join(events) + "\n")
    (out / "links.csv").write_text("\n".join(links) + "\n")
    return out / "events.csv", out / "links.csv"
