"""Fusion: per item, the mean image vector, the text vector and one unified vector (weighted, re-normalised).

Weights are finite, within ``[0, MAX_WEIGHT]`` (only their ratio matters; ``inf`` would make NaN vectors), and a
fused vector that is not finite is refused rather than written.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cope.vectors import l2_normalize

#: the largest fusion weight (weights are relative: 1e6 : 1 is already all one part)
MAX_WEIGHT = 1e6


class FusionConfig(BaseModel):
    """Weights of the image and text parts of the unified vector. Stored per-modality vectors allow re-fusing later."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_weight: float = Field(default=0.5, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    text_weight: float = Field(default=0.5, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)
    #: weight of the text read in the pictures (used only when the pipeline reads it: ``--ocr``). Lower than the
    #: others: a text query meets OCR text in the text space, far closer than it meets any picture, so at 0.5 stray
    #: digits on a watch face pulled title queries away (docs/ocr.md: 0.2 is measured best on Magento)
    ocr_weight: float = Field(default=0.2, ge=0, le=MAX_WEIGHT, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_both_zero(self) -> FusionConfig:
        if self.image_weight == 0 and self.text_weight == 0:
            raise ValueError("image_weight and text_weight cannot both be 0")
        return self

    @property
    def tag(self) -> str:
        """Names the image and text weights (the OCR weight is named by the pipeline when it reads pictures)."""
        return f"fusion=image:{self.image_weight:g},text:{self.text_weight:g}"


def fuse(image: np.ndarray | None, text: np.ndarray | None, config: FusionConfig,
         ocr: np.ndarray | None = None) -> np.ndarray:
    """Unified vector of one item from its image, text and (optionally) OCR parts; a missing part is left out."""
    parts = []
    for part, weight in ((image, config.image_weight), (text, config.text_weight), (ocr, config.ocr_weight)):
        if part is not None and weight > 0:
            parts.append(weight * part)
    if not parts:  # the only modality present has weight 0: fall back to it rather than store a zero vector
        parts = [next(p for p in (image, text, ocr) if p is not None)]
    out = l2_normalize(np.sum(parts, axis=0))
    if not np.isfinite(out).all():
        raise ValueError("the fused vector is not finite (the encoder returned NaN or inf); refusing to store it")
    return out
