"""Text in pictures: OCR of images, video frames and live snapshots, the ocr part of the vector, the cache, failures."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rapidocr_onnxruntime")

from cope.content import ExtractOptions  # noqa: E402
from cope.job import embed  # noqa: E402
from cope.store import ItemStore  # noqa: E402
from tests.conftest import TINY_MODEL  # noqa: E402


def _font(size: int):
    from PIL import ImageFont

    spec = importlib.util.find_spec("mplfonts")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("no CJK font: pip install mplfonts (in cope[dev])")
    path = Path(spec.submodule_search_locations[0]) / "fonts" / "NotoSansCJKsc-Regular.otf"
    if not path.is_file():
        pytest.skip(f"no CJK font at {path}")
    return ImageFont.truetype(str(path), size)


def cover(path: Path, lines: list[str], colour=(240, 238, 230), shape: str | None = "circle"):
    """A product picture with printed lines of text (and a drawn object)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (480, 360), colour)
    d = ImageDraw.Draw(im)
    font = _font(36)
    for i, line in enumerate(lines):
        d.text((30, 30 + 60 * i), line, font=font, fill=(20, 20, 20))
    if shape == "circle":
        d.ellipse((330, 220, 440, 330), fill=(200, 40, 40))
    im.save(path, quality=92)
    return im


WORDS = {"ball": ["红色皮球"], "sale": ["SUMMER", "SALE"], "mug": ["咖啡杯", "COFFEE"], "jeans": ["BLUE", "JEANS"],
         "tea": ["绿茶", "GREEN TEA"]}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ocr")
    rows = []
    for name, lines in WORDS.items():
        cover(root / f"{name}.jpg", lines)
        rows.append({"domain": "image", "image_id": name, "uri": f"{name}.jpg"})
    cover(root / "plain.jpg", [], shape="circle")  # no text: the fast path
    rows.append({"domain": "image", "image_id": "plain", "uri": "plain.jpg", "text": "a red ball on grey"})
    # a video with a caption burnt into every frame, and a live stream whose snapshots show a price card
    import av
    from PIL import ImageDraw

    frame = cover(root / "frame.jpg", ["限时特价"])
    with av.open(str(root / "clip.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 480, 360, "yuv420p"
        for i in range(16):
            im = frame.copy()
            ImageDraw.Draw(im).rectangle((30 + 5 * i, 200, 90 + 5 * i, 260), fill=(40, 90, 200))  # motion
            for packet in stream.encode(av.VideoFrame.from_image(im)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    rows.append({"domain": "video", "video_id": "clip", "uri": "clip.mp4", "title": "today"})
    cover(root / "snap0.jpg", ["PRICE 99"])
    cover(root / "snap1.jpg", ["PRICE 99"])
    rows.append({"domain": "live", "live_id": "show", "title": "evening show", "slice_seconds": 30,
                 "snapshots": [{"t": 1, "uri": "snap0.jpg"}, {"t": 12, "uri": "snap1.jpg"}],
                 "asr": [{"start": 0, "end": 20, "text": "this mug is on sale"}]})
    (root / "catalog.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


def test_words_are_read_in_order_and_a_blank_picture_gives_nothing(pictures: Path) -> None:
    from PIL import Image

    from cope.extractors.ocr import merge, read_picture

    options = ExtractOptions(ocr=True)
    mug = read_picture(Image.open(pictures / "mug.jpg"), options)
    assert [t for t, _ in mug] == ["咖啡杯", "COFFEE"] and all(s > 0.8 for _, s in mug)
    assert read_picture(Image.open(pictures / "plain.jpg"), options) == []
    merged = merge([[("SALE", 0.9)], [("sale", 0.8), ("NOW", 0.7)]])
    assert merged.text == "SALE\nNOW" and merged.confidence == pytest.approx(0.8)


def test_ocr_job_fills_the_column_searches_by_written_text_and_never_reads_twice(
    pictures: Path, tmp_path: Path, tiny_config_dir: Path
) -> None:
    from cope.api import open_db

    db = tmp_path / "db"
    summary = embed(pictures / "catalog.jsonl", db, model=f"open_clip:{TINY_MODEL}", extract=ExtractOptions(ocr=True),
                    progress=False)
    assert summary.failed == 0 and summary.done == 8 and summary.ocr_read >= 6
    rows = {r["item_id"]: r for r in ItemStore.open(db).read(
        ["item_id", "ocr_text", "ocr_confidence", "has_ocr", "ocr_vector", "has_image", "text"]).to_pylist()}
    assert rows["image:ball"]["ocr_text"] == "红色皮球" and rows["image:ball"]["ocr_confidence"] > 0.8
    assert rows["image:sale"]["ocr_text"] == "SUMMER\nSALE"
    assert rows["image:plain"]["ocr_text"] is None and not rows["image:plain"]["has_ocr"]
    assert rows["video:clip"]["ocr_text"] == "限时特价"  # read in 3 frames, kept once
    live = [r for k, r in rows.items() if k.startswith("live:")]
    assert len(live) == 1 and live[0]["ocr_text"].replace(" ", "") == "PRICE99"  # read once from 2 snapshots
    # the spec says OCR is on, with its weight: another weight is another table
    assert ";ocr=w0.2," in ItemStore.open(db).model_tag

    # a text query finds the picture whose printed words match (the tiny model embeds equal strings equally)
    found = open_db(db).search("红色皮球", k=6, domains=["image"])
    assert found.ids[0] == "image:ball"
    assert open_db(db).search("SUMMER\nSALE", k=6, domains=["image"]).ids[0] == "image:sale"

    # a second table (other fusion weights) in the same database reads no picture again
    again = embed(pictures / "catalog.jsonl", db, model=f"open_clip:{TINY_MODEL}", table="weighted",
                  extract=ExtractOptions(ocr=True), fusion={"image_weight": 0.2, "text_weight": 0.3, "ocr_weight": 1},
                  progress=False)
    assert again.done == 8 and again.ocr_read == 0 and again.ocr_cached >= 6
    # and the same table again is skipped whole
    assert embed(pictures / "catalog.jsonl", db, model=f"open_clip:{TINY_MODEL}", extract=ExtractOptions(ocr=True),
                 progress=False).skipped == 8


def test_live_slices_join_ocr_text_with_their_speech() -> None:
    from cope.content import Content
    from cope.embedding import ocr_part_text

    c = Content(item_id="live:s:0-30", domain="live", source_id="s", record_key="live:s", text="show",
                speech="this mug is on sale", ocr_text="PRICE 99")
    assert ocr_part_text(c) == "PRICE 99\nthis mug is on sale"
    assert ocr_part_text(Content(item_id="i", domain="image", source_id="i", record_key="image:i", text="x")) == ""


def test_an_ocr_failure_keeps_the_item_and_is_recorded(pictures: Path, tmp_path: Path, tiny_config_dir: Path,
                                                       monkeypatch) -> None:
    import cope.extractors.ocr as ocr

    real = ocr.read_picture

    def flaky(image, options):
        if image.getpixel((5, 5)) == (250, 250, 250):
            raise RuntimeError("engine crashed")
        return real(image, options)

    cover(tmp_path / "bad.jpg", ["BROKEN"], colour=(250, 250, 250))
    cover(tmp_path / "good.jpg", ["GOOD"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"domain": "image", "image_id": "bad", "uri": "bad.jpg", "text": "caption"}) + "\n"
                        + json.dumps({"domain": "image", "image_id": "good", "uri": "good.jpg"}) + "\n")
    monkeypatch.setattr(ocr, "read_picture", flaky)
    db = tmp_path / "db"
    summary = embed(manifest, db, model=f"open_clip:{TINY_MODEL}", extract=ExtractOptions(ocr=True), progress=False)
    assert summary.done == 2 and summary.ocr_failed == 1 and summary.exit_code == 3
    store = ItemStore.open(db)
    rows = {r["item_id"]: r for r in store.read(["item_id", "has_image", "has_text", "has_ocr", "vector"]).to_pylist()}
    assert rows["image:bad"]["has_image"] and rows["image:bad"]["has_text"] and not rows["image:bad"]["has_ocr"]
    assert np.isfinite(rows["image:bad"]["vector"]).all() and rows["image:good"]["has_ocr"]
    errors = {e["record_key"]: e for e in store.errors().to_pylist()}
    assert errors["image:bad"]["stage"] == "ocr" and "engine crashed" in errors["image:bad"]["reason"]


def test_missing_engine_names_the_extra(monkeypatch) -> None:
    import builtins

    from cope.errors import MissingExtraError
    from cope.extractors.ocr import check_available

    real_import = builtins.__import__

    def no_ocr(name, *a, **kw):
        if name.startswith("rapidocr_onnxruntime"):
            raise ImportError("No module named 'rapidocr_onnxruntime'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ocr)
    with pytest.raises(MissingExtraError, match=r"cope\[ocr\]"):
        check_available()


def test_heads_table_with_ocr_projects_the_ocr_part(pictures: Path, tmp_path: Path, tiny_config_dir: Path) -> None:
    from cope.training import fit

    base = tmp_path / "db"
    rows = [json.loads(line) for line in (pictures / "catalog.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r["product_key"] = f"k{i % 3}"
    manifest = pictures / "labelled.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    options = {"model": f"open_clip:{TINY_MODEL}", "extract": ExtractOptions(ocr=True), "progress": False}
    embed(manifest, base, **options)
    ckpt = fit(base, epochs=2, dim=8, batch_products=2, val_fraction=0, test_fraction=0, seed=0).save(
        tmp_path / "heads")
    summary = embed(manifest, base, table="items_cope", heads=str(ckpt), **options)
    assert summary.done == 8 and summary.failed == 0
    got = ItemStore.open(base, "items_cope").read(["item_id", "ocr_vector", "has_ocr"]).to_pylist()
    assert all(len(r["ocr_vector"]) == 8 for r in got) and any(r["has_ocr"] for r in got)


def test_paragraphs_of_body_text_are_left_out_unless_asked_for(tmp_path: Path) -> None:
    """A spec sheet: a short title, then a paragraph. By default only the title is kept; ``ocr_body_text`` keeps
    the paragraph too, from the cache (the choice is applied after it, so nothing is read again)."""
    from PIL import Image, ImageDraw

    from cope.extractors.ocr import read_lines

    im = Image.new("RGB", (640, 420), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.text((30, 20), "LINEN SHIRT", font=_font(48), fill=(10, 10, 10))
    body = ["Made from pure washed linen fabric", "Breathable and soft for warm summer days",
            "Machine wash cold and hang to dry", "Relaxed fit with two chest pockets"]
    for i, line in enumerate(body):
        d.text((30, 120 + 50 * i), line, font=_font(26), fill=(30, 30, 30))

    class DictCache(dict):
        def get_many(self, keys):
            return {k: self[k] for k in keys if k in self}

        def put_many(self, results):
            self.update(results)

    cache, stats = DictCache(), {}
    headline = read_lines([im], ExtractOptions(ocr=True), cache, stats)
    assert headline.text.replace(" ", "") == "LINENSHIRT" and stats["read"] == 1  # the engine may drop the space
    everything = read_lines([im], ExtractOptions(ocr=True, ocr_body_text=True), cache, stats)
    assert stats["read"] == 1 and stats["cached"] == 1  # the same picture: not read again
    lines = everything.text.splitlines()
    assert lines[0] == headline.text and len(lines) == 5 and "linen" in lines[1].lower()
