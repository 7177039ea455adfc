"""The batch embedding job: manifest -> extract (worker threads) -> encode (batched) -> fuse -> upsert into LanceDB.

Resumable and idempotent: a record whose content hash is already stored (with the table's model tag) is skipped
before any decoding, so a re-run after a crash continues where it stopped and a re-run on an unchanged catalog does
no model work. A failing record is written to the errors table with its reason; the job carries on.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from cope.content import Content, ExtractionError, ExtractOptions
from cope.encoders import DEFAULT_MODEL, Encoder, create_encoder
from cope.fusion import FusionConfig, fuse, mean_vector
from cope.hashing import record_hash, slice_hash
from cope.manifest import ManifestRow, read_manifest
from cope.records import Record
from store import ItemStore
from store.item_store import now_utc

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_SOME_FAILED = 3


class EmbedConfig(BaseModel):
    """Settings of one ``cope embed`` run (the CLI flags map 1:1 onto these)."""

    model_config = ConfigDict(extra="forbid")

    model: str = DEFAULT_MODEL
    pretrained: str | None = None
    table: str = "items"
    batch_size: int = Field(default=32, ge=1, description="images per forward pass")
    text_batch_size: int = Field(default=64, ge=1)
    workers: int = Field(default=2, ge=1, description="extraction threads (decode and preprocess)")
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads")
    device: str = "cpu"
    write_every: int = Field(default=512, ge=1, description="rows buffered per upsert")
    lookup_every: int = Field(default=512, ge=1, description="records per stored-hash lookup")
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    extract: ExtractOptions = Field(default_factory=ExtractOptions)
    default_domain: str | None = None
    progress: bool | None = Field(default=None, description="None: show a bar when logging is at INFO")
    compact: bool = Field(default=True, description="merge fragments and drop old versions at the end")
    heads: str | None = Field(default=None, description="trained COPE heads (cope train) applied before writing")


@dataclass
class EmbedSummary:
    done: int = 0  # records embedded and written
    items: int = 0  # rows written (a live stream yields one per slice)
    skipped: int = 0  # records already stored with the same content hash and model tag
    failed: int = 0  # records that failed to extract or encode
    invalid: int = 0  # manifest rows that are not valid records
    seconds: float = 0.0
    images: int = 0
    model_tag: str = ""
    errors: list[str] = field(default_factory=list)  # the first few reasons, for the summary
    unindexed: int | None = None  # rows not yet in the table's ANN index (searched exactly); None: no ANN index

    @property
    def items_per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if (self.failed or self.invalid) else EXIT_OK

    def __str__(self) -> str:
        return (
            f"done {self.done} records ({self.items} items, {self.images} images), skipped {self.skipped}, "
            f"failed {self.failed}, invalid rows {self.invalid}; {self.seconds:.1f} s, "
            f"{self.items_per_second:.1f} items/s"
            + (f"; {self.unindexed} rows not in the ANN index yet (run `cope index`)" if self.unindexed else "")
        )


@dataclass
class _Prepared:
    """A record after extraction and preprocessing, ready for the model (or the reason it failed)."""

    record: Record
    origin: str
    digest: str
    contents: list[Content] = field(default_factory=list)
    tensors: list[list[torch.Tensor]] = field(default_factory=list)  # per content, per image
    error: str | None = None

    @property
    def n_images(self) -> int:
        return sum(len(t) for t in self.tensors)


def model_spec(config: EmbedConfig) -> dict[str, Any]:
    """What a reader needs to rebuild the table's encoder (stored in the table's metadata)."""
    return {"model": config.model, "pretrained": config.pretrained, "fusion": config.fusion.model_dump()}


def _count_rows(paths: Sequence[Path]) -> int | None:
    total = 0
    for p in paths:
        suffix = p.suffix.lower()
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(p).metadata.num_rows
        elif p.stat().st_size < 512 << 20:
            with p.open("rb") as f:
                total += sum(1 for line in f if line.strip()) - (1 if suffix in (".csv", ".tsv") else 0)
        else:
            return None
    return total


class EmbedJob:
    """One run of the embedding job. Most users call :func:`embed` instead."""

    def __init__(self, db: str | Path, config: EmbedConfig, encoder: Encoder | None = None) -> None:
        self.config = config
        self.encoder = encoder or create_encoder(
            config.model, **({"pretrained": config.pretrained} if config.pretrained else {}),
            **({"threads": config.threads} if config.threads else {}), device=config.device,
        )
        self.model_tag = f"{self.encoder.model_tag};{config.fusion.tag}"
        self.projector = None
        table_tag, table_dim = self.model_tag, self.encoder.dim
        if config.heads:  # rows go through trained heads; the table holds the heads' space and tag
            from cope.training import HeadsProjector

            self.projector = HeadsProjector.load(config.heads, model_tag=self.model_tag, dim=self.encoder.dim)
            table_tag, table_dim = self.projector.model_tag, self.projector.dim
        self.table_tag, self.table_dim = table_tag, table_dim
        self.store = ItemStore.open(db, config.table, model_tag=table_tag, dim=table_dim)
        self.extract_options = config.extract.model_copy(update={"image_size": self.encoder.image_size})
        self.summary = EmbedSummary(model_tag=self.table_tag)
        self._rows: list[dict[str, Any]] = []
        self._errors: list[dict[str, Any]] = []

    # -- stages ------------------------------------------------------------------------------------------------
    def _prepare(self, record: Record, origin: str, digest: str) -> _Prepared:
        return prepare_record(record, origin, digest, self.encoder.preprocess, self.extract_options)

    def _todo(self, rows: Iterator[ManifestRow], pool: ThreadPoolExecutor, bar: tqdm) -> Iterator[tuple[Record, str, str]]:
        """Valid records whose stored hash differs from their current one; invalid rows and skips are counted."""
        while chunk := list(itertools.islice(rows, self.config.lookup_every)):
            valid = []
            for row in chunk:
                if row.record is None:
                    self.summary.invalid += 1
                    self._fail(f"manifest:{row.where}", row.where, "manifest", row.error or "invalid row")
                    bar.update(1)
                else:
                    valid.append(row)
            digests = list(pool.map(lambda r: record_hash(r.record), valid))
            stored = self.store.stored_hashes([r.record.record_key for r in valid])
            for row, digest in zip(valid, digests):
                if stored.get(row.record.record_key) == {digest}:
                    self.summary.skipped += 1
                    bar.update(1)
                else:
                    yield row.record, row.where, digest

    def _prepared(self, todo: Iterable[tuple[Record, str, str]], pool: ThreadPoolExecutor) -> Iterator[_Prepared]:
        """Extraction results in manifest order, with a bounded number of records in flight."""
        window = max(4, 2 * self.config.batch_size)
        pending: deque[Future[_Prepared]] = deque()
        for record, origin, digest in todo:
            pending.append(pool.submit(self._prepare, record, origin, digest))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def _encode(self, batch: list[_Prepared]) -> None:
        try:
            rows, n_images = encode_prepared(self.encoder, batch, self.config, self.model_tag)
        except Exception as e:
            logger.exception("encoding a batch of %d records failed", len(batch))
            for p in batch:
                self._fail(p.record.record_key, p.origin, "encode", f"{type(e).__name__}: {e}")
            return
        self._rows.extend(rows)
        self.summary.images += n_images
        self.summary.done += len(batch)
        self.summary.items += len(rows)

    def _fail(self, key: str, origin: str, stage: str, reason: str) -> None:
        if stage != "manifest":
            self.summary.failed += 1
        if len(self.summary.errors) < 20:
            self.summary.errors.append(f"{origin}: {reason}")
        logger.warning("%s: %s failed: %s", origin if key.startswith("manifest:") else f"{origin} {key}", stage, reason)
        self._errors.append({"record_key": key, "origin": origin, "stage": stage, "reason": reason,
                             "model_tag": self.model_tag})

    def _flush(self, force: bool = False) -> None:
        if self._rows and (force or len(self._rows) >= self.config.write_every):
            spec, rows = model_spec(self.config), self._rows
            if self.projector is not None:
                spec = self.projector.spec(spec, self.config.heads)
                rows = self.projector.project_rows(rows)
            self.store.ensure_table(self.table_tag, self.table_dim, spec)
            table = pa.Table.from_pylist(rows, schema=self.store.table.schema)
            self.store.upsert(table)
            self._rows = []
        if self._errors and (force or len(self._errors) >= self.config.write_every):
            self.store.record_errors(self._errors)
            self._errors = []

    # -- the run -----------------------------------------------------------------------------------------------
    def run(self, manifests: Sequence[str | Path]) -> EmbedSummary:
        paths = [Path(m) for m in manifests]
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"manifest not found: {p}")
        self.store.clear_manifest_errors([str(p) for p in paths])
        rows = itertools.chain.from_iterable(read_manifest(p, self.config.default_domain) for p in paths)
        show = self.config.progress
        if show is None:
            show = logger.isEnabledFor(logging.INFO)
        start = time.perf_counter()
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="cope-extract") as pool, tqdm(
            total=_count_rows(paths), unit="rec", disable=not show, desc="embed", dynamic_ncols=True
        ) as bar:
            batch: list[_Prepared] = []
            for prepared in self._prepared(self._todo(rows, pool, bar), pool):
                bar.update(1)
                if prepared.error is not None:
                    self._fail(prepared.record.record_key, prepared.origin, "extract", prepared.error)
                    continue
                batch.append(prepared)
                if sum(p.n_images for p in batch) >= self.config.batch_size or len(batch) >= self.config.text_batch_size:
                    self._encode(batch)
                    batch = []
                    self._flush()
                    bar.set_postfix(done=self.summary.done, skip=self.summary.skipped,
                                    fail=self.summary.failed + self.summary.invalid, refresh=False)
            if batch:
                self._encode(batch)
            self._flush(force=True)
        self.summary.seconds = time.perf_counter() - start
        if self.config.compact and self.summary.done and self.store.exists:
            self.store.compact()  # lance's optimize: also folds the new rows into existing ANN indexes
        if self.summary.done and self.store.exists:
            from store.index import index_report

            report = index_report(self.store.table)
            self.summary.unindexed = report.unindexed_rows if report.vector_index() else None
            logger.info("index state of %r: %s", self.store.name, report)
        logger.info("%s", self.summary)
        return self.summary


def prepare_record(
    record: Record, origin: str, digest: str, preprocess: Callable[[Any], torch.Tensor], options: ExtractOptions
) -> _Prepared:
    """Decode a record and preprocess its images into model tensors (runs in worker threads or Ray tasks)."""
    import extractors

    prepared = _Prepared(record, origin, digest)
    try:
        prepared.contents = extractors.extract(record, options)
        prepared.tensors = [[preprocess(im) for im in c.images] for c in prepared.contents]
        for c in prepared.contents:
            c.images = []  # the tensors are all the model needs; free the decoded pictures
    except ExtractionError as e:
        prepared.error = str(e)
    except Exception as e:  # a bug or an unexpected decoder error must not stop the job
        logger.debug("extraction of %s failed", record.record_key, exc_info=True)
        prepared.error = f"{type(e).__name__}: {e}"
    return prepared


def encode_prepared(
    encoder: Encoder, batch: Sequence[_Prepared], config: EmbedConfig, model_tag: str
) -> tuple[list[dict[str, Any]], int]:
    """Encode the images of many records in full batches and their texts together, fuse: store rows, images."""
    import torch

    tensors = [t for p in batch for per_content in p.tensors for t in per_content]
    texts = [c.text for p in batch for c in p.contents]
    bs = config.batch_size
    image_vecs = np.concatenate(
        [np.zeros((0, encoder.dim), np.float32)]
        + [encoder.encode_image_tensors(torch.stack(tensors[i : i + bs])) for i in range(0, len(tensors), bs)]
    )
    has_text = [bool(t.strip()) for t in texts]
    text_vecs = np.zeros((len(texts), encoder.dim), np.float32)
    idx = [i for i, h in enumerate(has_text) if h]
    if idx:
        text_vecs[idx] = encoder.encode_texts([texts[i] for i in idx], config.text_batch_size)
    rows: list[dict[str, Any]] = []
    at, img_pos, txt_pos = now_utc(), 0, 0
    zeros = np.zeros(encoder.dim, np.float32)
    for p in batch:
        for content, per_content in zip(p.contents, p.tensors):
            n = len(per_content)
            image = mean_vector(image_vecs[img_pos : img_pos + n]) if n else None
            text = text_vecs[txt_pos] if has_text[txt_pos] else None
            img_pos, txt_pos = img_pos + n, txt_pos + 1
            rows.append(
                {
                    "item_id": content.item_id,
                    "record_key": content.record_key,
                    "domain": content.domain,
                    "source_id": content.source_id,
                    "slice_start": content.slice_start,
                    "slice_end": content.slice_end,
                    "vector": fuse(image, text, config.fusion),
                    "image_vector": image if image is not None else zeros,
                    "text_vector": text if text is not None else zeros,
                    "has_image": image is not None,
                    "has_text": text is not None,
                    "n_images": n,
                    "text": content.text,
                    "media_uri": content.media_uri,
                    "content_hash": slice_hash(p.digest, content.slice_start, content.slice_end)
                    if content.domain == "live" else p.digest,
                    "record_hash": p.digest,
                    "model_tag": model_tag,
                    "origin": p.origin,
                    "metadata": json.dumps(content.metadata, ensure_ascii=False, default=str),
                    "updated_at": at,
                }
            )
    return rows, len(tensors)


def embed(
    manifests: str | Path | Sequence[str | Path],
    db: str | Path,
    *,
    encoder: Encoder | None = None,
    config: EmbedConfig | None = None,
    **options: Any,
) -> EmbedSummary:
    """Embed every record of the manifests into the LanceDB directory ``db``. Options are :class:`EmbedConfig` fields.

    >>> summary = embed("catalog.jsonl", "./cope.lancedb", model="open_clip:ViT-S-32")  # doctest: +SKIP
    >>> summary.done, summary.failed  # doctest: +SKIP
    """
    if isinstance(manifests, (str, Path)):
        manifests = [manifests]
    config = EmbedConfig.model_validate({**(config or EmbedConfig()).model_dump(), **options})
    return EmbedJob(db, config, encoder).run(manifests)
