"""Images: Pillow decode with EXIF orientation, any mode to RGB, a pixel limit, and draft decoding for JPEG.

Files are opened through :func:`cope.hashing.open_media`: regular files only, at most ``max_bytes``
(:data:`cope.content.MAX_IMAGE_BYTES` by default). A remote image (``http(s)://``, ``s3://``, ``gs://``, ``az://``)
is read into memory within the same cap, with the timeouts, retries and per-host limit of :mod:`cope.media`.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from cope.content import MAX_IMAGE_BYTES, Content, ExtractionError, ExtractOptions
from cope.hashing import open_media, stat_media
from cope.records import ImageRecord

logger = logging.getLogger(__name__)

#: a JPEG is decoded at a reduced scale only down to this many times the size hint on its short side, so that the
#: antialiased resize to the model's input still does most of the downscaling: cope-default's vectors of real photos
#: then stay within cosine 0.998 of a full decode (as with the former 2x); decoding right down to the hint gave 0.983
DRAFT_MARGIN = 1.5


def _check_local(uri: str, max_bytes: int | None = None) -> Path:
    """A local regular file of at most ``max_bytes``, or ExtractionError with the reason (see ``stat_media``)."""
    stat_media(uri, max_bytes)
    return Path(uri)


def to_rgb(im: Image.Image) -> Image.Image:
    """RGBA/LA/P-with-transparency composited on white; CMYK, palette, greyscale, 16-bit converted to RGB."""
    if im.mode == "RGB":
        return im
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = im.point(lambda v: v / 256).convert("L")
    return im.convert("RGB")


def load_image(uri: str, max_pixels: int = 64_000_000, size_hint: int | None = None,
               max_bytes: int | None = MAX_IMAGE_BYTES) -> Image.Image:
    """Open an image file as RGB. Raises ExtractionError with the reason when it cannot.

    ``size_hint`` lets a JPEG decode at a reduced scale (libjpeg's DCT scaling: 1/2, 1/4 or 1/8), the smallest that
    keeps both sides at least :data:`DRAFT_MARGIN` x ``size_hint`` pixels. Only a regular file of at most
    ``max_bytes`` is opened; a remote URI is fetched (at most ``max_bytes``) and decoded in memory.
    """
    try:
        with warnings.catch_warnings(), open_media(uri, max_bytes) as f:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(f)
            w, h = im.size
            if w * h > max_pixels:
                raise ExtractionError(f"{uri}: {w}x{h} pixels exceeds the limit of {max_pixels} (decompression bomb?)")
            least = math.ceil(DRAFT_MARGIN * size_hint) if size_hint else 0
            if least and im.format == "JPEG" and min(w, h) >= 2 * least:
                im.draft("RGB", (least, least))  # Pillow picks the smallest scale of at least this size
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except ExtractionError:
        raise
    except UnidentifiedImageError:
        raise ExtractionError(f"{uri}: not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ExtractionError(f"{uri}: corrupt or truncated image ({type(e).__name__}: {e})") from None


def extract_image(record: ImageRecord, options: ExtractOptions) -> list[Content]:
    im = load_image(record.uri, options.max_image_pixels, options.image_size, options.max_image_bytes)
    return [
        Content(
            item_id=record.record_key,
            domain="image",
            source_id=record.image_id,
            record_key=record.record_key,
            images=[im],
            text=record.text,
            metadata=dict(record.metadata),
            media_uri=record.uri,
        )
    ]
