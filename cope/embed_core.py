"""The embed job's core, shared by its two schedulers (:mod:`cope.job` on one machine, :mod:`cope.ray_engine` on
Ray): settings, the skip decision, error records, summary counts, the table and its pipeline spec, writes, the
final compaction and the index report. The schedulers only decide where extraction and encoding run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cope.embed_config import EXIT_OK, EXIT_SOME_FAILED, EmbedConfig, EmbedSummary
from cope.embedding import Pipeline, Prepared
from cope.encoders.base import Encoder
from cope.hashing import record_hash
from cope.manifest import ManifestRow, expand_inputs, read_manifest
from cope.pipeline import PipelineSpec
from cope.records import Record
from cope.store import ItemStore
from cope.store.schema import compute_schema
from cope.timing import add_seconds, timed

logger = logging.getLogger(__name__)

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EmbedConfig", "EmbedCore", "EmbedSummary", "error_row", "select_todo",
           "write_rows"]

MAX_REPORTED = 20  # reasons kept in the summary (all of them go to the errors table)


def error_row(key: str, origin: str, stage: str, reason: str, tag: str) -> dict[str, Any]:
    """A row of the errors table."""
    return {"record_key": key, "origin": origin, "stage": stage, "reason": reason, "model_tag": tag}


def select_todo(store: ItemStore, records: Sequence[Record], digests: Sequence[str]) -> list[bool]:
    """The skip decision: a record is done when every stored row of it has its current content hash (the table's
    pipeline is fixed, so the hash alone decides).

    Item ids of these records stored more than once (left by an older version) are repaired first: the newest row
    of each stays. Callers run under the run's write lease (the driver's, for Ray tasks).
    """
    keys = [r.record_key for r in records]
    stored = store.stored_records(keys)
    if stored.duplicates:
        removed = store.repair_duplicates(sorted(stored.duplicates))
        logger.warning("%d item ids were stored more than once (%s); removed %d older rows, kept the newest of each",
                       len(stored.duplicates), ", ".join(sorted(stored.duplicates)[:5]), removed)
        stored = store.stored_records(keys)
    return [stored.hashes.get(r.record_key) != {d} for r, d in zip(records, digests)]


def write_rows(store: ItemStore, rows: list[dict[str, Any]]) -> None:
    """Upsert store rows (whole records) in one commit, in the table's storage (float16 vectors, or the unified
    vector only: the columns a table does not have are left out)."""
    if rows:
        schema = store.table.schema
        store.upsert(pa.Table.from_pylist(rows, schema=compute_schema(schema)).cast(schema))


def resolve_db(db: str | os.PathLike[str]) -> str:
    """An absolute path for a local database (workers and heads lookups do not depend on the working directory)."""
    return str(db) if "://" in str(db) else str(Path(db).resolve())


def _stored_spec(db: str, table: str) -> PipelineSpec | None:
    """The pipeline spec a table records (None: no such database, table or spec); creates nothing."""
    store = ItemStore.open(db, table)  # opening creates no folder
    return PipelineSpec.from_metadata(store.metadata) if store.exists else None


def _same_request(stored: PipelineSpec, asked: PipelineSpec) -> bool:
    """Whether a table's spec is what a run asks for, up to what only building the models tells (the weights'
    fingerprint) and where the heads were found."""
    def request(spec: PipelineSpec) -> PipelineSpec:
        heads = spec.heads.model_copy(update={"uri": None}) if spec.heads else None
        projection = spec.projection.model_copy(update={"uri": None}) if spec.projection else None
        return spec.model_copy(update={"encoder_tag": None, "encoder_dim": None, "heads": heads,
                                       "projection": projection})

    return request(stored) == request(asked)


def manifest_paths(manifests: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The manifests and media folders that files, folders and globs stand for (InputNotFoundError if none)."""
    return expand_inputs(manifests)


class EmbedCore:
    """Bookkeeping of one embed run: the table, the summary, buffered rows and errors.

    The pipeline's models are built on first use (:attr:`pipeline`): when the table already records the pipeline the
    run asks for, a run with nothing new to embed never loads a model.
    """

    def __init__(self, db: str, config: EmbedConfig, spec: PipelineSpec, pipeline: Pipeline | None = None,
                 encoder: Encoder | None = None) -> None:
        self.db = db
        self.config = config
        self.spec = spec
        self._pipeline = pipeline
        self._encoder = encoder
        self.store = ItemStore.open(db, config.table, model_tag=self.spec.tag, dim=self.spec.dim)
        self.summary = EmbedSummary(model_tag=self.spec.tag)
        self._rows: list[dict[str, Any]] = []
        self._errors: list[dict[str, Any]] = []

    @property
    def pipeline(self) -> Pipeline:
        """The run's pipeline, built (models loaded) on first use; its encoder must match the spec's weights."""
        if self._pipeline is None:
            self._pipeline = Pipeline.build(self.spec, encoder=self._encoder, db=self.db, device=self.config.device,
                                            threads=self.config.threads)
        return self._pipeline

    def release_pipeline(self) -> None:
        """Drop the models (the Ray driver needs none once the workers have the spec)."""
        self._pipeline = None

    @classmethod
    def open(cls, db: str | os.PathLike[str], config: EmbedConfig, encoder: Encoder | None = None) -> EmbedCore:
        """The run's pipeline spec and table, refusing a table of another pipeline.

        When the table records exactly the pipeline the config asks for (encoder name and options, extraction,
        fusion, heads), that spec is used as it is and the models load only when a record needs them; otherwise
        the pipeline is built now, to learn its tag (the weights' fingerprint) before anything is written.

        A table's fitted projection (PCA, ``cope reproject --pca``) belongs to the table: a run that names none
        (``projection``) writes through the table's own, when the rest of its pipeline is the one asked for.
        """
        db = resolve_db(db)
        spec = config.pipeline_spec()
        if config.heads:
            from cope.heads import heads_ref

            spec = spec.model_copy(update={"heads": heads_ref(config.heads)})
        if config.projection:
            from cope.projection import projection_ref

            spec = spec.model_copy(update={"projection": projection_ref(config.projection)})
        stored = _stored_spec(db, config.table)
        own = stored.projection if stored is not None and spec.projection is None else None
        if own is not None and stored is not None and _same_request(stored.without_projection(), spec):
            logger.info("table %r ends in %s projection %s: new items are written through it", config.table,
                        own.kind, own.fingerprint)
            spec, own = spec.model_copy(update={"projection": own}), None
        if encoder is None:
            if stored is not None and _same_request(stored, spec):
                logger.debug("table %r records this pipeline (%s): models load when needed", config.table, stored.tag)
                return cls(db, config, stored)
        pipeline = Pipeline.build(spec, encoder=encoder, db=db, device=config.device, threads=config.threads)
        if own is not None and stored is not None and pipeline.spec.tag == stored.without_projection().tag:
            logger.info("table %r ends in %s projection %s: new items are written through it", config.table,
                        own.kind, own.fingerprint)  # the encoder passed in makes the table's vectors
            pipeline = Pipeline.build(pipeline.spec.model_copy(update={"projection": own}), encoder=pipeline.encoder,
                                      db=db, device=config.device, threads=config.threads)
        return cls(db, config, pipeline.spec, pipeline)

    @property
    def tag(self) -> str:
        return self.spec.tag

    def ensure_table(self) -> None:
        """Create the table (with the spec in its metadata) and keep a copy of the heads and projection beside it."""
        if self.spec.heads is not None:
            from cope.heads import install_heads

            install_heads(self.spec.heads, self.db)
        if self.spec.projection is not None:
            from cope.projection import install_projection

            install_projection(self.spec.projection, self.db)
        self.store.ensure_table(self.spec.tag, self.spec.dim, self.spec.to_metadata(), ocr=self.spec.extract.ocr)

    def manifest_rows(self, manifests: Sequence[str | os.PathLike[str]]) -> Iterator[ManifestRow]:
        paths = manifest_paths(manifests)
        self.store.clear_manifest_errors([str(p) for p in paths])
        options = self.config.manifest_options()
        for p in paths:
            yield from read_manifest(p, options=options)

    # -- bookkeeping ---------------------------------------------------------------------------------------------
    def valid(self, chunk: Sequence[ManifestRow]) -> list[ManifestRow]:
        """The rows that are records, one per record key (the last one wins, with a warning); invalid rows are
        reported (with file and line) and counted.

        The first call takes the table's write lease for this run (one writer per table; a second run waits
        ``COPE_LEASE_WAIT`` seconds, then fails with a message naming the holder); every call checks it is held.
        """
        lease = self.store.acquire_lease(purpose="cope embed", take_over_own=True)
        lease.check()
        out: dict[str, ManifestRow] = {}
        for row in chunk:
            if row.record is None:
                self.summary.invalid += 1
                self.fail(f"manifest:{row.where}", row.where, "manifest", row.error or "invalid row")
                continue
            key = row.record.record_key
            earlier = out.pop(key, None)
            if earlier is not None:
                logger.warning("%s: %s repeats the record of %s; the later row wins", row.where, key, earlier.where)
            out[key] = row
        return list(out.values())

    def skipped(self, n: int = 1) -> None:
        self.summary.skipped += n

    def fail(self, key: str, origin: str, stage: str, reason: str, *, buffered: bool = True,
             counted: bool = True) -> None:
        if stage != "manifest" and counted:
            self.summary.failed += 1
        if len(self.summary.errors) < MAX_REPORTED:
            self.summary.errors.append(f"{origin}: {reason}")
        logger.warning("%s: %s failed: %s", origin if key.startswith("manifest:") else f"{origin} {key}", stage, reason)
        if buffered:
            self._errors.append(error_row(key, origin, stage, reason, self.tag))

    def done(self, records: int, items: int, images: int) -> None:
        self.summary.done += records
        self.summary.items += items
        self.summary.images += images

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self._rows.extend(rows)

    def ready(self, prepared: Prepared) -> bool:
        """Whether an extracted record goes on to the model; a failed extraction is recorded. An OCR failure is
        recorded too, but the record goes on (it keeps its image and text parts)."""
        assert prepared.record is not None
        add_seconds(self.summary.stages, prepared.seconds)
        if prepared.error is not None:
            self.fail(prepared.record.record_key, prepared.origin, "extract", prepared.error)
            return False
        reasons = [f"{c.item_id}: {c.ocr_error}" for c in prepared.contents if c.ocr_error]
        if reasons:
            self.summary.ocr_failed += 1
            self.fail(prepared.record.record_key, prepared.origin, "ocr", "; ".join(reasons), counted=False)
        return True

    def flush(self, force: bool = False) -> None:
        """Write buffered rows, then errors (after the rows: an upsert clears the errors of its records, and an OCR
        failure belongs to a record that is written)."""
        n = self.config.write_every
        if not (force or len(self._rows) >= n or len(self._errors) >= n):
            return
        with timed(self.summary.stages, "write"):
            if self._rows:
                self.ensure_table()
                write_rows(self.store, self._rows)
                self._rows = []
            if self._pipeline is not None:
                self._pipeline.flush()
            if self._errors:
                self.store.record_errors(self._errors)
                self._errors = []

    def finish(self, seconds: float) -> EmbedSummary:
        """Write what is buffered, compact, report the index state, release the write lease, log the summary."""
        self.flush(force=True)
        self.summary.seconds = seconds
        store = self.store
        if self.summary.done and not store.exists:  # the table was created by other processes (Ray tasks)
            store = ItemStore.open(self.db, self.config.table)
        if self.config.compact and self.summary.done and store.exists:
            with timed(self.summary.stages, "compact"):
                store.compact()  # lance's optimize (under this run's lease): folds new rows into existing indexes
        if self.summary.done and store.exists:
            from cope.store.index import index_report

            store.table.checkout_latest()  # rows may have been written by other processes
            report = index_report(store.table)
            self.summary.unindexed = report.unindexed_rows if report.vector_index() else None
            logger.info("index state of %r: %s", store.name, report)
        if self._pipeline is not None and self.spec.extract.ocr:
            self.summary.ocr_read = self._pipeline.ocr_stats.get("read", 0)
            self.summary.ocr_cached = self._pipeline.ocr_stats.get("cached", 0)
            self.summary.ocr_ms = self._pipeline.ocr_stats.get("ms", 0)
        self.store.release_lease()
        logger.info("%s", self.summary)
        if self.summary.stages:
            logger.info("seconds per stage: %s (decode, ocr and preprocess summed over the extraction threads)",
                        self.summary.stage_report())
        return self.summary

    def show_progress(self) -> bool:
        show = self.config.progress
        return logger.isEnabledFor(logging.INFO) if show is None else show


def hash_records(records: Sequence[Record], mapper: Any = map) -> list[str]:
    """Content hashes of records (``mapper``: a thread pool's ``map`` to hash files in parallel)."""
    return list(mapper(record_hash, records))
