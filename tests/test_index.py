"""Indexes of the item table (store.index) and the `cope index` / `cope stats` commands."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

DIM = 16
ROWS = 3000
DOMAINS = ["product", "image", "video", "live"]


def synthetic_rows(n: int, start: int = 0, seed: int = 0) -> pa.Table:
    """Item rows with clustered unit vectors (no model involved)."""
    from cope.store.schema import item_schema

    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((20, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    now = dt.datetime.now(dt.timezone.utc)
    rows = []
    for i in range(n):
        j = start + i
        domain = DOMAINS[j % 4]
        rows.append({
            "item_id": f"{domain}:s{j}", "record_key": f"{domain}:s{j}", "domain": domain, "source_id": f"s{j}",
            "slice_start": None, "slice_end": None, "vector": x[i], "image_vector": x[i], "text_vector": x[i],
            "has_image": True, "has_text": True, "n_images": 1, "text": f"item {j}", "media_uri": None,
            "content_hash": "h", "record_hash": "h", "model_tag": "synthetic;fusion=image:0.5,text:0.5",
            "origin": "test", "metadata": json.dumps({"product_key": f"p{j % 50}"}), "updated_at": now,
        })
    return pa.Table.from_pylist(rows, schema=item_schema(DIM, "synthetic;fusion=image:0.5,text:0.5"))


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cope.store import ItemStore

    path = tmp_path_factory.mktemp("index") / "db.lancedb"
    store = ItemStore.open(path)
    store.ensure_table("synthetic;fusion=image:0.5,text:0.5", DIM)
    store.upsert(synthetic_rows(ROWS))
    return path


@pytest.fixture
def store(synthetic_db: Path, tmp_path: Path):
    """A private copy of the synthetic table for each test."""
    import shutil

    from cope.store import ItemStore

    copy = tmp_path / "db.lancedb"
    shutil.copytree(synthetic_db, copy)
    return ItemStore.open(copy)


def test_plan_by_size_and_dimension() -> None:
    from cope.store.index import EXACT_BELOW, plan_index

    small = plan_index(EXACT_BELOW - 1, 512)
    assert small.index_type is None and "exact" in small.reason
    big = plan_index(1_000_000, 512)
    assert big.index_type is not None and big.distance_type == "cosine"
    assert big.num_partitions == 1000 and big.search.nprobes
    assert plan_index(100_000, 512).num_partitions == 316
    pq = plan_index(1_000_000, 512, "IVF_PQ")
    assert pq.num_sub_vectors == 64 and pq.search.refine_factor
    for kind in ("IVF_SQ", "IVF_PQ", "IVF_RQ", "IVF_HNSW_SQ"):
        assert plan_index(200_000, 512, kind).search.refine_factor, f"{kind} must re-rank to report cosine scores"
    assert plan_index(2_000_000, 768, "none").index_type is None
    with pytest.raises(ValueError, match="at least"):
        plan_index(100, 16, "IVF_FLAT")


def test_small_table_gets_scalar_indexes_and_exact_search(store) -> None:
    from cope.store.index import build_index

    report = build_index(store)  # 3000 rows < EXACT_BELOW
    assert report.vector_index("vector") is None and "vector" in report.exact_columns
    scalar = {i.column: i.index_type for i in report.indexes if i.kind == "scalar"}
    assert scalar == {"domain": "BITMAP", "item_id": "BTREE", "record_key": "BTREE", "source_id": "BTREE"}
    assert "exact" in str(report)


@pytest.mark.parametrize("kind", ["IVF_FLAT", "IVF_SQ", "IVF_HNSW_SQ"])
def test_ivf_index_search_params_and_true_cosine_scores(store, kind: str) -> None:
    from cope.api import CopeDB
    from cope.store.index import build_index, search_params

    report = build_index(store, exact_below=1000, index_type=kind)
    vec = report.vector_index("vector")
    assert vec is not None and vec.index_type == kind and vec.indexed_rows == ROWS and vec.unindexed_rows == 0
    assert vec.distance_type == "cosine"
    params = search_params(store.table, "vector")
    assert params is not None and params.nprobes and (kind == "IVF_FLAT" or params.refine_factor)
    db = CopeDB(store)
    res = db.similar("product:s0", k=10, domains=["video"])
    assert len(res) == 10 and {h.domain for h in res} == {"video"}
    # scores are cosine similarities, whatever the index stores internally (SQ alone would return 2x distances)
    expected = db.vectors(res.ids) @ db.vectors(["product:s0"])[0]
    np.testing.assert_allclose(res.scores, expected, atol=2e-3)
    if kind == "IVF_HNSW_SQ":  # a beam narrower than k x refine_factor is widened, not an error
        db.set_search_params(params.model_copy(update={"ef": 4}))
        assert len(db.similar("product:s0", k=10)) == 10


def test_new_rows_are_searchable_at_once_then_folded_in_by_optimize(store) -> None:
    from cope.api import CopeDB
    from cope.store.index import build_index, index_report, optimize, plan_index

    build_index(store, exact_below=1000, index_type="IVF_FLAT")
    new = synthetic_rows(30, start=ROWS, seed=5)
    store.upsert(new)
    report = index_report(store)
    assert report.num_rows == ROWS + 30 and report.unindexed_rows == 30
    assert "not in the vector index yet" in str(report)
    db = CopeDB(store)
    new_id = new.column("item_id")[3].as_py()
    hit = db.search(db.vectors([new_id])[0], k=1)
    assert hit.ids == [new_id] and hit.scores[0] == pytest.approx(1.0, abs=1e-4)

    versions_before = len(store.table.list_versions())
    after = optimize(store, cleanup_older_than=dt.timedelta(0))
    assert after.unindexed_rows == 0 and after.vector_index("vector").indexed_rows == ROWS + 30
    assert all(i.unindexed_rows == 0 for i in after.indexes), "scalar indexes are refreshed too"
    assert len(store.table.list_versions()) < versions_before, "old versions are cleaned up"
    assert after.vector_index("vector").index_type == "IVF_FLAT"
    # the partition layout survives optimize (given as num_partitions, Lance would join them into a few big ones)
    details = {i.name: i for i in store.table.list_indices()}["vector_idx"].index_details
    assert details.get("target_partition_size") == math.ceil(ROWS / plan_index(ROWS, DIM, "IVF_FLAT").num_partitions)
    assert _partitions(store) >= plan_index(ROWS, DIM, "IVF_FLAT").num_partitions - 1
    assert CopeDB(store).search(db.vectors([new_id])[0], k=1).ids == [new_id]


def _partitions(store) -> int:
    plan = (store.table.search(np.ones(DIM, np.float32), vector_column_name="vector").distance_type("cosine")
            .nprobes(1).limit(1).analyze_plan())
    return sum(int(n) for n in re.findall(r"partitions_ranked=(\d+)", plan))


def test_auto_below_threshold_drops_a_stale_index(store) -> None:
    from cope.store.index import build_index

    build_index(store, exact_below=1000, index_type="IVF_FLAT")
    report = build_index(store, exact_below=10_000)
    assert report.vector_index("vector") is None and "vector" in report.exact_columns


def test_per_modality_columns_can_be_indexed(store) -> None:
    from cope.store.index import build_index

    report = build_index(store, columns=["vector", "image_vector"], exact_below=1000, scalar=False)
    assert report.vector_index("image_vector") is not None and report.vector_index("text_vector") is None
    with pytest.raises(ValueError, match="no vector column"):
        build_index(store, columns=["nope"])


def _parser() -> argparse.ArgumentParser:
    from cope.commands import index, stats

    p = argparse.ArgumentParser(prog="cope")
    sub = p.add_subparsers(dest="command", required=True)
    index.add_parser(sub)
    stats.add_parser(sub)
    return p


def _run(argv: list[str]) -> int:
    from cope import cli

    if "index" in cli.COMMANDS and "stats" in cli.COMMANDS:
        return cli.main(argv)
    args = _parser().parse_args(argv)
    return args.func(args)


def test_index_and_stats_commands(store, capsys) -> None:
    db = store.uri
    assert _run(["index", "--db", db, "--exact-below", "1000"]) == 0
    out = capsys.readouterr().out
    assert "IVF_FLAT" in out and "BITMAP" in out and "unindexed 0" in out
    store.upsert(synthetic_rows(10, start=ROWS, seed=3))
    assert _run(["stats", "--db", db]) == 0
    out = capsys.readouterr().out
    for part in ("rows       3010", "product: 753", "synthetic;fusion", "dim        16", "disk", "unindexed 10"):
        assert part in out, part
    assert _run(["index", "--db", db, "--optimize", "--keep-minutes", "0", "--nprobes", "33"]) == 0
    out = capsys.readouterr().out
    assert "unindexed 10" in out.split("after optimize")[0] and "nprobes=33" in out
    from cope.store import ItemStore
    from cope.store.index import search_params

    assert search_params(ItemStore.open(db), "vector").nprobes == 33
    assert _run(["stats", "--db", db, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 3010 and stats["unindexed_rows"] == 0 and stats["disk_bytes"] > 0
    assert stats["rows_per_domain"] == {"image": 753, "live": 752, "product": 753, "video": 752}


def test_stats_of_a_missing_table_says_what_to_do(tmp_path: Path) -> None:
    args = _parser().parse_args(["stats", "--db", str(tmp_path / "empty.lancedb")])
    with pytest.raises(FileNotFoundError, match="cope embed"):
        args.func(args)
