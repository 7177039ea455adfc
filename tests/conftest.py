"""Shared fixtures: offline hubs, a tiny open_clip architecture registered from a temp folder, generated media."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import pytest

TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_MODEL = "test-tiny-16"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 16-dim open_clip config, registered with open_clip (and via $COPE_MODEL_CONFIGS)."""
    folder = tmp_path_factory.mktemp("model_configs")
    (folder / f"{TINY_MODEL}.json").write_text(json.dumps(TINY_CONFIG))
    from cope._torchvision_fix import ensure_torchvision_importable

    ensure_torchvision_importable()
    import open_clip

    open_clip.add_model_config(folder)
    os.environ["COPE_MODEL_CONFIGS"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_encoder(tiny_config_dir: Path):
    from cope.encoders import create_encoder

    return create_encoder(f"open_clip:{TINY_MODEL}", threads=2)


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cope.demo import make_demo_catalog

    return make_demo_catalog(tmp_path_factory.mktemp("demo"), n_products=4)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
