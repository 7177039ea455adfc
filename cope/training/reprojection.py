"""Apply trained heads to stored vectors: a new table in the heads' space, without re-running any encoder.

The new table has its own model tag, ``<base tag>;heads=<fingerprint>``, and dimension (the heads' ``dim``), so it
never mixes with the base vectors. ``vector`` is the fused item vector; ``image_vector`` / ``text_vector`` are the
image-only / text-only projections through the same domain head (zeros where the part is absent).

>>> summary = reproject("./cope.lancedb", "heads/", "items_cope")  # doctest: +SKIP

The projection itself is :class:`cope.heads.HeadsProjector`, shared with the embed job and queries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from cope.heads.checkpoint import check_compatible
from cope.heads.projector import HeadsProjector

logger = logging.getLogger(__name__)


@dataclass
class ReprojectSummary:
    rows: int
    table: str
    model_tag: str
    dim: int
    seconds: float

    def __str__(self) -> str:
        return (f"wrote {self.rows} rows to table {self.table!r} (model {self.model_tag}, dim {self.dim}) "
                f"in {self.seconds:.1f} s")


def reproject(
    db: str | Path,
    heads: str | Path | HeadsProjector,
    table: str,
    *,
    source_table: str = "items",
    domain_overrides: Mapping[str, str] | None = None,
    default_domain: str | None = None,
    batch_rows: int = 4096,
    progress: bool | None = None,
    compact: bool = True,
) -> ReprojectSummary:
    """Write every row of ``source_table`` through the heads into ``table`` (same db), upserting by item id.

    Refuses heads made for another base model tag or dimension than the source table's, and a target table that
    holds vectors of another model. Re-running with the same heads rewrites the same rows (idempotent).
    """
    from cope.heads import heads_ref, install_heads
    from cope.pipeline import PipelineSpec
    from cope.store import ItemStore

    if table == source_table:
        raise ValueError(f"--table {table!r} is the source table: pick a new table name for the projected vectors")
    src = ItemStore.open(db, source_table)
    base_tag, base_dim = src.model_tag, src.dim
    _ = src.table
    if isinstance(heads, HeadsProjector):
        check_compatible(heads.heads.config, base_tag, base_dim, f"table {source_table!r}")
        projector = heads
    else:
        projector = HeadsProjector.load(heads, model_tag=base_tag, dim=base_dim, domain_overrides=domain_overrides,
                                        default_domain=default_domain)
    metadata: dict[bytes, bytes] = {}
    base_spec = PipelineSpec.from_metadata(src.metadata)
    if base_spec is not None and projector.path is not None:  # the new table's pipeline: the source's plus heads
        ref = heads_ref(projector.path, default_domain=projector.default_domain)
        spec = base_spec.with_heads(ref)
        install_heads(ref, db)
        metadata = spec.to_metadata()
    else:
        logger.warning("table %r records no pipeline (or the heads have no checkpoint folder): %r will be "
                       "searchable by vectors and stored items only", source_table, table)
    dst = ItemStore.open(db, table, model_tag=projector.model_tag, dim=projector.dim)
    dst.ensure_table(projector.model_tag, projector.dim, metadata)
    show = progress if progress is not None else logger.isEnabledFor(logging.INFO)
    start = time.perf_counter()
    n = 0
    total = src.count()
    with tqdm(total=total, desc="reproject", unit="row", disable=not show, dynamic_ncols=True) as bar:
        for batch in src.table.search().limit(None).to_batches(batch_rows):
            rows = pa.Table.from_batches([batch])
            if "_distance" in rows.column_names:
                rows = rows.drop_columns(["_distance"])
            rows = rows.select(src.table.schema.names)
            dst.upsert(projector.project_table(rows, dst.table.schema))
            n += rows.num_rows
            bar.update(rows.num_rows)
    if compact and n:
        dst.compact()
    summary = ReprojectSummary(n, table, projector.model_tag, projector.dim, time.perf_counter() - start)
    logger.info("%s", summary)
    return summary


def domain_overrides_from(path: str | Path | None) -> dict[str, str]:
    """item id -> training domain from a labels file's ``domain`` column (empty without a file or column)."""
    if path is None:
        return {}
    from cope.training.pairs import read_labels

    return read_labels(path).domain


__all__ = ["HeadsProjector", "ReprojectSummary", "domain_overrides_from", "reproject"]
