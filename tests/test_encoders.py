from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cope.encoders import create_encoder, l2_normalize
from cope.encoders.transforms import Uint8Transform, uint8_twin
from cope.extractors.image import load_image
from cope.fusion import FusionConfig, fuse
from cope.vectors import mean_vector
from tests.conftest import TINY_MODEL
from tests.media import photo


def test_tiny_model_from_temp_config_is_normalised_and_deterministic(tiny_config_dir: Path) -> None:
    a = create_encoder(f"open_clip:{TINY_MODEL}")
    b = create_encoder(TINY_MODEL)  # a plain open_clip architecture name works too
    assert a.dim == 16 and a.image_size == 32 and a.model_tag == f"open_clip/{TINY_MODEL}/random-seed0"
    images = [Image.new("RGB", (50, 40), c) for c in ("red", "blue", "green")]
    va, vb = a.encode_images(images, batch_size=2), b.encode_images(images)
    assert va.dtype == np.float32 and va.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(va, vb, atol=1e-6)
    t = a.encode_texts(["red ball", "blue box"])
    assert t.shape == (2, 16) and not np.allclose(t[0], t[1])
    assert a.encode_texts([]).shape == (0, 16)


def test_checkpoint_file_and_local_dir_load_with_fingerprint(tiny_config_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    import torch

    src = create_encoder(f"open_clip:{TINY_MODEL}", seed=7)
    ckpt = tmp_path / "tiny.pt"
    torch.save(src.model.state_dict(), ckpt)
    loaded = create_encoder(f"open_clip:{TINY_MODEL}", pretrained=str(ckpt))
    assert loaded.model_tag.startswith(f"open_clip/{TINY_MODEL}/") and "random" not in loaded.model_tag
    np.testing.assert_allclose(loaded.encode_texts(["x"]), src.encode_texts(["x"]), atol=1e-6)

    from safetensors.torch import save_file

    folder = tmp_path / "local"
    folder.mkdir()
    save_file(src.model.state_dict(), folder / "open_clip_model.safetensors")
    config = json.loads((tiny_config_dir / f"{TINY_MODEL}.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    from_dir = create_encoder(f"local-dir:{folder}")
    np.testing.assert_allclose(from_dir.encode_texts(["x"]), src.encode_texts(["x"]), atol=1e-6)
    shutil.rmtree(folder)


PHOTO_SIZES = [(800, 800), (640, 480), (300, 700), (100, 80), (33, 500)]


def _cosines(encoder, a: list, b: list) -> np.ndarray:
    import torch

    return (encoder.encode_image_tensors(torch.stack(a)) * encoder.encode_image_tensors(torch.stack(b))).sum(1)


def test_uint8_preprocessing_matches_open_clips_own_transform(tiny_config_dir: Path) -> None:
    import torch

    enc = create_encoder(f"open_clip:{TINY_MODEL}")
    transform = enc.image_transform()
    assert isinstance(transform, Uint8Transform) and transform.interpolation == "bicubic"
    images = [photo(w, h, i) for i, (w, h) in enumerate(PHOTO_SIZES)] + [Image.new("L", (60, 40), 90)]
    ours = [enc.preprocess(im) for im in images]
    reference = [enc.reference_transform(im) for im in images]
    assert all(t.dtype == torch.uint8 and t.shape == r.shape == (3, 32, 32) for t, r in zip(ours, reference))
    diff = (transform.normalize(torch.stack(ours)) - torch.stack(reference)).abs()
    assert diff.mean() <= 5e-3 and diff.max() <= 0.05  # Pillow's resize to a grey level or two (/ std = 0.27)
    assert _cosines(enc, ours, reference).min() >= 0.999  # uint8 and float batches both encode
    assert pickle.loads(pickle.dumps(transform))(images[0]).equal(ours[0])  # travels to Ray tasks as it is


def test_draft_decoding_and_uint8_preprocessing_keep_the_vectors(tiny_config_dir: Path, tmp_path: Path) -> None:
    """JPEGs decoded at a reduced scale, then preprocessed on uint8 tensors, give the vectors of a full decode through
    open_clip's own transform."""
    enc = create_encoder(f"open_clip:{TINY_MODEL}")
    ours, reference = [], []
    for i, (w, h) in enumerate([(800, 800), (1600, 1200), (500, 900)]):
        path = tmp_path / f"{i}.jpg"
        photo(w, h, i).save(path, quality=90)
        drafted = load_image(str(path), size_hint=enc.image_size)
        assert max(drafted.size) < max(w, h)
        ours.append(enc.preprocess(drafted))
        reference.append(enc.reference_transform(load_image(str(path))))
    assert _cosines(enc, ours, reference).min() >= 0.999


def test_only_known_eval_transforms_get_a_uint8_twin() -> None:
    from cope._torchvision_fix import ensure_torchvision_importable

    ensure_torchvision_importable()
    from torchvision import transforms as T

    normalize = T.Normalize((0.5,) * 3, (0.5,) * 3)
    twin = uint8_twin(T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize]))
    assert twin == Uint8Transform(256, (224, 224), "bilinear", (0.5,) * 3, (0.5,) * 3)
    for other in (lambda im: im, T.Compose([T.RandomResizedCrop(224), T.ToTensor(), normalize]),
                  T.Compose([T.Resize(200), T.CenterCrop(224), T.ToTensor(), normalize]),  # torchvision pads
                  T.Compose([T.Resize(256, interpolation=T.InterpolationMode.NEAREST), T.CenterCrop(224),
                             T.ToTensor(), normalize])):
        assert uint8_twin(other) is None


def test_batchnorm_folding_keeps_the_output_or_leaves_the_model_alone(caplog: pytest.LogCaptureFixture) -> None:
    import torch
    from torch import nn

    from cope.encoders.default_model import fold_batchnorm

    def with_stats(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
        return bn.eval()

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), with_stats(nn.BatchNorm2d(8)), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                          with_stats(nn.BatchNorm2d(8))).eval()
    folded = fold_batchnorm(model)
    assert folded is not model and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)

    class NormFirst(nn.Module):  # registered conv then norm, but the norm runs first: folding would be wrong
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), with_stats(nn.BatchNorm2d(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    odd = NormFirst().eval()
    assert fold_batchnorm(odd) is odd and "runs unfolded" in caplog.text


def test_unknown_model_lists_known_names(tiny_config_dir: Path) -> None:
    with pytest.raises(ValueError, match="unknown model 'no-such-net'.*open_clip:<architecture>"):
        create_encoder("no-such-net")


def test_fusion_weights_and_missing_modalities() -> None:
    img, txt = l2_normalize(np.array([1.0, 0.0])), l2_normalize(np.array([0.0, 1.0]))
    np.testing.assert_allclose(fuse(img, txt, FusionConfig()), [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(fuse(img, txt, FusionConfig(image_weight=1, text_weight=0)), img)
    np.testing.assert_allclose(fuse(None, txt, FusionConfig()), txt)
    np.testing.assert_allclose(fuse(img, None, FusionConfig(image_weight=0, text_weight=1)), img)
    np.testing.assert_allclose(mean_vector(np.array([[1.0, 0], [0, 1.0]])), [2**-0.5, 2**-0.5], atol=1e-6)
    with pytest.raises(ValueError):
        FusionConfig(image_weight=0, text_weight=0)


_FIX_PROBE = """
import torch
from cope._torchvision_fix import ensure_torchvision_importable, _has_op
missing = not _has_op("nms")
patched = ensure_torchvision_importable()
assert patched == missing, (patched, missing)
import torchvision.transforms  # must import now
assert ensure_torchvision_importable() is False  # never twice
print("patched" if patched else "untouched")
"""


def test_torchvision_fix_applies_only_when_ops_are_missing() -> None:
    out = subprocess.run([sys.executable, "-c", _FIX_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("patched", "untouched")


def test_torchvision_fix_leaves_a_working_build_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import cope._torchvision_fix as fix

    monkeypatch.setattr(fix, "_LIBRARY", None)
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.setattr(fix, "_has_op", lambda name: True)
    assert fix.ensure_torchvision_importable() is False and fix._LIBRARY is None
