"""Hand-built cases for cope.evaluation: exact ranks, ties, self-exclusion, chance levels, precision@k."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import math

import numpy as np
import pytest

from cope import evaluation
from cope.evaluation import (
    RetrievalResult,
    evaluate_directions,
    format_table,
    precision_at_k,
    results_from_json,
    results_to_json,
    retrieval_metrics,
)


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


# gallery on the unit circle: cosine to a query at angle a is cos(a - angle)
GALLERY = np.array([unit(0), unit(30), unit(60), unit(90)])
GALLERY_KEYS = ["a", "b", "c", "d"]


def test_exact_ranks_of_first_relevant_item() -> None:
    queries = np.array([unit(0), unit(0), unit(90), unit(40)])
    keys = ["a", "c", "a", "b"]
    r = retrieval_metrics(queries, keys, GALLERY, GALLERY_KEYS, ks=(1, 2, 3))
    # q0 -> a first (1); q1: a, b ahead of c (3); q2: order d, c, b, a (4); q3 at 40 deg: b (30) closest (1)
    assert r.ranks == [1, 3, 4, 1]
    assert r.recall == {1: 0.5, 2: 0.5, 3: 0.75}
    assert r.median_rank == 2.0
    assert r.mean_rank == pytest.approx(9 / 4)
    assert r.mrr == pytest.approx((1 + 1 / 3 + 1 / 4 + 1) / 4)
    assert r.n_queries == 4 and r.n_gallery == 4 and r.n_without_relevant == 0


def test_first_relevant_item_counts_when_several_are_relevant() -> None:
    keys = ["x", "y", "y", "x"]  # relevant items for key x at 0 and 90 deg
    r = retrieval_metrics(np.array([unit(80)]), ["x"], GALLERY, keys)
    # at 80 deg: d (90, x) is closest -> rank 1 even though a (0, x) is last
    assert r.ranks == [1]
    r = retrieval_metrics(np.array([unit(40)]), ["x"], GALLERY, keys)
    # at 40 deg: b (10 deg away) and c (20) are y; the first x item is a (40 away), d (50) comes after -> 3
    assert r.ranks == [3]


def test_ties_are_pessimistic() -> None:
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # the relevant item (index 2) ties with two non-relevant ones: both count as ahead
    r = retrieval_metrics(np.array([[1.0, 0.0]]), ["k"], gallery, ["u", "v", "k", "w"])
    assert r.ranks == [3]
    # constant vectors: every query gets the worst rank, not the best
    r = retrieval_metrics(np.ones((3, 2)), ["a", "b", "c"], np.ones((3, 2)), ["a", "b", "c"], ks=(1,))
    assert r.ranks == [3, 3, 3] and r.recall[1] == 0.0


def test_ties_among_relevant_items_do_not_hurt() -> None:
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = retrieval_metrics(np.array([[1.0, 0.0]]), ["k"], gallery, ["k", "k", "z"])
    assert r.ranks == [1]


def test_cosine_ignores_vector_length() -> None:
    q = np.array(unit(0)) * 7
    g = GALLERY * np.array([[0.1], [5.0], [3.0], [100.0]])
    assert retrieval_metrics(q[None], ["b"], g, GALLERY_KEYS).ranks == [2]


def test_self_match_is_excluded_by_id() -> None:
    vecs = np.array([unit(0), unit(10), unit(90)])
    keys = ["p", "p", "q"]
    ids = ["i0", "i1", "i2"]
    without_ids = retrieval_metrics(vecs, keys, vecs, keys)
    assert without_ids.ranks == [1, 1, 1]  # each item finds itself
    r = retrieval_metrics(vecs, keys, vecs, keys, query_ids=ids, gallery_ids=ids)
    # i0 and i1 find each other; i2 has no other item with key q -> left out
    assert r.ranks == [1, 1]
    assert r.n_queries == 2 and r.n_without_relevant == 1
    # chance: per query N = 2 candidates (self removed), m = 1 relevant
    assert r.chance_recall[1] == pytest.approx(0.5)
    assert r.chance_mean_rank == pytest.approx(1.5)


def test_chance_recall_formula() -> None:
    # N = 4 gallery items
    g = np.eye(4)
    one = retrieval_metrics(np.eye(4)[:1], ["a"], g, ["a", "b", "c", "d"], ks=(1, 2, 3, 4, 10))
    assert one.chance_recall == pytest.approx({1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 10: 1.0})
    assert one.chance_mean_rank == pytest.approx(2.5)  # (N + 1) / (m + 1)
    two = retrieval_metrics(np.eye(4)[:1], ["a"], g, ["a", "a", "c", "d"], ks=(1, 2, 3))
    # 1 - C(2, k) / C(4, k): k=1 -> 1/2, k=2 -> 1 - 1/6, k=3 -> 1
    assert two.chance_recall == pytest.approx({1: 0.5, 2: 5 / 6, 3: 1.0})
    assert two.chance_mean_rank == pytest.approx(5 / 3)


def test_chance_is_averaged_over_queries() -> None:
    g = np.eye(4)
    r = retrieval_metrics(np.eye(4)[:2], ["a", "b"], g, ["a", "b", "b", "d"], ks=(1,))
    assert r.chance_recall[1] == pytest.approx((0.25 + 0.5) / 2)


def test_queries_without_relevant_items_are_counted_not_averaged() -> None:
    r = retrieval_metrics(np.array([unit(0), unit(0)]), ["a", "zzz"], GALLERY, GALLERY_KEYS, ks=(1,))
    assert r.n_queries == 1 and r.n_without_relevant == 1 and r.recall[1] == 1.0
    empty = retrieval_metrics(np.array([unit(0)]), ["zzz"], GALLERY, GALLERY_KEYS, ks=(1,))
    assert empty.n_queries == 0 and math.isnan(empty.recall[1])


def test_chunked_computation_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(37, 8)), rng.normal(size=(23, 8))
    qk, gk = rng.integers(0, 5, 37).tolist(), rng.integers(0, 5, 23).tolist()
    full, full_p = retrieval_metrics(q, qk, g, gk), precision_at_k(q, qk, 3)
    monkeypatch.setattr(evaluation, "_CHUNK", 4)
    assert retrieval_metrics(q, qk, g, gk) == full
    assert precision_at_k(q, qk, 3) == full_p


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(np.ones((1, 2)), ["a"], np.ones((1, 3)), ["a"])
    with pytest.raises(ValueError, match="one key"):
        retrieval_metrics(np.ones((2, 2)), ["a"], np.ones((1, 2)), ["a"])
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(np.ones((1, 2)), ["a"], np.ones((1, 2)), ["a"], query_ids=["x"])
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics(np.ones((1, 2)), ["a"], np.ones((1, 2)), ["a"], ks=(0,))


def test_evaluate_directions_every_directed_pair() -> None:
    # two products; a text and an image each; text "p1" is closer to image "p2" (wrong) on purpose
    vecs = np.array([unit(0), unit(90), unit(80), unit(10)])
    keys = ["p1", "p2", "p1", "p2"]
    groups = ["text", "text", "image", "image"]
    res = evaluate_directions(vecs, keys, groups, ks=(1,))
    assert set(res) == {("text", "image"), ("image", "text")}
    assert res[("text", "image")].ranks == [2, 2]
    assert res[("image", "text")].ranks == [2, 2]
    assert res[("text", "image")].recall[1] == 0.0
    same = evaluate_directions(vecs, keys, groups, ks=(1,), include_same_group=True)
    # within a group every item has a different key -> no relevant items -> pair left out
    assert set(same) == set(res)


def test_evaluate_directions_same_group_excludes_self() -> None:
    vecs = np.array([unit(0), unit(5), unit(90), unit(40)])
    keys = ["p", "p", "q", "q"]
    res = evaluate_directions(vecs, keys, ["img"] * 4, include_same_group=True, ks=(1,))
    # 0 and 1 find each other; 2 (90) finds 3 (50 away) first; 3 (40) sees 1 (35 away) and 0 (40) before 2 (50)
    assert res[("img", "img")].ranks == [1, 1, 1, 3]


def test_precision_at_k() -> None:
    vecs = np.array([unit(0), unit(10), unit(25), unit(90), unit(100)])
    labels = ["x", "x", "y", "y", "y"]
    r = precision_at_k(vecs, labels, k=1)
    # nearest neighbours: 0->1 (ok), 1->0 (ok), 2->1 (x, wrong), 3->4 (ok), 4->3 (ok)
    assert r.precision == pytest.approx(4 / 5)
    assert r.n == 5 and r.k == 1
    # chance: same-label share among the 4 other items: x: 1/4, y: 2/4
    assert r.chance == pytest.approx((0.25 + 0.25 + 0.5 + 0.5 + 0.5) / 5)
    r2 = precision_at_k(vecs, labels, k=2)
    # 0: {1,2} -> 1/2; 1: {0,2} -> 1/2; 2: {1,0} -> 0; 3: {4,2} -> 1; 4: {3,2} -> 1
    assert r2.precision == pytest.approx(3 / 5)


def test_precision_at_k_excluding_same_product() -> None:
    vecs = np.array([unit(0), unit(1), unit(20), unit(90)])
    labels = ["shirt", "shirt", "shirt", "bag"]
    products = ["p1", "p1", "p2", "p3"]
    r = precision_at_k(vecs, labels, k=1, exclude_keys=products)
    # 0 and 1 may not use each other: both find 2 (shirt); 2 finds 1 (shirt); 3 finds 2 (shirt, wrong)
    assert r.precision == pytest.approx(3 / 4)


def test_precision_skips_items_with_too_few_neighbours() -> None:
    r = precision_at_k(np.eye(3), ["a", "a", "b"], k=3)
    assert r.n == 0 and math.isnan(r.precision)


def test_json_round_trip_and_table() -> None:
    r = retrieval_metrics(np.array([unit(0), unit(0)]), ["a", "c"], GALLERY, GALLERY_KEYS, ks=(1, 5))
    results: dict[tuple[str, str], RetrievalResult] = {("text", "image"): r}
    text = results_to_json(results, model_tag="m/1")
    assert '"model_tag": "m/1"' in text and '"text->image"' in text and "ranks" not in text
    back = results_from_json(text)
    assert back["text->image"].recall == r.recall
    assert back["text->image"].chance_recall == pytest.approx(r.chance_recall)
    assert back["text->image"].median_rank == r.median_rank
    with_ranks = results_from_json(results_to_json(results, include_ranks=True))
    assert with_ranks["text->image"].ranks == r.ranks == [1, 3]
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["direction", "n_q", "n_gal"]
    assert lines[2].startswith("text->image") and "0.500 (0.250)" in lines[2]
    assert format_table({}) == "(no results)"
