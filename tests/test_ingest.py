"""Input shapes and column mapping (cope.manifest): aliases, --column, list cells, media roots, JSON arrays, folders,
globs; one usage error for what no row can fix; the shared catalogs embed with the flags docs/ingest.md shows."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import cope.embed_core
import cope.job
from cope.cli import main
from cope.errors import InputNotFoundError, UsageError
from cope.manifest import (
    ALIASES,
    ManifestOptions,
    check_inputs,
    count_rows,
    expand_inputs,
    parse_columns,
    plan_columns,
    read_manifest,
    split_list,
)
from cope.store import ItemStore
from tests.conftest import TINY_MODEL
from tests.media import make_video, save_image

# The job reads manifests through cope/embed_core.py and cope/job.py: tests that run a whole job with a column
# mapping, a media root or a folder need them to pass the run's ManifestOptions on (the issue-13 hand-off).
WIRED = ("manifest_options" in inspect.getsource(cope.embed_core)
         and "count_rows" in inspect.getsource(cope.job))
wired = pytest.mark.skipif(not WIRED, reason="cope.embed_core/cope.job do not pass ManifestOptions to the reader yet")


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- column plans -----------------------------------------------------------------------------------------------------
def test_alias_lists_never_give_one_column_two_fields() -> None:
    for domain, fields in ALIASES.items():
        seen: dict[str, str] = {}
        for name, aliases in fields.items():
            for alias in aliases:
                assert alias not in seen, f"{domain}: {alias!r} is an alias of {seen[alias]!r} and {name!r}"
                seen[alias] = name


def test_aliases_map_a_plain_csv_without_flags(tmp_path: Path) -> None:
    save_image(tmp_path / "a.jpg", fmt="JPEG")
    path = _csv(tmp_path / "catalog.csv", "sku,name,desc,image_path\nS1,Red ball,A ball,a.jpg|b.jpg\n")
    (row,) = read_manifest(path, "product")
    rec = row.record
    assert (rec.item_id, rec.title, rec.description) == ("S1", "Red ball", "A ball")
    assert rec.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")] and rec.metadata == {}


def test_a_missing_required_column_is_one_message_with_the_fix(tmp_path: Path) -> None:
    path = _csv(tmp_path / "catalog.csv", "sku,name,desc,image_path\nS1,Red ball,A ball,a.jpg\n")
    with pytest.raises(UsageError) as err:
        check_inputs([path], ManifestOptions(default_domain="image"))
    assert str(err.value) == (f"no 'image_id' column in {path} (columns: sku, name, desc, image_path); "
                              "map one: --column image_id=sku")
    check_inputs([path], ManifestOptions(default_domain="image", columns={"image_id": "sku"}))
    (row,) = read_manifest(path, "image", columns={"image_id": "sku"})
    assert (row.record.image_id, row.record.text, row.record.metadata) == ("S1", "A ball", {"name": "Red ball"})


def test_two_aliases_of_one_field_are_never_guessed_between(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", [{"id": "a", "sku": "A1", "title": "t"}])
    with pytest.raises(UsageError, match=r"'id' and 'sku' in .* could each be 'item_id' \(product\); map one: "
                       r"--column item_id=id or --column item_id=sku$"):
        check_inputs([path], ManifestOptions(default_domain="product"))
    (row,) = read_manifest(path, "product")
    assert row.record is None and "could each be 'item_id'" in row.error
    (row,) = read_manifest(path, "product", columns={"item_id": "sku"})  # an explicit mapping settles it
    assert row.record.item_id == "A1" and row.record.metadata == {"id": "a"}


def test_explicit_mapping_wins_and_the_displaced_column_is_kept(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "m.jsonl", [{"item_id": "1", "title": "internal code", "name": "Red ball"}])
    (row,) = read_manifest(path, "product", columns={"title": "name"})
    assert row.record.title == "Red ball" and row.record.metadata == {"title": "internal code"}
    (row,) = read_manifest(path, "product", columns={"image.text": "name"})  # another domain's mapping: ignored
    assert row.record.title == "internal code"


def test_column_specs_are_checked() -> None:
    assert parse_columns(["item_id=sku", "product.title = Name"]) == {"item_id": "sku", "product.title": "Name"}
    with pytest.raises(UsageError, match="expected FIELD=NAME"):
        parse_columns(["item_id"])
    with pytest.raises(UsageError, match="unknown field 'titel'.*fields: domain, item_id, title"):
        parse_columns(["titel=name"])
    with pytest.raises(UsageError, match="unknown domain 'podcast'"):
        parse_columns(["podcast.title=name"])
    assert plan_columns("image", ["ID", "Image URL", "Caption"]).rename == {"ID": "image_id", "Image URL": "uri",
                                                                             "Caption": "text"}


def test_a_mapping_to_no_column_and_a_missing_domain_are_usage_errors(tmp_path: Path) -> None:
    path = _csv(tmp_path / "m.csv", "id,path\na,a.jpg\n")
    with pytest.raises(UsageError, match=r"no 'domain' column in .*m.csv \(columns: id, path\); pass --domain"):
        check_inputs([path])
    with pytest.raises(UsageError, match=r"--column text=caption: no column 'caption' in the inputs"):
        check_inputs([path], ManifestOptions(default_domain="image", columns={"text": "caption"}))


# -- values -----------------------------------------------------------------------------------------------------------
def test_list_cells_as_json_or_delimited(tmp_path: Path) -> None:
    assert split_list('["a.jpg", "b.jpg"]') == ["a.jpg", "b.jpg"]
    assert split_list("a.jpg | b.jpg") == ["a.jpg", "b.jpg"] == split_list("a.jpg;b.jpg") == split_list("a.jpg,b.jpg")
    assert split_list("https://x/a.jpg,https://x/b.jpg") == ["https://x/a.jpg", "https://x/b.jpg"]
    assert split_list("shoes, red.jpg") == ["shoes, red.jpg"]  # not every part is a file: one path
    path = _jsonl(tmp_path / "m.jsonl", [{"item_id": "p", "images": "a.jpg;b.jpg"},
                                         {"item_id": "q", "images": '["c.jpg"]'}])
    first, second = read_manifest(path, "product")
    assert first.record.images == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert second.record.images == [str(tmp_path / "c.jpg")]


def test_media_root_and_the_hint_when_paths_are_relative_to_another_folder(tmp_path: Path) -> None:
    (tmp_path / "media" / "img").mkdir(parents=True)
    save_image(tmp_path / "media" / "img" / "a.png")
    sub = tmp_path / "media" / "lists"
    sub.mkdir()
    path = _jsonl(sub / "m.jsonl", [{"id": "a", "path": "img/a.png", "caption": "red"}])
    with pytest.raises(UsageError, match=re.escape(f"is under {tmp_path / 'media'}: pass --media-root "
                                                   f"{tmp_path / 'media'}")):
        check_inputs([path], ManifestOptions(default_domain="image"))
    options = ManifestOptions(default_domain="image", media_root=str(tmp_path / "media"))
    check_inputs([path], options)
    (row,) = read_manifest(path, options=options)
    assert row.record.uri == str(tmp_path / "media" / "img" / "a.png")
    (row,) = read_manifest(path, "image", media_root="s3://bucket/catalog/")
    assert row.record.uri == "s3://bucket/catalog/img/a.png"


def test_parquet_and_tsv_with_aliases(tmp_path: Path) -> None:
    pq.write_table(pa.table({"vid": ["v1", "v2"], "video_url": ["https://x/v1.mp4", None], "name": ["a", "b"],
                             "frames": [102, 50]}), tmp_path / "m.parquet")
    rows = list(read_manifest(tmp_path / "m.parquet", "video"))
    assert (rows[0].record.video_id, rows[0].record.uri, rows[0].record.title) == ("v1", "https://x/v1.mp4", "a")
    assert rows[0].record.metadata == {"frames": 102}  # not num_frames: 'frames' is no alias
    assert rows[1].record is None and rows[1].where.endswith("m.parquet:2") and "field 'uri'" in rows[1].error
    tsv = _csv(tmp_path / "m.tsv", "live_id\tname\tvideo\nl1\tshow\trec.mp4\n")
    (row,) = read_manifest(tsv, "live")
    assert row.record.recording == str(tmp_path / "rec.mp4") and row.record.title == "show"


def test_json_arrays_stream_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('[\n  {"id": "a", "url": "https://x/a.jpg"},\n  {"id": "b",\n   "url": "b.jpg"},\n'
                    '  {"id": ["c"], "url": "c.jpg"},\n  17,\n  {"id": "e", "url": "e.jpg"}\n]\n')
    rows = list(read_manifest(path, "image"))
    assert [r.line for r in rows] == [2, 3, 5, 6, 7]
    assert [r.record.image_id for r in rows if r.record] == ["a", "b", "e"]
    assert "field 'image_id'" in rows[2].error and rows[2].where == f"{path}:5"
    assert rows[3].error == "a row must be a JSON object"
    assert count_rows([path]) is None
    broken = tmp_path / "broken.json"
    broken.write_text('[{"id": "a", "url": "a.jpg"},\n {"id": "b", "url": ')
    rows = list(read_manifest(broken, "image"))
    assert rows[0].record is not None and rows[1].line == 2 and "invalid JSON" in rows[1].error
    lines = tmp_path / "lines.json"  # a .json file of JSON lines reads too
    lines.write_text('{"id": "a", "url": "a.jpg"}\n{"id": "b", "url": "b.jpg"}\n')
    assert [r.record.image_id for r in read_manifest(lines, "image")] == ["a", "b"]


def test_json_array_rows_larger_than_a_read_chunk(tmp_path: Path) -> None:
    text = "x" * (3 << 20)
    path = tmp_path / "big.json"
    path.write_text(json.dumps([{"id": "a", "url": "a.jpg", "caption": text}, {"id": "b", "url": "b.jpg"}]))
    rows = list(read_manifest(path, "image"))
    assert [r.record.image_id for r in rows] == ["a", "b"] and len(rows[0].record.text) == len(text)


# -- folders and globs ------------------------------------------------------------------------------------------------
def _media_folder(root: Path) -> Path:
    (root / "shoes").mkdir(parents=True)
    save_image(root / "shoes" / "red.jpg", fmt="JPEG")
    save_image(root / "b.png")
    (root / "clips").mkdir()
    make_video(root / "clips" / "v.mp4")
    (root / ".hidden.png").write_bytes(b"")
    (root / "notes.txt").write_text("not media")
    return root


def test_a_folder_of_media_is_a_catalog(tmp_path: Path) -> None:
    folder = _media_folder(tmp_path / "media")
    assert expand_inputs([folder]) == [folder]
    rows = list(read_manifest(folder))
    assert [(r.record.domain, r.record.source_id) for r in rows] == [("image", "b.png"), ("video", "clips/v.mp4"),
                                                                    ("image", "shoes/red.jpg")]
    assert rows[2].where == str(folder / "shoes" / "red.jpg") and rows[2].record.uri == str(folder / "shoes" / "red.jpg")
    products = list(read_manifest(folder, "product"))  # --domain settles what pictures are
    assert [(r.record.domain, r.record.item_id) for r in products] == [("product", "b.png"), ("product", "shoes/red.jpg")]
    assert [r.record.live_id for r in read_manifest(folder, "live")] == ["clips/v.mp4"]
    check_inputs([folder])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no manifest .* and no pictures or videos"):
        check_inputs([tmp_path / "empty"])


def test_folders_with_manifests_and_globs(tmp_path: Path) -> None:
    _jsonl(tmp_path / "a.jsonl", [{"domain": "product", "item_id": "a", "title": "t"}])
    _csv(tmp_path / "b.csv", "domain,item_id,title\nproduct,b,t\n")
    save_image(tmp_path / "loose.png")
    assert expand_inputs([tmp_path]) == [tmp_path / "a.jsonl", tmp_path / "b.csv"]
    assert expand_inputs([str(tmp_path / "*.csv"), tmp_path / "b.csv"]) == [tmp_path / "b.csv"]
    assert [r.record.item_id for r in read_manifest(tmp_path)] == ["a", "b"]
    with pytest.raises(InputNotFoundError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.parquet")])
    with pytest.raises(InputNotFoundError, match="manifest not found"):
        expand_inputs([tmp_path / "nope.jsonl"])


# -- whole runs -------------------------------------------------------------------------------------------------------
def _embed(args: list[str], db: Path) -> int:
    return main(["-q", "embed", *args, "--db", str(db), "--model", f"open_clip:{TINY_MODEL}", "--workers", "1"])


def _ids(db: Path) -> list[str]:
    return sorted(ItemStore.open(db).read(["item_id"]).column("item_id").to_pylist())


def test_usage_errors_come_before_any_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _csv(tmp_path / "catalog.csv", "sku,name,desc,image_path\nS1,Red ball,A ball,a.jpg\n")
    code = main(["embed", str(path), "--db", str(tmp_path / "db"), "--domain", "image", "--model", "no-such-model"])
    err = capsys.readouterr().err
    assert code == 2 and "map one: --column image_id=sku" in err and "no-such-model" not in err
    assert main(["embed", str(path), "--db", str(tmp_path / "db"), "--column", "titel=name"]) == 2
    assert "unknown field 'titel'" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_a_json_array_embeds(tiny_config_dir, tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"domain": "image", "image_id": "a", "uri": "a.png", "text": "red"},
                                {"domain": "product", "item_id": "p", "title": "ball", "images": ["a.png"]}]))
    assert _embed([str(path)], tmp_path / "db") == 0
    assert _ids(tmp_path / "db") == ["image:a", "product:p"]


@wired
def test_a_csv_embeds_with_a_mapping(tiny_config_dir, tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    save_image(tmp_path / "img" / "a.jpg", fmt="JPEG")
    save_image(tmp_path / "img" / "b.png")
    (tmp_path / "lists").mkdir()
    path = _csv(tmp_path / "lists" / "catalog.csv",
                "sku,name,desc,image_path\nS1,Red ball,A ball,img/a.jpg\nS2,Blue box,,img/b.png\n")
    db = tmp_path / "db"
    assert _embed([str(path), "--domain", "image", "--column", "image_id=sku", "--media-root", str(tmp_path)],
                  db) == 0
    assert _ids(db) == ["image:S1", "image:S2"]
    assert _embed([str(path), "--domain", "product", "--media-root", str(tmp_path)], db) == 0  # aliases suffice
    assert _ids(db) == ["image:S1", "image:S2", "product:S1", "product:S2"]


@wired
def test_a_folder_embeds(tiny_config_dir, tmp_path: Path) -> None:
    folder = _media_folder(tmp_path / "media")
    db = tmp_path / "db"
    assert _embed([str(folder)], db) == 0
    assert _ids(db) == ["image:b.png", "image:shoes/red.jpg", "video:clips/v.mp4"]
    save_image(folder / "new.png", size=(30, 30))
    import cope

    summary = cope.embed([folder], db, model=f"open_clip:{TINY_MODEL}", progress=False)
    assert (summary.done, summary.skipped) == (1, 3)


@wired
@pytest.mark.shared_data
def test_shared_catalogs_embed_with_nothing_rejected(tiny_config_dir, shared_data: Path, tmp_path: Path) -> None:
    import cope

    runs = [
        (["sample_images/manifest.jsonl"], {"default_domain": "image", "media_root": str(shared_data)}, 16),
        (["products_magento/manifest.jsonl"], {"default_domain": "product", "columns": {"item_id": "id"}}, 189),
        (["videos/manifest.jsonl"], {"default_domain": "video", "media_root": str(shared_data)}, 1),
    ]
    for files, options, n in runs:
        check_inputs([shared_data / f for f in files], ManifestOptions(**options))
        summary = cope.embed([shared_data / f for f in files], tmp_path / "db", model=f"open_clip:{TINY_MODEL}",
                             progress=False, **options)
        assert (summary.done, summary.failed, summary.invalid) == (n, 0, 0), summary.errors
    images = shared_data / "products_magento" / "images.jsonl"  # 482 pictures: the rows only, not a run
    rows = list(read_manifest(images, "image", media_root=shared_data))
    assert len(rows) == 482 and all(r.record is not None and Path(r.record.uri).is_file() for r in rows)


@pytest.mark.shared_data
def test_the_duckdb_example_of_docs_ingest(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("duckdb")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ingest.md").read_text()
    section = doc.split("## A catalog in two tables", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'data = "../shared/data"' in code
    monkeypatch.chdir(tmp_path)
    exec(code.replace('"../shared/data"', repr(str(shared_data))), {})
    out = tmp_path / "magento_products.jsonl"
    check_inputs([out], ManifestOptions(media_root=str(shared_data)))
    rows = list(read_manifest(out, media_root=shared_data))
    assert len(rows) == 189 and all(r.record is not None for r in rows)
    by_id = {r.record.item_id: r.record for r in rows}
    hoodie = by_id["mag_MH01"]
    assert [Path(p).name for p in hoodie.images] == ["mh01-gray_main.jpg", "mh01-gray_back.jpg",
                                                     "mh01-black_main.jpg"]  # the manifest's order: main first
    assert hoodie.attributes["material"] == "Wool" and all(Path(p).is_file() for p in hoodie.images)


def test_reading_commands_and_failed_embeds_create_no_database_folder(tmp_path: Path, capsys) -> None:
    from cope.cli import main

    nope = tmp_path / "nope.lancedb"
    for argv in (["stats", "--db", str(nope)], ["errors", "--db", str(nope)], ["check", "--db", str(nope)],
                 ["embed", str(tmp_path / "missing.jsonl"), "--db", str(nope)]):
        main(argv)
        assert not nope.exists(), argv
    capsys.readouterr()
