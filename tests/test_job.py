from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cope.cli import main
from cope.encoders import create_encoder
from cope.job import EXIT_SOME_FAILED, embed
from cope.store import ItemStore, StoreMismatchError
from tests.conftest import TINY_MODEL
from tests.media import corrupt_file, make_video, save_image


class CountingEncoder:
    """Wraps an encoder and counts forward passes (a spy, the encoder itself is real)."""

    def __init__(self, inner) -> None:
        self.inner, self.image_batches, self.text_batches = inner, 0, 0
        self.dim, self.model_tag, self.image_size = inner.dim, inner.model_tag, inner.image_size

    def preprocess(self, im):
        return self.inner.preprocess(im)

    def encode_image_tensors(self, batch):
        self.image_batches += 1
        return self.inner.encode_image_tensors(batch)

    def encode_texts(self, texts, batch_size=64):
        self.text_batches += 1
        return self.inner.encode_texts(texts, batch_size)


def _rows(db: Path) -> list[dict]:
    store = ItemStore.open(db)
    cols = ["item_id", "domain", "source_id", "slice_start", "slice_end", "vector", "image_vector", "text_vector",
            "has_image", "has_text", "n_images", "content_hash", "model_tag", "metadata"]
    return store.read(cols).to_pylist()


def test_demo_catalog_end_to_end(tiny_encoder, demo_catalog: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    spy = CountingEncoder(tiny_encoder)
    summary = embed(demo_catalog, db, encoder=spy, batch_size=8, write_every=5)
    # 4 products x (product page, image, video) + 1 live stream = 13 records; the live stream has 3 slices
    assert (summary.done, summary.items, summary.failed, summary.invalid) == (13, 15, 0, 0)
    assert {"read", "decode", "preprocess", "wait", "encode", "fusion", "write", "compact"} == set(summary.stages)
    assert all(s >= 0 for s in summary.stages.values()) and summary.stage_report().startswith("read ")
    rows = _rows(db)
    assert len(rows) == 15 and len({r["item_id"] for r in rows}) == 15
    by_domain = {d: sum(r["domain"] == d for r in rows) for d in ("product", "image", "video", "live")}
    assert by_domain == {"product": 4, "image": 4, "video": 4, "live": 3}
    live = sorted((r["slice_start"], r["slice_end"], r["item_id"]) for r in rows if r["domain"] == "live")
    assert live == [(0, 10, "live:live-001:0-10"), (10, 20, "live:live-001:10-20"), (20, 30, "live:live-001:20-30")]
    for r in rows:
        for col in ("vector", "image_vector", "text_vector"):
            assert len(r[col]) == 16
            assert np.linalg.norm(r[col]) == pytest.approx(1.0, abs=1e-4)
        assert r["has_image"] and r["has_text"] and r["model_tag"].startswith(tiny_encoder.model_tag)
    video = next(r for r in rows if r["domain"] == "video")
    assert video["n_images"] == 8 and json.loads(video["metadata"])["product_key"] == "p000"
    store = ItemStore.open(db)
    assert store.dim == 16 and store.model_tag == f"{tiny_encoder.model_tag};fusion=image:0.5,text:0.5"
    from cope.pipeline import PipelineSpec

    spec = PipelineSpec.from_metadata(store.metadata)
    assert spec is not None and spec.fusion.image_weight == 0.5 and spec.tag == store.model_tag

    # a second run on the unchanged catalog does no model work and writes nothing
    version = store.table.version
    spy2 = CountingEncoder(tiny_encoder)
    again = embed(demo_catalog, db, encoder=spy2)
    assert (again.done, again.skipped, spy2.image_batches, spy2.text_batches) == (0, 13, 0, 0)
    assert ItemStore.open(db).table.version == version


def test_vectors_match_a_direct_encoding(tiny_encoder, tmp_path: Path) -> None:
    img = save_image(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"domain": "image", "image_id": "a", "uri": "a.png",
                                                  "text": "red ball"}) + "\n")
    embed(tmp_path / "m.jsonl", tmp_path / "db", encoder=tiny_encoder, fusion={"image_weight": 1, "text_weight": 0})
    (row,) = _rows(tmp_path / "db")
    from cope.extractors.image import load_image

    direct = tiny_encoder.encode_images([load_image(str(img), size_hint=tiny_encoder.image_size)])[0]
    np.testing.assert_allclose(row["image_vector"], direct, atol=1e-5)
    np.testing.assert_allclose(row["vector"], direct, atol=1e-5)
    np.testing.assert_allclose(row["text_vector"], tiny_encoder.encode_texts(["red ball"])[0], atol=1e-5)


def test_bad_inputs_are_recorded_and_the_job_carries_on(tiny_encoder, tmp_path: Path) -> None:
    save_image(tmp_path / "good.jpg", fmt="JPEG")
    corrupt_file(tmp_path / "bad.jpg", "truncated_jpeg")
    corrupt_file(tmp_path / "bad.mp4", "garbage")
    make_video(tmp_path / "good.mp4")
    rows = [
        {"domain": "image", "image_id": "ok", "uri": "good.jpg"},
        {"domain": "image", "image_id": "corrupt", "uri": "bad.jpg"},
        {"domain": "image", "image_id": "missing", "uri": "nowhere.jpg"},
        {"domain": "video", "video_id": "broken", "uri": "bad.mp4", "title": "x"},
        {"domain": "video", "video_id": "fine", "uri": "good.mp4"},
        {"domain": "product", "item_id": "empty-text", "title": "   "},
        {"domain": "podcast", "id": 1},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    db = tmp_path / "db"
    summary = embed(manifest, db, encoder=tiny_encoder)
    assert (summary.done, summary.failed, summary.invalid) == (2, 3, 3)
    assert summary.exit_code == EXIT_SOME_FAILED
    assert sorted(r["item_id"] for r in _rows(db)) == ["image:ok", "video:fine"]
    errors = {e["record_key"]: e for e in ItemStore.open(db).errors().to_pylist()}
    assert "corrupt or truncated" in errors["image:corrupt"]["reason"]
    assert "file not found" in errors["image:missing"]["reason"]
    assert "undecodable video" in errors["video:broken"]["reason"] or "not a readable video" in errors["video:broken"]["reason"]
    assert errors["image:corrupt"]["origin"].endswith("m.jsonl:2") and errors["image:corrupt"]["stage"] == "extract"
    manifest_errors = [e for e in errors.values() if e["stage"] == "manifest"]
    assert sorted(e["origin"].rsplit(":", 1)[1] for e in manifest_errors) == ["6", "7", "8"]
    assert any("needs a title" in e["reason"] for e in manifest_errors)  # blank text is refused at the edge

    # fixing a file and re-running picks it up and clears its error; nothing already written is touched
    shutil.copy(tmp_path / "good.jpg", tmp_path / "nowhere.jpg")
    again = embed(manifest, db, encoder=tiny_encoder)
    assert (again.done, again.skipped, again.failed) == (1, 2, 2)
    assert "image:missing" not in {e["record_key"] for e in ItemStore.open(db).errors().to_pylist()}
    assert len(_rows(db)) == 3


def test_changed_record_is_re_embedded_and_stale_slices_removed(tiny_encoder, tmp_path: Path) -> None:
    snaps = [{"t": t, "uri": str(save_image(tmp_path / f"s{t}.png"))} for t in (1, 12, 25)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"domain": "live", "live_id": "L", "snapshots": snaps, "slice_seconds": 10}) + "\n")
    db = tmp_path / "db"
    embed(manifest, db, encoder=tiny_encoder)
    assert sorted(r["item_id"] for r in _rows(db)) == ["live:L:0-10", "live:L:10-20", "live:L:20-30"]
    manifest.write_text(json.dumps({"domain": "live", "live_id": "L", "snapshots": snaps, "slice_seconds": 20}) + "\n")
    summary = embed(manifest, db, encoder=tiny_encoder)
    assert summary.done == 1
    assert sorted(r["item_id"] for r in _rows(db)) == ["live:L:0-20", "live:L:20-40"]


def test_writing_with_another_model_is_refused(tiny_encoder, demo_catalog: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    (tmp_path / "m.jsonl").write_text(json.dumps({"domain": "product", "item_id": "a", "title": "red ball"}) + "\n")
    embed(tmp_path / "m.jsonl", db, encoder=tiny_encoder)
    other = create_encoder(f"open_clip:{TINY_MODEL}", seed=1)
    with pytest.raises(StoreMismatchError, match="refusing to mix"):
        embed(tmp_path / "m.jsonl", db, encoder=other)
    with pytest.raises(StoreMismatchError, match="refusing to mix"):  # same model, other fusion weights
        embed(tmp_path / "m.jsonl", db, encoder=tiny_encoder, fusion={"image_weight": 0.2, "text_weight": 0.8})
    assert len(_rows(db)) == 1
    embed(tmp_path / "m.jsonl", db, encoder=other, table="items_seed1")  # another table is fine


def test_unknown_options_are_rejected(tiny_encoder, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batchsize"):
        embed(tmp_path / "m.jsonl", tmp_path / "db", encoder=tiny_encoder, batchsize=3)


def test_cli_embed_and_errors(tiny_config_dir: Path, demo_catalog: Path, tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    assert main(["-q", "embed", str(demo_catalog), "--db", str(db), "--model", f"open_clip:{TINY_MODEL}"]) == 0
    assert "done 13 records (15 items" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"domain": "image", "image_id": "x", "uri": "missing.png"}\n')
    assert main(["-q", "embed", str(bad), "--db", str(db), "--model", f"open_clip:{TINY_MODEL}"]) == EXIT_SOME_FAILED
    assert main(["errors", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "bad.jsonl:1" in out and "file not found" in out
    assert main(["embed", str(tmp_path / "nope.jsonl"), "--db", str(db)]) == 2


def test_embed_with_trained_heads_matches_reproject(tiny_encoder, demo_catalog: Path, tmp_path: Path) -> None:
    from cope.training import fit, reproject

    db = tmp_path / "db"
    embed(demo_catalog, db, encoder=tiny_encoder)
    result = fit(db, epochs=3, dim=8, batch_products=2, val_fraction=0, test_fraction=0.25, seed=0)
    ckpt = result.save(tmp_path / "heads")
    summary = embed(demo_catalog, db, encoder=tiny_encoder, table="projected", heads=str(ckpt))
    assert summary.done == 13
    reproject(db, ckpt, "reprojected")
    a = {r["item_id"]: r for r in ItemStore.open(db, "projected").read(["item_id", "vector", "model_tag"]).to_pylist()}
    b = {r["item_id"]: r for r in ItemStore.open(db, "reprojected").read(["item_id", "vector", "model_tag"]).to_pylist()}
    assert sorted(a) == sorted(b) and len(a) == 15
    for key in a:
        assert len(a[key]["vector"]) == 8 and a[key]["model_tag"] == b[key]["model_tag"]
        np.testing.assert_allclose(a[key]["vector"], b[key]["vector"], atol=1e-5)
    assert ";heads=" in ItemStore.open(db, "projected").model_tag
    with pytest.raises(StoreMismatchError):  # the heads table refuses base-model vectors
        embed(demo_catalog, db, encoder=tiny_encoder, table="projected")
