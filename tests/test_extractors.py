from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cope import extractors
from cope.content import ExtractionError, ExtractOptions
from cope.extractors.image import load_image
from cope.extractors.video import read_video_frames, segment_centres
from cope.records import ImageRecord, LiveStream, ProductPage, VideoRecord
from tests.media import corrupt_file, exif_rotated_jpeg, make_video, save_image


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("L", "PNG"),
                                      ("I;16", "PNG")])
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    path = save_image(tmp_path / f"x.{fmt.lower()}", mode=mode, fmt=fmt)
    im = load_image(str(path))
    assert im.mode == "RGB" and im.size == (64, 48)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "t.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    assert load_image(str(path)).getpixel((4, 4)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    assert load_image(str(exif_rotated_jpeg(tmp_path / "r.jpg"))).size == (30, 60)


@pytest.mark.parametrize("size,hint,decoded", [((1600, 1200), 224, (800, 600)), ((4000, 3000), 224, (500, 375)),
                                               ((800, 800), 224, (400, 400)), ((800, 800), 256, (400, 400)),
                                               ((512, 512), 256, (512, 512)), ((671, 900), 224, (671, 900)),
                                               ((1600, 1200), 640, (1600, 1200)), ((1600, 1200), None, (1600, 1200))])
def test_jpeg_is_decoded_at_the_smallest_scale_that_keeps_both_sides_at_one_and_a_half_hints(
        tmp_path: Path, size: tuple[int, int], hint: int | None, decoded: tuple[int, int]) -> None:
    path = save_image(tmp_path / "big.jpg", size=size, fmt="JPEG")
    assert load_image(str(path), size_hint=hint).size == decoded


@pytest.mark.parametrize("kind", ["garbage", "truncated_jpeg", "empty"])
def test_bad_images_raise_extraction_error_with_path(tmp_path: Path, kind: str) -> None:
    path = corrupt_file(tmp_path / "bad.jpg", kind)
    with pytest.raises(ExtractionError, match="bad.jpg"):
        load_image(str(path))


def test_missing_image_and_remote_uri_and_pixel_limit(tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="file not found"):
        load_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(ExtractionError, match="127.0.0.1:9/a.jpg"):  # nothing listens there: a clear error, fast
        load_image("http://127.0.0.1:9/a.jpg")
    path = save_image(tmp_path / "x.png", size=(100, 100))
    with pytest.raises(ExtractionError, match="exceeds the limit"):
        load_image(str(path), max_pixels=5000)


def test_image_and_product_extractors(tmp_path: Path) -> None:
    a, b = save_image(tmp_path / "a.jpg", fmt="JPEG"), save_image(tmp_path / "b.png")
    (c,) = extractors.extract(ImageRecord(image_id="i1", uri=str(a), text="red ball"))
    assert (c.item_id, c.domain, c.text, len(c.images), c.media_uri) == ("image:i1", "image", "red ball", 1, str(a))
    page = ProductPage(item_id="p1", title="Ball", description="Round.", attributes={"colour": "red"},
                       images=[str(a), str(b)])
    (c,) = extractors.extract(page)
    assert c.text == "Ball\nRound.\ncolour: red" and len(c.images) == 2 and c.media_uri == str(a)
    broken = ProductPage(item_id="p2", title="x", images=[str(a), str(tmp_path / "missing.jpg")])
    with pytest.raises(ExtractionError, match="missing.jpg"):
        extractors.extract(broken)


def test_segment_centres() -> None:
    assert segment_centres(16, 4) == [2, 6, 10, 14]
    assert segment_centres(3, 8) == [0, 1, 2]
    assert segment_centres(0, 4) == []


@pytest.mark.parametrize("decoder", ["decord", "av"])
def test_video_frames_at_segment_centres(tmp_path: Path, decoder: str) -> None:
    path = make_video(tmp_path / "v.mp4", n_frames=16, size=96)
    (c,) = extractors.extract(VideoRecord(video_id="v", uri=str(path), title="t", caption="c"),
                              ExtractOptions(frames_per_video=4, image_size=48, video_decoder=decoder))
    assert len(c.images) == 4 and min(c.images[0].size) == 48 and c.text == "t\nc"
    assert c.metadata["duration"] == pytest.approx(2.0, abs=0.2)


def test_decoders_agree_on_frame_content(tmp_path: Path) -> None:
    import numpy as np

    path = make_video(tmp_path / "v.mp4", n_frames=16, size=64)
    a, _ = read_video_frames(str(path), count=4, decoder="decord")
    b, _ = read_video_frames(str(path), count=4, decoder="av")
    diff = [np.abs(np.asarray(x, float) - np.asarray(y, float)).mean() for x, y in zip(a, b)]
    assert max(diff) < 8


def test_pyav_fallback_when_decord_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cope.extractors import video

    def broken(*args, **kwargs):
        raise RuntimeError("decord exploded")

    monkeypatch.setattr(video, "read_frames_decord", broken)
    frames, info = read_video_frames(str(make_video(tmp_path / "v.mp4")), count=3)
    assert len(frames) == 3 and info.num_frames == 16


@pytest.mark.parametrize("kind", ["garbage", "empty"])
def test_bad_video_raises(tmp_path: Path, kind: str) -> None:
    path = corrupt_file(tmp_path / "v.mp4", kind)
    with pytest.raises(ExtractionError, match="v.mp4"):
        extractors.extract(VideoRecord(video_id="v", uri=str(path)))


def test_live_snapshots_grouped_per_slice_with_asr(tmp_path: Path) -> None:
    snaps = [{"t": t, "uri": str(save_image(tmp_path / f"s{t}.png"))} for t in (1, 5, 31, 95)]
    live = LiveStream(live_id="L", title="shop", snapshots=snaps, slice_seconds=30,
                      asr=[{"start": 0, "end": 10, "text": "red ball"}, {"start": 90, "end": 99, "text": "blue box"}],
                      items=[{"start": 0, "end": 20, "item_id": "ball"}, {"start": 20, "end": 70, "item_id": "box"}])
    contents = extractors.extract(live)
    assert [c.item_id for c in contents] == ["live:L:0-30", "live:L:30-60", "live:L:90-120"]
    assert [len(c.images) for c in contents] == [2, 1, 1]
    assert contents[0].text == "shop\nred ball" and contents[1].text == "shop" and "blue box" in contents[2].text
    assert all(c.record_key == "live:L" and c.source_id == "L" for c in contents)
    assert [c.metadata.get("product_key") for c in contents] == ["ball", "box", None]


def test_live_recording_cut_into_slices(tmp_path: Path) -> None:
    path = make_video(tmp_path / "rec.mp4", n_frames=40, fps=8)  # 5 s
    live = LiveStream(live_id="R", recording=str(path), slice_seconds=2)
    contents = extractors.extract(live, ExtractOptions(frames_per_slice=2))
    assert [(c.slice_start, c.slice_end) for c in contents] == [(0, 2), (2, 4), (4, 6)]
    assert all(len(c.images) == 2 for c in contents)


def test_unknown_domain_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known domains: image, live, product, video"):
        extractors.get_extractor("podcast")
