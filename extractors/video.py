"""Short videos: N frames at segment centres, resized on decode. decord first; PyAV when decord is missing or fails.

Only a regular file of at most ``max_bytes`` (:data:`cope.content.MAX_VIDEO_BYTES` by default) is handed to a decoder.
A remote video (``http(s)://``, ``s3://``, ``gs://``, ``az://``) is downloaded to a temporary file within that cap
first, and the file is deleted once its frames are decoded (:func:`cope.hashing.local_media`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from cope.content import MAX_VIDEO_BYTES, Content, ExtractionError, ExtractOptions
from cope.hashing import local_media
from cope.records import VideoRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def segment_centres(num_frames: int, k: int) -> list[int]:
    """Indices of the centres of ``k`` equal segments of ``[0, num_frames)`` (fewer when the video is shorter)."""
    if num_frames <= 0:
        return []
    k = min(k, num_frames)
    return sorted({min(num_frames - 1, int((i + 0.5) * num_frames / k)) for i in range(k)})


def _target_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    if not short_side or min(width, height) <= short_side:
        return width, height
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def probe_av(uri: str) -> VideoInfo:
    import av

    with av.open(uri) as container:
        if not container.streams.video:
            raise ExtractionError(f"{uri}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        n = stream.frames
        if not n:
            seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
            n = int(seconds * fps)
        return VideoInfo(int(n), fps, stream.codec_context.width, stream.codec_context.height)


def read_frames_av(uri: str, indices: Sequence[int], info: VideoInfo, short_side: int | None) -> list[Image.Image]:
    """Decode the frames at ``indices`` with PyAV, seeking forward between far-apart targets."""
    import av

    width, height = _target_size(info.width, info.height, short_side)
    targets = sorted(set(indices))
    found: dict[int, Image.Image] = {}
    with av.open(uri) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        last: av.VideoFrame | None = None
        pos = -1.0
        for idx in targets:
            t = idx / info.fps
            if pos < 0 or t - pos > 2.0:
                container.seek(int(t / tb), stream=stream, backward=True)
            for frame in container.decode(stream):
                pos = float(frame.pts * tb) if frame.pts is not None else pos + 1 / info.fps
                last = frame
                if pos >= t - 0.5 / info.fps:
                    break
            if last is None:
                break
            found[idx] = last.reformat(width=width, height=height, format="rgb24").to_image()
    if not found:
        raise ExtractionError(f"{uri}: no decodable frames")
    return [found[i] for i in indices if i in found]


def read_frames_decord(uri: str, indices: Sequence[int], info: VideoInfo, short_side: int | None) -> list[Image.Image]:
    import decord

    width, height = _target_size(info.width, info.height, short_side)

    def decode(w: int, h: int) -> list[Image.Image]:
        vr = decord.VideoReader(uri, ctx=decord.cpu(0), width=w, height=h, num_threads=1)
        safe = [min(i, len(vr) - 1) for i in indices]
        return [Image.fromarray(frame) for frame in vr.get_batch(safe).asnumpy()]

    if (width, height) == (info.width, info.height):
        return decode(-1, -1)
    try:
        return decode(width, height)
    except decord.DECORDError:  # decord's scaler rejects some sizes (buffer size mismatch): resize with Pillow
        logger.debug("decord could not resize %s to %dx%d; resizing with Pillow", uri, width, height)
        return [im.resize((width, height), Image.BILINEAR) for im in decode(-1, -1)]


def _decoders(choice: str) -> list[str]:
    if choice != "auto":
        return [choice]
    try:
        import decord  # noqa: F401
    except ImportError:
        return ["av"]
    return ["decord", "av"]


def read_video_frames(
    uri: str, *, times: Sequence[float] | None = None, count: int | None = None, short_side: int | None = None,
    decoder: str = "auto", max_bytes: int | None = MAX_VIDEO_BYTES,
) -> tuple[list[Image.Image], VideoInfo]:
    """Frames at given ``times`` (seconds), or ``count`` frames at segment centres. Falls back decord -> PyAV.
    Only a regular file of at most ``max_bytes`` is opened; a remote one is downloaded (then deleted) first."""
    with local_media(uri, max_bytes) as path:
        if path == uri:
            return _read_local_frames(uri, times, count, short_side, decoder)
        try:
            return _read_local_frames(path, times, count, short_side, decoder)
        except ExtractionError as e:  # name the video, not its temporary copy
            raise ExtractionError(str(e).replace(path, uri)) from None


def _read_local_frames(uri: str, times: Sequence[float] | None, count: int | None, short_side: int | None,
                       decoder: str) -> tuple[list[Image.Image], VideoInfo]:
    try:
        info = probe_av(uri)
    except ExtractionError:
        raise
    except Exception as e:  # av.error.InvalidDataError and friends
        raise ExtractionError(f"{uri}: not a readable video ({type(e).__name__}: {e})") from None
    if info.num_frames <= 0:
        raise ExtractionError(f"{uri}: video has no frames")
    if times is not None:
        indices = [min(info.num_frames - 1, max(0, int(t * info.fps))) for t in times]
    else:
        indices = segment_centres(info.num_frames, count or 8)
    errors = []
    for name in _decoders(decoder):
        try:
            reader = read_frames_decord if name == "decord" else read_frames_av
            frames = reader(uri, indices, info, short_side)
            if frames:
                return frames, info
            errors.append(f"{name}: no frames")
        except ExtractionError as e:
            errors.append(f"{name}: {e}")
        except Exception as e:  # decord raises DECORDError, PyAV its own error types
            errors.append(f"{name}: {type(e).__name__}: {e}")
            logger.debug("%s failed on %s, trying the next decoder", name, uri, exc_info=True)
    raise ExtractionError(f"{uri}: undecodable video ({'; '.join(errors)})")


def extract_video(record: VideoRecord, options: ExtractOptions) -> list[Content]:
    count = record.num_frames or options.frames_per_video
    options.check_frames(record.uri, count, "num_frames")
    frames, info = read_video_frames(
        record.uri, count=count, short_side=options.image_size, decoder=options.video_decoder,
        max_bytes=options.max_video_bytes,
    )
    text = "\n".join(t.strip() for t in (record.title, record.caption, record.asr) if t.strip())
    return [
        Content(
            item_id=record.record_key,
            domain="video",
            source_id=record.video_id,
            record_key=record.record_key,
            images=frames,
            text=text,
            metadata={"title": record.title, "duration": round(info.duration, 3), **record.metadata},
            media_uri=record.uri,
        )
    ]
