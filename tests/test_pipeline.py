"""One pipeline everywhere: the spec in the table, heads tables searchable from anywhere, queries made like items."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cope.content import ExtractOptions
from cope.errors import HeadsMismatchError, StoreMismatchError
from cope.fusion import FusionConfig
from cope.job import embed
from cope.pipeline import EncoderSpec, HeadsRef, PipelineSpec
from cope.store import ItemStore
from tests.conftest import TINY_MODEL


def test_spec_round_trips_through_metadata_and_names_what_changes_vectors() -> None:
    spec = PipelineSpec(encoder=EncoderSpec(name="open_clip:x", options={"pretrained": "/w.pt"}), encoder_tag="x/abc",
                        encoder_dim=16)
    assert PipelineSpec.from_metadata(spec.to_metadata()) == spec
    assert spec.tag == "x/abc;fusion=image:0.5,text:0.5" and spec.dim == 16
    more = spec.model_copy(update={"extract": ExtractOptions(frames_per_video=4),
                                   "fusion": FusionConfig(image_weight=0.7, text_weight=0.3)})
    assert more.tag == "x/abc;fusion=image:0.7,text:0.3;extract=v4"
    # the decode hint and decoder choose how, not what, is decoded: same tag
    assert spec.model_copy(update={"extract": ExtractOptions(image_size=64, video_decoder="av")}).tag == spec.tag
    heads = HeadsRef(fingerprint="f00", base_tag=spec.base_tag, dim=8, domains=("product", "video"))
    with_heads = spec.with_heads(heads)
    assert with_heads.tag == f"{spec.tag};heads=f00" and with_heads.dim == 8
    assert PipelineSpec.from_metadata(with_heads.to_metadata()) == with_heads
    with pytest.raises(HeadsMismatchError):
        more.with_heads(heads)
    assert more.tag != spec.tag  # what makes a table refuse the other's vectors (ItemStore.check_model)
    assert PipelineSpec.from_metadata({}) is None


def test_tables_written_before_the_spec_are_still_read() -> None:
    legacy = {b"cope.model_tag": b"x/abc;fusion=image:0.7,text:0.3", b"cope.dim": b"16",
              b"cope.model_spec": b'{"model": "open_clip:x", "pretrained": null, '
                                  b'"fusion": {"image_weight": 0.7, "text_weight": 0.3}}'}
    spec = PipelineSpec.from_metadata(legacy)
    assert spec is not None and spec.tag == "x/abc;fusion=image:0.7,text:0.3" and spec.encoder.name == "open_clip:x"
    assert PipelineSpec.from_metadata({**legacy, b"cope.model_spec": b'{"model": "synthetic"}'}) is None


@pytest.fixture(scope="module")
def trained(tiny_encoder, demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory):
    """A base table, heads trained on it (in a folder that is deleted later), and the reprojected heads table."""
    from cope.training import fit, reproject

    root = tmp_path_factory.mktemp("heads_table")
    db = root / "cope.lancedb"
    embed(demo_catalog, db, encoder=tiny_encoder, progress=False)
    result = fit(db, epochs=3, dim=8, batch_products=2, val_fraction=0, test_fraction=0.25, seed=0)
    ckpt = result.save(root / "heads")
    reproject(db, ckpt, "items_cope", progress=False)
    return db, ckpt, result


def _ranking(db: Path, table: str, query: np.ndarray) -> list[str]:
    rows = ItemStore.open(db, table).read(["item_id", "vector"]).to_pylist()
    vecs = np.array([r["vector"] for r in rows], np.float32)
    scores = vecs @ query
    return [rows[i]["item_id"] for i in np.argsort(-scores, kind="stable")]


def test_heads_table_is_searchable_by_text_image_and_video_from_another_folder(
    trained, demo_catalog: Path, tmp_path: Path, monkeypatch, tiny_config_dir: Path
) -> None:
    import cope
    from cope.embedding import Pipeline
    from cope.heads import HeadsProjector

    db, ckpt, _ = trained
    spec = PipelineSpec.from_metadata(ItemStore.open(db, "items_cope").metadata)
    assert spec is not None and spec.heads is not None and Path(spec.heads.uri) == ckpt.resolve()
    assert (db / "_cope_heads" / spec.heads.fingerprint / "heads.safetensors").is_file()
    # the heads are found again from another working directory, even after their own folder is gone
    moved = tmp_path / "moved"
    shutil.copytree(ckpt, moved)
    shutil.rmtree(ckpt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    heads_db = cope.open(str(db.resolve()), table="items_cope")
    media = demo_catalog.parent / "media"
    queries = {"text": ("red ball", "product"), "image": (media / "p000_photo.jpg", "image"),
               "video": (media / "p003_video.mp4", "video")}
    base = Pipeline.build(spec.without_heads())  # the hand computation: base vectors, then the heads by domain
    projector = HeadsProjector.load(moved, model_tag=spec.base_tag, dim=spec.encoder_dim)
    for kind, (query, domain) in queries.items():
        got = heads_db.search(query, k=15, as_domain=domain)
        content = base.query_content(**{kind: query}, domain=domain)
        parts = base.encode_parts([content], [[base.encoder.preprocess(im) for im in content.images]], [domain])
        expected, _, _ = projector.project(parts.image, parts.text, parts.has_image, parts.has_text, [domain])
        assert got.ids == _ranking(db, "items_cope", expected[0])[:15], kind
        np.testing.assert_allclose(heads_db.encode([query], as_domain=domain)[0], expected[0], atol=1e-5)
    # the default domain of a text query is a product page; another domain uses another head
    np.testing.assert_allclose(heads_db.encode(["red ball"])[0], heads_db.encode(["red ball"], as_domain="product")[0])
    assert not np.allclose(heads_db.encode(["red ball"], as_domain="product")[0],
                           heads_db.encode(["red ball"], as_domain="video")[0])
    with pytest.raises(ValueError, match="as_domain"):
        heads_db.encode(["red ball"], as_domain="nope")


def test_heads_that_cannot_be_found_give_a_clear_error(trained, tmp_path: Path) -> None:
    from cope.api import open_db
    from cope.errors import InputNotFoundError

    db, _, _ = trained
    copy = tmp_path / "copy.lancedb"
    shutil.copytree(db, copy, ignore=shutil.ignore_patterns("_cope_heads"))
    spec = PipelineSpec.from_metadata(ItemStore.open(copy, "items_cope").metadata)
    assert spec is not None and spec.heads is not None
    if Path(spec.heads.uri).exists():
        shutil.rmtree(spec.heads.uri)
    with pytest.raises(InputNotFoundError, match="_cope_heads"):
        open_db(copy, table="items_cope").search("red ball")


def test_embed_with_heads_writes_the_pipeline_of_the_heads_table(trained, tiny_encoder, demo_catalog: Path) -> None:
    db, _, _ = trained
    spec = PipelineSpec.from_metadata(ItemStore.open(db, "items_cope").metadata)
    heads_dir = db / "_cope_heads" / spec.heads.fingerprint
    summary = embed(demo_catalog, db, encoder=tiny_encoder, table="items_cope", heads=str(heads_dir), progress=False)
    assert summary.done == 0 and summary.skipped == 13  # same pipeline, same content: nothing to do
    with pytest.raises(StoreMismatchError):
        embed(demo_catalog, db, encoder=tiny_encoder, table="items_cope", progress=False)  # no heads: other space


def test_cli_embed_ray_accepts_heads_and_cli_errors_are_one_line(tiny_config_dir: Path, tmp_path: Path,
                                                                 capsys) -> None:
    from cope.cli import main

    bad = tmp_path / "nope"
    assert main(["embed", str(tmp_path / "missing.jsonl"), "--db", str(tmp_path / "db"),
                 "--model", f"open_clip:{TINY_MODEL}", "--heads", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "error" in err
    assert main(["embed", "x.jsonl", "--db", str(tmp_path / "db"), "--image-weight", "-1"]) == 2
    assert "image_weight" in capsys.readouterr().err
