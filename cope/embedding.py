"""The embedding pipeline at run time: a :class:`~cope.pipeline.PipelineSpec` with its models built.

Items and queries take the same path: extract (:mod:`cope.extractors`) -> preprocess (encoder transform, in worker
threads or Ray tasks) -> encode (batched across items) -> fuse -> project through trained heads (when the spec has
them) -> a fitted projection (PCA, when the spec has one: :mod:`cope.projection`). The local job, the Ray engine
and :class:`cope.api.CopeDB` all call this module; none has its own copy.

>>> pipeline = Pipeline.build(PipelineSpec(encoder=EncoderSpec(name=TINY_MODEL)))
>>> pipeline.tag
'open_clip/test-tiny-16/random-seed0;fusion=image:0.5,text:0.5'
>>> pipeline.encode_contents([pipeline.query_content(text="a red ball")], ["product"]).shape
(1, 16)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cope.content import Content, ExtractOptions
from cope.errors import ExtractionError, ModelMismatchError
from cope.fusion import fuse
from cope.hashing import slice_hash
from cope.pipeline import EncoderSpec, PipelineSpec
from cope.records import DOMAINS, Record
from cope.store.item_store import now_utc
from cope.timing import timed
from cope.vectors import l2_normalize, mean_vector

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from cope.encoders import Encoder
    from cope.extractors.ocr import OcrCache
    from cope.projection import PcaProjection

logger = logging.getLogger(__name__)

__all__ = ["EncoderSpec", "Parts", "Pipeline", "PipelineSpec", "Prepared", "Projector", "default_query_domain",
           "prepare_record"]


class Projector(Protocol):
    """Maps an item's (image, text) vectors into another space by domain (trained heads implement it)."""

    dim: int
    fingerprint: str

    def project(self, image: np.ndarray, text: np.ndarray, has_image: np.ndarray, has_text: np.ndarray,
                domains: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass
class Prepared:
    """A record after extraction and preprocessing, ready for the model (or the reason it failed)."""

    record: Record | None
    origin: str
    digest: str
    contents: list[Content] = field(default_factory=list)
    tensors: list[list[torch.Tensor]] = field(default_factory=list)  # per content, per image
    error: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # decode, ocr, preprocess (cope.timing)

    @property
    def n_images(self) -> int:
        return sum(len(t) for t in self.tensors)


@dataclass
class Parts:
    """Per content: the fused vector, the image, text and OCR parts (zero rows where absent) and which exist."""

    vector: np.ndarray
    image: np.ndarray
    text: np.ndarray
    has_image: np.ndarray
    has_text: np.ndarray
    n_images: list[int]
    ocr: np.ndarray | None = None  # None: the pipeline does not read pictures
    has_ocr: np.ndarray | None = None


def ocr_part_text(content: Content) -> str:
    """The text of a content's OCR part: what was read in its pictures, joined (for a live slice) with what was
    said in it; empty when nothing was read."""
    if not content.ocr_text.strip():
        return ""
    return "\n".join(t for t in (content.ocr_text.strip(), content.speech.strip()) if t)


def prepare_record(
    record: Record, origin: str, digest: str, preprocess: Callable[[Any], torch.Tensor], options: ExtractOptions,
    ocr_cache: OcrCache | None = None, ocr_stats: dict[str, int] | None = None,
) -> Prepared:
    """Decode a record, read the text in its pictures (when ``options.ocr``) and preprocess its images into model
    tensors (runs in worker threads or Ray tasks)."""
    from cope.extractors import extract

    prepared = Prepared(record, origin, digest)
    try:
        with timed(prepared.seconds, "decode"):
            prepared.contents = extract(record, options)
        if options.ocr:
            from cope.extractors.ocr import add_ocr

            with timed(prepared.seconds, "ocr"):
                add_ocr(prepared.contents, options, ocr_cache, ocr_stats)
        with timed(prepared.seconds, "preprocess"):
            _preprocess(prepared, preprocess)
    except ExtractionError as e:
        prepared.error = str(e)
    except Exception as e:  # a bug or an unexpected decoder error must not stop the job
        logger.debug("extraction of %s failed", record.record_key, exc_info=True)
        prepared.error = f"{type(e).__name__}: {e}"
    return prepared


def _preprocess(prepared: Prepared, preprocess: Callable[[Any], torch.Tensor]) -> None:
    prepared.tensors = [[preprocess(im) for im in c.images] for c in prepared.contents]
    for c in prepared.contents:
        c.images = []  # the tensors are all the model needs; free the decoded pictures


def default_query_domain(kind: str, domains: Sequence[str]) -> str:
    """The domain a query stands for on a heads table when the caller does not say: a text or mixed query is a
    product page, an image an image (else a product), a video a video (else a live slice, else a product)."""
    prefer = {"text": ("product", "image"), "query": ("product",), "image": ("image", "product"),
              "video": ("video", "live", "product")}.get(kind, ("product",))
    for d in (*prefer, *DOMAINS):
        if d in domains:
            return d
    return domains[0]


class Pipeline:
    """A built pipeline: the spec (resolved: encoder tag and dim filled in), the encoder, the heads projector and the
    fitted projection."""

    def __init__(self, spec: PipelineSpec, encoder: Encoder, projector: Projector | None = None,
                 ocr_cache: OcrCache | None = None, projection: PcaProjection | None = None) -> None:
        self.spec = spec
        self.encoder = encoder
        self.projector = projector
        self.projection = projection
        self.ocr_cache = ocr_cache
        #: pictures read by OCR and served from the cache, since the pipeline was built
        self.ocr_stats: dict[str, int] = {"read": 0, "cached": 0}

    @classmethod
    def build(
        cls, spec: PipelineSpec, *, encoder: Encoder | None = None, db: str | os.PathLike[str] | None = None,
        device: str = "cpu", threads: int | None = None,
    ) -> Pipeline:
        """Build the encoder (unless given), the heads and the projection of ``spec``; refuse an encoder whose
        weights differ from the ones the spec was made with. ``db`` is where a table's copy of its heads and
        projection is looked for."""
        if encoder is None:
            from cope.encoders import create_encoder

            logger.info("loading model %s ...", spec.encoder.name)
            encoder = create_encoder(spec.encoder.name, **spec.encoder.options, device=device,
                                     **({"threads": threads} if threads else {}))
        if spec.encoder_tag is not None and (encoder.model_tag != spec.encoder_tag or encoder.dim != spec.encoder_dim):
            raise ModelMismatchError(
                f"the pipeline's vectors were made by {spec.encoder_tag!r} (dim {spec.encoder_dim}), but the encoder "
                f"is {encoder.model_tag!r} (dim {encoder.dim}): install the same model files and versions, or pass "
                "that model's encoder"
            )
        describe = getattr(encoder, "spec", None)  # an encoder passed in says how it was built: the spec records it
        described = describe() if callable(describe) else None
        spec = spec.model_copy(update={"encoder_tag": encoder.model_tag, "encoder_dim": encoder.dim,
                                       **({"encoder": EncoderSpec(**described)} if described else {})})
        projector = None
        ref = spec.projection
        spec = spec.without_projection()
        if spec.heads is not None:
            from cope.heads import HeadsProjector, locate_heads

            spec = spec.with_heads(spec.heads)  # checks the heads' base tag against this pipeline
            projector = HeadsProjector.load(locate_heads(spec.heads, db), model_tag=spec.base_tag,
                                            dim=spec.encoder_dim, default_domain=spec.heads.default_domain,
                                            device=device)
            if projector.fingerprint != spec.heads.fingerprint:
                raise ModelMismatchError(f"heads {projector.fingerprint} are not {spec.heads.fingerprint}")
        projection = None
        if ref is not None:
            from cope.projection import load_projection, locate_projection

            spec = spec.with_projection(ref)  # checks what it was fitted on against this pipeline
            projection = load_projection(locate_projection(ref, db), ref.fingerprint)
        ocr_cache = None
        if spec.extract.ocr:
            from cope.extractors.ocr import check_available

            check_available()
            if db is not None:
                from cope.store.ocr_cache import OcrCacheTable

                ocr_cache = OcrCacheTable.open(db)
        return cls(spec, encoder, projector, ocr_cache, projection)

    @property
    def tag(self) -> str:
        return self.spec.tag

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def extract_options(self) -> ExtractOptions:
        """The spec's extraction options with the encoder's image size as decode hint (larger when OCR reads the
        pictures: text needs pixels that the model's input size would throw away)."""
        size = self.encoder.image_size
        if self.spec.extract.ocr:
            size = max(size, round(self.spec.extract.ocr_max_side * 0.75))
        return self.spec.extract.model_copy(update={"image_size": size})

    # -- items ---------------------------------------------------------------------------------------------------
    def prepare(self, record: Record, origin: str, digest: str) -> Prepared:
        return prepare_record(record, origin, digest, self.encoder.preprocess, self.extract_options, self.ocr_cache,
                              self.ocr_stats)

    def flush(self) -> None:
        """Write what the pipeline buffers besides rows (OCR results for the cache)."""
        if self.ocr_cache is not None:
            self.ocr_cache.flush()

    def encode_parts(self, contents: Sequence[Content], tensors: Sequence[Sequence[torch.Tensor]],
                     domains: Sequence[str], batch_size: int = 32, text_batch_size: int = 64,
                     seconds: dict[str, float] | None = None) -> Parts:
        """Encode contents (images stacked in full batches across contents, texts together), fuse, project
        through the heads by domain, then through the fitted projection (every part with the same map).
        ``seconds`` gets the time of the model passes (``encode``) and of the rest (``fusion``) added."""
        seconds = {} if seconds is None else seconds
        with timed(seconds, "encode"):
            image_vecs, present, encoded = self._run_models(contents, tensors, batch_size, text_batch_size)
        with timed(seconds, "fusion"):
            return self._fuse(contents, [len(per) for per in tensors], domains, image_vecs, present, encoded)

    def _run_models(self, contents: Sequence[Content], tensors: Sequence[Sequence[torch.Tensor]], batch_size: int,
                    text_batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors of all images (in order); of the texts (item texts, then OCR texts when the pipeline reads
        pictures), which are not empty and their vectors (zero rows for empty ones)."""
        import torch

        encoder, dim = self.encoder, self.encoder.dim
        flat = [t for per in tensors for t in per]
        image_vecs = np.concatenate(
            [np.zeros((0, dim), np.float32)]
            + [encoder.encode_image_tensors(torch.stack(flat[i : i + batch_size]))
               for i in range(0, len(flat), batch_size)]
        )
        texts = [c.text for c in contents] + ([ocr_part_text(c) for c in contents] if self.spec.extract.ocr else [])
        present = np.array([bool(t.strip()) for t in texts], bool)
        encoded = np.zeros((len(texts), dim), np.float32)
        if present.any():  # item texts and OCR texts in the same batches
            idx = np.flatnonzero(present)
            encoded[idx] = encoder.encode_texts([texts[i] for i in idx], text_batch_size)
        return image_vecs, present, encoded

    def _fuse(self, contents: Sequence[Content], n_images: list[int], domains: Sequence[str], image_vecs: np.ndarray,
              present: np.ndarray, encoded: np.ndarray) -> Parts:
        """Per-content image means, fused vectors, heads and projection, from the models' output."""
        dim = self.encoder.dim
        reads = self.spec.extract.ocr
        n = len(contents)
        text, has_text = encoded[:n], present[:n]
        ocr, has_ocr = (encoded[n:], present[n:]) if reads else (None, None)
        image = np.zeros((len(contents), dim), np.float32)
        pos = 0
        for i, count in enumerate(n_images):
            if count:
                image[i] = mean_vector(image_vecs[pos : pos + count])
            pos += count
        has_image = np.array([n > 0 for n in n_images], bool)
        fusion = self.spec.fusion
        vector = np.stack([
            fuse(image[i] if has_image[i] else None, text[i] if has_text[i] else None, fusion,
                 ocr[i] if ocr is not None and has_ocr is not None and has_ocr[i] else None)
            for i in range(n)
        ]) if n else np.zeros((0, dim), np.float32)
        if self.projector is not None and n:  # heads take the image and text parts
            if ocr is not None and has_ocr is not None:  # the OCR part: a text through its domain's head
                ocr = self.projector.project(np.zeros_like(ocr), ocr, np.zeros(n, bool), has_ocr, list(domains))[2]
            vector, image, text = self.projector.project(image, text, has_image, has_text, list(domains))
        if self.projection is not None and n:
            p = self.projection
            vector, image, text = p.apply(vector), p.apply(image), p.apply(text)
            if ocr is not None and ocr.shape[1] == p.input_dim:
                ocr = p.apply(ocr)
        return Parts(vector, image, text, has_image, has_text, n_images, ocr, has_ocr)

    def encode(self, batch: Sequence[Prepared], batch_size: int = 32, text_batch_size: int = 64,
               seconds: dict[str, float] | None = None) -> list[dict[str, Any]]:
        """Store rows (one per content: a live stream gives one per slice) of prepared records (``seconds``: as
        :meth:`encode_parts`; building the rows counts as fusion)."""
        seconds = {} if seconds is None else seconds
        contents = [c for p in batch for c in p.contents]
        tensors = [t for p in batch for t in p.tensors]
        parts = self.encode_parts(contents, tensors, [c.domain for c in contents], batch_size, text_batch_size,
                                  seconds)
        with timed(seconds, "fusion"):
            return self._rows(batch, parts)

    def _rows(self, batch: Sequence[Prepared], parts: Parts) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        at, tag, i = now_utc(), self.tag, 0
        for p in batch:
            for content in p.contents:
                rows.append({
                    "item_id": content.item_id,
                    "record_key": content.record_key,
                    "domain": content.domain,
                    "source_id": content.source_id,
                    "slice_start": content.slice_start,
                    "slice_end": content.slice_end,
                    "vector": parts.vector[i],
                    "image_vector": parts.image[i],
                    "text_vector": parts.text[i],
                    "has_image": bool(parts.has_image[i]),
                    "has_text": bool(parts.has_text[i]),
                    "n_images": parts.n_images[i],
                    "text": content.text,
                    "media_uri": content.media_uri,
                    "content_hash": slice_hash(p.digest, content.slice_start, content.slice_end)
                    if content.domain == "live" else p.digest,
                    "record_hash": p.digest,
                    "model_tag": tag,
                    "origin": p.origin,
                    "metadata": json.dumps(content.metadata, ensure_ascii=False, default=str),
                    "updated_at": at,
                    **({"ocr_text": content.ocr_text or None, "ocr_confidence": content.ocr_confidence,
                        "ocr_vector": parts.ocr[i], "has_ocr": bool(parts.has_ocr[i])}
                       if parts.ocr is not None and parts.has_ocr is not None else {}),
                })
                i += 1
        return rows

    # -- queries -------------------------------------------------------------------------------------------------
    def query_content(self, text: str | None = None, image: Any = None, video: str | os.PathLike[str] | None = None,
                      domain: str = "product") -> Content:
        """A query as the content of an item of ``domain``: images decoded and video frames sampled with the same
        extractor functions and options as items."""
        from cope.extractors.image import load_image
        from cope.extractors.video import read_video_frames

        options = self.extract_options
        images: list[Image.Image] = []
        if image is not None:
            images.append(image.convert("RGB") if hasattr(image, "convert") else
                          load_image(str(image), options.max_image_pixels, options.image_size,
                                     options.max_image_bytes))
        if video is not None:
            count = options.frames_per_slice if domain == "live" else options.frames_per_video
            frames, _ = read_video_frames(str(video), count=count, short_side=options.image_size,
                                          decoder=options.video_decoder, max_bytes=options.max_video_bytes)
            images.extend(frames)
        label = str(Path(os.fspath(video))) if video is not None else "query"
        content = Content(item_id=label, domain=domain, source_id=label, record_key=f"query:{label}", images=images,
                          text=(text or "").strip())
        if options.ocr and images:  # a picture query is read like an item's pictures
            from cope.extractors.ocr import add_ocr

            add_ocr([content], options, self.ocr_cache)
        return content

    def encode_contents(self, contents: Sequence[Content], domains: Sequence[str]) -> np.ndarray:
        """Unified vectors (n, dim) of query contents, each as an item of its domain."""
        prepared = Prepared(None, "query", "")
        prepared.contents = list(contents)
        _preprocess(prepared, self.encoder.preprocess)
        return l2_normalize(self.encode_parts(prepared.contents, prepared.tensors, domains).vector)
