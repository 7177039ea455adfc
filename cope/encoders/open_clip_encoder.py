"""open_clip adapter: any architecture, weights from a local file, a ``local-dir:`` folder, a hub tag, or none."""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cope._torchvision_fix import ensure_torchvision_importable
from cope.encoders.base import Encoder, l2_normalize
from cope.encoders.transforms import model_input, uint8_twin
from cope.errors import UsageError

if TYPE_CHECKING:
    import torch
    from PIL import Image

from cope.hashing import sha256_files

logger = logging.getLogger(__name__)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a weights file's bytes, first 16 hex digits."""
    return sha256_files([path])[:16]


_CONFIGS_ADDED = False
#: characters kept per token of the text context (the longest CLIP BPE token is 32 bytes, plus a separator)
TEXT_CHARS_PER_TOKEN = 40


def cap_text(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters (whitespace runs collapsed first); short texts are left as they are."""
    if len(text) <= max_chars:
        return text
    return " ".join(text[: 4 * max_chars].split())[:max_chars]


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

    Text length: the model reads the first ``context_length`` tokens of a text (77 for CLIP) and the tokenizer drops
    the rest, but it tokenizes the whole text first, so one 5 MB title costs gigabytes. Texts are therefore cut to
    :attr:`max_text_chars` = ``TEXT_CHARS_PER_TOKEN`` (40) x ``context_length`` characters (3,080 for CLIP), after
    collapsing runs of whitespace, before tokenizing. No CLIP BPE token spans more than 32 characters, so the
    tokens the model reads come from within the cut and their vectors are the same as without it.

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
        local_weights = pretrained if pretrained and os.path.exists(pretrained) else None
        if local_weights is not None and not os.path.isfile(local_weights):
            raise UsageError(f"--pretrained {local_weights}: not a weights file (a folder? use local-dir:<folder>)")
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
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, device=self.device
                )
            except Exception as e:  # a pickle torch refuses to unpickle, a truncated file, weights of another model
                if local_weights is None:
                    raise
                if isinstance(e, pickle.UnpicklingError):  # torch.load(weights_only=True) refused to run a pickle
                    why = "a pickle of Python objects, not a plain tensor state dict"
                else:
                    why = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
                raise UsageError(
                    f"--pretrained {local_weights}: not loadable {arch} weights ({why}); pass a .safetensors or .pt "
                    "state dict of this architecture (pickled objects are never loaded)"
                ) from None
        model.eval()
        self.model = model
        #: open_clip's own transform (Pillow resize, float tensors): the reference the uint8 twin is tested against
        self.reference_transform = preprocess
        self._transform = uint8_twin(preprocess) or preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or 77)
        #: texts are cut to this many characters before tokenizing (see the class docstring)
        self.max_text_chars = TEXT_CHARS_PER_TOKEN * self.context_length
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
        return self._transform(image)

    def spec(self) -> dict[str, Any]:
        return self._spec

    def image_transform(self):
        return self._transform

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(model_input(batch, self._transform, self.device))
        return l2_normalize(feats.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                chunk = [cap_text(t, self.max_text_chars) for t in texts[start : start + batch_size]]
                tokens = self.tokenizer(chunk).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2_normalize(np.concatenate(out, axis=0))


def create_open_clip(arch: str = "ViT-S-32", pretrained: str | None = None, **options: object) -> Encoder:
    return OpenClipEncoder(arch, pretrained, **options)  # type: ignore[arg-type]
