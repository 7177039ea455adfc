"""The Ray Data engine on a local 2-CPU Ray: same rows as the single-machine job, resume, failures recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cope.job import EmbedConfig, embed
from cope.store import ItemStore
from tests.conftest import TINY_MODEL
from tests.media import corrupt_file

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray(tiny_config_dir: Path):
    import os

    os.environ["COPE_MODEL_CONFIGS"] = str(tiny_config_dir)  # forwarded to the workers
    # address="local": a new Ray even when this shared machine runs a `ray start` cluster (ray.init() would join it)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"COPE_MODEL_CONFIGS": str(tiny_config_dir), "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


def _vectors(db: Path) -> dict[str, dict]:
    cols = ["item_id", "vector", "image_vector", "text_vector", "content_hash", "model_tag", "slice_start"]
    return {r["item_id"]: r for r in ItemStore.open(db).read(cols).to_pylist()}


def test_ray_engine_matches_the_single_machine_job_and_resumes(local_ray, demo_catalog: Path, tmp_path: Path) -> None:
    from cope.ray_engine import embed_ray

    config = EmbedConfig(model=f"open_clip:{TINY_MODEL}", progress=False)
    lines = demo_catalog.read_text().splitlines()
    # an interrupted run leaves a part of the catalog committed: model it with the first 5 records
    part = demo_catalog.parent / "part.jsonl"
    part.write_text("\n".join(lines[:5]) + "\n")
    bad = demo_catalog.parent / "media" / "broken.jpg"
    corrupt_file(bad, "garbage")
    full = demo_catalog.parent / "full.jsonl"
    full.write_text("\n".join(lines + [json.dumps({"domain": "image", "image_id": "broken", "uri": "media/broken.jpg"}),
                                       "{oops"]) + "\n")
    db = tmp_path / "ray"
    first = embed_ray([part], db, config, actors=1, records_per_task=2)
    assert (first.done, first.failed) == (5, 0)
    second = embed_ray([full], db, config, actors=1, records_per_task=4)
    assert (second.skipped, second.done, second.failed, second.invalid) == (5, 8, 1, 1)
    ids = ItemStore.open(db).read(["item_id"]).column("item_id").to_pylist()
    assert len(ids) == len(set(ids)) == 15
    errors = {e["record_key"]: e for e in ItemStore.open(db).errors().to_pylist()}
    assert "image:broken" in errors and "not a readable image" in errors["image:broken"]["reason"]
    assert any(e["stage"] == "manifest" for e in errors.values())

    single = tmp_path / "single"
    embed(demo_catalog, single, config=config)
    a, b = _vectors(db), _vectors(single)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key]["content_hash"] == b[key]["content_hash"] and a[key]["model_tag"] == b[key]["model_tag"]
        for col in ("vector", "image_vector", "text_vector"):
            np.testing.assert_allclose(a[key][col], b[key][col], atol=1e-5)
    assert ItemStore.open(db).model_tag == ItemStore.open(single).model_tag


def test_ray_engine_with_heads_equals_the_local_job(local_ray, demo_catalog: Path, tmp_path: Path) -> None:
    from cope.ray_engine import embed_ray
    from cope.training import fit

    config = EmbedConfig(model=f"open_clip:{TINY_MODEL}", progress=False)
    base = tmp_path / "base"
    embed(demo_catalog, base, config=config)
    ckpt = fit(base, epochs=2, dim=8, batch_products=2, val_fraction=0, test_fraction=0.25, seed=0).save(
        tmp_path / "heads")
    with_heads = config.model_copy(update={"heads": str(ckpt), "table": "items_cope"})
    local = embed(demo_catalog, tmp_path / "local", config=with_heads)
    on_ray = embed_ray([demo_catalog], tmp_path / "ray", with_heads, actors=1, records_per_task=4)
    assert local.done == on_ray.done == 13 and local.model_tag == on_ray.model_tag
    cols = ["item_id", "vector", "image_vector", "text_vector", "content_hash", "record_hash", "model_tag"]
    a = {r["item_id"]: r for r in ItemStore.open(tmp_path / "local", "items_cope").read(cols).to_pylist()}
    b = {r["item_id"]: r for r in ItemStore.open(tmp_path / "ray", "items_cope").read(cols).to_pylist()}
    assert sorted(a) == sorted(b) and len(a) == 15
    for key in a:
        assert len(a[key]["vector"]) == 8
        for col in ("content_hash", "record_hash", "model_tag"):
            assert a[key][col] == b[key][col]
        for col in ("vector", "image_vector", "text_vector"):
            np.testing.assert_allclose(a[key][col], b[key][col], atol=1e-5)


def test_ray_engine_reads_text_in_pictures_like_the_local_job(local_ray, tmp_path: Path) -> None:
    pytest.importorskip("rapidocr_onnxruntime")
    from PIL import Image, ImageDraw, ImageFont

    from cope.content import ExtractOptions
    from cope.ray_engine import embed_ray

    font = ImageFont.truetype("DejaVuSans.ttf", 40) if Path("/usr/share/fonts/truetype/dejavu").is_dir() else None
    rows = []
    for i, word in enumerate(["SUMMER", "COFFEE", ""]):
        im = Image.new("RGB", (400, 240), (235, 235, 225))
        if word:
            ImageDraw.Draw(im).text((30, 60), word, font=font, fill=(10, 10, 10))
        im.save(tmp_path / f"{i}.jpg", quality=92)
        rows.append({"domain": "image", "image_id": f"w{i}", "uri": f"{i}.jpg"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = EmbedConfig(model=f"open_clip:{TINY_MODEL}", progress=False, extract=ExtractOptions(ocr=True))
    on_ray = embed_ray([manifest], tmp_path / "ray", config, actors=1, records_per_task=2)
    local = embed(manifest, tmp_path / "local", config=config)
    assert on_ray.done == local.done == 3 and on_ray.model_tag == local.model_tag
    cols = ["item_id", "vector", "ocr_text", "has_ocr"]
    a = {r["item_id"]: r for r in ItemStore.open(tmp_path / "ray").read(cols).to_pylist()}
    b = {r["item_id"]: r for r in ItemStore.open(tmp_path / "local").read(cols).to_pylist()}
    assert a["image:w0"]["ocr_text"] == b["image:w0"]["ocr_text"] == "SUMMER" and not a["image:w2"]["has_ocr"]
    for key in a:
        np.testing.assert_allclose(a[key]["vector"], b[key]["vector"], atol=1e-5)
