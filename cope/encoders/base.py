"""The encoder interface: images and texts in, float32 L2-normalised vectors out, plus a stable model tag."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cope.vectors import l2_normalize  # noqa: F401  (re-exported for encoder modules)

if TYPE_CHECKING:
    import torch
    from PIL import Image


class Encoder(ABC):
    """Embeds images and texts into one space.

    Subclasses set ``dim`` and ``model_tag`` and implement :meth:`preprocess`, :meth:`encode_image_tensors` and
    :meth:`encode_texts`. The job calls ``preprocess`` in its extraction workers (so decoding and resizing overlap
    with the model) and stacks the resulting tensors of many items into one batch for ``encode_image_tensors``.

    ``model_tag`` names the architecture and a fingerprint of the weights; two encoders with the same tag must produce
    the same vectors for the same inputs. The store refuses to mix vectors of different tags.
    """

    dim: int
    model_tag: str
    #: a hint for decoders: images need not be decoded larger than this many pixels on their short side
    image_size: int = 224

    @abstractmethod
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Turn one RGB PIL image into a tensor (C, H, W): uint8 pixels resized and cropped for the model (see
        :mod:`cope.encoders.transforms`) or float model input. Must be thread-safe."""

    @abstractmethod
    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a stacked batch (N, C, H, W) of :meth:`preprocess` outputs (normalised here when they are uint8):
        (N, dim) float32, L2-normalised."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts: (N, dim) float32, L2-normalised."""

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Convenience: preprocess and embed PIL images in batches."""
        import torch

        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            out.append(self.encode_image_tensors(torch.stack([self.preprocess(im) for im in chunk])))
        return np.concatenate(out, axis=0)

    def spec(self) -> dict[str, Any] | None:
        """``{"name": ..., "options": {...}}`` such that ``create_encoder(name, **options)`` rebuilds this encoder
        (``None``: it cannot be rebuilt by name; tables then record the name they were asked for)."""
        return None

    def image_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A picklable stand-alone ``preprocess`` (shipped to Ray extraction tasks without the weights).

        The default is the bound method, which pickles the whole encoder; encoders whose preprocessing is a plain
        transform should return it.
        """
        return self.preprocess

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_tag={self.model_tag!r}, dim={self.dim})"
