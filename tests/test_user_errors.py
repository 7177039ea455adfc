"""User mistakes give one line that says what to do (exit 2), never a traceback or a raw LanceDB/DuckDB error.

Each test reproduces one mistake through the CLI (or the API) on small generated data.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cope.cli import main
from cope.training.synthetic import make_synthetic_store


def _fails(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    """Run ``cope ARGV``; it must exit 2 with one line ``cope <command>: error: ...``. Returns that line."""
    capsys.readouterr()
    code = main(["-q", *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"cope {argv[0]}: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- 1. cope train on too few labelled products ---------------------------------------------------------------------
def test_train_on_too_few_products_says_how_many_and_what_to_pass(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    make_synthetic_store(db, n_products=5, missing=0.0, seed=1)
    train = ["train", "--db", str(db), "--out", str(tmp_path / "heads"), "--dim", "16", "--epochs", "2",
             "--threads", "1"]
    line = _fails(capsys, train)
    assert "needs at least 6 with items in two or more domains" in line and "the labels give 5" in line, line
    assert "--pairs" in line and "--val-fraction 0" in line, line
    assert main(["-q", *train, "--val-fraction", "0"]) == 0  # the advice works

    make_synthetic_store(db, table="one_domain", n_products=6, domains=("product",), seed=1)
    line = _fails(capsys, [*train[:3], "--table", "one_domain", *train[3:]])
    assert "at least two domains" in line and "['product']" in line and "--pairs" in line, line


# -- 2. cope reproject with heads that lack a domain of the table ---------------------------------------------------
def test_reproject_names_the_domains_the_heads_have_no_head_for(tmp_path: Path, capsys) -> None:
    from cope.store import ItemStore

    db, heads = tmp_path / "db", tmp_path / "heads"
    make_synthetic_store(db, table="pv", n_products=30, domains=("product", "video"), seed=1)
    make_synthetic_store(db, n_products=6, domains=("product", "video", "live"), missing=0.0, seed=2)
    assert main(["-q", "train", "--db", str(db), "--table", "pv", "--out", str(heads), "--dim", "16",
                 "--epochs", "2", "--threads", "1"]) == 0
    reproject = ["reproject", "--db", str(db), "--heads", str(heads), "--table", "items_cope"]
    line = _fails(capsys, reproject)
    assert "'live' (6 rows)" in line and "['product', 'video']" in line, line
    assert "--default-domain product" in line and "cope train" in line, line
    assert not ItemStore.open(db, "items_cope").exists  # refused before anything was written
    assert main(["-q", *reproject, "--default-domain", "video"]) == 0  # the advice works
    assert ItemStore.open(db, "items_cope").count() == ItemStore.open(db).count()


# -- 3. cope index --type IVF_* on a table too small to train it ------------------------------------------------------
def test_index_type_on_a_small_table_says_rows_and_what_to_do(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    rows = make_synthetic_store(db, n_products=40, seed=1).count()
    assert rows < 256
    for kind in ("IVF_SQ", "IVF_FLAT", "IVF_HNSW_SQ"):
        line = _fails(capsys, ["index", "--db", str(db), "--type", kind])
        assert f"{kind} needs at least 256 rows" in line and f"has {rows} rows" in line, line
        assert "--type auto" in line and "exact search" in line, line
    line = _fails(capsys, ["index", "--db", str(db), "--type", "IVF_PQ", "--column", "text_vector"])
    assert "IVF_PQ needs at least 2048 rows" in line and "'text_vector'" in line, line
    line = _fails(capsys, ["index", "--db", str(db), "--exact-below", "10"])
    assert "--exact-below 10 asks for one" in line, line
    assert main(["-q", "index", "--db", str(db), "--type", "auto"]) == 0  # the advice works
