"""The similarity API (cope.api): lookups, queries of every kind, batching, typed results, filters, model checks."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

MODEL = "open_clip:cope-tiny-16"
HOSTILE = [
    "' OR 1=1 --",
    "x'; DROP TABLE items; --",
    'quo"te\\',
    "%",
    "_",
    "ünï’cødé 🚀 商品",
    "') OR ('a'='a",
]


@pytest.fixture(scope="module")
def demo_db(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cope.job import embed

    db = tmp_path_factory.mktemp("api") / "cope.lancedb"
    summary = embed(demo_catalog, db, model=MODEL, progress=False)
    assert summary.failed == 0
    return db


@pytest.fixture(scope="module")
def db(demo_db: Path):
    from cope.api import open_db

    return open_db(demo_db)


@pytest.fixture(scope="module")
def catalog(db) -> pa.Table:
    return db.table.search().limit(None).to_arrow()


def _vectors(table: pa.Table, column: str = "vector") -> np.ndarray:
    return np.stack(table.column(column).to_numpy(zero_copy_only=False)).astype(np.float32)


def brute_force(catalog: pa.Table, query: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[str]:
    scores = _vectors(catalog) @ (query / np.linalg.norm(query))
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    order = np.argsort(-scores, kind="stable")[:k]
    return [catalog.column("item_id")[int(i)].as_py() for i in order if np.isfinite(scores[i])]


def test_open_is_lazy_and_reports_model(db) -> None:
    assert db.model_tag.startswith("open_clip/cope-tiny-16/") and db.dim == 16
    assert db._pipeline is None
    db.similar("product:p000", k=3)
    db.search(np.ones(16, np.float32), k=3)
    assert db._pipeline is None, "vector queries and item lookups must not load the model"


def test_open_missing_folder_says_what_to_do(tmp_path: Path) -> None:
    from cope.api import open_db

    with pytest.raises(FileNotFoundError, match="cope embed"):
        open_db(tmp_path / "nope.lancedb")


def test_similar_excludes_itself_and_matches_exact_search(db, catalog) -> None:
    res = db.similar("product:p001", k=5)
    assert len(res) == 5 and "product:p001" not in res.ids
    ids = catalog.column("item_id").to_pylist()
    query = _vectors(catalog)[ids.index("product:p001")]
    mask = np.array([i != "product:p001" for i in ids])
    assert res.ids == brute_force(catalog, query, 5, mask)
    assert np.all(np.diff(res.scores) <= 1e-6), "best first"
    expected = _vectors(catalog)[[ids.index(i) for i in res.ids]] @ query
    np.testing.assert_allclose(res.scores, expected, atol=1e-4)  # score = cosine similarity


def test_similar_restricted_to_other_domains(db) -> None:
    res = db.similar("video:vid-p000", k=10, domains=["product", "live"])
    assert {h.domain for h in res} <= {"product", "live"} and len(res) == 4 + 3
    assert {h.domain for h in db.similar("product:p000", k=3, domains="video")} == {"video"}


def test_typed_rows_arrow_and_pandas(db) -> None:
    from cope.api import Hit

    res = db.similar("product:p002", k=4, domains=["live", "video"])
    hit = res[0]
    assert isinstance(hit, Hit) and isinstance(hit.metadata, dict) and -1.0 <= hit.score <= 1.0
    live = [h for h in res if h.domain == "live"]
    assert live and all(h.slice_end > h.slice_start for h in live) and all(h.source_id == "live-001" for h in live)
    videos = [h for h in res if h.domain == "video"]
    assert all(h.product_key and Path(h.media_uri).suffix == ".mp4" for h in videos)
    table = res.to_arrow()
    assert {"item_id", "domain", "source_id", "slice_start", "slice_end", "score", "metadata"} <= set(table.column_names)
    assert "vector" not in table.column_names
    df = res.to_pandas()
    assert list(df["item_id"]) == res.ids and isinstance(df["metadata"].iloc[0], dict)


def test_search_with_a_stored_vector_finds_the_item_first(db, catalog) -> None:
    v = db.vectors(["image:img-p003"])[0]
    res = db.search(v, k=3)
    assert res.ids[0] == "image:img-p003" and res.scores[0] == pytest.approx(1.0, abs=1e-4)
    assert db.search(v.tolist(), k=3).ids == res.ids


def test_text_image_and_video_queries_use_the_tables_model(db, catalog, demo_catalog: Path) -> None:
    from PIL import Image

    from cope.encoders import create_encoder

    enc = create_encoder(MODEL)
    text = "unboxing the red ball"
    assert db.search(text, k=5).ids == db.search(enc.encode_texts([text])[0], k=5).ids
    media = demo_catalog.parent / "media"
    photo = media / "p001_photo.jpg"
    by_path, by_str = db.search(photo, k=5), db.search(str(photo), k=5)
    by_pil = db.search(Image.open(photo).convert("RGB"), k=5)
    assert by_path.ids == by_str.ids == by_pil.ids
    np.testing.assert_allclose(by_path.scores, by_pil.scores, atol=1e-2)  # paths decode JPEG at reduced size
    video = db.search(media / "p002_video.mp4", k=3, domains=["product"])
    assert len(video) == 3 and {h.domain for h in video} == {"product"}


def test_query_kind_detection(tmp_path: Path) -> None:
    from cope.api import Query, query_kind

    assert query_kind("a red dress") == "text"
    assert query_kind(np.zeros(4)) == "vector" and query_kind([0.1, 0.2]) == "vector"
    assert query_kind(Path("x.mp4")) == "video" and query_kind(Path("x.png")) == "image"
    assert query_kind(Query(text="red")) == "query"
    with pytest.raises(FileNotFoundError, match="kind='text'"):
        query_kind("missing.jpg")
    with pytest.raises(TypeError, match="cannot search"):
        query_kind(object())


def test_text_that_looks_like_a_file_can_be_forced(db) -> None:
    with pytest.raises(FileNotFoundError):
        db.search("summer.jpg", k=2)
    assert len(db.search("summer.jpg", k=2, kind="text")) == 2


def test_batch_forms_encode_once_and_match_single_calls(db, demo_catalog: Path, monkeypatch) -> None:
    media = demo_catalog.parent / "media"
    queries = ["red ball", "green box", media / "p000_photo.jpg", media / "p001_main.jpg", media / "p003_video.mp4"]
    enc = db.encoder
    calls = {"texts": 0, "images": 0}
    real_texts, real_images = enc.encode_texts, enc.encode_image_tensors

    def count_texts(*a, **kw):
        calls["texts"] += 1
        return real_texts(*a, **kw)

    def count_images(*a, **kw):
        calls["images"] += 1
        return real_images(*a, **kw)

    monkeypatch.setattr(enc, "encode_texts", count_texts)
    monkeypatch.setattr(enc, "encode_image_tensors", count_images)
    batch = db.search_many(queries, k=4, domains=["product", "video"])
    assert calls == {"texts": 1, "images": 1}, "texts in one batch, images and video frames in another"
    assert len(batch) == len(queries)
    for q, res in zip(queries, batch):
        single = db.search(q, k=4, domains=["product", "video"])
        assert res.ids == single.ids
        np.testing.assert_allclose(res.scores, single.scores, atol=1e-5)
    stacked = batch.to_arrow()
    assert stacked.num_rows == 4 * len(queries) and set(stacked.column("query_index").to_pylist()) == set(range(5))

    ids = ["product:p000", "video:vid-p001", "live:live-001:10-20"]
    many = db.similar_many(ids, k=3, domains=["image", "product"])
    for item, res in zip(ids, many):
        assert item not in res.ids and res.ids == db.similar(item, k=3, domains=["image", "product"]).ids


def test_multi_part_query_is_fused_like_an_item(db, demo_catalog: Path) -> None:
    from cope.api import Query
    from cope.fusion import fuse

    photo = demo_catalog.parent / "media" / "p001_main.jpg"
    q = Query(text="Green Box", image=str(photo))
    expected = fuse(db.encode([photo])[0], db.encode(["Green Box"])[0], db.fusion)
    np.testing.assert_allclose(db.encode([q])[0], expected, atol=1e-5)
    assert db.search(q, k=3).ids == db.search(expected, k=3).ids


def test_vector_columns(db, catalog) -> None:
    from cope.api import Filters

    assert "has_image" in Filters().expr(vector_column="image_vector").to_sql()
    assert Filters().expr(vector_column="vector") is None
    img = db.similar("product:p000", k=3, vector_column="image_vector")
    ids = catalog.column("item_id").to_pylist()
    q = _vectors(catalog, "image_vector")[ids.index("product:p000")]
    scores = _vectors(catalog, "image_vector") @ q
    expected = [ids[i] for i in np.argsort(-scores) if ids[i] != "product:p000"][:3]
    assert img.ids == expected
    assert len(db.search("red", k=3, vector_column="text_vector")) == 3
    with pytest.raises(ValueError, match="vector_column"):
        db.similar("product:p000", vector_column="other")  # type: ignore[arg-type]


def test_errors_say_what_to_do(db) -> None:
    from cope.api import ItemNotFoundError

    with pytest.raises(ItemNotFoundError, match="look like"):
        db.similar("p000")
    with pytest.raises(ValueError, match="16-d"):
        db.search(np.ones(8, np.float32))
    with pytest.raises(ValueError, match="k must be"):
        db.similar("product:p000", k=0)
    with pytest.raises(TypeError, match="list"):
        db.search_many("red")


# -- filters -------------------------------------------------------------------------------------------------------


def test_typed_filters(db) -> None:
    assert set(db.similar("product:p000", k=20, item_ids=["video:vid-p001", "image:img-p002"]).ids) == {
        "video:vid-p001", "image:img-p002"}
    res = db.similar("product:p000", k=20, source_ids=["live-001"])
    assert len(res) == 3 and {h.domain for h in res} == {"live"}
    res = db.similar("product:p000", k=20, exclude_ids=["video:vid-p001"], domains=["video"])
    assert "video:vid-p001" not in res.ids and len(res) == 3
    res = db.similar("product:p000", k=20, slice_between=(12.0, 15.0))
    assert res.ids == ["live:live-001:10-20"]
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    assert len(db.similar("product:p000", k=5, updated_after=future)) == 0
    assert len(db.similar("product:p000", k=5, updated_before=future)) == 5
    assert len(db.similar("product:p000", k=5, updated_after=dt.datetime(2000, 1, 1))) == 5  # naive = UTC


def test_metadata_equality(db) -> None:
    res = db.similar("product:p001", k=10, metadata={"product_key": "p001"})
    same = {r["item_id"] for r in db.table.search().select(["item_id", "metadata"]).limit(None).to_arrow().to_pylist()
            if json.loads(r["metadata"] or "{}").get("product_key") == "p001"} - {"product:p001"}
    assert {"image:img-p001", "video:vid-p001"} <= same and set(res.ids) == same
    assert all(h.product_key == "p001" for h in res)
    # a key/value pair that only matches as a substring elsewhere must not match
    assert len(db.similar("product:p001", k=10, metadata={"product_key": "p00"})) == 0
    assert len(db.similar("product:p001", k=10, metadata={"duration": 1.5})) == 4  # the videos
    assert len(db.similar("product:p001", k=10, metadata={"nope": None})) == 0


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filter_values_are_bound_not_pasted(db, value: str) -> None:
    n = db.table.count_rows()
    for kwargs in (
        {"source_ids": [value]},
        {"item_ids": [value, "product:p000"]},
        {"exclude_ids": [value]},
        {"metadata": {"product_key": value}},
        {"metadata": {value: value}},
    ):
        res = db.similar("product:p001", k=50, **kwargs)
        if "item_ids" in kwargs:
            assert res.ids == ["product:p000"]
        elif "exclude_ids" in kwargs:
            assert len(res) == n - 1
        else:
            assert len(res) == 0, kwargs
        db.search(np.ones(16, np.float32), k=3, **kwargs)
    assert db.table.count_rows() == n


def test_hostile_domain_is_rejected_by_type(db) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        db.similar("product:p000", domains=["product' OR 1=1 --"])  # type: ignore[list-item]


def test_hostile_values_match_exactly_when_stored(demo_db: Path, tmp_path: Path) -> None:
    """Rows whose ids and metadata hold quotes, SQL and unicode are found by exactly those values, and only them."""
    from cope.api import open_db
    from cope.store import ItemStore

    copy = tmp_path / "copy.lancedb"
    shutil.copytree(demo_db, copy)
    store = ItemStore.open(copy)
    base = store.table.search().where("item_id = 'product:p000'").limit(1).to_arrow().to_pylist()[0]
    rows = []
    for i, value in enumerate(HOSTILE):
        rows.append({**base, "item_id": f"image:{value}", "record_key": f"image:{value}", "domain": "image",
                     "source_id": value, "metadata": json.dumps({"product_key": value, "n": i}, ensure_ascii=i % 2 == 0)})
    store.upsert(pa.Table.from_pylist(rows, schema=store.table.schema))
    db = open_db(copy)
    for value in HOSTILE:
        assert db.similar("product:p000", k=50, source_ids=[value]).ids == [f"image:{value}"], value
        assert db.similar("product:p000", k=50, metadata={"product_key": value}).ids == [f"image:{value}"], value
        assert db.similar("product:p000", k=50, item_ids=[f"image:{value}"]).ids == [f"image:{value}"]
    assert db.get(["image:' OR 1=1 --"]).num_rows == 1


def test_filters_render_escaped_sql() -> None:
    from cope.api import Filters

    sql = Filters(source_ids=["' OR 1=1 --"], metadata={"k": "a'b"}).expr().to_sql()
    assert "'' OR 1=1 --'" in sql and "a''b" in sql
    assert Filters(where="n_images > 1").expr() == "n_images > 1"
    with pytest.raises(ValueError, match="where="):  # never rendered into SQL next to raw SQL (tests/test_filters.py)
        Filters(domains=["video"], where="n_images > 1").expr()


# -- the table's own model -------------------------------------------------------------------------------------------


def test_encoder_of_another_model_is_refused(demo_db: Path) -> None:
    from cope.api import ModelMismatchError, open_db
    from cope.encoders.open_clip_encoder import OpenClipEncoder

    other = OpenClipEncoder("cope-tiny-16", pretrained=None, seed=1)  # same architecture, other weights
    with pytest.raises(ModelMismatchError, match="vectors were made by"):
        open_db(demo_db, encoder=other)
    same = OpenClipEncoder("cope-tiny-16", pretrained=None, seed=0)
    db = open_db(demo_db, encoder=same)
    assert db.encoder is same and len(db.search("red ball", k=2)) == 2


def test_rebuilt_model_is_verified_against_the_tag(demo_db: Path, monkeypatch) -> None:
    import cope.encoders
    from cope.api import ModelMismatchError, open_db
    from cope.encoders.open_clip_encoder import OpenClipEncoder

    monkeypatch.setattr(cope.encoders, "create_encoder",
                        lambda name, **kw: OpenClipEncoder("cope-tiny-16", pretrained=None, seed=7))
    db = open_db(demo_db)
    assert len(db.similar("product:p000", k=2)) == 2  # no model needed
    with pytest.raises(ModelMismatchError):
        db.search("red ball")


def test_table_without_pipeline_spec_is_searched_by_vectors(demo_db: Path, monkeypatch) -> None:
    from cope.api import ModelMismatchError, open_db
    from cope.store import ItemStore

    monkeypatch.setattr(ItemStore, "metadata", property(lambda self: {}))
    db = open_db(demo_db)
    with pytest.raises(ModelMismatchError, match="search it with vectors"):
        db.search("red ball")
    assert db.search(db.vectors("product:p000")[0], k=1).ids == ["product:p000"]


def test_result_columns_can_be_narrowed(db) -> None:
    full = db.similar("product:p000", k=3)
    ids = db.similar("product:p000", k=3, columns=["item_id"])
    assert ids.to_arrow().column_names == ["item_id", "score"] and ids.ids == full.ids
    np.testing.assert_allclose(ids.scores, full.scores)
    assert ids[0].domain is None and ids[0].item_id == full[0].item_id
    some = db.search_many([db.vectors("video:vid-p000")[0]], k=2, columns=["domain"], metadata={"product_key": "p000"})
    assert some[0].to_arrow().column_names == ["item_id", "domain", "score"] and len(some[0]) == 2
    with pytest.raises(ValueError, match="unknown result column"):
        db.similar("product:p000", columns=["vector"])
