from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cope.encoders import create_encoder, l2_normalize
from cope.fusion import FusionConfig, fuse
from cope.vectors import mean_vector
from tests.conftest import TINY_MODEL


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
