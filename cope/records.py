"""Input records, validated at the edge: product pages, images, short videos and live streams.

Every record has a ``domain`` and the domain's own id. Columns a record does not know are kept in ``metadata``
(manifests often carry category, price, shop...). Relative file paths are resolved against the manifest's folder.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

Domain = Literal["product", "image", "video", "live"]
DOMAINS: tuple[str, ...] = ("product", "image", "video", "live")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _extras_to_metadata(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields)
        extras = {k: v for k, v in data.items() if k not in known and v is not None}
        if not extras:
            return data
        clean = {k: v for k, v in data.items() if k in known}
        clean["metadata"] = {**extras, **(data.get("metadata") or {})}
        return clean

    @property
    def source_id(self) -> str:  # the domain's own id (item id, image id, video id, live id)
        raise NotImplementedError

    @property
    def record_key(self) -> str:
        """Unique across domains: ``"<domain>:<source id>"``."""
        return f"{self.domain}:{self.source_id}"  # type: ignore[attr-defined]

    def files(self) -> list[str]:
        """Local files this record reads (for content hashing)."""
        return []


def _non_empty_id(v: Any) -> str:
    v = str(v).strip() if v is not None else ""
    if not v:
        raise ValueError("must be a non-empty id")
    return v


class ProductPage(_Record):
    """A product page: item id, title, description, attributes and image URIs (the first is the main image)."""

    domain: Literal["product"] = "product"
    item_id: str
    title: str = ""
    description: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)
    images: list[str] = Field(default_factory=list)

    _check_id = field_validator("item_id", mode="before")(_non_empty_id)

    @field_validator("attributes", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): ", ".join(map(str, x)) if isinstance(x, list) else str(x) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _has_content(self) -> ProductPage:
        if not (self.title.strip() or self.description.strip() or self.images):
            raise ValueError("a product page needs a title, a description or at least one image")
        return self

    @property
    def source_id(self) -> str:
        return self.item_id

    def files(self) -> list[str]:
        return list(self.images)


class ImageRecord(_Record):
    """A standalone image with an optional caption."""

    domain: Literal["image"] = "image"
    image_id: str
    uri: str
    text: str = ""

    _check_id = field_validator("image_id", mode="before")(_non_empty_id)

    @property
    def source_id(self) -> str:
        return self.image_id

    def files(self) -> list[str]:
        return [self.uri]


class VideoRecord(_Record):
    """A short video: its file and its title, caption and ASR transcript."""

    domain: Literal["video"] = "video"
    video_id: str
    uri: str
    title: str = ""
    caption: str = ""
    asr: str = ""
    num_frames: int | None = Field(default=None, ge=1, le=256, description="frames to sample (default: job setting)")

    _check_id = field_validator("video_id", mode="before")(_non_empty_id)

    @property
    def source_id(self) -> str:
        return self.video_id

    def files(self) -> list[str]:
        return [self.uri]


class Snapshot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    t: float = Field(ge=0, description="seconds since the stream started")
    uri: str


class AsrSegment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str

    @model_validator(mode="after")
    def _ordered(self) -> AsrSegment:
        if self.end < self.start:
            raise ValueError(f"ASR segment ends ({self.end}) before it starts ({self.start})")
        return self


class LiveItem(BaseModel):
    """A product on sale during ``[start, end)`` of a live stream (the product card shown to viewers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    item_id: str


class LiveStream(_Record):
    """A live stream: timestamped snapshots or a recording, optional timestamped ASR, cut into time slices.

    Each slice ``[start, end)`` of ``slice_seconds`` is an item of its own, keyed ``(live_id, start, end)``.
    """

    domain: Literal["live"] = "live"
    live_id: str
    title: str = ""
    snapshots: list[Snapshot] | None = None
    recording: str | None = None
    asr: list[AsrSegment] = Field(default_factory=list)
    items: list[LiveItem] = Field(default_factory=list, description="products on sale, by time")
    slice_seconds: float = Field(default=30.0, gt=0)

    _check_id = field_validator("live_id", mode="before")(_non_empty_id)

    @model_validator(mode="after")
    def _one_source(self) -> LiveStream:
        if (self.snapshots is None) == (self.recording is None):
            raise ValueError("a live stream needs exactly one of 'snapshots' or 'recording'")
        if self.snapshots is not None and not self.snapshots:
            raise ValueError("'snapshots' is empty")
        return self

    @property
    def source_id(self) -> str:
        return self.live_id

    def files(self) -> list[str]:
        if self.recording is not None:
            return [self.recording]
        return [s.uri for s in self.snapshots or []]

    def slice_bounds(self, t: float) -> tuple[float, float]:
        k = math.floor(t / self.slice_seconds)
        return k * self.slice_seconds, (k + 1) * self.slice_seconds

    def asr_text(self, start: float, end: float) -> str:
        return " ".join(s.text for s in self.asr if s.start < end and s.end > start).strip()

    def item_on_sale(self, start: float, end: float) -> str | None:
        """The product on sale for the longest part of ``[start, end)``, if any."""
        overlaps = [(min(end, it.end) - max(start, it.start), it.item_id) for it in self.items]
        best = max((o for o in overlaps if o[0] > 0), default=None)
        return best[1] if best else None


Record = Annotated[ProductPage | ImageRecord | VideoRecord | LiveStream, Field(discriminator="domain")]
RECORD_ADAPTER: TypeAdapter[Record] = TypeAdapter(Record)


def slice_item_id(live_id: str, start: float, end: float) -> str:
    return f"live:{live_id}:{start:g}-{end:g}"
