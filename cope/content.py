"""What extractors produce and encoders consume: the decoded content of one item."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from cope.errors import ExtractionError

__all__ = ["Content", "ExtractOptions", "ExtractionError"]

if TYPE_CHECKING:
    from PIL import Image


class ExtractOptions(BaseModel):
    """Knobs for extractors. ``image_size`` is a decode hint only: images are not decoded much larger than it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    frames_per_video: int = Field(default=8, ge=1, le=256)
    frames_per_slice: int = Field(default=4, ge=1, le=64)
    max_images_per_product: int = Field(default=8, ge=1)
    max_image_pixels: int = Field(default=64_000_000, ge=1, description="larger images are refused (bomb guard)")
    image_size: int | None = Field(default=224, ge=16)
    video_decoder: str = Field(default="auto", pattern="^(auto|decord|av)$")


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

    def __post_init__(self) -> None:
        if not self.images and not self.text.strip():
            raise ExtractionError(f"{self.item_id}: no images and empty text: nothing to embed")
