"""Compact tables: a table's rows written into a new table through a fitted PCA and/or in a smaller storage, without
re-running any encoder (``cope reproject --pca DIM --float16 --table NEW``).

``pca=DIM`` fits a PCA on a sample of the source table's unified vectors (:func:`cope.projection.fit_table_pca`),
keeps it in ``<db>/_cope_projections/<fingerprint>/`` and adds it to the table's pipeline spec: the new table's tag
is ``<source tag>;pca=<fingerprint>``, its dimension ``DIM``, and queries on it go through the same projection
(:class:`cope.embedding.Pipeline`), as do ``cope embed --table NEW`` runs. ``float16`` stores every vector column in
half precision; ``vector_only`` keeps only the unified ``vector`` (see :class:`cope.store.schema.Storage` for what
that gives up). The measured trade-offs are in docs/compact.md.

>>> summary = compact_table("./cope.lancedb", "items_pca", pca=256, float16=True)  # doctest: +SKIP
>>> cope.open("./cope.lancedb", table="items_pca").search("red ball")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from cope.errors import StoreMismatchError, UsageError
from cope.pipeline import PipelineSpec
from cope.projection import (
    DEFAULT_SAMPLE,
    PROJECTIONS_DIR,
    PcaProjection,
    fit_table_pca,
    install_projection,
    load_projection,
)
from cope.store import ItemStore
from cope.store.schema import META_SOURCE_TABLE, Storage

logger = logging.getLogger(__name__)

__all__ = ["CompactSummary", "compact_table"]


@dataclass
class CompactSummary:
    rows: int
    table: str
    model_tag: str
    dim: int
    storage: Storage
    seconds: float
    projection: str | None = None  # fingerprint of the PCA
    explained: float | None = None  # share of the fitted sample's variance the PCA keeps
    projection_path: str | None = None

    @property
    def vector_bytes(self) -> int:
        """Bytes of the vector columns per row (before compression and indexes)."""
        return self.storage.bytes_per_item(self.dim)

    def __str__(self) -> str:
        pca = (f", PCA {self.projection} keeping {100 * self.explained:.1f}% of the variance"
               if self.projection and self.explained is not None else "")
        layout = f"{self.storage.vector_dtype}{'' if self.storage.modalities else ', unified vector only'}"
        return (f"wrote {self.rows} rows to table {self.table!r} (model {self.model_tag}, dim {self.dim}, {layout}: "
                f"{self.vector_bytes} vector bytes per row{pca}) in {self.seconds:.1f} s")


def compact_table(
    db: str | os.PathLike[str],
    table: str,
    *,
    source_table: str = "items",
    pca: int | None = None,
    projection: str | os.PathLike[str] | PcaProjection | None = None,
    float16: bool = False,
    vector_only: bool = False,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    center: bool = False,
    save_to: str | os.PathLike[str] | None = None,
    batch_rows: int = 4096,
    progress: bool | None = None,
    compact: bool = True,
) -> CompactSummary:
    """Write every row of ``source_table`` into ``table`` (same db) through a PCA (``pca``: fit one keeping that
    many directions; ``projection``: a fitted one) and/or in a smaller storage (``float16``, ``vector_only``).

    The PCA is saved into ``<db>/_cope_projections/<fingerprint>/`` (and ``save_to`` when given, recorded as its
    absolute path). Refuses a target table of another pipeline or storage; re-running writes the same rows.
    """
    uri = str(db) if "://" in str(db) else str(Path(db).resolve())
    if table == source_table:
        raise UsageError(f"--table {table!r} is the source table: pick a new table name for the compact copy")
    if pca is not None and projection is not None:
        raise UsageError("give --pca DIM (fit a projection) or --projection FOLDER (a fitted one), not both")
    src = ItemStore.open(uri, source_table)
    src_tag, src_dim = src.model_tag, src.dim
    schema = src.table.schema
    if src_tag is None or src_dim is None:
        raise StoreMismatchError(f"table {source_table!r} in {uri} records no model tag or dimension")
    base_spec = PipelineSpec.from_metadata(src.metadata)
    if base_spec is not None and base_spec.projection is not None and (pca is not None or projection is not None):
        raise UsageError(f"table {source_table!r} is already projected ({base_spec.projection.kind} "
                         f"{base_spec.projection.fingerprint}); fit on the table it was made from")
    start = time.perf_counter()
    proj: PcaProjection | None = None
    if pca is not None:
        proj = fit_table_pca(uri, pca, table=source_table, sample=sample, seed=seed, center=center)
        logger.info("fitted PCA %s on %d rows of %r: %d -> %d keeps %.1f%% of the variance", proj.fingerprint,
                    proj.n_fit, source_table, proj.input_dim, proj.dim, 100 * proj.explained)
        if save_to is None and "://" in uri:
            raise UsageError(f"{uri} is not a local folder: pass save_to (--save-to) for the fitted projection")
        proj.path = Path(save_to) if save_to is not None else Path(uri) / PROJECTIONS_DIR / proj.fingerprint
    elif projection is not None:
        proj = projection if isinstance(projection, PcaProjection) else load_projection(projection)
    storage = Storage(vector_dtype="float16" if float16 else "float32",
                      modalities=Storage.of(schema).modalities and not vector_only)
    tag, dim, metadata = src_tag, src_dim, dict(src.metadata)
    if proj is not None:
        if proj.base_tag != src_tag or proj.input_dim != src_dim:
            raise StoreMismatchError(f"this PCA was fitted on vectors of {proj.base_tag!r} (dim {proj.input_dim}); "
                                     f"table {source_table!r} holds {src_tag!r} (dim {src_dim})")
        ref = proj.ref()
        if base_spec is not None:
            spec = base_spec.with_projection(ref)
            tag, dim, metadata = spec.tag, spec.dim, spec.to_metadata()
            if pca is None:
                install_projection(ref, uri)
        else:
            logger.warning("table %r records no pipeline: %r will be searchable by vectors and stored items only",
                           source_table, table)
            tag, dim = f"{src_tag};{ref.kind}={ref.fingerprint}", ref.dim
            metadata = {}
    metadata = {k: v for k, v in metadata.items() if k.startswith(b"cope.")}
    metadata.update(storage.to_metadata())
    if not storage.modalities:  # where the per-modality columns are: named by what a unified-only table refuses
        metadata.setdefault(META_SOURCE_TABLE, source_table.encode())
    dst = ItemStore.open(uri, table, model_tag=tag, dim=dim)
    if dst.exists and Storage.of(dst.table.schema) != storage:
        raise StoreMismatchError(f"table {table!r} stores vectors as {Storage.of(dst.table.schema)}, not {storage}; "
                                 "use the same storage options or another --table")
    if pca is not None and proj is not None and proj.path is not None:
        proj.save(proj.path)  # once the target table is known to take it
        if base_spec is not None:
            install_projection(proj.ref(), uri)
    fresh = not dst.exists or dst.count() == 0
    dst.ensure_table(tag, dim, metadata, ocr="ocr_text" in schema.names)
    target = dst.table.schema
    show = progress if progress is not None else logger.isEnabledFor(logging.INFO)
    n = 0
    with tqdm(total=src.count(), desc="reproject", unit="row", disable=not show, dynamic_ncols=True) as bar:
        for batch in src.table.search().limit(None).to_batches(batch_rows):
            rows = pa.Table.from_batches([batch])
            rows = rows.select([c for c in schema.names if c in rows.column_names])
            if proj is not None:
                out = proj.project_table(rows, target, model_tag=tag)
            else:
                out = rows.select(target.names).cast(target)
            if fresh:
                dst.table.add(out)  # a new table: the source's ids are unique already, no merge needed
            else:
                dst.upsert(out)
            n += rows.num_rows
            bar.update(rows.num_rows)
    if compact and n:
        dst.compact()
    summary = CompactSummary(n, table, tag, dim, storage, time.perf_counter() - start,
                             projection=proj.fingerprint if proj else None, explained=proj.explained if proj else None,
                             projection_path=str(proj.path) if proj and proj.path else None)
    logger.info("%s", summary)
    return summary
