"""Hostile inputs (issue 14 items 3, 4, 6, 7): each test reproduces a failure that used to hang, crash, blow up memory
or write a silently wrong record, and checks that it is now refused with a clear reason.

Odd paths (a FIFO, a directory, a symlink loop, /dev/zero) must neither hang nor crash hashing: the record fails in
extraction with its reason and the job carries on. Texts are capped before tokenizing. Ids are scalars, live-stream
times finite and bounded, slices at least 1 s long, frames per record bounded, fusion weights finite. Tampered heads,
pickles and impossible ``--dim`` values are refused by the CLI with one line and exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from cope.content import ExtractOptions
from cope.errors import ExtractionError, UsageError
from cope.hashing import file_fingerprint, open_media, record_hash, stat_media
from cope.records import (
    MAX_STREAM_SECONDS,
    RECORD_ADAPTER,
    ImageRecord,
    LiveStream,
    ProductPage,
    VideoRecord,
    slice_item_id,
)
from tests.conftest import TINY_MODEL
from tests.media import make_video, save_image


@pytest.fixture
def odd_paths(tmp_path: Path) -> dict[str, Path]:
    """A FIFO nobody writes to, a directory, a symlink loop, a broken symlink and a missing file."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("needs POSIX FIFOs")
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    broken = tmp_path / "broken.jpg"
    os.symlink(tmp_path / "gone.jpg", broken)
    return {"fifo": fifo, "dir": folder, "loop": loop, "broken": broken, "missing": tmp_path / "nowhere.jpg"}


REASONS = {"fifo": "not a regular file (a FIFO)", "dir": "not a regular file (a directory)", "loop": "symlink loop",
           "broken": "file not found (broken symlink)", "missing": "file not found"}


# -- item 4: odd paths ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_hashing_never_blocks_or_raises_on_odd_paths(odd_paths: dict[str, Path]) -> None:
    for name, path in odd_paths.items():
        assert file_fingerprint(str(path)) in ("missing", "unreadable"), name
    if os.path.exists("/dev/zero"):  # endless: reading it whole never finished
        assert file_fingerprint("/dev/zero") == "unreadable"
    assert file_fingerprint("nul\0byte.jpg") == "missing"
    with pytest.raises(ExtractionError, match="invalid path"):
        stat_media("nul\0byte.jpg")
    record = ProductPage(item_id="p", title="t", images=[str(p) for p in odd_paths.values()])
    assert len(record_hash(record)) == 32


@pytest.mark.timeout(30)
def test_odd_paths_are_refused_with_their_reason(odd_paths: dict[str, Path], tmp_path: Path) -> None:
    from cope.extractors.image import load_image

    for name, path in odd_paths.items():
        reason = re.escape(f"{path}: {REASONS[name]}")
        with pytest.raises(ExtractionError, match=f"^{reason}$"):
            stat_media(str(path))
        with pytest.raises(ExtractionError, match=reason):
            load_image(str(path))
        with pytest.raises(ExtractionError, match=reason):
            open_media(path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(ExtractionError, match=r"not a regular file \(a character device\)"):
            load_image("/dev/zero")
    # the size cap
    good = save_image(tmp_path / "good.png")
    size = good.stat().st_size
    assert load_image(str(good), max_bytes=size).size == (64, 48)
    with pytest.raises(ExtractionError, match=f"larger than {size - 1} bytes"):
        load_image(str(good), max_bytes=size - 1)
    with open_media(good) as f:  # a regular file opens, and reads normally
        assert len(f.read()) == size


@pytest.mark.timeout(60)
def test_videos_and_recordings_on_odd_paths_fail_fast(odd_paths: dict[str, Path], tmp_path: Path) -> None:
    from cope.extractors import extract

    for name in ("fifo", "dir", "loop"):
        uri = str(odd_paths[name])
        with pytest.raises(ExtractionError, match="not a regular file|symlink loop"):
            extract(VideoRecord(video_id="v", uri=uri))
        with pytest.raises(ExtractionError, match="not a regular file|symlink loop"):  # probed before: would block
            extract(LiveStream(live_id="l", recording=uri))
        with pytest.raises(ExtractionError, match="not a regular file|symlink loop"):
            extract(LiveStream(live_id="l", snapshots=[{"t": 1, "uri": uri}]))
    video = make_video(tmp_path / "v.mp4")
    with pytest.raises(ExtractionError, match="larger than 10 bytes"):
        extract(VideoRecord(video_id="v", uri=str(video)), ExtractOptions(max_video_bytes=10))


@pytest.mark.timeout(60)
def test_job_carries_on_past_a_fifo_a_directory_and_a_symlink_loop(
    tiny_encoder, odd_paths: dict[str, Path], tmp_path: Path
) -> None:
    from cope.job import embed
    from cope.store import ItemStore

    save_image(tmp_path / "good.jpg")
    rows = [{"domain": "image", "image_id": "good", "uri": "good.jpg"}]
    rows += [{"domain": "image", "image_id": name, "uri": odd_paths[name].name} for name in ("fifo", "dir", "loop")]
    rows.append({"domain": "product", "item_id": "page", "title": "red ball", "images": ["pipe.jpg"]})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = tmp_path / "db"
    summary = embed(manifest, db, encoder=tiny_encoder, progress=False)
    assert (summary.done, summary.failed, summary.invalid) == (1, 4, 0)
    store = ItemStore.open(db)
    assert store.read(["item_id"]).column("item_id").to_pylist() == ["image:good"]
    reasons = {e["record_key"]: e["reason"] for e in store.errors().to_pylist()}
    assert "not a regular file (a FIFO)" in reasons["image:fifo"]
    assert "not a regular file (a directory)" in reasons["image:dir"]
    assert "symlink loop" in reasons["image:loop"]
    assert "not a regular file (a FIFO)" in reasons["product:page"]
    again = embed(manifest, db, encoder=tiny_encoder, progress=False)  # a re-run skips the good row, retries the rest
    assert (again.done, again.skipped, again.failed) == (0, 1, 4)


# -- item 3: one long text -----------------------------------------------------------------------------------------
class _SpyTokenizer:
    def __init__(self, inner) -> None:
        self.inner, self.lengths = inner, []
        self.context_length = inner.context_length

    def __call__(self, texts):
        self.lengths += [len(t) for t in texts]
        return self.inner(texts)


def test_open_clip_caps_a_huge_title_before_tokenizing(tiny_encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    from cope.encoders.open_clip_encoder import TEXT_CHARS_PER_TOKEN, cap_text

    cap = tiny_encoder.max_text_chars
    assert cap == TEXT_CHARS_PER_TOKEN * tiny_encoder.context_length == 40 * 32
    spy = _SpyTokenizer(tiny_encoder.tokenizer)
    monkeypatch.setattr(tiny_encoder, "tokenizer", spy)
    title = "red cotton hoodie with zip " * 150_000  # 4 MB
    vec = tiny_encoder.encode_texts([title, "short"])
    assert spy.lengths == [cap, 5] and np.isfinite(vec).all()
    # the tokens the model reads are the same with and without the cut (checked on a 20 kB text)
    long = title[:20_000]
    assert (spy.inner([long]) == spy.inner([cap_text(long, cap)])).all()
    np.testing.assert_allclose(tiny_encoder.encode_texts([long]), vec[:1], atol=1e-6)


def test_default_model_caps_text_for_use() -> None:
    from cope.encoders.default_model import MAX_TEXT_CHARS, DefaultEncoder

    seen: list[int] = []

    class FakeUse:
        def encode(self, texts):
            seen.extend(len(t) for t in texts)
            return np.ones((len(texts), 512), np.float32)

    encoder = DefaultEncoder.__new__(DefaultEncoder)  # no weights needed to check what USE is given
    encoder._use = FakeUse()
    out = encoder.use_vectors(["x" * (5 << 20), "a red hoodie"])
    assert seen == [MAX_TEXT_CHARS, 12] and out.shape == (2, 512)


# -- item 6: silently wrong records --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [
    (["x"], "not a list"), ({"a": 1}, "not an object"), (True, "not a boolean"), (1.5, "not the number 1.5"),
    (float("nan"), "not the number nan"), ("  ", "non-empty"), (None, "non-empty"),
])
def test_ids_must_be_scalars(bad, words: str) -> None:
    for row in ({"domain": "product", "item_id": bad, "title": "t"},
                {"domain": "image", "image_id": bad, "uri": "a.jpg"},
                {"domain": "live", "live_id": bad, "snapshots": [{"t": 0, "uri": "a.jpg"}]},
                {"domain": "live", "live_id": "l", "snapshots": [{"t": 0, "uri": "a.jpg"}],
                 "items": [{"start": 0, "end": 1, "item_id": bad}]}):
        with pytest.raises(ValidationError, match=words):
            RECORD_ADAPTER.validate_python(row)


def test_scalar_ids_are_kept() -> None:
    assert ProductPage(item_id=12, title="t").record_key == "product:12"
    assert ProductPage(item_id=12.0, title="t").record_key == "product:12"  # a pandas float column
    assert ProductPage(item_id=np.int64(7), title="t").record_key == "product:7"
    with pytest.raises(ValidationError, match="boolean"):
        ProductPage(item_id=np.bool_(True), title="t")
    assert ImageRecord(image_id=" a b ", uri="x").record_key == "image:a b"


def test_manifest_reports_a_list_id(tmp_path: Path) -> None:
    from cope.manifest import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"domain": "product", "item_id": ["x"], "title": "t"}) + "\n")
    (row,) = read_manifest(manifest)
    assert row.record is None and "field 'item_id'" in row.error and "not a list" in row.error


@pytest.mark.parametrize("t", [1e308, math.inf, math.nan, -1.0, MAX_STREAM_SECONDS + 1])
def test_snapshot_times_are_finite_and_bounded(t: float) -> None:
    with pytest.raises(ValidationError, match="snapshots"):
        LiveStream(live_id="l", snapshots=[{"t": t, "uri": "a.jpg"}])
    with pytest.raises(ValidationError, match="asr"):
        LiveStream(live_id="l", snapshots=[{"t": 0, "uri": "a.jpg"}], asr=[{"start": 0, "end": t, "text": "x"}])


@pytest.mark.parametrize("seconds", [1e-300, 0.5, 0, math.inf, math.nan, 1e308])
def test_slice_seconds_is_at_least_one_second_and_finite(seconds: float) -> None:
    with pytest.raises(ValidationError, match="slice_seconds"):
        LiveStream(live_id="l", snapshots=[{"t": 0, "uri": "a.jpg"}], slice_seconds=seconds)


def test_slices_far_into_a_stream_have_length_and_distinct_ids() -> None:
    live = LiveStream(live_id="l", snapshots=[{"t": MAX_STREAM_SECONDS, "uri": "a.jpg"}], slice_seconds=1)
    start, end = live.slice_bounds(MAX_STREAM_SECONDS - 0.5)
    assert end - start == 1
    ids = {slice_item_id("l", *live.slice_bounds(t)) for t in (1_000_000.5, 1_000_001.5, 1_000_002.5)}
    assert ids == {"live:l:1000000-1000001", "live:l:1000001-1000002", "live:l:1000002-1000003"}
    assert slice_item_id("l", 30.0, 60.0) == "live:l:30-60" and slice_item_id("l", 1.5, 3) == "live:l:1.5-3"


@pytest.mark.parametrize("weight", ["inf", "nan", "-inf", "1e308"])
def test_fusion_weights_must_be_finite(weight: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from cope.cli import main
    from cope.fusion import FusionConfig

    with pytest.raises(ValidationError, match="image_weight"):
        FusionConfig(image_weight=float(weight))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"domain": "product", "item_id": "a", "title": "t"}) + "\n")
    code = main(["-q", "embed", str(manifest), "--db", str(tmp_path / "db"), f"--image-weight={weight}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "image_weight" in err, err
    assert not (tmp_path / "db").exists() or not list((tmp_path / "db").iterdir())


def test_fuse_refuses_non_finite_vectors() -> None:
    from cope.fusion import FusionConfig, fuse

    good = np.ones(4, np.float32) / 2
    assert np.isfinite(fuse(good, good, FusionConfig())).all()
    with pytest.raises(ValueError, match="not finite"):
        fuse(np.full(4, np.nan, np.float32), good, FusionConfig())


def test_frames_per_record_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cope.extractors.live as live_mod
    from cope.extractors import extract
    from cope.extractors.video import VideoInfo

    recording = make_video(tmp_path / "rec.mp4", n_frames=16, fps=8)  # 2 s
    live = LiveStream(live_id="R", recording=str(recording), slice_seconds=1)
    assert len(extract(live, ExtractOptions(frames_per_slice=2, max_frames_per_record=4))) == 2
    with pytest.raises(ExtractionError, match=r"2 slices of 1 s x 2 frames = 4 pictures, more than "
                       r"max_frames_per_record=3 .*slice_seconds >= 2"):
        extract(live, ExtractOptions(frames_per_slice=2, max_frames_per_record=3))
    # a header claiming years of video is refused before any frame list is built
    monkeypatch.setattr(live_mod, "probe_av", lambda uri: VideoInfo(10**12, 25.0, 64, 64))
    with pytest.raises(ExtractionError, match="max_frames_per_record=512"):
        extract(live)
    snaps = [{"t": i, "uri": str(save_image(tmp_path / f"s{i}.png"))} for i in range(3)]
    with pytest.raises(ExtractionError, match="snapshots = 3 pictures"):
        extract(LiveStream(live_id="S", snapshots=snaps), ExtractOptions(max_frames_per_record=2))
    with pytest.raises(ExtractionError, match="images = 3 pictures"):
        extract(ProductPage(item_id="p", images=[s["uri"] for s in snaps]), ExtractOptions(max_frames_per_record=2))


# -- item 7: clear refusals ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def heads_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 16-d synthetic table and heads trained on it."""
    from cope.training import fit
    from cope.training.synthetic import make_synthetic_store

    root = tmp_path_factory.mktemp("heads")
    make_synthetic_store(root / "db", n_products=30, dim=16, seed=1)
    result = fit(root / "db", dim=8, epochs=2, threads=1, progress=False)
    return root / "db", result.save(root / "heads")


def _run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    from cope.cli import main

    code = main(["-q", *args])
    return code, capsys.readouterr().err.strip()


def _tamper(config: dict, change: str) -> str:
    heads = config["heads"]
    return {
        "not json": lambda: "{not json",
        "a list": lambda: "[1, 2]",
        "no format": lambda: json.dumps({**config, "heads": {**heads, "format": "other"}}),
        "heads a list": lambda: json.dumps({**config, "heads": [1]}),
        "bad field": lambda: json.dumps({**config, "heads": {**heads, "dim": "big"}}),
        "dim": lambda: json.dumps({**config, "heads": {**heads, "dim": 4}}),
        "domains": lambda: json.dumps({**config, "heads": {**heads, "domains": ["product"]}}),
        "fingerprint": lambda: json.dumps({**config, "fingerprint": "abc"}),
    }[change]()


@pytest.mark.parametrize("change", ["not json", "a list", "no format", "heads a list", "bad field", "dim", "domains",
                                    "fingerprint"])
def test_tampered_heads_config_is_refused_in_one_line(heads_db, change: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    db, heads = heads_db
    copy = tmp_path / "heads"
    shutil.copytree(heads, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(_tamper(config, change))
    code, err = _run_cli(["reproject", "--db", str(db), "--heads", str(copy), "--table", "x"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("cope reproject: error:"), err


def test_pickles_as_heads_are_refused_in_one_line(heads_db, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db, heads = heads_db
    copy = tmp_path / "heads"
    shutil.copytree(heads, copy)
    (copy / "heads.safetensors").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    code, err = _run_cli(["reproject", "--db", str(db), "--heads", str(copy), "--table", "x"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "not a safetensors file" in err, err
    pkl = tmp_path / "heads.pkl"
    pkl.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    code, err = _run_cli(["reproject", "--db", str(db), "--heads", str(pkl), "--table", "x"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "is a file, not a heads checkpoint folder" in err, err


def test_pickle_as_open_clip_weights_is_refused_in_one_line(tiny_config_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    weights = tmp_path / "weights.pt"
    weights.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"domain": "product", "item_id": "a", "title": "t"}) + "\n")
    code, err = _run_cli(["embed", str(manifest), "--db", str(tmp_path / "db"), "--model", f"open_clip:{TINY_MODEL}",
                          "--pretrained", str(weights)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "not loadable" in err, err


def test_train_refuses_a_dim_above_the_table_dim(heads_db, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cope.training import fit

    db, _ = heads_db
    code, err = _run_cli(["train", "--db", str(db), "--out", str(tmp_path / "h"), "--dim", "128", "--epochs", "1",
                          "--threads", "1"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "--dim 128 is larger than the table's 16-d" in err, err
    with pytest.raises(UsageError, match="use --dim 16 or less"):
        fit(db, dim=17, epochs=1, threads=1, progress=False)
    assert fit(db, dim=16, epochs=1, threads=1, progress=False).heads.config.dim == 16
