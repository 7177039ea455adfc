"""Text written in pictures: OCR of product images, video frames and live snapshots (``cope embed --ocr``).

Uses ``rapidocr_onnxruntime`` (PP-OCRv4 Chinese + English detection and recognition; the weights ship inside its
wheel, so it works offline): ``pip install 'cope[ocr]'``. Each picture is downscaled so that its longer side is at
most ``ocr_max_side`` before detection; recognition runs only on the detected boxes, so a picture without text costs
one detection pass (the no-text fast path). Results are cached by the picture's pixel hash (see :class:`OcrCache`):
a re-run, another encoder or other fusion weights never read the same picture twice.

>>> read_lines([], ExtractOptions(ocr=True))
OcrResult(text='', confidence=None, lines=[])
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cope.content import Content, ExtractOptions
from cope.errors import MissingExtraError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

#: bump when the reading changes (engine settings, de-duplication): cached results of another version are not used
OCR_VERSION = "rapidocr-ppocrv4-2"

#: lines with fewer letters or digits than this are dropped ("O" on a cup, "®" on a clock face)
MIN_LINE_CHARS = 2
#: body text: a picture with at least BODY_MIN_LINES lines of at least BODY_LINE_CHARS letters or digits holds
#: paragraphs (a spec sheet, a blurb, a scanned page); those long lines are left out unless ``ocr_body_text``
BODY_LINE_CHARS = 20
BODY_MIN_LINES = 3

_LOCAL = threading.local()
_ENGINE_LOCK = threading.Lock()
_STATS_LOCK = threading.Lock()


@dataclass
class OcrResult:
    """The lines read in one or more pictures, in reading order, de-duplicated; ``confidence`` is their mean."""

    text: str = ""
    confidence: float | None = None
    lines: list[tuple[str, float]] = field(default_factory=list)


class OcrCache(Protocol):
    """Where results are kept between runs (``cope.store.ocr_cache.OcrCacheTable`` keeps them in the database)."""

    def get_many(self, keys: Sequence[str]) -> Mapping[str, list[tuple[str, float]]]: ...

    def put_many(self, results: Mapping[str, list[tuple[str, float]]]) -> None: ...


def _engine(options: ExtractOptions) -> Any:
    """One RapidOCR engine per thread (onnxruntime sessions, one intra-op thread each: the job's extraction
    workers are the parallelism)."""
    key = (options.ocr_max_side,)
    engines = getattr(_LOCAL, "engines", None)
    if engines is None:
        engines = _LOCAL.engines = {}
    if key not in engines:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as e:
            raise MissingExtraError(
                f"--ocr needs rapidocr_onnxruntime (and onnxruntime, opencv-python): pip install 'cope[ocr]' ({e})"
            ) from None
        with _ENGINE_LOCK:  # model loading is not thread-safe in every onnxruntime version
            engines[key] = RapidOCR(det_limit_side_len=options.ocr_max_side, det_limit_type="max",
                                    intra_op_num_threads=1, inter_op_num_threads=1)
        logging.getLogger("RapidOCR").setLevel(logging.WARNING)
    return engines[key]


def check_available() -> None:
    """Raise :class:`MissingExtraError` (naming the extra to install) unless the OCR engine can be imported."""
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(
            f"--ocr needs rapidocr_onnxruntime (and onnxruntime, opencv-python): pip install 'cope[ocr]' ({e})"
        ) from None


def picture_key(image: Image.Image, options: ExtractOptions) -> str:
    """Cache key of a decoded picture: a hash of its pixels and of the reading settings."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{OCR_VERSION}|{options.ocr_max_side}|{image.mode}|{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def read_picture(image: Image.Image, options: ExtractOptions) -> list[tuple[str, float]]:
    """Lines ``(text, score)`` read in one picture, top to bottom, those below ``ocr_min_score`` dropped."""
    import numpy as np

    picture = image.convert("RGB")
    longest = max(picture.size)
    if longest > options.ocr_max_side:  # downscale before anything else: detection cost grows with pixels
        scale = options.ocr_max_side / longest
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
    bgr = np.ascontiguousarray(np.asarray(picture)[:, :, ::-1])
    found, _ = _engine(options)(bgr, use_cls=False, text_score=options.ocr_min_score)
    lines = []
    for box, text, score in found or []:
        text = " ".join(str(text).split())
        if _alnum(text) >= MIN_LINE_CHARS:  # a lone glyph on a photo is noise, not text
            lines.append((min(p[1] for p in box), min(p[0] for p in box), text, float(score)))
    lines.sort(key=lambda x: (round(x[0] / 8), x[1]))  # rows (8 px tolerance), then left to right
    return [(text, score) for _, _, text, score in lines]


def _alnum(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def without_body_text(lines: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """The lines of one picture less its paragraphs: when :data:`BODY_MIN_LINES` or more lines have
    :data:`BODY_LINE_CHARS` or more letters or digits, those long lines are body text and are dropped; titles,
    names, prices and captions (short lines) stay. Body text drowns a picture's vector in words that queries rarely
    aim at (a scanned page about coins became the best match for a photo of coins).

    >>> page = [("Region-based segmentation", 0.9), ("Let us first determine markers of the coins", 0.9),
    ...         ("background. These markers are pixels that we", 0.9), ("Fig. 3", 0.9)]
    >>> without_body_text(page)
    [('Fig. 3', 0.9)]
    >>> without_body_text([("THE GREAT GATSBY", 0.9), ("F. Scott Fitzgerald", 0.9)])  # a cover: kept whole
    [('THE GREAT GATSBY', 0.9), ('F. Scott Fitzgerald', 0.9)]
    """
    long = [_alnum(text) >= BODY_LINE_CHARS for text, _ in lines]
    if sum(long) < BODY_MIN_LINES:
        return list(lines)
    return [line for line, is_long in zip(lines, long) if not is_long]


def pick(images: Sequence[Any], count: int) -> list[Any]:
    """``count`` pictures spread evenly over a sequence (first and last included when possible)."""
    if len(images) <= count:
        return list(images)
    if count == 1:
        return [images[len(images) // 2]]
    return [images[round(i * (len(images) - 1) / (count - 1))] for i in range(count)]


def merge(per_picture: Sequence[Sequence[tuple[str, float]]]) -> OcrResult:
    """Lines of several pictures in order, each distinct line once (a caption burnt into every frame counts once)."""
    seen: dict[str, tuple[str, float]] = {}
    for lines in per_picture:
        for text, score in lines:
            seen.setdefault(text.casefold(), (text, score))
    ordered = list(seen.values())
    if not ordered:
        return OcrResult()
    return OcrResult(text="\n".join(t for t, _ in ordered), confidence=sum(s for _, s in ordered) / len(ordered),
                     lines=ordered)


def read_lines(images: Sequence[Image.Image], options: ExtractOptions, cache: OcrCache | None = None,
               stats: dict[str, int] | None = None) -> OcrResult:
    """Read up to ``options.ocr_images`` of the pictures (spread over them), using and filling the cache."""
    chosen = pick(images, options.ocr_images)
    keys = [picture_key(im, options) for im in chosen]
    cached = dict(cache.get_many(keys)) if cache is not None and keys else {}
    fresh: dict[str, list[tuple[str, float]]] = {}
    per_picture = []
    start = time.perf_counter()
    for key, im in zip(keys, chosen):
        if key in cached:
            per_picture.append(cached[key])
            continue
        if key not in fresh:
            fresh[key] = read_picture(im, options)
        per_picture.append(fresh[key])
    if stats is not None:
        with _STATS_LOCK:  # worker threads share the counters
            stats["ms"] = stats.get("ms", 0) + (round(1000 * (time.perf_counter() - start)) if fresh else 0)
            stats["read"] = stats.get("read", 0) + len(fresh)
            stats["cached"] = stats.get("cached", 0) + len(chosen) - len(fresh)
    if cache is not None and fresh:
        cache.put_many(fresh)
    if not options.ocr_body_text:  # after the cache: it keeps every line read, so this choice re-reads nothing
        per_picture = [without_body_text(lines) for lines in per_picture]
    return merge(per_picture)


def add_ocr(contents: Sequence[Content], options: ExtractOptions, cache: OcrCache | None = None,
            stats: dict[str, int] | None = None) -> None:
    """Fill ``ocr_text``/``ocr_confidence`` of decoded contents (before their pictures are freed). A failure is
    kept in ``ocr_error``: the item keeps its image and text parts."""
    for content in contents:
        if not content.images:
            continue
        try:
            result = read_lines(content.images, options, cache, stats)
        except MissingExtraError:
            raise
        except Exception as e:  # a broken picture or engine error costs the OCR part only
            logger.debug("OCR of %s failed", content.item_id, exc_info=True)
            content.ocr_error = f"{type(e).__name__}: {e}"
            continue
        content.ocr_text, content.ocr_confidence = result.text, result.confidence
