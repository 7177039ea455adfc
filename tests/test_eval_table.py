from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from cope.cli import main
from cope.eval_table import evaluate_table
from cope.store import ItemStore
from cope.store.item_store import now_utc


def _write(db: Path, rows: list[tuple[str, str, str | None, list[float]]]) -> None:
    store = ItemStore.open(db)
    store.ensure_table("hand/made;fusion=image:0.5,text:0.5", 2)
    data = []
    for item_id, domain, key, vec in rows:
        v = np.asarray(vec, np.float32) / np.linalg.norm(vec)
        data.append({"item_id": item_id, "record_key": item_id, "domain": domain, "source_id": item_id,
                     "vector": v, "image_vector": v, "text_vector": v[::-1].copy(), "has_image": True,
                     "has_text": True, "n_images": 1, "content_hash": "h", "record_hash": "h", "model_tag": "hand/made",
                     "metadata": json.dumps({"product_key": key} if key else {}), "updated_at": now_utc()})
    store.upsert(pa.Table.from_pylist(data, schema=store.table.schema))


def test_known_ranks_per_direction(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    _write(db, [
        ("product:a", "product", "A", [1, 0]), ("product:b", "product", "B", [0, 1]),
        ("video:a", "video", "A", [0.9, 0.1]),   # nearest product: a (rank 1)
        ("video:b", "video", "B", [1, 0.05]),    # nearest product: a, so b is rank 2
        ("video:x", "video", None, [0, 1]),      # no key: left out
    ])
    report = evaluate_table(db)
    assert report.rows == 5 and report.rows_without_key == 1
    v2p = report.results["video->product"]
    assert v2p.ranks == [1, 2] and v2p.recall[1] == 0.5 and v2p.median_rank == 1.5
    p2v = report.results["product->video"]  # a: video:b (0.999) beats video:a (0.994); b: video:a (0.11) > video:b
    assert p2v.ranks == [2, 2] and p2v.n_gallery == 2  # the keyless video is not in the gallery
    assert main(["eval", "--db", str(db), "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "video->product" in out and "0.500" in out
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["results"]["video->product"]["recall"]["1"] == 0.5 and saved["key"] == "product_key"
    by_modality = evaluate_table(db, by="modality")
    assert set(by_modality.results) == {"image->text", "text->image"}
