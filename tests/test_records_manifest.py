from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cope.manifest import read_manifest
from cope.records import RECORD_ADAPTER, LiveStream, ProductPage


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_good_and_bad_rows_reported_with_line_and_field(tmp_path: Path) -> None:
    manifest = _write_jsonl(tmp_path / "m.jsonl", [
        {"domain": "product", "item_id": "a", "title": "Red bag", "images": ["img/a.jpg"], "category": "bags"},
        {"domain": "podcast", "id": "x"},
        "{not json",
        {"domain": "video", "video_id": "v1"},
        {"domain": "live", "live_id": "l1", "snapshots": [{"t": -1, "uri": "s.jpg"}]},
        {"item_id": "no-domain", "title": "t"},
        {"domain": "image", "image_id": "i1", "uri": "x.png", "text": "caption"},
    ])
    rows = list(read_manifest(manifest))
    assert [r.line for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    good = rows[0].record
    assert isinstance(good, ProductPage) and good.metadata == {"category": "bags"}
    assert good.images == [str(tmp_path / "img" / "a.jpg")]  # relative to the manifest
    assert "unknown domain 'podcast'" in rows[1].error and "product, image, video, live" in rows[1].error
    assert "invalid JSON" in rows[2].error
    assert "field 'uri'" in rows[3].error
    assert "snapshots.0.t" in rows[4].error
    assert "missing 'domain'" in rows[5].error
    assert rows[6].record is not None and rows[6].where.endswith("m.jsonl:7")


def test_default_domain_applies_to_rows_without_one(tmp_path: Path) -> None:
    manifest = _write_jsonl(tmp_path / "m.jsonl", [{"image_id": "i", "uri": "/abs/x.png"}])
    (row,) = read_manifest(manifest, default_domain="image")
    assert row.record is not None and row.record.uri == "/abs/x.png"


def test_csv_with_json_cells_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "domain,item_id,title,images,attributes\n"
        'product,p1,Shoe,a.jpg;b.jpg,"{""size"": ""42""}"\n'
        "product,,Nameless,,\n"
        'product,p3,Bag,"[""c.jpg""]",\n'
    )
    rows = list(read_manifest(path))
    assert rows[0].record.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert rows[0].record.attributes == {"size": "42"}
    assert rows[1].line == 3 and "item_id" in rows[1].error
    assert rows[2].record.images == [str(tmp_path / "c.jpg")]


def test_parquet_rows(tmp_path: Path) -> None:
    table = pa.table({"domain": ["video", "video"], "video_id": ["v1", None], "uri": ["v.mp4", "w.mp4"],
                      "title": ["t", "u"]})
    pq.write_table(table, tmp_path / "m.parquet")
    rows = list(read_manifest(tmp_path / "m.parquet"))
    assert rows[0].record.video_id == "v1"
    assert rows[1].line == 2 and "video_id" in rows[1].error


def test_unsupported_format_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "m.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported manifest format"):
        list(read_manifest(tmp_path / "m.xml"))
    with pytest.raises(FileNotFoundError):
        list(read_manifest(tmp_path / "nope.jsonl"))


def test_live_stream_needs_one_source_and_slices() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LiveStream(live_id="l", snapshots=[{"t": 1, "uri": "a"}], recording="r.mp4")
    live = LiveStream(live_id="l", recording="r.mp4", slice_seconds=30,
                      asr=[{"start": 25, "end": 35, "text": "hello"}, {"start": 70, "end": 75, "text": "bye"}])
    assert live.slice_bounds(31) == (30, 60)
    assert live.asr_text(30, 60) == "hello" and live.asr_text(60, 90) == "bye"


def test_product_without_content_is_refused() -> None:
    with pytest.raises(ValueError, match="needs a title"):
        RECORD_ADAPTER.validate_python({"domain": "product", "item_id": "x"})
