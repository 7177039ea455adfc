"""open_clip adapter: any architecture, weights from a local file, a ``local-dir:`` folder, a hub tag, or none."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cope._torchvision_fix import ensure_torchvision_importable
from cope.encoders.base import Encoder, l2_normalize

if TYPE_CHECKING:
    import torch
    from PIL import Image

from cope.hashing import sha256_files

logger = logging.getLogger(__name__)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file's bytes, first 16 hex digits."""
    return sha256_files([path])[:16]


_CONFIGS_ADDED = False


def register_model_configs() -> None:
    """Add cope's own architectures (``cope/model_configs/*.json``) and any folders in ``$COPE_MODEL_CONFIGS``
    (os.pathsep-separated) to open_clip's registry, the way open_clip reads its ``model_configs``."""
    global _CONFIGS_ADDED
    if _CONFIGS_ADDED:
        return
    ensure_torchvision_importable()
    import open_clip

    folders = [Path(__file__).resolve().parent.parent / "model_configs"]
    folders += [Path(p) for p in os.environ.get("COPE_MODEL_CONFIGS", "").split(os.pathsep) if p]
    for folder in folders:
        if folder.is_dir():
            open_clip.add_model_config(folder)
    _CONFIGS_ADDED = True


def is_open_clip_model(name: str) -> bool:
    if name.startswith(("local-dir:", "hf-hub:")):
        return True
    register_model_configs()
    import open_clip

    return name in open_clip.list_models()


class OpenClipEncoder(Encoder):
    """An open_clip model as a cope encoder.

    ``pretrained`` is ``None`` (random weights, seeded: for tests and speed runs), a path to a ``.pt``/``.bin``/
    ``.safetensors`` checkpoint, a ``local-dir:<folder>`` holding ``open_clip_config.json`` and the weights, or an
    open_clip pretrained tag (needs the model hub).

    >>> enc = OpenClipEncoder("ViT-S-32", pretrained=None)  # doctest: +SKIP
    >>> enc.encode_texts(["a red dress"]).shape  # doctest: +SKIP
    (1, 384)
    """

    def __init__(
        self,
        arch: str,
        pretrained: str | None = None,
        *,
        device: str = "cpu",
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        register_model_configs()
        import open_clip
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        original_pretrained = pretrained
        model_name = arch
        if pretrained and pretrained.startswith("local-dir:"):
            model_name, pretrained = pretrained, None
        if arch.startswith("local-dir:"):
            folder = Path(arch.split(":", 1)[1])
            weights = sorted(folder.glob("open_clip_model.*")) or sorted(folder.glob("*.safetensors"))
            fingerprint = file_fingerprint(weights[0]) if weights else "no-weights"
        elif pretrained is None:
            fingerprint = f"random-seed{seed}"
        elif os.path.exists(pretrained):
            fingerprint = file_fingerprint(pretrained)
        else:
            fingerprint = f"hub-{pretrained}"

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=self.device
            )
        model.eval()
        self.model = model
        self._preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.arch = model_name
        self._spec = {"name": arch if arch.startswith("local-dir:") else f"open_clip:{arch}",
                      "options": {**({"pretrained": original_pretrained} if original_pretrained else {}),
                                  **({"seed": seed} if seed else {})}}
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        with torch.inference_mode():
            probe = model.encode_text(self.tokenizer(["probe"]).to(self.device))
        self.dim = int(probe.shape[-1])
        self.model_tag = f"open_clip/{model_name.replace('local-dir:', 'local-dir-')}/{fingerprint}"
        logger.info("loaded %s (dim %d, %d px)", self.model_tag, self.dim, self.image_size)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self._preprocess(image)

    def spec(self) -> dict[str, Any]:
        return self._spec

    def image_transform(self):
        return self._preprocess

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(batch.to(self.device))
        return l2_normalize(feats.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2_normalize(np.concatenate(out, axis=0))


def create_open_clip(arch: str = "ViT-S-32", pretrained: str | None = None, **options: object) -> Encoder:
    return OpenClipEncoder(arch, pretrained, **options)  # type: ignore[arg-type]
