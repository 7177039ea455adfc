"""``cope eval`` on a LanceDB table: retrieval in every direction between the domains or modalities present.

The ground truth is a key in each row's metadata (``product_key`` by default: same product; a caption group works
the same way). Rows without the key are left out and counted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from cope.evaluation import RetrievalResult, evaluate_directions, format_table, results_to_json
from cope.store import ItemStore
from cope.store.schema import require_modalities

logger = logging.getLogger(__name__)

GroupBy = Literal["domain", "modality", "domain+modality"]


class EvalReport(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    table: str
    model_tag: str | None
    key: str
    by: str
    rows: int
    rows_without_key: int
    results: dict[str, RetrievalResult] = Field(default_factory=dict)

    def table_text(self) -> str:
        return format_table(self.results)


def evaluate_table(
    db: str | Path, table: str = "items", *, key: str = "product_key", by: GroupBy = "domain",
    vector: str = "vector", ks: tuple[int, ...] = (1, 5, 10),
) -> EvalReport:
    """Evaluate retrieval between groups of a stored table.

    ``by="domain"`` compares the ``vector`` column across domains (product -> video, ...); ``by="modality"`` compares
    every item's text vector against every item's image vector (text -> image, image -> text);
    ``by="domain+modality"`` splits both ways (``product/text -> product/image``...).

    >>> report = evaluate_table("./cope.lancedb", key="product_key", by="domain")  # doctest: +SKIP
    >>> print(report.table_text())  # doctest: +SKIP
    """
    store = ItemStore.open(db, table)
    if by != "domain" or vector != "vector":
        flags = f"--by {by}" if by != "domain" else f"--vector {vector}"
        require_modalities(store.table.schema, table, f"cope eval {flags}", fix="evaluate the unified vector "
                           "(--by domain --vector vector)")
    cols = ["item_id", "domain", "metadata", "has_image", "has_text"]
    cols += ["image_vector", "text_vector"] if by != "domain" else [vector]
    data = store.read(cols).to_pylist()
    keyed = []
    for row in data:
        value = json.loads(row["metadata"] or "{}").get(key)
        if value is not None:
            keyed.append((row, str(value)))
    vectors: list[list[float]] = []
    keys: list[str] = []
    groups: list[str] = []
    ids: list[str] = []
    for row, value in keyed:
        if by == "domain":
            parts = [(row["domain"], row[vector])]
        else:
            parts = []
            if row["has_image"]:
                parts.append(("image", row["image_vector"]))
            if row["has_text"]:
                parts.append(("text", row["text_vector"]))
            if by == "domain+modality":
                parts = [(f"{row['domain']}/{m}", v) for m, v in parts]
        for group, vec in parts:
            vectors.append(vec)
            keys.append(value)
            groups.append(group)
            ids.append(f"{row['item_id']}|{group}")
    results: dict[str, RetrievalResult] = {}
    if vectors:
        raw = evaluate_directions(np.asarray(vectors, np.float32), keys, groups, ids, ks)
        results = {f"{src}->{dst}": r for (src, dst), r in raw.items()}
    report = EvalReport(table=table, model_tag=store.model_tag, key=key, by=by, rows=len(data),
                        rows_without_key=len(data) - len(keyed), results=results)
    if not results:
        logger.warning("no direction has a query with a relevant item: are there rows of two groups sharing a %r?", key)
    return report


def save_report(report: EvalReport, path: str | Path) -> None:
    """Write the report as JSON (metrics per direction, plus table, model tag, key and counts)."""
    Path(path).write_text(results_to_json(report.results, **report.model_dump(exclude={"results"})))
