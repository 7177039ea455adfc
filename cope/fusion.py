"""Fusion: per item, the mean image vector, the text vector and one unified vector (weighted, re-normalised)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cope.vectors import l2_normalize


class FusionConfig(BaseModel):
    """Weights of the image and text parts of the unified vector. Stored per-modality vectors allow re-fusing later."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_weight: float = Field(default=0.5, ge=0)
    text_weight: float = Field(default=0.5, ge=0)

    @model_validator(mode="after")
    def _not_both_zero(self) -> FusionConfig:
        if self.image_weight == 0 and self.text_weight == 0:
            raise ValueError("image_weight and text_weight cannot both be 0")
        return self

    @property
    def tag(self) -> str:
        return f"fusion=image:{self.image_weight:g},text:{self.text_weight:g}"


def fuse(image: np.ndarray | None, text: np.ndarray | None, config: FusionConfig) -> np.ndarray:
    """Unified vector of one item from its image part and text part; a missing part is left out."""
    parts = []
    if image is not None and config.image_weight > 0:
        parts.append(config.image_weight * image)
    if text is not None and config.text_weight > 0:
        parts.append(config.text_weight * text)
    if not parts:  # the only modality present has weight 0: fall back to it rather than store a zero vector
        parts = [image if image is not None else text]
    return l2_normalize(np.sum(parts, axis=0))
