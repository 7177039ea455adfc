"""What extractors produce and encoders consume: the decoded content of one item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from cope.errors import ExtractionError

__all__ = ["Content", "ExtractOptions", "ExtractionError"]

if TYPE_CHECKING:
    from PIL import Image


#: default cap on an image file's size (a 64-megapixel photo is far smaller; an uncompressed one is 192 MB)
MAX_IMAGE_BYTES = 256 << 20
#: default cap on a video or recording file's size (about 9 hours at 4 Mbit/s); decoders stream, never load it whole
MAX_VIDEO_BYTES = 16 << 30
#: default cap on the pictures one record decodes (a recording's slices x frames per slice, or its snapshots).
#: A decoded frame and its model tensor take about 1 MB at 224 px, so a record stays under about 0.5 GB; at the
#: default 4 frames per 30-s slice that is a 64-minute recording (raise ``slice_seconds`` for longer ones).
MAX_FRAMES_PER_RECORD = 512


class ExtractOptions(BaseModel):
    """Knobs for extractors. ``image_size`` is a decode hint only: images are not decoded much larger than it.

    The limits bound what one record can cost; a record beyond one is refused with the reason (it lands in the
    errors table, the job carries on). Only regular files are opened (not folders, FIFOs or devices): see
    :func:`cope.hashing.stat_media`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames_per_video: int = Field(default=8, ge=1, le=256)
    frames_per_slice: int = Field(default=4, ge=1, le=64)
    max_images_per_product: int = Field(default=8, ge=1)
    max_image_pixels: int = Field(default=64_000_000, ge=1, description="larger images are refused (bomb guard)")
    max_image_bytes: int = Field(default=MAX_IMAGE_BYTES, ge=1, description="larger image files are refused")
    max_video_bytes: int = Field(default=MAX_VIDEO_BYTES, ge=1, description="larger video files are refused")
    max_frames_per_record: int = Field(default=MAX_FRAMES_PER_RECORD, ge=1, le=65_536,
                                       description="a record that would decode more frames or snapshots is refused "
                                       "(memory bound)")
    image_size: int | None = Field(default=224, ge=16)
    video_decoder: str = Field(default="auto", pattern="^(auto|decord|av)$")
    ocr: bool = Field(default=False, description="read text written in pictures (OCR; needs cope[ocr])")
    ocr_max_side: int = Field(default=640, ge=64, le=4096, description="pictures are downscaled to this longer "
                              "side before OCR")
    ocr_images: int = Field(default=3, ge=1, le=32, description="pictures read per item (spread over a video's "
                            "frames, a slice's snapshots or a product's images)")
    ocr_min_score: float = Field(default=0.5, ge=0, le=1, description="lines read with a lower score are dropped")
    ocr_body_text: bool = Field(default=False, description="also keep paragraphs of body text (3+ lines of 20+ "
                                "letters or digits in one picture: spec sheets, blurbs, scanned pages); by default "
                                "only headline-like lines (titles, names, prices, captions) are kept")

    def check_frames(self, where: str, n: int, what: str, hint: str = "") -> None:
        """Refuse a record that would decode ``n`` pictures, more than ``max_frames_per_record``."""
        if n > self.max_frames_per_record:
            raise ExtractionError(
                f"{where}: {what} = {n} pictures, more than max_frames_per_record={self.max_frames_per_record} "
                f"(memory bound){'; ' + hint if hint else ''}"
            )


@dataclass
class Content:
    """The decoded content of one item: its images (or frames, or snapshots) and its text."""

    item_id: str
    domain: str
    source_id: str
    record_key: str
    images: list[Image.Image] = field(default_factory=list)
    text: str = ""
    slice_start: float | None = None
    slice_end: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: a file that shows the item (main image, video, the slice's first snapshot), for thumbnails
    media_uri: str | None = None
    #: what the slice says (live streams: its ASR), joined with the OCR text in the ``ocr`` part
    speech: str = ""
    #: text read in the pictures (OCR, when switched on), its mean confidence, or why reading failed
    ocr_text: str = ""
    ocr_confidence: float | None = None
    ocr_error: str | None = None

    def __post_init__(self) -> None:
        if not self.images and not self.text.strip():
            raise ExtractionError(f"{self.item_id}: no images and empty text: nothing to embed")
