"""Compact tables: a PCA fitted on the catalog as part of the pipeline (items and queries), float16 and
unified-vector-only storage, found again from anywhere, and `cope embed` writing what `cope reproject` wrote."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cope.errors import InputNotFoundError, StoreMismatchError
from cope.job import embed
from cope.pipeline import EncoderSpec, HeadsRef, PipelineSpec, ProjectionRef
from cope.store import ItemStore
from cope.store.index import disk_size
from cope.store.schema import Storage
from cope.vectors import to_numpy
from tests.conftest import TINY_MODEL

DIM = 8


def _rows(db: Path, table: str, column: str = "vector") -> dict[str, np.ndarray]:
    store = ItemStore.open(db, table)
    t = store.read(["item_id", column])
    dim = t.schema.field(column).type.list_size
    return dict(zip(t.column("item_id").to_pylist(), to_numpy(t.column(column), dim)))


def _ranking(db: Path, table: str, query: np.ndarray) -> list[str]:
    rows = _rows(db, table)
    ids = list(rows)
    scores = np.stack([rows[i] for i in ids]) @ query / np.linalg.norm(np.stack([rows[i] for i in ids]), axis=1)
    return [ids[i] for i in np.argsort(-scores, kind="stable")]


@pytest.fixture(scope="module")
def compact(tiny_encoder, demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory):
    """A base table, a PCA fitted on it (saved in a folder deleted later) and its float32 and float16 tables."""
    from cope.training.compact import compact_table

    root = tmp_path_factory.mktemp("compact")
    db = root / "cope.lancedb"
    embed(demo_catalog, db, encoder=tiny_encoder, progress=False)
    fitted = root / "pca_fit"
    s32 = compact_table(db, "items_pca", pca=DIM, save_to=fitted, progress=False)
    s16 = compact_table(db, "items_pca16", projection=fitted, float16=True, progress=False)
    return db, fitted, s32, s16


def test_spec_names_the_projection_and_round_trips() -> None:
    spec = PipelineSpec(encoder=EncoderSpec(name="open_clip:x"), encoder_tag="x/abc", encoder_dim=16)
    ref = ProjectionRef(fingerprint="f0f0", base_tag=spec.tag, input_dim=16, dim=4, uri="/somewhere")
    projected = spec.with_projection(ref)
    assert projected.tag == f"{spec.tag};pca=f0f0" and projected.dim == 4
    assert PipelineSpec.from_metadata(projected.to_metadata()) == projected
    assert projected.without_projection() == spec
    with pytest.raises(StoreMismatchError, match="fitted on"):
        spec.model_copy(update={"encoder_tag": "y/def"}).with_projection(ref)
    with pytest.raises(StoreMismatchError, match="dim 16"):
        spec.with_projection(ref.model_copy(update={"input_dim": 32}))
    # heads come before the projection: a projection fitted on heads vectors names them in its base tag
    heads = HeadsRef(fingerprint="h1", base_tag=spec.base_tag, dim=8, domains=("product",))
    with_heads = spec.with_heads(heads)
    both = with_heads.with_projection(ref.model_copy(update={"base_tag": with_heads.tag, "input_dim": 8}))
    assert both.tag == f"{spec.tag};heads=h1;pca=f0f0" and both.dim == 4
    assert both.without_heads() == spec
    from cope.errors import HeadsMismatchError

    with pytest.raises(HeadsMismatchError, match="projection"):
        projected.with_heads(heads)


def test_pca_tables_dims_dtypes_bytes_and_vectors(compact) -> None:
    from cope.projection import load_projection

    db, fitted, s32, s16 = compact
    base, small, half = (ItemStore.open(db, t) for t in ("items", "items_pca", "items_pca16"))
    pca = load_projection(fitted)
    assert s32.projection == s16.projection == pca.fingerprint and s32.rows == s16.rows == base.count() > 10
    assert 0 < pca.explained <= 1 and pca.n_fit == base.count()
    for store, dtype in ((small, "float"), (half, "halffloat")):
        spec = PipelineSpec.from_metadata(store.metadata)
        assert spec is not None and spec.projection is not None and spec.projection.fingerprint == pca.fingerprint
        assert store.model_tag == spec.tag == f"{base.model_tag};pca={pca.fingerprint}" and store.dim == spec.dim == DIM
        for column in ("vector", "image_vector", "text_vector"):
            assert str(store.table.schema.field(column).type) == f"fixed_size_list<item: {dtype}>[{DIM}]"
    assert Storage.of(half.table.schema) == Storage(vector_dtype="float16")
    assert s32.vector_bytes == 3 * DIM * 4 and s16.vector_bytes == 3 * DIM * 2
    sizes = {t: disk_size(str(db), t) for t in ("items", "items_pca", "items_pca16")}
    assert sizes["items_pca16"] < sizes["items_pca"] < sizes["items"]
    # every vector column goes through the same map; absent parts stay zero; float16 rounds it
    for column in ("vector", "image_vector", "text_vector"):
        src, got, got16 = _rows(db, "items", column), _rows(db, "items_pca", column), _rows(db, "items_pca16", column)
        ids = sorted(src)
        expected = pca.apply(np.stack([src[i] for i in ids]))
        np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, atol=1e-5)
        np.testing.assert_allclose(np.stack([got16[i] for i in ids]), expected, atol=1e-3)
        norms = np.linalg.norm(expected, axis=1)
        present = np.linalg.norm(np.stack([src[i] for i in ids]), axis=1) > 0
        np.testing.assert_allclose(norms[present], 1, atol=1e-5)
        assert not norms[~present].any()


def test_queries_on_a_pca_table_are_projected_like_items(compact, demo_catalog: Path, tiny_encoder) -> None:
    import cope
    from cope.embedding import Pipeline
    from cope.projection import load_projection

    db, fitted, _, _ = compact
    pca = load_projection(fitted)
    base = Pipeline.build(PipelineSpec.from_metadata(ItemStore.open(db, "items").metadata), encoder=tiny_encoder)
    media = demo_catalog.parent / "media"
    for table, tol in (("items_pca", 1e-5), ("items_pca16", 2e-3)):
        small = cope.open(db, table=table, encoder=tiny_encoder)
        assert small.pipeline.projection is not None and small.pipeline.tag == small.model_tag
        queries = {"text": "red ball", "image": media / "p000_photo.jpg", "video": media / "p003_video.mp4"}
        for kind, query in queries.items():
            by_hand = pca.apply(base.encode_contents([base.query_content(**{kind: query})], ["product"]))[0]
            np.testing.assert_allclose(small.encode([query], kind=kind)[0], by_hand, atol=1e-5)
            got = small.search(query, k=len(small), kind=kind)
            assert got.ids == _ranking(db, table, by_hand), (table, kind)
            rows = _rows(db, table)
            cosine = [float(rows[i] @ by_hand / np.linalg.norm(rows[i])) for i in got.ids]
            np.testing.assert_allclose(got.scores, cosine, atol=tol)  # cosine scores, float16 storage included


def test_pca_table_is_found_from_another_folder_after_its_fit_folder_is_gone(compact, tmp_path: Path, monkeypatch,
                                                                              tiny_config_dir: Path) -> None:
    import cope
    from cope.api import open_db

    db, fitted, s32, _ = compact
    spec = PipelineSpec.from_metadata(ItemStore.open(db, "items_pca").metadata)
    assert spec is not None and spec.projection is not None and Path(spec.projection.uri) == fitted.resolve()
    copy = db / "_cope_projections" / s32.projection
    assert (copy / "projection.safetensors").is_file() and (copy / "projection.json").is_file()
    if fitted.exists():
        shutil.rmtree(fitted)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    small = cope.open(str(db.resolve()), table="items_pca")  # builds the tiny model from the stored spec
    assert small.search("red ball", k=3).ids and small.pipeline.projection.path == copy.resolve()
    # neither copy left: a clear error naming where the projection is looked for
    lost = tmp_path / "lost.lancedb"
    shutil.copytree(db, lost, ignore=shutil.ignore_patterns("_cope_projections"))
    with pytest.raises(InputNotFoundError, match="_cope_projections"):
        open_db(lost, table="items_pca").search("red ball")


def test_embed_into_a_pca_table_writes_what_reproject_wrote(compact, demo_catalog: Path, tiny_encoder,
                                                           tiny_config_dir: Path) -> None:
    from cope.cli import main

    db, _, s32, _ = compact
    expected = {t: _rows(db, t) for t in ("items_pca", "items_pca16")}
    # the table's own projection is used by a run that names none: same pipeline, same content, nothing to do
    assert embed(demo_catalog, db, encoder=tiny_encoder, table="items_pca", progress=False).skipped == 13
    for table, tol in (("items_pca", 1e-5), ("items_pca16", 1e-3)):
        store = ItemStore.open(db, table)
        storage = Storage.of(store.table.schema)
        store.table.delete("domain = 'product' OR domain = 'live'")  # these are embedded again, through the PCA
        assert main(["-q", "embed", str(demo_catalog), "--db", str(db), "--table", table,
                     "--model", f"open_clip:{TINY_MODEL}"]) == 0
        store = ItemStore.open(db, table)
        assert store.count() == len(expected[table]) and Storage.of(store.table.schema) == storage
        got = _rows(db, table)
        assert sorted(got) == sorted(expected[table])
        for item_id, vec in got.items():
            np.testing.assert_allclose(vec, expected[table][item_id], atol=tol, err_msg=item_id)
    # a new table with the projection named explicitly (its database copy) holds the same vectors
    folder = db / "_cope_projections" / s32.projection
    summary = embed(demo_catalog, db, encoder=tiny_encoder, table="items_pca_new", projection=str(folder),
                    progress=False)
    assert summary.done and ItemStore.open(db, "items_pca_new").model_tag == s32.model_tag
    for item_id, vec in _rows(db, "items_pca_new").items():
        np.testing.assert_allclose(vec, expected["items_pca"][item_id], atol=1e-5, err_msg=item_id)
    assert main(["-q", "embed", str(demo_catalog), "--db", str(db), "--table", "items_pca_cli", "--projection",
                 str(folder), "--model", f"open_clip:{TINY_MODEL}"]) == 0  # the same from the command line
    assert ItemStore.open(db, "items_pca_cli").model_tag == s32.model_tag
    for item_id, vec in _rows(db, "items_pca_cli").items():
        np.testing.assert_allclose(vec, expected["items_pca"][item_id], atol=1e-5, err_msg=item_id)
    with pytest.raises(StoreMismatchError):  # a projection fitted on another pipeline's vectors is refused
        embed(demo_catalog, db, encoder=tiny_encoder, table="items_other", projection=str(folder), progress=False,
              fusion={"image_weight": 0.9, "text_weight": 0.1})


def test_cli_reproject_vector_only_float16_and_what_it_refuses(compact, tiny_encoder, capsys) -> None:
    import cope
    from cope.cli import main

    db, _, _, _ = compact
    assert main(["-q", "reproject", "--db", str(db), "--pca", str(DIM), "--float16", "--vector-only",
                 "--table", "items_tiny"]) == 0
    assert "items_tiny" in capsys.readouterr().out
    store = ItemStore.open(db, "items_tiny")
    assert Storage.of(store.table.schema) == Storage(vector_dtype="float16", modalities=False)
    assert not {"image_vector", "text_vector"} & set(store.table.schema.names)
    assert {"has_image", "has_text"} <= set(store.table.schema.names)
    tiny = cope.open(db, table="items_tiny", encoder=tiny_encoder)
    assert tiny.search("red ball", k=3).ids == cope.open(db, table="items_pca16", encoder=tiny_encoder).search(
        "red ball", k=3).ids
    assert len(tiny.similar("product:p000", k=3)) == 3
    assert "vector" in tiny.get("product:p000", with_vectors=True).schema.names
    with pytest.raises(ValueError, match=r"one of \['vector'\]"):
        tiny.search("red ball", vector_column="image_vector")
    # a storage-only copy keeps the vectors and the tag
    assert main(["-q", "reproject", "--db", str(db), "--float16", "--table", "items_half"]) == 0
    half = ItemStore.open(db, "items_half")
    assert half.model_tag == ItemStore.open(db, "items").model_tag
    for item_id, vec in _rows(db, "items").items():
        np.testing.assert_allclose(_rows(db, "items_half")[item_id], vec, atol=1e-3)
    capsys.readouterr()
    assert main(["reproject", "--db", str(db), "--table", "x"]) == 2  # nothing asked for
    assert main(["reproject", "--db", str(db), "--heads", str(db), "--pca", "4", "--table", "x"]) == 2
    assert main(["reproject", "--db", str(db), "--source-table", "items_pca", "--pca", "4", "--table", "x"]) == 2
    assert main(["reproject", "--db", str(db), "--pca", "4", "--table", "items_pca"]) == 2  # another PCA's table
    err = capsys.readouterr().err
    assert "already projected" in err and err.count("\n") >= 4
