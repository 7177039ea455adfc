"""The batch embedding job on one machine: manifest -> extract (worker threads) -> encode (batched) -> fuse ->
project (heads) -> upsert into LanceDB.

Resumable and idempotent: a record whose content hash is already stored (in a table of the same pipeline) is skipped
before any decoding, so a re-run after a crash continues where it stopped and a re-run on an unchanged catalog does
no model work. A failing record is written to the errors table with its reason; the job carries on. The bookkeeping
is :mod:`cope.embed_core` (shared with the Ray engine); this module only schedules the work.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from cope import media
from cope.embed_core import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EmbedConfig,
    EmbedCore,
    EmbedSummary,
    hash_records,
    manifest_paths,
    select_todo,
)
from cope.embedding import Prepared
from cope.encoders.base import Encoder
from cope.manifest import ManifestRow, check_inputs, count_rows
from cope.records import Record
from cope.timing import timed

logger = logging.getLogger(__name__)

__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EmbedConfig", "EmbedJob", "EmbedSummary", "embed"]


class EmbedJob:
    """One run of the embedding job on this machine. Most users call :func:`embed` instead."""

    def __init__(self, db: str | Path, config: EmbedConfig, encoder: Encoder | None = None) -> None:
        self.config = config
        self.core = EmbedCore.open(db, config, encoder)
        self.store = self.core.store
        self.summary = self.core.summary

    def _todo(self, rows: Iterator[ManifestRow], pool: ThreadPoolExecutor, bar: tqdm) -> Iterator[tuple[Record, str, str]]:
        """Valid records whose stored hash differs from their current one; invalid rows and skips are counted."""
        seconds = self.summary.stages
        while True:
            with timed(seconds, "read"):
                chunk = list(itertools.islice(rows, self.config.lookup_every))
                if not chunk:
                    return
                valid = self.core.valid(chunk)
                records = [r.record for r in valid]
                digests = hash_records(records, pool.map)  # type: ignore[arg-type]
                needed = select_todo(self.store, records, digests)  # type: ignore[arg-type]
            bar.update(len(chunk) - len(valid))
            for row, digest, todo in zip(valid, digests, needed):
                if todo:
                    yield row.record, row.where, digest  # type: ignore[misc]
                else:
                    self.core.skipped()
                    bar.update(1)

    def _prepared(self, todo: Iterable[tuple[Record, str, str]], pool: ThreadPoolExecutor) -> Iterator[Prepared]:
        """Extraction results in manifest order, with a bounded number of records in flight."""
        window = max(4, 2 * self.config.batch_size)
        pending: deque[Future[Prepared]] = deque()
        seconds = self.summary.stages
        for record, origin, digest in todo:
            pending.append(pool.submit(self.core.pipeline.prepare, record, origin, digest))
            if len(pending) >= window:
                with timed(seconds, "wait"):
                    prepared = pending.popleft().result()
                yield prepared
        while pending:
            with timed(seconds, "wait"):
                prepared = pending.popleft().result()
            yield prepared

    def _encode(self, batch: list[Prepared]) -> None:
        try:
            rows = self.core.pipeline.encode(batch, self.config.batch_size, self.config.text_batch_size,
                                             self.summary.stages)
        except Exception as e:
            logger.exception("encoding a batch of %d records failed", len(batch))
            for p in batch:
                assert p.record is not None
                self.core.fail(p.record.record_key, p.origin, "encode", f"{type(e).__name__}: {e}")
            return
        self.core.add_rows(rows)
        self.core.done(len(batch), len(rows), sum(p.n_images for p in batch))

    def run(self, manifests: Sequence[str | Path]) -> EmbedSummary:
        paths = manifest_paths(manifests)
        rows = self.core.manifest_rows(paths)
        start = time.perf_counter()
        with ThreadPoolExecutor(self.config.workers, thread_name_prefix="cope-extract") as pool, tqdm(
            total=count_rows(paths), unit="rec", disable=not self.core.show_progress(), desc="embed",
            dynamic_ncols=True,
        ) as bar:
            batch: list[Prepared] = []
            for prepared in self._prepared(self._todo(rows, pool, bar), pool):
                bar.update(1)
                if not self.core.ready(prepared):
                    continue
                batch.append(prepared)
                if (sum(p.n_images for p in batch) >= self.config.batch_size
                        or len(batch) >= self.config.text_batch_size):
                    self._encode(batch)
                    batch = []
                    self.core.flush()
                    s = self.summary
                    bar.set_postfix(done=s.done, skip=s.skipped, fail=s.failed + s.invalid, refresh=False)
            if batch:
                self._encode(batch)
        return self.core.finish(time.perf_counter() - start)


def embed(
    manifests: str | Path | Sequence[str | Path],
    db: str | Path,
    *,
    encoder: Encoder | None = None,
    config: EmbedConfig | None = None,
    **options: Any,
) -> EmbedSummary:
    """Embed every record of the manifests into the LanceDB directory ``db``. Options are :class:`EmbedConfig` fields.

    >>> summary = embed(catalog, new_db, model=TINY_MODEL)
    >>> summary.done, summary.failed, embed(catalog, new_db, model=TINY_MODEL).skipped
    (3, 0, 3)
    """
    if isinstance(manifests, (str, Path)):
        manifests = [manifests]
    config = EmbedConfig.model_validate({**(config or EmbedConfig()).model_dump(), **options})
    if config.remote is not None:
        media.configure(config.remote)
    check_inputs(manifest_paths(manifests), config.manifest_options())  # before any model loads
    return EmbedJob(db, config, encoder).run(manifests)
