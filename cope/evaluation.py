"""Retrieval metrics over vectors: the pure core of ``cope eval`` (numpy in, numbers out, no model, no database).

Conventions
-----------
* Similarity is cosine: both sides are L2-normalised here, so callers may pass raw vectors.
* The *rank* of a query is the 1-based rank of the FIRST relevant gallery item (same key as the query).
* Ties are broken **pessimistically**: every non-relevant gallery item whose score is ``>=`` the best relevant
  score is counted as ranked ahead of it. The result is deterministic and never flatters a model that returns
  constant vectors (an all-ties model gets the worst rank, not the best).
* Self-matches: when ``query_ids`` and ``gallery_ids`` are given, a gallery item with the same id as the query is
  removed from that query's gallery (it counts neither as relevant nor as a competitor).
* Queries with no relevant gallery item are left out of every average and counted in ``n_without_relevant``.
* Chance R@k is the expected R@k of a uniformly random ranking of the same gallery, per query
  ``1 - C(N - m, k) / C(N, k)`` (N gallery items after self-exclusion, m of them relevant), averaged over queries;
  chance mean rank is ``(N + 1) / (m + 1)`` averaged likewise.

>>> import numpy as np
>>> r = retrieval_metrics(np.eye(2), ["a", "b"], np.eye(2), ["a", "b"], ks=(1,))
>>> r.recall[1], r.median_rank
(1.0, 1.0)
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from cope.vectors import l2_normalize

__all__ = [
    "PrecisionResult",
    "RetrievalResult",
    "evaluate_directions",
    "format_table",
    "precision_at_k",
    "results_from_json",
    "results_to_json",
    "retrieval_metrics",
]

_CHUNK = 1024  # queries per similarity block: bounds memory at _CHUNK x n_gallery floats


class RetrievalResult(BaseModel):
    """Rank statistics of one query set against one gallery."""

    n_queries: int = Field(description="queries with at least one relevant gallery item (the ones averaged)")
    n_gallery: int
    n_without_relevant: int = 0
    ks: list[int]
    recall: dict[int, float] = Field(
        description="R@k: share of queries whose first relevant item is in the top k"
    )
    chance_recall: dict[int, float] = Field(description="expected R@k of a random ranking")
    median_rank: float
    mean_rank: float
    mrr: float = Field(description="mean reciprocal rank of the first relevant item")
    chance_mean_rank: float
    ranks: list[int] = Field(
        default_factory=list, description="per-query rank, in query order (averaged ones)"
    )

    def summary(self) -> dict[str, Any]:
        """The result without per-query ranks (what goes into reports)."""
        return self.model_dump(exclude={"ranks"})


class PrecisionResult(BaseModel):
    """Mean precision@k of nearest neighbours sharing the query's label."""

    k: int
    n: int = Field(description="items used as queries")
    precision: float
    chance: float = Field(description="expected precision@k of random neighbours")


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return l2_normalize(x)


def _codes(*columns: Sequence[Hashable]) -> list[np.ndarray]:
    """Map several key columns onto shared integer codes, so equality is an integer comparison."""
    table: dict[Hashable, int] = {}
    return [
        np.fromiter((table.setdefault(k, len(table)) for k in col), dtype=np.int64, count=len(col))
        for col in columns
    ]


def _chance_recall(n: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
    """1 - C(n - m, k) / C(n, k), elementwise, computed as a product to stay finite."""
    out = np.empty(len(n), dtype=np.float64)
    for i, (ni, mi) in enumerate(zip(n.tolist(), m.tolist())):
        if k >= ni - mi + 1:
            out[i] = 1.0
        else:
            # C(n-m, k) / C(n, k) = prod_{j=0}^{k-1} (n-m-j) / (n-j)
            out[i] = 1.0 - math.exp(sum(math.log((ni - mi - j) / (ni - j)) for j in range(k)))
    return out


def retrieval_metrics(
    query_vecs: np.ndarray,
    query_keys: Sequence[Hashable],
    gallery_vecs: np.ndarray,
    gallery_keys: Sequence[Hashable],
    ks: Iterable[int] = (1, 5, 10),
    *,
    query_ids: Sequence[Hashable] | None = None,
    gallery_ids: Sequence[Hashable] | None = None,
) -> RetrievalResult:
    """Rank the gallery for each query by cosine similarity and report recall@k, ranks and chance levels.

    A gallery item is relevant to a query when their keys are equal. See the module docstring for ties,
    self-exclusion and chance.
    """
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    q, g = _normalize(query_vecs), _normalize(gallery_vecs)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if len(query_keys) != len(q) or len(gallery_keys) != len(g):
        raise ValueError("need exactly one key per query vector and per gallery vector")
    if (query_ids is None) != (gallery_ids is None):
        raise ValueError("pass both query_ids and gallery_ids (to exclude self-matches) or neither")
    qk, gk = _codes(query_keys, gallery_keys)
    if query_ids is not None and gallery_ids is not None:
        if len(query_ids) != len(q) or len(gallery_ids) != len(g):
            raise ValueError("need exactly one id per query vector and per gallery vector")
        qi, gi = _codes(query_ids, gallery_ids)
    else:
        qi = gi = None

    ranks: list[int] = []
    n_sizes: list[int] = []
    m_sizes: list[int] = []
    without = 0
    for start in range(0, len(q), _CHUNK):
        stop = min(start + _CHUNK, len(q))
        sims = q[start:stop] @ g.T
        relevant = qk[start:stop, None] == gk[None, :]
        valid = np.ones_like(relevant)
        if qi is not None and gi is not None:
            valid = qi[start:stop, None] != gi[None, :]
        relevant &= valid
        competitors = valid & ~relevant
        best = np.where(relevant, sims, -np.inf).max(axis=1)
        ahead = (competitors & (sims >= best[:, None])).sum(axis=1)
        has = relevant.any(axis=1)
        without += int((~has).sum())
        ranks.extend((ahead[has] + 1).tolist())
        n_sizes.extend(valid[has].sum(axis=1).tolist())
        m_sizes.extend(relevant[has].sum(axis=1).tolist())

    r = np.asarray(ranks, dtype=np.int64)
    n_arr, m_arr = np.asarray(n_sizes, dtype=np.int64), np.asarray(m_sizes, dtype=np.int64)
    empty = len(r) == 0
    return RetrievalResult(
        n_queries=len(r),
        n_gallery=len(g),
        n_without_relevant=without,
        ks=ks,
        recall={k: (float("nan") if empty else float((r <= k).mean())) for k in ks},
        chance_recall={
            k: (float("nan") if empty else float(_chance_recall(n_arr, m_arr, k).mean())) for k in ks
        },
        median_rank=float("nan") if empty else float(np.median(r)),
        mean_rank=float("nan") if empty else float(r.mean()),
        mrr=float("nan") if empty else float((1.0 / r).mean()),
        chance_mean_rank=float("nan") if empty else float(((n_arr + 1) / (m_arr + 1)).mean()),
        ranks=r.tolist(),
    )


def evaluate_directions(
    vectors: np.ndarray,
    keys: Sequence[Hashable],
    groups: Sequence[str],
    ids: Sequence[Hashable] | None = None,
    ks: Iterable[int] = (1, 5, 10),
    *,
    include_same_group: bool = False,
) -> dict[tuple[str, str], RetrievalResult]:
    """Retrieval metrics for every directed pair ``(src, dst)`` of the groups present (domains or modalities).

    Row i of ``vectors`` belongs to group ``groups[i]`` and is relevant to every row of another group with the
    same ``keys[i]``. ``ids`` (default: the row index) removes an item from its own gallery, which matters only
    with ``include_same_group=True``. Pairs in which no query has a relevant item are left out.
    """
    vectors = np.asarray(vectors)
    n = len(vectors)
    if len(keys) != n or len(groups) != n:
        raise ValueError("need one key and one group per vector")
    ids = list(range(n)) if ids is None else list(ids)
    keys_arr = np.asarray(list(keys), dtype=object)
    ids_arr = np.asarray(ids, dtype=object)
    groups_arr = np.asarray(list(groups), dtype=object)
    names = list(dict.fromkeys(groups))  # first-seen order, stable
    out: dict[tuple[str, str], RetrievalResult] = {}
    for src in names:
        for dst in names:
            if src == dst and not include_same_group:
                continue
            qs, gs = groups_arr == src, groups_arr == dst
            res = retrieval_metrics(
                vectors[qs],
                keys_arr[qs].tolist(),
                vectors[gs],
                keys_arr[gs].tolist(),
                ks,
                query_ids=ids_arr[qs].tolist(),
                gallery_ids=ids_arr[gs].tolist(),
            )
            if res.n_queries:
                out[(src, dst)] = res
    return out


def precision_at_k(
    vecs: np.ndarray,
    labels: Sequence[Hashable],
    k: int = 5,
    *,
    exclude_keys: Sequence[Hashable] | None = None,
) -> PrecisionResult:
    """Mean share of each item's k nearest neighbours (cosine, itself excluded) that carry the same label.

    ``exclude_keys`` (e.g. product ids) also removes neighbours that share the query's key, so that other views of
    the same product do not count. Ties are broken by gallery order (stable sort), so the result is deterministic.
    Items with fewer than k candidate neighbours are skipped. ``chance`` is the expected precision of k random
    candidates: (same-label candidates) / (candidates), averaged.
    """
    if k < 1:
        raise ValueError("k must be >= 1")
    x = _normalize(vecs)
    n = len(x)
    if len(labels) != n:
        raise ValueError("need one label per vector")
    (lab,) = _codes(labels)
    ex = _codes(exclude_keys)[0] if exclude_keys is not None else None
    precisions: list[float] = []
    chances: list[float] = []
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        sims = x[start:stop] @ x.T
        valid = np.ones_like(sims, dtype=bool)
        valid[np.arange(stop - start), np.arange(start, stop)] = False
        if ex is not None:
            valid &= ex[start:stop, None] != ex[None, :]
        same = lab[start:stop, None] == lab[None, :]
        sims = np.where(valid, sims, -np.inf)
        order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        for row in range(stop - start):
            n_cand = int(valid[row].sum())
            if n_cand < k:
                continue
            precisions.append(float(same[row, order[row]].mean()))
            chances.append(float((same[row] & valid[row]).sum() / n_cand))
    return PrecisionResult(
        k=k,
        n=len(precisions),
        precision=float(np.mean(precisions)) if precisions else float("nan"),
        chance=float(np.mean(chances)) if chances else float("nan"),
    )


def _direction_name(key: str | tuple[str, str]) -> str:
    return key if isinstance(key, str) else f"{key[0]}->{key[1]}"


def format_table(results: Mapping[str | tuple[str, str], RetrievalResult]) -> str:
    """A fixed-width text table: one row per direction, R@k with its chance level in brackets."""
    if not results:
        return "(no results)"
    ks = sorted({k for r in results.values() for k in r.ks})
    header = ["direction", "n_q", "n_gal", *[f"R@{k} (chance)" for k in ks], "MRR", "med rank", "mean rank"]
    rows = [header]
    for key, r in results.items():
        rows.append(
            [
                _direction_name(key),
                str(r.n_queries),
                str(r.n_gallery),
                *[f"{r.recall[k]:.3f} ({r.chance_recall[k]:.3f})" if k in r.recall else "-" for k in ks],
                f"{r.mrr:.3f}",
                f"{r.median_rank:g}",
                f"{r.mean_rank:.1f} ({r.chance_mean_rank:.1f})",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_to_json(
    results: Mapping[str | tuple[str, str], RetrievalResult], *, include_ranks: bool = False, **extra: Any
) -> str:
    """Serialise results keyed by ``"src->dst"``; ``extra`` keyword values are stored alongside (e.g. model tag)."""
    payload: dict[str, Any] = dict(extra)
    payload["results"] = {
        _direction_name(key): (r.model_dump() if include_ranks else r.summary()) for key, r in results.items()
    }
    return json.dumps(payload, indent=2, sort_keys=False, allow_nan=True)


def results_from_json(text: str) -> dict[str, RetrievalResult]:
    """Inverse of :func:`results_to_json` (keys stay ``"src->dst"`` strings)."""
    payload = json.loads(text)
    return {name: RetrievalResult.model_validate(body) for name, body in payload["results"].items()}
