"""Behaviour join: mapping, live slices, product keys, validation with line numbers, idempotence, sequences."""

from __future__ import annotations

import argparse
import json
import os

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cope.join import JoinConfig, join_behaviour, next_product_hit_rate
from cope.join.synth import make_event_log, write_events, write_items, write_synthetic_store


def _events(out) -> pa.Table:
    return pq.read_table(out / "events.parquet")


def _rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    cols = [table.column(c).to_pylist() for c in columns]
    return list(zip(*cols))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    cat = write_synthetic_store(root / "db", n_products=60, videos_per_product=2, images_per_product=1, n_lives=3,
                                slices_per_live=8, slice_seconds=30.0, dim=16, n_categories=6, noise=0.2, seed=0)
    log = make_event_log(cat, n_events=2000, n_users=80, unknown_share=0.03, interval_share=0.4, seed=1)
    write_events(log, root / "events.parquet")
    pq.write_table(cat.link_table(), root / "links.parquet")
    return root, cat, log


def _check_against_truth(out, log: pa.Table) -> None:
    """Every event's first row (part 0) points at the true item and carries the true product key."""
    con = duckdb.connect()
    con.register("truth", log)
    bad = con.execute(f"""
        WITH t AS (SELECT *, row_number() OVER () AS line FROM truth),
             o AS (SELECT * FROM read_parquet('{out / "events.parquet"}') WHERE part = 0)
        SELECT count(*), count(*) FILTER (WHERE o.item_id IS DISTINCT FROM t.true_item_id),
               count(*) FILTER (WHERE o.product_key IS DISTINCT FROM t.true_product_key)
        FROM o JOIN t USING (line)""").fetchall()[0]
    assert bad == (log.num_rows, 0, 0)


def test_every_event_points_at_its_item_and_product_key_via_link_table(synth, tmp_path):
    root, _, log = synth
    result = join_behaviour(root / "events.parquet", root / "db", tmp_path / "out", links=[str(root / "links.parquet")])
    _check_against_truth(tmp_path / "out", log)
    ev = _events(tmp_path / "out")
    sources = set(ev.filter(pa.compute.is_valid(ev["item_id"])).column("link_source").to_pylist())
    assert sources == {"self", "link"}  # the link table covers every video, image and slice
    assert ev.schema.metadata[b"cope.model_tag"] == result.report.model_tag.encode()
    assert set(ev.column("model_tag").to_pylist()) == {result.report.model_tag}


def test_content_links_find_the_same_products_without_a_link_table(synth, tmp_path):
    root, _, log = synth
    result = join_behaviour(root / "events.parquet", root / "db", tmp_path / "out", threshold=0.8)
    _check_against_truth(tmp_path / "out", log)
    ev = _events(tmp_path / "out")
    content = ev.filter(pa.compute.equal(ev["link_source"], "content"))
    assert content.num_rows > 0 and min(content.column("link_score").to_pylist()) >= 0.8
    assert result.report.links.content_linked == result.report.links.content_candidates > 0


def test_unmatched_ids_are_counted_and_listed(synth, tmp_path):
    root, _, log = synth
    report = join_behaviour(root / "events.parquet", root / "db", tmp_path / "out", threshold=0.8).report
    con = duckdb.connect()
    con.register("truth", log)
    for domain, cov in report.domains.items():
        n, unmatched = con.execute("SELECT count(*), count(*) FILTER (WHERE true_item_id IS NULL) FROM truth "
                                   "WHERE domain = ?", [domain]).fetchall()[0]
        counts = con.execute("SELECT id, count(*) AS c FROM truth WHERE domain = ? AND true_item_id IS NULL "
                             "GROUP BY id ORDER BY c DESC, id", [domain]).fetchall()
        assert (cov.events, cov.unmatched, cov.unmatched_ids) == (n, unmatched, len(counts))
        if counts:
            assert cov.top_unmatched[0] == counts[0] and "unknown" in counts[0][0]
    assert report.events.valid == log.num_rows and report.events.rejected == 0


def _live_store(tmp_path, gap: bool = False):
    """One stream 'live-1' with 30 s slices [0,30) [30,60) [60,90) (or without the middle one)."""
    items = [{"domain": "product", "source_id": "p1", "vector": [1, 0, 0, 0]}]
    for k, (s, e) in enumerate([(0, 30), (30, 60), (60, 90)]):
        if gap and k == 1:
            continue
        items.append({"domain": "live", "source_id": "live-1", "vector": [1, 0.1 * k, 0, 0],
                      "slice_start": float(s), "slice_end": float(e)})
    write_items(tmp_path / "db", items, dim=4)
    return tmp_path / "db"


def _live_log(path, rows: list[tuple]) -> None:
    """rows: (offset, start, end)."""
    n = len(rows)
    pq.write_table(pa.table({
        "user_id": [f"u{i}" for i in range(n)], "ts": pa.array(np.arange(n) * 1000, pa.timestamp("ms", tz="UTC")),
        "domain": ["live"] * n, "id": ["live-1"] * n,
        "offset": pa.array([r[0] for r in rows], pa.float64()), "start": pa.array([r[1] for r in rows], pa.float64()),
        "end": pa.array([r[2] for r in rows], pa.float64())}), path)


def test_live_events_map_to_the_slices_they_fall_in(tmp_path):
    db = _live_store(tmp_path)
    cases = [(0.0, None, None), (29.9, None, None), (30.0, None, None), (89.9, None, None), (90.0, None, None),
             (None, 25.0, 65.0), (None, 30.0, 60.0), (None, 95.0, 100.0), (None, 10.0, 10.0), (None, 50.0, None)]
    _live_log(tmp_path / "ev.parquet", cases)
    join_behaviour(tmp_path / "ev.parquet", db, tmp_path / "out")
    got = _rows(_events(tmp_path / "out").sort_by([("line", "ascending"), ("part", "ascending")]),
                ["line", "part", "item_id", "slice_share"])
    s0, s1, s2 = "live:live-1:0-30", "live:live-1:30-60", "live:live-1:60-90"
    assert got == [(1, 0, s0, 1.0), (2, 0, s0, 1.0), (3, 0, s1, 1.0), (4, 0, s2, 1.0), (5, 0, None, 1.0),
                   (6, 0, s0, 5 / 40), (6, 1, s1, 30 / 40), (6, 2, s2, 5 / 40),
                   (7, 0, s1, 1.0),  # [30, 60) ends where the next slice starts
                   (8, 0, None, 1.0), (9, 0, s0, 1.0),  # a zero-length watch is a point
                   (10, 0, s1, 1.0)]  # a start without an end is a point


def test_live_events_in_a_gap_between_slices(tmp_path):
    db = _live_store(tmp_path, gap=True)
    _live_log(tmp_path / "ev.parquet", [(45.0, None, None), (None, 20.0, 70.0), (None, 35.0, 55.0)])
    report = join_behaviour(tmp_path / "ev.parquet", db, tmp_path / "out").report
    got = _rows(_events(tmp_path / "out").sort_by([("line", "ascending"), ("part", "ascending")]),
                ["line", "part", "item_id"])
    assert got == [(1, 0, None), (2, 0, "live:live-1:0-30"), (2, 1, "live:live-1:60-90"), (3, 0, None)]
    assert report.domains["live"].unmatched == 2 and report.domains["live"].top_unmatched == [("live-1", 2)]


def _threshold_store(tmp_path):
    e = np.eye(4)
    items = [{"domain": "product", "source_id": "p0", "vector": e[0]},
             {"domain": "product", "source_id": "p1", "vector": e[1]},
             # cosine 0.9 to p0 and 0.6 to p1
             {"domain": "video", "source_id": "v-near", "vector": 0.9 * e[0] + np.sqrt(1 - 0.81) * e[2]},
             {"domain": "video", "source_id": "v-far", "vector": 0.6 * e[1] + 0.8 * e[3]}]
    write_items(tmp_path / "db", items, dim=4)
    log = tmp_path / "ev.csv"
    log.write_text("user_id,ts,domain,id\nu1,2026-01-01T00:00:00Z,video,v-near\nu1,2026-01-01T00:01:00Z,video,v-far\n"
                   "u1,2026-01-01T00:02:00Z,product,p1\n")
    return tmp_path / "db", log


def _keys(out) -> dict[str, tuple]:
    return {r[0]: r[1:] for r in _rows(_events(out), ["id", "product_key", "link_source", "link_score"])}


def test_content_link_threshold(tmp_path):
    db, log = _threshold_store(tmp_path)
    join_behaviour(log, db, tmp_path / "strict", threshold=0.8)
    k = _keys(tmp_path / "strict")
    assert k["v-near"][:2] == ("p0", "content") and k["v-near"][2] == pytest.approx(0.9, abs=1e-5)
    assert k["v-far"][:2] == (None, None) and k["v-far"][2] == pytest.approx(0.6, abs=1e-5)  # score kept
    assert k["p1"] == ("p1", "self", None)

    join_behaviour(log, db, tmp_path / "loose", threshold=0.5)
    assert _keys(tmp_path / "loose")["v-far"][:2] == ("p1", "content")

    join_behaviour(log, db, tmp_path / "off", content_links=False)
    assert _keys(tmp_path / "off")["v-near"] == (None, None, None)

    links = tmp_path / "links.csv"
    links.write_text("domain,id,product_id\nvideo,v-far,p0\nvideo,v-unknown,p1\n")
    log.write_text(log.read_text() + "u2,2026-01-02T00:00:00Z,video,v-unknown\n")
    report = join_behaviour(log, db, tmp_path / "linked", threshold=0.8, links=[str(links)]).report
    k = _keys(tmp_path / "linked")
    assert k["v-far"] == ("p0", "link", None)  # the link table beats content
    assert k["v-unknown"] == ("p1", "link", None)  # a linked id not in the store still gets its product key
    assert report.domains["video"].unmatched == 1


def test_bad_rows_are_reported_with_line_numbers_csv(tmp_path):
    db = _live_store(tmp_path)
    log = tmp_path / "ev.csv"
    log.write_text(
        "user_id,ts,domain,id,offset,action,weight\n"  # 1
        "u1,2026-01-01 10:00:00,live,live-1,5,watch,1\n"  # 2 good
        "u1,2026-01-01 10:01:00,tv,ch-7,,,\n"  # 3 unknown domain
        "u1,2026-01-01 10:02:00,product,,,,\n"  # 4 missing id
        "u2,yesterday,product,p1,,,\n"  # 5 bad timestamp
        "\n"  # 6 blank: skipped, not an event
        "u2,2026-01-01 10:03:00,product,p1,,click,1,extra\n"  # 7 malformed: one column too many
        "u2,2026-01-01 10:04:00,live,live-1,,,\n"  # 8 live without offset
        "u3,1767261900000,item,p1,,\"multi\nline\",2\n"  # 9-10 good: epoch ms, alias item->product, quoted newline
        "u3,2026-01-01 10:06:00,live,live-1,-4,,\n"  # 11 negative offset
        ",2026-01-01 10:07:00,product,p1,,,\n"  # 12 missing user
        "u4,2026-01-01 10:08:00,product,p1,,,heavy\n"  # 13 bad weight
        "u4,2026-01-01 10:09:00,video,v9,,,\n")  # 14 good (unmatched id)
    report = join_behaviour(log, db, tmp_path / "out").report
    rejects = _rows(pq.read_table(tmp_path / "out" / "rejects.parquet"), ["line", "reason", "value"])
    assert [(ln, r) for ln, r, _ in rejects] == [
        (3, "unknown domain"), (4, "missing id"), (5, "bad timestamp"), (7, "malformed CSV row"),
        (8, "live event without offset or interval"), (11, "negative live offset"), (12, "missing user id"),
        (13, "bad weight")]
    assert rejects[0][2] == "tv" and rejects[2][2] == "yesterday" and rejects[7][2] == "heavy"
    assert report.events.rejected == 8 and report.events.valid == 3 and report.events.rows_read == 11
    assert report.events.rejected_by_reason["unknown domain"] == 1
    assert str(report.events.reject_examples[0]).endswith("ev.csv:3: unknown domain ('tv')")
    ev = _events(tmp_path / "out")
    good = sorted(_rows(ev, ["line", "domain", "item_id", "weight"]))
    assert good == [(2, "live", "live:live-1:0-30", 1.0), (9, "product", "product:p1", 2.0), (14, "video", None, 1.0)]
    ts = dict(_rows(ev, ["line", "ts"]))
    assert ts[9].isoformat() == "2026-01-01T10:05:00+00:00"


def test_bad_rows_are_reported_with_line_numbers_jsonl(tmp_path):
    db = _live_store(tmp_path)
    log = tmp_path / "ev.jsonl"
    lines = [json.dumps({"user_id": "u1", "ts": "2026-01-01T10:00:00+08:00", "domain": "product", "id": "p1"}),
             "", "{not json", "[1, 2]",
             json.dumps({"user_id": "u1", "ts": 1767261600, "domain": "LIVE", "id": "live-1", "start": 20, "end": 40}),
             json.dumps({"user_id": "u2", "ts": "2026-13-45", "domain": "product", "id": "p1"}),
             json.dumps({"user_id": 7, "ts": "2026-01-01", "domain": "product", "id": 12345})]
    log.write_text("\n".join(lines) + "\n")
    join_behaviour(log, db, tmp_path / "out")
    rejects = _rows(pq.read_table(tmp_path / "out" / "rejects.parquet"), ["line", "reason"])
    assert rejects == [(3, "invalid JSON"), (4, "invalid JSON"), (6, "bad timestamp")]
    got = sorted(_rows(_events(tmp_path / "out"), ["line", "part", "user_id", "id", "item_id"]))
    assert got == [(1, 0, "u1", "p1", "product:p1"), (5, 0, "u1", "live-1", "live:live-1:0-30"),
                   (5, 1, "u1", "live-1", "live:live-1:30-60"), (7, 0, "7", "12345", None)]
    ts = {(r[0], r[1]): r[2] for r in _rows(_events(tmp_path / "out"), ["line", "part", "ts"])}
    assert ts[(1, 0)].isoformat() == "2026-01-01T02:00:00+00:00"


def test_formats_agree(synth, tmp_path):
    root, _, log = synth
    small = log.slice(0, 300).drop_columns(["true_item_id", "true_product_key"])
    results = {}
    for suffix in ("parquet", "csv", "jsonl"):
        path = write_events(small, tmp_path / f"ev.{suffix}")
        join_behaviour(path, root / "db", tmp_path / suffix, threshold=0.8)
        ev = _events(tmp_path / suffix)
        results[suffix] = sorted(_rows(ev, ["user_id", "ts", "domain", "id", "part", "item_id", "product_key"]))
        lines = sorted(set(ev.column("line").to_pylist()))
        assert lines == list(range(1, 301)) if suffix != "csv" else list(range(2, 302))
    assert results["parquet"] == results["csv"] == results["jsonl"]


def test_rerun_writes_the_same_outputs(synth, tmp_path):
    root, _, _ = synth
    out = tmp_path / "out"
    options = {"links": [str(root / "links.parquet")], "profiles": True, "last_n": 5}
    first = join_behaviour(root / "events.parquet", root / "db", out, **options)
    tables = {k: pq.read_table(p) for k, p in first.paths.items() if p.suffix == ".parquet"}
    second = join_behaviour(root / "events.parquet", root / "db", out, **options)
    for k, table in tables.items():
        assert pq.read_table(second.paths[k]).equals(table), k
    a, b = (r.report.model_dump(exclude={"seconds", "cpu_seconds"}) for r in (first, second))
    assert a == b
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["events.parquet", "sequences.parquet", "rejects.parquet", "product_links.parquet", "profiles.parquet",
         "report.json"])


def test_sequences_keep_the_last_n_in_time_order_across_batches(synth, tmp_path):
    root, _, _ = synth
    ref = None
    for batch_rows in (7, 100_000):
        out = tmp_path / f"b{batch_rows}"
        report = join_behaviour(root / "events.parquet", root / "db", out, threshold=0.8, last_n=4,
                                batch_rows=batch_rows).report
        seq = pq.read_table(out / "sequences.parquet")
        if ref is None:
            ref = seq
        else:
            assert seq.equals(ref)
    expected = duckdb.sql(f"""
        SELECT user_id, count(*) AS n, count(DISTINCT domain) AS nd,
               list(item_id ORDER BY ts, source, line, part) AS items
        FROM read_parquet('{out / "events.parquet"}') WHERE item_id IS NOT NULL GROUP BY user_id ORDER BY user_id
    """).fetchall()
    got = _rows(ref, ["user_id", "n_events", "n_domains", "item_ids"])
    assert got == [(u, n, nd, items[-4:]) for u, n, nd, items in expected]
    ts = ref.column("timestamps").to_pylist()
    assert all(t == sorted(t) for t in ts)
    multi = sum(1 for _, _, nd, _ in expected if nd > 1)
    assert report.users.multi_domain_users == multi and report.users.users_matched == len(expected)


def test_profiles_are_recency_weighted_means(tmp_path):
    e = np.eye(3)
    write_items(tmp_path / "db", [{"domain": "product", "source_id": "a", "vector": e[0]},
                                  {"domain": "video", "source_id": "b", "vector": e[1]}], dim=3)
    log = tmp_path / "ev.csv"  # b watched 24 h before a: with a 24 h half-life it weighs half as much
    log.write_text("user_id,ts,domain,id,weight\nu,2026-01-01T00:00:00Z,video,b,1\nu,2026-01-02T00:00:00Z,product,a,1\n")
    join_behaviour(log, tmp_path / "db", tmp_path / "out", profiles=True, half_life_hours=24)
    prof = pq.read_table(tmp_path / "out" / "profiles.parquet").to_pylist()
    expected = np.array([1.0, 0.5, 0.0]) / np.linalg.norm([1.0, 0.5])
    assert prof[0]["user_id"] == "u" and np.allclose(prof[0]["vector"], expected, atol=1e-6)
    assert prof[0]["weight_sum"] == pytest.approx(1.5)


def test_next_product_hit_rate_cross_domain_beats_product_only(tmp_path):
    cat = write_synthetic_store(tmp_path / "db", n_products=300, dim=32, n_categories=20, spread=0.8, noise=0.3,
                                seed=5)
    log = make_event_log(cat, n_events=4000, n_users=400, purchase=True, seed=6,
                         mix={"video": 0.5, "live": 0.2, "image": 0.2, "product": 0.1})
    write_events(log, tmp_path / "ev.parquet")
    join_behaviour(tmp_path / "ev.parquet", tmp_path / "db", tmp_path / "out", threshold=0.8)
    h = next_product_hit_rate(tmp_path / "out" / "events.parquet", tmp_path / "db", k=10)
    assert h.users == 400 and 0 <= h.product_only < h.cross_domain <= 1
    assert h.product_only_users < h.users


def test_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="cope embed"):
        join_behaviour(tmp_path / "missing.csv", tmp_path / "nodb", tmp_path / "out")
    db = _live_store(tmp_path)
    log = tmp_path / "ev.csv"
    log.write_text("uid,happened_at,domain,id\nu1,2026-01-01,product,p1\n")
    with pytest.raises(ValueError, match="--column ts=<name>"):
        join_behaviour(log, db, tmp_path / "out")
    report = join_behaviour(log, db, tmp_path / "out", columns={"ts": "happened_at"}).report
    assert report.events.valid == 1
    with pytest.raises(ValueError, match="unknown event fields"):
        JoinConfig(columns={"when": "x"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        join_behaviour(tmp_path / "nope.parquet", db, tmp_path / "out")


def test_cli(synth, tmp_path, capsys):
    from cope.commands import join as join_command

    root, _, _ = synth
    parser = argparse.ArgumentParser()
    join_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["join", str(root / "events.parquet"), "--db", str(root / "db"), "--out",
                              str(tmp_path / "out"), "--links", str(root / "links.parquet"), "--last-n", "3",
                              "--column", "ts=ts", "--hit-rate", "5", "--strict"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "span more than one domain" in printed and "hit-rate@5" in printed
    assert json.loads((tmp_path / "out" / "report.json").read_text())["events"]["valid"] == 2000


def test_demo_catalog_end_to_end(tmp_path):
    """Real store rows from `cope embed` of the demo catalog; ground truth from metadata.product_key."""
    pytest.importorskip("torch")
    from cope._torchvision_fix import ensure_torchvision_importable

    ensure_torchvision_importable()
    pytest.importorskip("open_clip")
    from cope.demo import make_demo_catalog
    from cope.job import embed
    from cope.store import ItemStore

    manifest = make_demo_catalog(tmp_path / "cat", n_products=4)
    embed(manifest, tmp_path / "db", model="open_clip:cope-tiny-16", progress=False)
    items = ItemStore.open(tmp_path / "db").read(["item_id", "domain", "source_id", "metadata"]).to_pylist()
    keys = {r["item_id"]: json.loads(r["metadata"] or "{}").get("product_key") for r in items}
    links = [{"domain": r["domain"], "id": r["source_id"], "product_id": keys[r["item_id"]], "start": None,
              "end": None} for r in items if r["domain"] in ("video", "image")]
    # the demo live stream sells p000, p001, p002 in its 10 s slices, in that order
    links += [{"domain": "live", "id": "live-001", "product_id": f"p00{k}", "start": 10.0 * k, "end": 10.0 * k + 10}
              for k in range(3)]
    pq.write_table(pa.Table.from_pylist(links), tmp_path / "links.parquet")
    log = tmp_path / "ev.csv"
    log.write_text("user_id,ts,domain,id,offset\n"
                   "u1,2026-01-01T10:00:00Z,video,vid-p001,\n"
                   "u1,2026-01-01T10:05:00Z,live,live-001,14.5\n"
                   "u1,2026-01-01T10:09:00Z,product,p001,\n"
                   "u2,2026-01-01T11:00:00Z,image,img-p003,\n"
                   "u2,2026-01-01T11:01:00Z,live,live-001,25\n"
                   "u2,2026-01-01T11:02:00Z,video,vid-p999,\n")
    result = join_behaviour(log, tmp_path / "db", tmp_path / "out", links=[str(tmp_path / "links.parquet")])
    got = sorted(_rows(_events(tmp_path / "out"), ["line", "item_id", "product_key"]))
    assert got == [(2, "video:vid-p001", "p001"), (3, "live:live-001:10-20", "p001"), (4, "product:p001", "p001"),
                   (5, "image:img-p003", "p003"), (6, "live:live-001:20-30", "p002"), (7, None, None)]
    assert result.report.users.multi_domain_share == 1.0
    seq = pq.read_table(tmp_path / "out" / "sequences.parquet").to_pylist()
    assert seq[0]["domains"] == ["video", "live", "product"] and seq[0]["product_keys"] == ["p001"] * 3


def test_jsonl_keys_that_first_appear_late_are_read(tmp_path):
    db = _live_store(tmp_path)
    rows = [{"user_id": "u1", "ts": 1767261600 + k, "domain": "product", "id": "p1"} for k in range(1200)]
    rows.append({"user_id": "u1", "ts": 1767270000, "domain": "live", "id": "live-1", "offset_s": 61.0})
    (tmp_path / "ev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = join_behaviour(tmp_path / "ev.jsonl", db, tmp_path / "out").report
    assert report.events.rejected == 0 and report.domains["live"].matched == 1
    live = _events(tmp_path / "out").filter(pa.compute.equal(_events(tmp_path / "out")["domain"], "live"))
    assert live.column("item_id").to_pylist() == ["live:live-1:60-90"] and live.column("line").to_pylist() == [1201]


def test_profiles_do_not_depend_on_batch_size(synth, tmp_path):
    from cope.join.join import open_store
    from cope.join.profiles import write_profiles

    root, _, _ = synth
    join_behaviour(root / "events.parquet", root / "db", tmp_path / "out", threshold=0.8, profiles=True)
    store = open_store(root / "db", "items")
    write_profiles(tmp_path / "out" / "events.parquet", store, tmp_path / "small.parquet", batch_rows=7,
                   group_rows=3, model_tag=store.model_tag or "")
    a, b = pq.read_table(tmp_path / "out" / "profiles.parquet"), pq.read_table(tmp_path / "small.parquet")
    assert a.column("user_id").equals(b.column("user_id")) and a.column("n_events").equals(b.column("n_events"))
    va, vb = (np.array(t.column("vector").to_pylist()) for t in (a, b))
    assert np.allclose(va, vb, atol=1e-5) and np.allclose(np.linalg.norm(va, axis=1), 1, atol=1e-5)


def test_docstring_examples_run():
    import doctest

    import cope.join.config
    import cope.join.join

    for module in (cope.join.join, cope.join.config):
        assert doctest.testmod(module).failed == 0


def test_memory_limit_is_a_process_budget_and_duckdb_gets_the_rest(tmp_path):
    from cope.join.sql import MIN_DUCKDB_MEMORY, STREAM_RESERVE, connect, parse_size, process_rss

    assert parse_size("1.5GiB") == 3 << 29 and parse_size("2GB") == 2_000_000_000 and parse_size("512") == 512
    for bad in ("lots", "1.5 parsecs", "-1GB", ""):
        with pytest.raises(ValueError, match="not a memory size"):
            parse_size(bad)
    with pytest.raises(ValueError, match="too small"):
        JoinConfig(memory_limit="500MB")
    assert JoinConfig().memory_limit == "1.5GiB"
    before = process_rss()
    con = connect("4GiB", 1, tmp_path / "spill")
    share = parse_size(con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].replace(" ", ""))
    expected = (4 << 30) - before - STREAM_RESERVE
    assert abs(share - expected) < 128 << 20  # DuckDB shows it rounded to 0.1 GiB; the RSS moved a little
    small = connect("896MiB", 1, tmp_path / "spill2")  # less than the process holds + the reserve: the floor
    floor = parse_size(small.execute("SELECT current_setting('memory_limit')").fetchall()[0][0].replace(" ", ""))
    assert abs(floor - MIN_DUCKDB_MEMORY) < 1 << 20


def test_the_join_stays_within_its_memory_budget(tmp_path):
    """The promise of ``--memory-limit``: the join process's peak RSS (imports included) stays under the budget,
    here the smallest accepted, 896 MiB (DuckDB gets its 256 MiB floor), on 1.5M events. The peak is the process's
    own ``VmHWM``: ``ru_maxrss`` of a spawned child starts at its parent's peak (Linux keeps it across exec)."""
    import subprocess
    import sys

    if not os.path.isfile("/proc/self/status"):
        pytest.skip("needs /proc (Linux) to read the process's peak RSS")
    cat = write_synthetic_store(tmp_path / "db", n_products=20_000, n_lives=20, slices_per_live=50, dim=16)
    log = make_event_log(cat, n_events=1_500_000, n_users=150_000, seed=1)
    write_events(log.drop_columns(["true_item_id", "true_product_key"]), tmp_path / "events.parquet")
    del log, cat
    code = f"""
from pathlib import Path
from cope.join import join_behaviour
d = Path({str(tmp_path)!r})
r = join_behaviour(d / "events.parquet", d / "db", d / "joined", memory_limit="896MiB", threads=2,
                   content_links=False)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print("PEAK", hwm // 1024, r.report.events.valid)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    peak_mib, valid = (int(x) for x in out.stdout.split("PEAK", 1)[1].split())
    assert valid == 1_500_000
    print(f"join peak RSS {peak_mib} MiB")
    assert peak_mib < 896, f"peak RSS {peak_mib} MiB over the 896 MiB budget"
