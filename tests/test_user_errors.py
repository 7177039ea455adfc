"""User mistakes give one line that says what to do (exit 2), never a traceback or a raw LanceDB/DuckDB error.

Each test reproduces one mistake through the CLI (or the API) on small generated data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# -- 4. what a unified-only table (cope reproject --vector-only) cannot do --------------------------------------------
def test_unified_only_table_refusals_name_the_full_table(tmp_path: Path, capsys) -> None:
    import pyarrow as pa

    import cope
    from cope.errors import UsageError
    from cope.store.schema import require_modalities

    db = tmp_path / "db"
    make_synthetic_store(db, n_products=30, seed=1)
    assert main(["-q", "reproject", "--db", str(db), "--vector-only", "--table", "items_u"]) == 0
    assert main(["-q", "reproject", "--db", str(db), "--source-table", "items_u", "--float16",
                 "--table", "items_u16"]) == 0  # a copy of a copy still names the full table
    heads = tmp_path / "heads"
    assert main(["-q", "train", "--db", str(db), "--out", str(heads), "--dim", "16", "--epochs", "2",
                 "--threads", "1"]) == 0
    d = str(db)
    cases = [
        ["train", "--db", d, "--table", "items_u16", "--out", str(tmp_path / "h2"), "--dim", "16"],
        ["eval", "--db", d, "--table", "items_u", "--by", "modality"],
        ["eval", "--db", d, "--table", "items_u", "--vector", "image_vector"],
        ["index", "--db", d, "--table", "items_u", "--column", "image_vector"],
        ["reproject", "--db", d, "--source-table", "items_u", "--heads", str(heads), "--table", "items_uh"],
        ["join", str(_one_event(tmp_path)), "--db", d, "--table", "items_u", "--out", str(tmp_path / "out"),
         "--vector-column", "text_vector"],
    ]
    for argv in cases:
        line = _fails(capsys, argv)
        table = argv[argv.index("--table") + 1] if argv[0] != "reproject" else "items_u"
        assert f"table {table!r} stores only the unified vector" in line, line
        assert "use the full table 'items' it was made from (--table items)" in line, line
    db_u = cope.open(db, table="items_u")
    for column in ("image_vector", "text_vector"):
        with pytest.raises(UsageError, match=r"one of \['vector'\].*stores only the unified vector.*'items'"):
            db_u.similar("product:p0001", vector_column=column)
        with pytest.raises(UsageError, match="vector_column='vector'"):
            db_u.search(np.ones(64, np.float32), vector_column=column)
    assert len(db_u.similar("product:p0001", k=3)) == 3
    # a table written before the source was recorded: the message still says what to use
    with pytest.raises(UsageError, match=r"use the full table it was made from \(--table\)"):
        require_modalities(pa.schema([("vector", pa.list_(pa.float32(), 4))]), "old", "cope train")


def _one_event(tmp_path: Path) -> Path:
    log = tmp_path / "events.csv"
    log.write_text("user_id,ts,domain,id\nu1,2026-01-01T00:00:00Z,product,p0001\n")
    return log


# -- 5. similar() on an item id stored twice (tables written by older versions) ---------------------------------------
def test_similar_on_a_duplicated_id_uses_the_newest_row_and_warns(tmp_path: Path, caplog) -> None:
    import datetime as dt
    import logging

    import pyarrow as pa

    import cope

    db = tmp_path / "db"
    store = make_synthetic_store(db, n_products=10, missing=0.0, seed=1)
    rows = {r["item_id"]: r for r in store.read(store.table.schema.names).to_pylist()}
    unique = len(rows)
    target = rows["video:vid-p0005-0"]["vector"]  # the newer copy of product:p0001 points at this video
    newer = dict(rows["product:p0001"], vector=target,
                 updated_at=rows["product:p0001"]["updated_at"] + dt.timedelta(hours=1))
    store.table.add(pa.Table.from_pylist([newer, rows["live:live-p0002:0-10"]], schema=store.table.schema))
    assert store.count() == unique + 2

    db_api = cope.open(db)
    with caplog.at_level(logging.WARNING, logger="cope.api"):
        hits = db_api.similar("product:p0001", k=5)
        assert hits.ids[0] == "video:vid-p0005-0" and hits.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert "product:p0001" not in hits.ids and len(set(hits.ids)) == len(hits) == 5
        every = db_api.similar("product:p0002", k=100)  # each stored item once, the query item left out
        assert sorted(every.ids) == sorted(set(rows) - {"product:p0002"})
        assert len(db_api.search(np.asarray(target), k=unique).ids) == unique
        np.testing.assert_allclose(db_api.vectors("product:p0001")[0], target, rtol=1e-6)
        assert db_api.get(["live:live-p0002:0-10", "product:p0001"]).column("item_id").to_pylist() == [
            "live:live-p0002:0-10", "product:p0001"]
        assert len(db_api.similar_many(["product:p0001", "live:live-p0002:0-10"], k=3)) == 2
    warnings = [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per CopeDB
    assert "'live:live-p0002:0-10'" in warnings[0] or "'product:p0001'" in warnings[0]
    assert f"cope check --db {db} --table items --repair" in warnings[0]

    assert main(["-q", "check", "--db", str(db), "--repair"]) == 0  # the advice works
    caplog.clear()
    assert cope.open(db).similar("product:p0001", k=1).ids == ["video:vid-p0005-0"]
    assert not [r for r in caplog.records if "more than once" in r.getMessage()]


# -- 6. cope join --links with hostile rows -------------------------------------------------------------------------
@pytest.fixture
def join_db(tmp_path: Path) -> tuple[Path, Path]:
    """Items product p1/p2, videos v1..v3, live l1 (one slice 0-30 s), and one event on each non-product item."""
    from cope.join.synth import write_items

    items = [{"domain": "product", "source_id": p, "vector": [1.0, 0.0, 0.0, 0.0]} for p in ("p1", "p2")]
    items += [{"domain": "video", "source_id": v, "vector": [0.0, 1.0, 0.0, 0.0]} for v in ("v1", "v2", "v3")]
    items += [{"domain": "live", "source_id": "l1", "vector": [0.0, 0.0, 1.0, 0.0], "slice_start": 0.0,
               "slice_end": 30.0}]
    write_items(tmp_path / "db", items, dim=4)
    log = tmp_path / "events.csv"
    log.write_text("user_id,ts,domain,id,offset\n" + "".join(
        f"u1,2026-01-01T00:0{k}:00Z,{d},{i},{o}\n" for k, (d, i, o) in enumerate(
            [("video", "v1", ""), ("video", "v2", ""), ("video", "v3", ""), ("live", "l1", "5")])))
    return tmp_path / "db", log


def _join_keys(capsys, caplog, db: Path, log: Path, out: Path, links: Path) -> tuple[dict, dict, list[str]]:
    import json
    import logging

    import pyarrow.parquet as pq

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cope.join.links"):
        assert main(["-q", "join", str(log), "--db", str(db), "--out", str(out), "--no-content-links",
                     "--links", str(links)]) == 0
    assert "link tables:" in capsys.readouterr().out  # the summary says rows were skipped
    events = pq.read_table(out / "events.parquet")
    keys = dict(zip(events.column("id").to_pylist(), events.column("product_key").to_pylist()))
    report = json.loads((out / "report.json").read_text())["links"]
    return keys, report, [r.getMessage() for r in caplog.records]


def test_join_skips_and_counts_hostile_link_rows_csv(join_db, tmp_path: Path, capsys, caplog) -> None:
    db, log = join_db
    links = tmp_path / "links.csv"
    links.write_bytes(b"domain,id,product_id,start,end\n"
                      b"video,v1,p1,,\n"            # good
                      b"live,l1,p2,soon,30\n"       # start is not a number
                      b"live,l1,p1,0,30\n"          # good
                      b"video,v2,,,\n"              # missing product id
                      b"video,v\xff2,p2,,\n"        # bytes that are not UTF-8
                      b"video,v\x002,p2,,\n"        # a NUL byte
                      b"video,v2,p2,,,extra\n"      # too many fields
                      b"video\n"                    # too few
                      b"\n"                         # blank: not a row
                      b"product,p1,p1,,\n"          # not a video/image/live link
                      b"live,l1,p2,40,35\n"         # end before start
                      b"video,v3,p2,,\n")           # good, after all of them
    keys, report, warnings = _join_keys(capsys, caplog, db, log, tmp_path / "out", links)
    assert keys == {"v1": "p1", "v2": None, "v3": "p2", "l1": "p1"}
    assert report["link_table_rows"] == 11 and report["link_table_invalid"] == 8
    assert report["link_table_invalid_by_reason"] == {
        "malformed CSV row": 2, "start is not a number": 1, "control character or bytes that are not UTF-8": 2,
        "not a video, image or live link": 1, "missing product id": 1, "end before start": 1}
    assert len(warnings) == 1 and f"link table {links}: skipped 8 of 11 rows" in warnings[0], warnings

    # an unclosed quote swallows the rest of the file: those lines are counted, not lost silently
    links.write_bytes(b'domain,id,product_id\nvideo,v1,p1\nvideo,"v2,p2\nvideo,v3,p2\nvideo,v2,p2\n')
    keys, report, warnings = _join_keys(capsys, caplog, db, log, tmp_path / "out2", links)
    assert keys["v1"] == "p1" and report["link_table_rows"] == 4 and report["link_table_invalid"] == 3
    assert "unclosed or multi-line quote: 2" in warnings[0], warnings


def test_join_skips_and_counts_hostile_link_rows_jsonl(join_db, tmp_path: Path, capsys, caplog) -> None:
    db, log = join_db
    links = tmp_path / "links.jsonl"
    links.write_bytes(b'{"domain": "video", "id": "v1", "product_id": "p1"}\n'
                      b'not json\n'
                      b'[1, 2]\n'
                      b'{"domain": "live", "id": "l1", "product_id": "p2", "start": "soon"}\n'
                      b'{"domain": "video", "id": "v2", "product_id": {"sku": "p2"}}\n'
                      b'{"domain": "video", "id": "v2", "product_id": null}\n'
                      b'{"domain": "video", "id": "v\xff2", "product_id": "p2"}\n'
                      b'{"domain": "video", "id": "v\\u00002", "product_id": "p2"}\n'
                      b'\n'
                      b'{"domain": "video", "id": "v2", "product_id": "p2", "start": true}\n'
                      b'{"Domain": "LIVE", "ID": "l1", "Product_ID": 1, "start": "0", "end": 30}\n'
                      b'{"domain": "video", "id": "v3", "product_id": 2}\n')
    keys, report, warnings = _join_keys(capsys, caplog, db, log, tmp_path / "out", links)
    assert keys == {"v1": "p1", "v2": None, "v3": "2", "l1": "1"}  # whole numbers are ids too
    assert report["link_table_rows"] == 11 and report["link_table_invalid"] == 8
    assert report["link_table_invalid_by_reason"] == {
        "invalid JSON": 1, "not a JSON object": 1, "product id is not text or a whole number": 1,
        "start is not a number": 2, "control character or bytes that are not UTF-8": 2, "missing product id": 1}
    assert len(warnings) == 1 and f"link table {links}: skipped 8 of 11 rows" in warnings[0], warnings


def test_join_link_table_that_cannot_be_read_fails_with_one_line(join_db, tmp_path: Path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    db, log = join_db
    cases = {
        "binary.csv": (bytes(range(256)) * 4, "cannot read the header line"),
        "empty.csv": (b"", "has no header line"),
        "lacks.csv": (b"domain,video,product\nvideo,v1,p1\n", "lacks ['id']"),
        "prose.jsonl": (b"domain,id,product_id\nvideo,v1,p1\n", "none of its 2 lines is a JSON object"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    pq.write_table(pa.table({"domain": ["video"], "id": ["v1"], "product_id": [{"sku": "p1"}]}),
                   tmp_path / "nested.parquet")
    cases["nested.parquet"] = (b"", "column 'product_id' is STRUCT")
    cases["missing.csv"] = (b"", "link table")
    for name, (_, expected) in cases.items():
        line = _fails(capsys, ["join", str(log), "--db", str(db), "--out", str(tmp_path / "out"),
                               "--no-content-links", "--links", str(tmp_path / name)])
        assert expected in line and name in line, line
