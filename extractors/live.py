"""Live streams: cut into time slices; each slice is an item with its snapshots (or sampled frames) and its ASR.

A stream decodes at most ``ExtractOptions.max_frames_per_record`` pictures (its snapshots, or its slices x frames per
slice); a longer one is refused before anything is decoded, with the ``slice_seconds`` that would fit.
"""

from __future__ import annotations

import math
from collections import defaultdict

from cope.content import Content, ExtractionError, ExtractOptions
from cope.extractors.image import _check_local, load_image
from cope.extractors.video import probe_av, read_video_frames
from cope.records import LiveStream, slice_item_id


def _slice_metadata(record: LiveStream, start: float, end: float) -> dict:
    """The stream's metadata; the product on sale in the slice becomes its ``product_key`` unless one is given."""
    meta = {"title": record.title, **record.metadata}
    on_sale = record.item_on_sale(start, end)
    if on_sale is not None:
        meta["item_on_sale"] = on_sale
        meta.setdefault("product_key", on_sale)
    return meta


def _slice_content(record: LiveStream, start: float, end: float, images: list, media: str | None) -> Content:
    text = "\n".join(t for t in (record.title.strip(), record.asr_text(start, end)) if t)
    return Content(
        item_id=slice_item_id(record.live_id, start, end),
        domain="live",
        source_id=record.live_id,
        record_key=record.record_key,
        images=images,
        text=text,
        slice_start=start,
        slice_end=end,
        metadata=_slice_metadata(record, start, end),
        media_uri=media,
        speech=record.asr_text(start, end),
    )


def _from_snapshots(record: LiveStream, options: ExtractOptions) -> list[Content]:
    options.check_frames(record.record_key, len(record.snapshots or []), "snapshots")
    groups: dict[tuple[float, float], list[str]] = defaultdict(list)
    for snap in sorted(record.snapshots or [], key=lambda s: s.t):
        groups[record.slice_bounds(snap.t)].append(snap.uri)
    return [
        _slice_content(record, start, end, [load_image(u, options.max_image_pixels, options.image_size,
                                                       options.max_image_bytes) for u in uris], uris[0])
        for (start, end), uris in sorted(groups.items())
    ]


def _from_recording(record: LiveStream, options: ExtractOptions) -> list[Content]:
    assert record.recording is not None
    _check_local(record.recording, options.max_video_bytes)  # before probing: a FIFO would block the demuxer
    try:
        duration = probe_av(record.recording).duration
    except ExtractionError:
        raise
    except Exception as e:
        raise ExtractionError(f"{record.recording}: not a readable recording ({type(e).__name__}: {e})") from None
    if not math.isfinite(duration) or duration <= 0:
        raise ExtractionError(f"{record.recording}: recording has no duration")
    length, k = record.slice_seconds, options.frames_per_slice
    n_slices = math.ceil(duration / length)
    per_record = options.max_frames_per_record // k  # slices that fit
    hint = (f"a {duration:.0f}-s recording fits with slice_seconds >= {math.ceil(duration / per_record)}"
            if per_record else "lower frames_per_slice") + " (or raise max_frames_per_record)"
    options.check_frames(record.recording, n_slices * k, f"{n_slices} slices of {length:g} s x {k} frames", hint)
    bounds = [(i * length, (i + 1) * length) for i in range(n_slices)]
    times = [min(s + (j + 0.5) * (min(e, duration) - s) / k, duration) for s, e in bounds for j in range(k)]
    frames, _ = read_video_frames(record.recording, times=times, short_side=options.image_size,
                                  decoder=options.video_decoder, max_bytes=options.max_video_bytes)
    if len(frames) != len(times):
        raise ExtractionError(f"{record.recording}: decoded {len(frames)} of {len(times)} sampled frames")
    return [_slice_content(record, s, e, frames[i * k : (i + 1) * k], record.recording) for i, (s, e) in enumerate(bounds)]


def extract_live(record: LiveStream, options: ExtractOptions) -> list[Content]:
    return _from_snapshots(record, options) if record.snapshots is not None else _from_recording(record, options)
