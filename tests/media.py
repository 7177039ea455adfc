"""Small generated media for tests: images in every mode, corrupt files, videos written with PyAV."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cope.demo import draw_product, write_video


def photo(width: int, height: int, seed: int, shapes: int = 5) -> Image.Image:
    """A photo-like picture: a smooth gradient, sensor-like noise and ``shapes`` filled ellipses (so that JPEG sizes
    and decoding costs are realistic). Tests and benchmarks use it."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([120 + 100 * x / width, 120 + 80 * y / height, 150 + 60 * (1 - x / width)], axis=-1)
    im = Image.fromarray(np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(shapes):
        x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        draw.ellipse([x0, y0, x0 + width // 3, y0 + height // 3], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


def save_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (64, 48), fmt: str | None = None, **kw) -> Path:
    im = draw_product("circle", (200, 30, 30), max(size)).resize(size)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(128)
    elif mode != "RGB":
        im = im.convert(mode)
    im.save(path, format=fmt, **kw)
    return path


def corrupt_file(path: Path, kind: str = "garbage") -> Path:
    if kind == "garbage":
        path.write_bytes(b"this is not an image or a video" * 10)
    elif kind == "truncated_jpeg":
        buf = io.BytesIO()
        draw_product("square", (0, 0, 200), 256).save(buf, format="JPEG", quality=95)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    return path


def make_video(path: Path, n_frames: int = 16, size: int = 64, fps: int = 8) -> Path:
    frames = [draw_product("square", (i * 15 % 255, 100, 200), size, offset=(i - n_frames // 2, 0))
              for i in range(n_frames)]
    write_video(path, frames, fps=fps)
    return path


def exif_rotated_jpeg(path: Path) -> Path:
    """A 60x30 landscape JPEG whose EXIF orientation (6: rotate 90 CW) makes it 30x60 portrait."""
    im = Image.new("RGB", (60, 30), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, format="JPEG", exif=exif.tobytes())
    return path
