"""Input records, validated at the edge: product pages, images, short videos and live streams.

Every record has a ``domain`` and the domain's own id. Columns a record does not know are kept in ``metadata``
(manifests often carry category, price, shop...). Relative file paths are resolved against the manifest's folder.

Limits (refused with a message naming the field, never silently changed):

* ids are scalars: a string or an integer (an integral float such as ``12.0`` from a CSV/pandas column is the id
  ``"12"``); lists, objects, booleans and other floats are refused.
* live-stream times (snapshot ``t``, ASR and on-sale ``start``/``end``) are finite and at most
  :data:`MAX_STREAM_SECONDS` (10,000,000 s, about 115 days); ``slice_seconds`` is finite and at least
  :data:`MIN_SLICE_SECONDS` (1 s). How many frames one record may decode is an extraction option
  (:attr:`cope.content.ExtractOptions.max_frames_per_record`).
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

Domain = Literal["product", "image", "video", "live"]
DOMAINS: tuple[str, ...] = ("product", "image", "video", "live")

#: the latest time (seconds since a live stream started) a record may name: about 115 days
MAX_STREAM_SECONDS = 10_000_000.0
#: the shortest live-stream slice
MIN_SLICE_SECONDS = 1.0


def _seconds(**kw: Any) -> Any:
    """A time field: finite, within ``[0, MAX_STREAM_SECONDS]``."""
    return Field(ge=0, le=MAX_STREAM_SECONDS, allow_inf_nan=False, **kw)


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
    """An id: a non-empty string or an integer (an integral float is the integer). Anything else is refused rather
    than stringified (``["x"]`` would silently become the id ``"['x']"``)."""
    if v is None:
        raise ValueError("must be a non-empty id")
    if isinstance(v, bool) or type(v).__name__ in ("bool", "bool_"):  # numpy's bool is no int subclass
        raise ValueError(f"must be a string or an integer id, not a boolean ({v})")
    if isinstance(v, numbers.Integral):  # int, numpy integers
        return str(int(v))
    if isinstance(v, numbers.Real):  # float, numpy floats: 12.0 from a pandas column with gaps is the id 12
        f = float(v)
        if not (math.isfinite(f) and f.is_integer()):
            raise ValueError(f"must be a string or an integer id, not the number {f!r}")
        return str(int(f))
    if not isinstance(v, str):
        kind = {list: "a list", tuple: "a list", dict: "an object"}.get(type(v), type(v).__name__)
        raise ValueError(f"must be a string or an integer id, not {kind} ({_short(v)})")
    v = v.strip()
    if not v:
        raise ValueError("must be a non-empty id")
    return v


def _short(v: Any, limit: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    t: float = _seconds(description="seconds since the stream started")
    uri: str


class AsrSegment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float = _seconds()
    end: float = _seconds()
    text: str

    @model_validator(mode="after")
    def _ordered(self) -> AsrSegment:
        if self.end < self.start:
            raise ValueError(f"ASR segment ends ({self.end}) before it starts ({self.start})")
        return self


class LiveItem(BaseModel):
    """A product on sale during ``[start, end)`` of a live stream (the product card shown to viewers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: float = _seconds()
    end: float = _seconds()
    item_id: str

    _check_id = field_validator("item_id", mode="before")(_non_empty_id)


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
    slice_seconds: float = Field(default=30.0, ge=MIN_SLICE_SECONDS, le=MAX_STREAM_SECONDS, allow_inf_nan=False,
                                 description="length of a slice (at least 1 s)")

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


def _seconds_label(x: float) -> str:
    """A slice bound as ``:g`` writes it (``30``, ``1.5``, ``123457``) below a million seconds, where slices of at
    least 1 s never share a label; exact from there (``1000001``, where ``:g`` wrote ``1e+06`` for every second
    from 999,999.5 to 1,000,005, so those slices got the same id)."""
    short = f"{x:g}"
    if "e" not in short:
        return short
    text = repr(float(x))  # the shortest exact decimal; no exponent below 1e16
    return text.removesuffix(".0")


def slice_item_id(live_id: str, start: float, end: float) -> str:
    """``live:<live id>:<start>-<end>``; distinct slices get distinct ids (times are written exactly)."""
    return f"live:{live_id}:{_seconds_label(start)}-{_seconds_label(end)}"
