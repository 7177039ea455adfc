"""Typed filters (cope.filters) against a pure Python filter over the rows, on hostile strings.

A small real item table (no model) holds ids, source ids and metadata made of quotes, SQL, backslashes, ``%``, ``_``,
NUL, unicode and very long strings. Exact search with ``k`` >= rows returns every row that passes the filter, so the
result set must equal what the Python filter keeps, whatever the values.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cope.errors import UsageError
from cope.records import DOMAINS

DIM = 8
TAG = "test/filters-v1"
INJECTION = "x\\')) OR 1=1 --"  # issue 14: with where= this matched every row of every domain
HOSTILE = [
    INJECTION,
    "' OR 1=1 --",
    "x'; DROP TABLE items; --",
    "') OR ('a'='a",
    "it's",
    "''",
    'quo"te',
    "back\\slash",
    "\\",
    "\\'",
    "tail\\",
    "%",
    "_",
    "a%b_c",
    "nul\x00byte",
    "\x00",
    "line\nbreak\ttab",
    "ünï’cødé 🚀 商品",
    "u\u0308",  # u + combining diaeresis (not NFC-normalised)
    "\u202eRTL",
    "\\u0000",  # the six characters, not NUL
    '{"product_key": "p1"}',
    "product_key",
    "L" * 5000,
    "",
]
BASE = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


def _rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(14)
    rows = []
    for i in range(52):
        domain = DOMAINS[i % 4]
        value = HOSTILE[i % len(HOSTILE)]
        item_id = f"{domain}:{value}" if i < len(HOSTILE) else f"{domain}:{value}#{i}"
        if i == 1:
            item_id = INJECTION  # the bare value of the injection example is a stored id too
        source_id = HOSTILE[(i * 7) % len(HOSTILE)] if i % 5 else f"src-{i % 3}"
        live = domain == "live"
        img, txt = rng.standard_normal((2, DIM)).astype(np.float32)
        has_image, has_text = bool(i % 3), bool(i % 4 != 1)
        img = img / np.linalg.norm(img) if has_image else np.zeros(DIM, np.float32)
        txt = txt / np.linalg.norm(txt) if has_text else np.zeros(DIM, np.float32)
        vec = rng.standard_normal(DIM).astype(np.float32)
        if i % 9 == 0:
            meta = None
        elif i % 17 == 5:
            meta = json.dumps("product_key")  # JSON, but not an object
        elif i % 17 == 6:
            meta = "not json {"
        else:
            meta = json.dumps(
                {"product_key": HOSTILE[(i * 3) % len(HOSTILE)], "n": i % 4, "flag": i % 2 == 0,
                 HOSTILE[i % 7]: value, "none": None, "half": 0.5 if i % 3 else 1},
                ensure_ascii=i % 2 == 0,
            )
        rows.append({
            "item_id": item_id,
            "record_key": f"live:rec-{i // 8}" if live else item_id,  # upsert deletes stale live rows by record key
            "domain": domain, "source_id": source_id,
            "slice_start": float(10 * (i % 6)) if live else None,
            "slice_end": float(10 * (i % 6) + 10) if live else None,
            "vector": vec / np.linalg.norm(vec), "image_vector": img, "text_vector": txt,
            "has_image": has_image, "has_text": has_text, "n_images": i % 3,
            "text": value, "media_uri": None, "content_hash": f"h{i}", "record_hash": f"live:rec-{i // 8}#v1",
            "model_tag": TAG, "origin": "test", "metadata": meta,
            "updated_at": BASE + dt.timedelta(hours=5 * i, microseconds=i),
        })
    return rows


ROWS = _rows()
IDS = [r["item_id"] for r in ROWS]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory):
    from cope.api import CopeDB
    from cope.store import ItemStore

    path = tmp_path_factory.mktemp("filters") / "cope.lancedb"
    store = ItemStore.open(path, "items")
    store.ensure_table(TAG, DIM)
    store.upsert(pa.Table.from_pylist(ROWS, schema=store.table.schema))
    assert store.table.count_rows() == len(ROWS)
    return CopeDB(ItemStore.open(path, "items"))


# -- the pure Python filter -------------------------------------------------------------------------------------------


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=dt.timezone.utc)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return a == b


def _meta_ok(raw: str | None, wanted: dict[str, Any]) -> bool:
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        return False
    return isinstance(meta, dict) and all(k in meta and _same(meta[k], v) for k, v in wanted.items())


def python_filter(kw: dict[str, Any], vector_column: str = "vector") -> set[str]:
    kept = set()
    for r in ROWS:
        if kw.get("domains") is not None and r["domain"] not in kw["domains"]:
            continue
        if kw.get("item_ids") is not None and r["item_id"] not in kw["item_ids"]:
            continue
        if kw.get("exclude_ids") is not None and r["item_id"] in kw["exclude_ids"]:
            continue
        if kw.get("source_ids") is not None and r["source_id"] not in kw["source_ids"]:
            continue
        if kw.get("updated_after") is not None and not r["updated_at"] >= _utc(kw["updated_after"]):
            continue
        if kw.get("updated_before") is not None and not r["updated_at"] < _utc(kw["updated_before"]):
            continue
        if kw.get("slice_between") is not None:
            a, b = kw["slice_between"]
            if r["slice_end"] is None or not (r["slice_end"] > a and r["slice_start"] < b):
                continue
        if vector_column == "image_vector" and not r["has_image"]:
            continue
        if vector_column == "text_vector" and not r["has_text"]:
            continue
        if kw.get("metadata") and not _meta_ok(r["metadata"], kw["metadata"]):
            continue
        kept.add(r["item_id"])
    return kept


# -- strategies -------------------------------------------------------------------------------------------------------

SOURCE_IDS = sorted({r["source_id"] for r in ROWS})
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=12), st.text(alphabet="'\"\\%_\x00-;() ", max_size=8))
ids = st.one_of(st.sampled_from(IDS), text)
id_lists = st.none() | st.lists(ids, max_size=4)
times = st.sampled_from([r["updated_at"] for r in ROWS]).flatmap(
    lambda t: st.sampled_from([
        t, t + dt.timedelta(microseconds=1), t - dt.timedelta(microseconds=1),
        t.replace(tzinfo=None),  # naive = UTC
        t.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))),
    ]))
meta_keys = st.sampled_from(["product_key", "n", "flag", "none", "half", "absent", *HOSTILE[:7]])
meta_values = st.one_of(
    st.sampled_from(HOSTILE), text, st.sampled_from([0, 1, 2, 3, True, False, None, 0.5, 1.0]),
)
filter_kwargs = st.fixed_dictionaries({}, optional={
    "domains": st.lists(st.sampled_from(DOMAINS), max_size=3, unique=True),
    "item_ids": st.lists(ids, max_size=4),
    "exclude_ids": st.lists(ids, max_size=4),
    "source_ids": st.lists(st.one_of(st.sampled_from(SOURCE_IDS), text), max_size=4),
    "updated_after": times,
    "updated_before": times,
    "slice_between": st.tuples(st.sampled_from([-5.0, 0.0, 10.0, 12.5, 30.0, 60.0]),
                               st.sampled_from([0.0, 10.0, 15.0, 30.0, 45.0, 100.0])),
    "metadata": st.dictionaries(meta_keys, meta_values, min_size=1, max_size=2),
})
vector_columns = st.sampled_from(["vector", "image_vector", "text_vector"])
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _cosines(column: str, q: np.ndarray) -> dict[str, float]:
    return {r["item_id"]: float(np.dot(r[column], q) / np.linalg.norm(q)) for r in ROWS}


def _check_ranked(res, column: str, q: np.ndarray) -> None:
    scores = res.scores
    assert np.all(np.diff(scores) <= 1e-5), "best first"
    cos = _cosines(column, q)
    np.testing.assert_allclose(scores, [cos[i] for i in res.ids], atol=1e-4)


# -- property tests ---------------------------------------------------------------------------------------------------


@SETTINGS
@given(kw=filter_kwargs, column=vector_columns, seed=st.integers(0, 2**16))
def test_search_matches_python_filter(db, kw: dict[str, Any], column: str, seed: int) -> None:
    q = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    res = db.search(q, k=len(ROWS) + 3, vector_column=column, **kw)
    assert sorted(res.ids) == sorted(python_filter(kw, column)), kw
    assert len(res.ids) == len(set(res.ids))
    _check_ranked(res, column, q)


@SETTINGS
@given(kw=filter_kwargs, query=st.sampled_from([r["item_id"] for r in ROWS if r["has_image"] and r["has_text"]]),
       column=vector_columns)
def test_similar_matches_python_filter(db, kw: dict[str, Any], query: str, column: str) -> None:
    res = db.similar(query, k=len(ROWS), vector_column=column, **kw)
    assert sorted(res.ids) == sorted(python_filter(kw, column) - {query}), kw
    q = np.asarray(next(r[column] for r in ROWS if r["item_id"] == query))
    _check_ranked(res, column, q)


@SETTINGS
@given(kw=filter_kwargs, k=st.integers(1, 6))
def test_small_k_is_the_top_of_the_filtered_rows(db, kw: dict[str, Any], k: int) -> None:
    """With metadata filters the candidate list widens until k rows pass: the top k of the Python-filtered rows."""
    q = np.asarray(ROWS[0]["vector"])
    cos = _cosines("vector", q)
    expected = sorted(python_filter(kw), key=lambda i: -cos[i])[:k]
    res = db.search(q, k=k, **kw)
    assert len(res) == len(expected)
    np.testing.assert_allclose(res.scores, [cos[i] for i in expected], atol=1e-4)


@SETTINGS
@given(wanted=st.lists(st.sampled_from(IDS), min_size=1, max_size=5))
def test_lookup_by_hostile_ids(db, wanted: list[str]) -> None:
    got = db.get(wanted)
    assert got.column("item_id").to_pylist() == wanted
    assert db.vectors(wanted).shape == (len(wanted), DIM)


# -- the injection and the where= rule ---------------------------------------------------------------------------------


def test_issue_14_injection_through_typed_filters_with_where_is_refused(db) -> None:
    vec = np.ones(DIM, np.float32)
    n, version = db.table.count_rows(), db.table.version
    with pytest.raises(UsageError, match="where=.*item_ids="):
        db.search(vec, item_ids=["x\\')) OR 1=1 --"], where="domain = 'image'")
    with pytest.raises(UsageError, match="typed filters only"):
        db.similar(IDS[0], where="domain = 'image'", source_ids=["' OR 1=1 --"])
    # the typed filter alone matches exactly the row holding that id, and nothing else
    assert db.search(vec, k=100, item_ids=["x\\')) OR 1=1 --"]).ids == [INJECTION]
    assert db.search(vec, k=100, item_ids=["x\\')) OR 2=2 --"]).ids == []
    # the raw where alone is trusted SQL and works
    images = {r["item_id"] for r in ROWS if r["domain"] == "image"}
    assert set(db.search(vec, k=100, where="domain = 'image'").ids) == images
    assert db.table.count_rows() == n and db.table.version == version


@pytest.mark.parametrize("typed", [
    {"domains": ["image"]}, {"item_ids": []}, {"exclude_ids": ["a"]}, {"source_ids": ["a"]},
    {"updated_after": BASE}, {"updated_before": BASE}, {"slice_between": (0, 1)}, {"metadata": {"k": "v"}},
])
def test_where_with_any_typed_filter_is_refused(db, typed: dict[str, Any]) -> None:
    from cope.filters import Filters

    vec = np.ones(DIM, np.float32)
    with pytest.raises(UsageError, match="where="):
        db.search(vec, where="n_images > 0", **typed)
    with pytest.raises(UsageError, match="where="):
        db.search(vec, filters=Filters(where="n_images > 0"), **typed)  # merged from a Filters object and kwargs
    with pytest.raises(UsageError, match="where="):
        db.search_many([vec], filters=Filters(**typed), where="n_images > 0")
    with pytest.raises(UsageError, match="where="):
        Filters(where="n_images > 0", **typed).expr()


def test_where_alone_keeps_the_modality_flag(db) -> None:
    from cope.api import Filters as ApiFilters  # still importable from cope.api
    from cope.filters import Filters

    assert ApiFilters is Filters
    assert Filters(where="n_images > 0").expr() == "n_images > 0"
    assert Filters(where="n_images > 0").expr(vector_column="image_vector") == "(has_image = true) AND (n_images > 0)"
    assert Filters(where="  ", domains=["video"]).expr() is not None  # a blank where is no where
    res = db.search(np.ones(DIM, np.float32), k=100, vector_column="image_vector", where="n_images > 0")
    assert set(res.ids) == {r["item_id"] for r in ROWS if r["has_image"] and r["n_images"] > 0}


def test_typed_filters_are_expressions_with_literals() -> None:
    from lancedb.expr import Expr

    from cope.filters import Filters

    e = Filters(domains=["video"], item_ids=[INJECTION], source_ids=["\x00"], metadata={"k": "%_'"},
                updated_after=BASE, slice_between=(1, 2)).expr(vector_column="text_vector")
    assert isinstance(e, Expr)
    assert Filters().expr() is None


def test_metadata_on_rows_whose_json_is_not_an_object(db) -> None:
    """A row whose metadata is the JSON string "product_key" (or not JSON at all) never matches, and never breaks."""
    kw = {"metadata": {"product_key": "product_key"}}
    res = db.search(np.ones(DIM, np.float32), k=100, **kw)
    assert sorted(res.ids) == sorted(python_filter(kw))
    assert all(h.product_key == "product_key" for h in res)


def test_hostile_misuse_is_a_usage_error(db) -> None:
    vec = np.ones(DIM, np.float32)
    with pytest.raises(UsageError, match="Unicode"):
        db.search(vec, source_ids=["lone \ud800 surrogate"])
    with pytest.raises(UsageError, match="Unicode"):
        db.search(vec, metadata={"k": "\udfff"})
    with pytest.raises(UsageError, match="NaN"):
        db.search(vec, slice_between=(float("nan"), 1.0))
    with pytest.raises(UsageError, match="strings"):
        db.get([1])  # type: ignore[list-item]
    assert db.get([]).num_rows == 0
    assert db.similar_many([], k=3) == []


def test_hostile_queries_leave_the_table_unchanged(db) -> None:
    n, version = db.table.count_rows(), db.table.version
    vec = np.ones(DIM, np.float32)
    for value in HOSTILE:
        for kw in ({"item_ids": [value]}, {"exclude_ids": [value]}, {"source_ids": [value]},
                   {"metadata": {value: value}}, {"metadata": {"product_key": value}}):
            assert sorted(db.search(vec, k=100, **kw).ids) == sorted(python_filter(kw)), (value, kw)
    assert db.table.count_rows() == n and db.table.version == version

