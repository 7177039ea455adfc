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
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from tqdm.auto import tqdm

from cope.errors import UsageError
from cope.heads.checkpoint import check_compatible
from cope.heads.projector import HeadsProjector
from cope.store import ItemStore
from cope.store.schema import require_modalities

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

    if table == source_table:
        raise UsageError(f"--table {table!r} is the source table: pick a new table name for the projected vectors")
    src = ItemStore.open(db, source_table)
    base_tag, base_dim = src.model_tag, src.dim
    require_modalities(src.table.schema, source_table, "cope reproject --heads (heads project the image and text "
                       "vectors)")
    if isinstance(heads, HeadsProjector):
        check_compatible(heads.heads.config, base_tag, base_dim, f"table {source_table!r}")
        projector = heads
    else:
        projector = HeadsProjector.load(heads, model_tag=base_tag, dim=base_dim, domain_overrides=domain_overrides,
                                        default_domain=default_domain)
    _check_domains(src, projector, heads if not isinstance(heads, HeadsProjector) else None)
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


def _check_domains(src: ItemStore, projector: HeadsProjector, path: str | Path | None) -> None:
    """Refuse, before anything is written, a table holding items of domains the heads have no head for (and no
    ``default_domain`` to stand in): name those domains, their rows and the two ways out."""
    if projector.default_domain is not None:
        return
    known = set(projector.heads.config.domains)
    rows = src.read(["item_id", "domain"] if projector.domain_overrides else ["domain"])
    domains = rows.column("domain").to_pylist()
    if projector.domain_overrides:
        over = projector.domain_overrides
        domains = [over.get(i, d) for i, d in zip(rows.column("item_id").to_pylist(), domains)]
    missing = Counter(d for d in domains if d not in known)
    if not missing:
        return
    have = sorted(known)
    which = ", ".join(f"{d!r} ({n} rows)" for d, n in sorted(missing.items()))
    heads = f"the heads in {path}" if path is not None else "the heads"
    raise UsageError(
        f"table {src.name!r} holds items of domain{'s' if len(missing) > 1 else ''} {which} that {heads} have no "
        f"head for (they have {have}): pass --default-domain {have[0]} (or another of {have}) to project them "
        f"through that head, or train heads on labelled items of {'those domains' if len(missing) > 1 else 'it'} "
        "(cope train)"
    )


def domain_overrides_from(path: str | Path | None) -> dict[str, str]:
    """item id -> training domain from a labels file's ``domain`` column (empty without a file or column)."""
    if path is None:
        return {}
    from cope.training.pairs import read_labels

    return read_labels(path).domain


__all__ = ["HeadsProjector", "ReprojectSummary", "domain_overrides_from", "reproject"]
