"""Settings of a behaviour join (``cope join``): pydantic at the boundary, one object for CLI and Python API."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cope.records import DOMAINS

#: Column names tried in order when the log does not name a column explicitly (matched case-insensitively).
DEFAULT_CANDIDATES: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id", "user", "uid"),
    "ts": ("ts", "timestamp", "time", "event_time"),
    "domain": ("domain",),
    "id": ("id", "content_id", "source_id"),
    "offset": ("offset", "offset_s"),
    "start": ("start", "start_s", "watch_start"),
    "end": ("end", "end_s", "watch_end"),
    "action": ("action", "action_type", "event"),
    "weight": ("weight",),
}
REQUIRED_FIELDS = ("user_id", "ts", "domain", "id")


class JoinConfig(BaseModel):
    """Settings of one behaviour join; the ``cope join`` flags map onto these.

    >>> JoinConfig(threshold=0.6, last_n=20, columns={"ts": "event_time"}).last_n
    20
    """

    model_config = ConfigDict(extra="forbid")

    table: str = Field(default="items", description="item table in the LanceDB directory")
    links: list[str] = Field(default_factory=list,
                             description="link tables (domain, id, product_id[, start, end]): platform links "
                                         "from video/image/live ids to product item ids")
    content_links: bool = Field(default=True,
                                description="link items without a link-table entry to the nearest product vector")
    threshold: float = Field(default=0.5, ge=-1.0, le=1.0,
                             description="least cosine similarity of a content link")
    vector_column: Literal["vector", "image_vector", "text_vector"] = "vector"
    last_n: int = Field(default=50, ge=1, description="events kept per user in the sequence table")
    profiles: bool = Field(default=False, description="also write each user's recency-weighted mean vector")
    half_life_hours: float = Field(default=72.0, gt=0, description="recency half-life of the profile weights")
    columns: dict[str, str] = Field(default_factory=dict,
                                    description="log column names: field -> column, e.g. {'ts': 'event_time'}")
    domain_aliases: dict[str, str] = Field(
        default_factory=lambda: {"item": "product", "page": "product", "short_video": "video", "stream": "live"})
    ts_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        default="auto", description="unit of numeric timestamps; auto guesses from the magnitude")
    csv_delimiter: str = ","
    memory_limit: str = Field(default="1.5GiB",
                              description="peak memory of the join process (e.g. 1.5GiB, 4GB); DuckDB gets what is "
                                          "left after the process's own memory and a 640 MiB reserve, and spills "
                                          "to disk beyond it")
    threads: int | None = Field(default=None, ge=1, description="DuckDB threads (default: all cores)")
    temp_dir: str | None = Field(default=None, description="where a private spill/staging folder is made "
                                                           "(default: OUT); it is removed at the end")
    batch_rows: int = Field(default=262_144, ge=1, description="rows per Arrow batch streamed out of the join")
    top_unmatched: int = Field(default=10, ge=0, description="unmatched ids listed per domain in the report")
    reject_examples: int = Field(default=20, ge=0, description="bad rows quoted in the report")

    @field_validator("links", mode="before")
    @classmethod
    def _paths(cls, v: object) -> object:
        if isinstance(v, (str, os.PathLike)):
            return [os.fspath(v)]
        if isinstance(v, (list, tuple)):
            return [os.fspath(x) if isinstance(x, os.PathLike) else x for x in v]
        return v

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, v: str) -> str:
        from cope.join.sql import MIN_DUCKDB_MEMORY, STREAM_RESERVE, parse_size

        if parse_size(v) < MIN_DUCKDB_MEMORY + STREAM_RESERVE:
            raise ValueError(f"memory_limit {v} is too small: the join needs at least "
                             f"{(MIN_DUCKDB_MEMORY + STREAM_RESERVE) >> 20} MiB")
        return v

    @field_validator("temp_dir", mode="before")
    @classmethod
    def _path(cls, v: object) -> object:
        return os.fspath(v) if isinstance(v, os.PathLike) else v

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, v: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(v) - set(DEFAULT_CANDIDATES))
        if unknown:
            raise ValueError(f"unknown event fields {unknown}; known: {', '.join(DEFAULT_CANDIDATES)}")
        return v

    @field_validator("domain_aliases")
    @classmethod
    def _alias_targets(cls, v: dict[str, str]) -> dict[str, str]:
        bad = {k: t for k, t in v.items() if t not in DOMAINS}
        if bad:
            raise ValueError(f"domain aliases must map onto {DOMAINS}; got {bad}")
        return {k.strip().lower(): t for k, t in v.items()}
