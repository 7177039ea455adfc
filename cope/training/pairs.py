"""Training labels and vectors: which stored items show the same product, and the split of products.

Labels come from one of three places:

* ``metadata.product_key`` of the stored rows (what ``cope demo`` and most catalogs write);
* a file of ``item_id,product_key`` rows (CSV, TSV, Parquet or JSONL; an optional ``domain`` column overrides the
  stored domain for training, e.g. to treat main images and extra views as two domains);
* a file of explicit positive pairs ``item_a,item_b``: connected items form one product.

``item_id`` is the store key (``product:<id>``, ``video:<id>``, ``live:<live id>:<start>-<end>``...).

>>> labels = labels_from_pairs([("video:v1", "product:p1"), ("live:l1:0-10", "video:v1")])
>>> labels.product_key["live:l1:0-10"] == labels.product_key["product:p1"]
True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from cope.errors import UsageError
from cope.store import ItemStore
from cope.store.schema import require_modalities
from cope.vectors import to_numpy

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]

_KEY_COLUMNS = ("product_key", "product_id")
_PAIR_COLUMNS = (("item_a", "item_b"), ("left", "right"), ("item_id_a", "item_id_b"))


@dataclass
class Labels:
    """item id -> product key, and optionally item id -> training domain (overrides the stored domain)."""

    product_key: dict[str, str] = field(default_factory=dict)
    domain: dict[str, str] = field(default_factory=dict)
    source: str = "metadata.product_key"

    def __len__(self) -> int:
        return len(self.product_key)


def _read_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix in (".csv", ".tsv"):
        import csv

        with path.open(encoding="utf-8", newline="") as f:  # csv keeps every value a string ("007" stays "007")
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        return pa.Table.from_pylist(rows)
    if suffix in (".jsonl", ".json", ".ndjson"):
        rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        return pa.Table.from_pylist(rows)
    raise ValueError(f"unsupported pairs file {path}: use .csv, .tsv, .parquet or .jsonl")


def _strings(table: pa.Table, column: str) -> list[str]:
    return ["" if v is None else str(v).strip() for v in table.column(column).to_pylist()]


def labels_from_pairs(pairs: Iterable[tuple[str, str]], source: str = "pairs") -> Labels:
    """Explicit positive pairs -> product keys: each connected group of items becomes one product.

    The product key of a group is ``pair:<smallest item id>``, so it is stable across runs.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return Labels({x: f"pair:{find(x)}" for x in parent}, source=source)


def read_labels(path: str | Path) -> Labels:
    """Read a labels file: ``item_id,product_key[,domain]`` rows or ``item_a,item_b`` positive pairs."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"pairs file not found: {path}")
    table = _read_table(path)
    cols = set(table.column_names)
    for a, b in _PAIR_COLUMNS:
        if {a, b} <= cols:
            pairs = [(x, y) for x, y in zip(_strings(table, a), _strings(table, b)) if x and y and x != y]
            if not pairs:
                raise ValueError(f"{path}: no non-empty pairs in columns {a!r}, {b!r}")
            return labels_from_pairs(pairs, source=str(path))
    key_col = next((c for c in _KEY_COLUMNS if c in cols), None)
    if "item_id" not in cols or key_col is None:
        raise ValueError(
            f"{path}: expected columns item_id and product_key (optionally domain), or item_a and item_b; "
            f"found {sorted(cols)}"
        )
    labels = Labels(source=str(path))
    domains = _strings(table, "domain") if "domain" in cols else None
    for i, (item, key) in enumerate(zip(_strings(table, "item_id"), _strings(table, key_col))):
        if not item or not key:
            continue
        if labels.product_key.get(item, key) != key:
            raise ValueError(f"{path}: item {item!r} has two product keys ({labels.product_key[item]!r}, {key!r})")
        labels.product_key[item] = key
        if domains is not None and domains[i]:
            labels.domain[item] = domains[i]
    if not labels.product_key:
        raise ValueError(f"{path}: no rows with both item_id and {key_col}")
    return labels


def _metadata_key(raw: str | None, key: str) -> str | None:
    if not raw:
        return None
    try:
        value = json.loads(raw).get(key)
    except (json.JSONDecodeError, AttributeError):
        return None
    return None if value is None or str(value).strip() == "" else str(value)


@dataclass
class ItemVectors:
    """Stored vectors of labelled items, as numpy arrays (row i is one item)."""

    item_ids: list[str]
    domains: np.ndarray  # object array of training domain names
    keys: np.ndarray  # object array of product keys
    image: np.ndarray  # (N, D) float32, zeros where has_image is False
    text: np.ndarray  # (N, D) float32, zeros where has_text is False
    has_image: np.ndarray  # (N,) bool
    has_text: np.ndarray  # (N,) bool
    base: np.ndarray  # (N, D) the stored unified vector (the "before training" vectors)
    model_tag: str = ""

    def __len__(self) -> int:
        return len(self.item_ids)

    @property
    def dim(self) -> int:
        return int(self.image.shape[1])

    def subset(self, mask: np.ndarray) -> ItemVectors:
        idx = np.flatnonzero(mask)
        return ItemVectors(
            [self.item_ids[i] for i in idx], self.domains[idx], self.keys[idx], self.image[idx], self.text[idx],
            self.has_image[idx], self.has_text[idx], self.base[idx], self.model_tag,
        )

    def domain_counts(self) -> dict[str, int]:
        names, counts = np.unique(self.domains.astype(str), return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts)}


_READ_COLUMNS = ["item_id", "domain", "metadata", "vector", "image_vector", "text_vector", "has_image", "has_text"]


def load_item_vectors(
    store: ItemStore, labels: Labels | None = None, *, metadata_key: str = "product_key", batch_rows: int = 65536
) -> ItemVectors:
    """Read the labelled items of a table (``labels`` from a file, or ``metadata[metadata_key]`` of each row).

    >>> data = load_item_vectors(ItemStore.open("./cope.lancedb"))  # doctest: +SKIP
    """
    dim = store.dim
    if dim is None:
        raise ValueError(f"table {store.name!r} in {store.uri} has no vector dimension in its metadata")
    require_modalities(store.table.schema, store.name, "cope train (heads learn from the image and text vectors)")
    parts: dict[str, list] = {k: [] for k in ("ids", "domains", "keys", "image", "text", "hi", "ht", "base")}
    n_rows = 0
    reader = store.table.search().select(_READ_COLUMNS).limit(None).to_batches(batch_rows)
    for batch in reader:
        n_rows += batch.num_rows
        ids = batch.column("item_id").to_pylist()
        if labels is not None:
            keys = [labels.product_key.get(i) for i in ids]
        else:
            keys = [_metadata_key(m, metadata_key) for m in batch.column("metadata").to_pylist()]
        keep = np.array([k is not None for k in keys], dtype=bool)
        if not keep.any():
            continue
        idx = np.flatnonzero(keep)
        stored_domains = batch.column("domain").to_pylist()
        parts["ids"] += [ids[i] for i in idx]
        parts["keys"] += [keys[i] for i in idx]
        over = labels.domain if labels is not None else {}
        parts["domains"] += [over.get(ids[i], stored_domains[i]) for i in idx]
        for name, col in (("image", "image_vector"), ("text", "text_vector"), ("base", "vector")):
            parts[name].append(to_numpy(batch.column(col), dim)[idx])
        parts["hi"].append(batch.column("has_image").to_numpy(zero_copy_only=False)[idx])
        parts["ht"].append(batch.column("has_text").to_numpy(zero_copy_only=False)[idx])
    if not parts["ids"]:
        where = f"labels of {labels.source}" if labels is not None else f"metadata.{metadata_key}"
        raise UsageError(
            f"none of the {n_rows} rows of table {store.name!r} in {store.uri} has a product key ({where}). "
            "Pass --pairs FILE with item_id,product_key rows (item ids as stored, e.g. 'video:v1') or item_a,item_b pairs."
        )
    if labels is not None:
        missing = len(labels) - len(parts["ids"])
        if missing > 0:
            logger.warning("%d of %d labelled items are not in table %r (ignored)", missing, len(labels), store.name)

    def cat(name: str) -> np.ndarray:
        return np.concatenate(parts[name], axis=0)

    return ItemVectors(
        parts["ids"], np.asarray(parts["domains"], dtype=object), np.asarray(parts["keys"], dtype=object),
        cat("image"), cat("text"), cat("hi").astype(bool), cat("ht").astype(bool), cat("base"),
        store.model_tag or "",
    )


@dataclass(frozen=True)
class ProductSplit:
    """Disjoint sets of product keys: no product is in two of them."""

    train: frozenset[str]
    val: frozenset[str]
    test: frozenset[str]

    def of(self, keys: Sequence[str] | np.ndarray) -> np.ndarray:
        """Split name of each key, as an object array ("train", "val", "test"; "" for unknown keys)."""
        lookup = {**{k: "train" for k in self.train}, **{k: "val" for k in self.val}, **{k: "test" for k in self.test}}
        return np.asarray([lookup.get(k, "") for k in keys], dtype=object)

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_products(
    keys: Iterable[str], *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
    eligible: Mapping[str, bool] | None = None,
) -> ProductSplit:
    """Split product keys (not items) at random, reproducibly for a seed.

    Only products marked ``eligible`` (default: all) go to val/test; the others always train. Val and test get
    at least two products each when their fraction is positive and there are enough products.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    unique = sorted(set(keys))
    held = [k for k in unique if eligible is None or eligible.get(k, False)]
    rng = np.random.default_rng(seed)
    order = [held[i] for i in rng.permutation(len(held))]

    def size(fraction: float) -> int:
        return 0 if fraction == 0 else max(2, round(fraction * len(unique)))

    n_test, n_val = size(test_fraction), size(val_fraction)
    if n_test + n_val > len(order) - 2:
        raise UsageError(_too_few_products(len(order), n_test, n_val, test_fraction, val_fraction))
    test, val = frozenset(order[:n_test]), frozenset(order[n_test : n_test + n_val])
    train = frozenset(k for k in unique if k not in test and k not in val)
    return ProductSplit(train, val, test)


def _too_few_products(have: int, n_test: int, n_val: int, test_fraction: float, val_fraction: float) -> str:
    """What :func:`split_products` needs, and the options that would make do with ``have`` products."""
    need = n_test + n_val + 2
    if n_val and n_test + 2 <= have:
        fix = ", or pass --val-fraction 0 (no early stopping: every epoch is trained)"
    elif have >= 2:
        fix = (", or pass --val-fraction 0 --test-fraction 0 (no early stopping and no held-out report: the heads "
               "are trained on all of them, unchecked)")
    else:
        fix = ""
    return (f"too few products: cope train needs at least {need} with items in two or more domains here (a test "
            f"split of {n_test} for --test-fraction {test_fraction:g}, a validation split of {n_val} for "
            f"--val-fraction {val_fraction:g}, and 2 to train on); the labels give {have}. Label more items "
            f"(metadata.product_key or --pairs FILE with item_id,product_key rows){fix}")
