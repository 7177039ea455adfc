"""Fitted projections of a pipeline's vectors (PCA), the last step of :class:`cope.embedding.Pipeline`.

A projection is fitted once on a catalog's unified vectors (:func:`fit_pca`, :func:`fit_table_pca`: keep the top
``dim`` principal directions) and then applied to every vector the pipeline makes, items and queries alike:
``vector``, ``image_vector``, ``text_vector`` (and ``ocr_vector``) through the same map, then L2-normalised; a zero
row (an absent part) stays zero. Its parameters live in a folder, ``projection.safetensors`` (``mean``,
``components``) and ``projection.json`` (kind, fingerprint, the tag of the vectors it takes, dimensions, the variance
it keeps), named by the fingerprint of the parameters; the pipeline spec refers to it with a
:class:`~cope.pipeline.ProjectionRef`, and a table's database folder keeps a copy under
``_cope_projections/<fingerprint>/`` (like heads, :mod:`cope.heads.store`), so the table is searchable from any
working directory.

The PCA is **uncentred** by default (the directions of largest energy ``E[x x^T]``, no mean subtracted): an
orthonormal map that keeps dot products, hence cosine rankings, as far as its directions hold the vectors. Centring
(``center=True``) keeps more of the spread *between* items, but on a table that mixes modalities it wrecks
cross-modal search: the mean lies between the text and the image vectors, and once it is subtracted every text query
leans toward the same images (Magento title -> main image R@10 0.32 -> 0.14 even at 512-d keeping 99.7% of the
variance; uncentred: 0.30 at 256-d, 0.32 at 512-d; docs/compact.md).

>>> rng = np.random.default_rng(0)
>>> x = rng.standard_normal((200, 8)).astype(np.float32) * np.arange(8, 0, -1)
>>> pca = fit_pca(x, 3, base_tag="m;fusion=image:0.5,text:0.5")
>>> pca.dim, pca.input_dim, len(pca.fingerprint), pca.apply(np.zeros((1, 8), np.float32)).tolist()
(3, 8, 12, [[0.0, 0.0, 0.0]])
>>> round(float(np.linalg.norm(pca.apply(x[:1]))), 5)
1.0

Numpy and pyarrow only (no torch). Fitting reads a table through :mod:`cope.store`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from cope.artifacts import ArtifactKind, install, locate
from cope.errors import InputNotFoundError, StoreMismatchError, UsageError
from cope.pipeline import ProjectionRef
from cope.vectors import l2_normalize, to_fixed_list, to_numpy

logger = logging.getLogger(__name__)

PROJECTIONS_DIR = "_cope_projections"  # inside a LanceDB folder; LanceDB only lists *.lance folders as tables
PARAMS_FILE = "projection.safetensors"
CONFIG_FILE = "projection.json"
FORMAT = "cope-projection/1"
#: rows of the unified vectors a PCA is fitted on by default (a uniform random sample of the table)
DEFAULT_SAMPLE = 100_000

__all__ = ["CONFIG_FILE", "DEFAULT_SAMPLE", "PARAMS_FILE", "PROJECTIONS_DIR", "PcaProjection", "fit_pca",
           "fit_table_pca", "install_projection", "load_projection", "locate_projection", "projection_ref"]


def fingerprint(mean: np.ndarray, components: np.ndarray) -> str:
    """12 hex digits of sha256 over the kind, shapes and float32 bytes of the parameters."""
    h = hashlib.sha256()
    for name, a in (("mean", mean), ("components", components)):
        a = np.ascontiguousarray(a, dtype=np.float32)
        h.update(f"pca|{name}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


@dataclass
class PcaProjection:
    """``y = normalize((x - mean) @ components.T)`` for non-zero rows ``x``; zero rows stay zero."""

    mean: np.ndarray  # (input_dim,) float32
    components: np.ndarray  # (dim, input_dim) float32, orthonormal rows, by decreasing variance
    base_tag: str  # tag of the vectors it takes
    explained: float = float("nan")  # share of the sample's variance the kept directions hold
    n_fit: int = 0  # rows it was fitted on
    info: dict[str, Any] = field(default_factory=dict)  # fit settings (sample, seed, source table)
    path: Path | None = None  # the folder it was loaded from or saved to
    fingerprint: str = field(init=False, default="")  # of the parameters: names the projection

    kind = "pca"

    def __post_init__(self) -> None:
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        self.components = np.ascontiguousarray(self.components, dtype=np.float32)
        if self.components.ndim != 2 or self.mean.shape != (self.components.shape[1],):
            raise ValueError(f"a PCA needs mean (d,) and components (k, d); got {self.mean.shape}, "
                             f"{self.components.shape}")
        self.fingerprint = fingerprint(self.mean, self.components)

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    def ref(self) -> ProjectionRef:
        """The pipeline spec's reference to this projection (``uri``: its folder, once saved or loaded)."""
        return ProjectionRef(kind="pca", fingerprint=self.fingerprint, base_tag=self.base_tag,
                             input_dim=self.input_dim, dim=self.dim,
                             uri=str(self.path.resolve()) if self.path is not None else None)

    # -- applying ------------------------------------------------------------------------------------------------
    def apply(self, x: np.ndarray, batch: int = 65_536) -> np.ndarray:
        """Project rows (n, input_dim) -> (n, dim), L2-normalised, float32; zero rows stay zero."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise StoreMismatchError(f"this PCA takes {self.input_dim}-d vectors of {self.base_tag!r}, not "
                                     f"{x.shape[1] if x.ndim == 2 else x.shape}-d ones")
        out = np.zeros((len(x), self.dim), np.float32)
        for s in range(0, len(x), batch):
            part = x[s : s + batch]
            present = np.any(part != 0, axis=1)
            if present.any():
                out[s : s + batch][present] = l2_normalize((part[present] - self.mean) @ self.components.T)
        return out

    def project_table(self, rows: pa.Table, schema: pa.Schema | None = None, model_tag: str | None = None
                      ) -> pa.Table:
        """Store rows of the input pipeline -> the same rows projected (every vector column present), with
        ``model_tag`` when given; cast to ``schema`` (its storage: float16, without per-modality columns)."""
        out = rows
        for name in ("vector", "image_vector", "text_vector", "ocr_vector"):
            if name not in out.column_names or (schema is not None and name not in schema.names):
                continue
            values = self.apply(to_numpy(out.column(name), self.input_dim))
            i = out.schema.get_field_index(name)
            out = out.set_column(i, pa.field(name, pa.list_(pa.float32(), self.dim), nullable=False),
                                 to_fixed_list(values, self.dim))
        if model_tag is not None:
            i = out.schema.get_field_index("model_tag")
            out = out.set_column(i, pa.field("model_tag", pa.string(), nullable=False),
                                 pa.array([model_tag] * out.num_rows, pa.string()))
        if schema is not None:
            out = out.select(schema.names).cast(schema)
        return out

    # -- files ---------------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``projection.safetensors`` and ``projection.json`` into ``folder`` (created); return it."""
        from safetensors.numpy import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"mean": self.mean, "components": self.components}, str(out / PARAMS_FILE),
                  metadata={"format": FORMAT, "kind": self.kind, "fingerprint": self.fingerprint})
        config = {"format": FORMAT, "kind": self.kind, "fingerprint": self.fingerprint, "base_tag": self.base_tag,
                  "input_dim": self.input_dim, "dim": self.dim, "explained_variance": self.explained,
                  "n_fit": self.n_fit, "fit": self.info}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
        self.path = out
        logger.info("saved PCA %s (%d -> %d, %.1f%% of the variance) to %s", self.fingerprint, self.input_dim,
                    self.dim, 100 * self.explained, out)
        return out


def _not_projection(where: Path, why: str) -> UsageError:
    return UsageError(f"{where} is not a cope projection ({why}); pass a folder written by `cope reproject --pca` "
                      f"(it holds {PARAMS_FILE} and {CONFIG_FILE})")


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``projection.json`` of a projection folder (checked for the fields a reference needs)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file() or not (Path(folder) / PARAMS_FILE).is_file():
        raise InputNotFoundError(f"no projection at {folder}: expected {PARAMS_FILE} and {CONFIG_FILE} "
                                 "(written by `cope reproject --pca`)")
    try:
        config = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _not_projection(path, f"{type(e).__name__}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT or config.get("kind") != "pca":
        raise _not_projection(path, f"no format {FORMAT!r} of kind 'pca'")
    for key, kind in (("fingerprint", str), ("base_tag", str), ("input_dim", int), ("dim", int)):
        if not isinstance(config.get(key), kind):
            raise _not_projection(path, f"{key!r} must be a {kind.__name__}")
    return config


def load_projection(folder: str | os.PathLike[str], fingerprint_: str | None = None) -> PcaProjection:
    """Load a projection folder; its parameters are verified against its fingerprint (and ``fingerprint_``)."""
    from safetensors.numpy import load_file

    config = read_config(folder)
    path = Path(folder) / PARAMS_FILE
    try:
        params = load_file(str(path))  # safetensors: never unpickles anything
    except Exception as e:  # SafetensorError (a pickle, a truncated file), OSError
        raise _not_projection(path, f"not a safetensors file: {type(e).__name__}: {e}") from None
    if set(params) != {"mean", "components"}:
        raise _not_projection(path, f"tensors {sorted(params)} instead of ['components', 'mean']")
    pca = PcaProjection(params["mean"], params["components"], config["base_tag"],
                        explained=float(config.get("explained_variance", float("nan"))),
                        n_fit=int(config.get("n_fit", 0)), info=dict(config.get("fit") or {}), path=Path(folder))
    expected = fingerprint_ or config["fingerprint"]
    if pca.fingerprint != config["fingerprint"] or pca.fingerprint != expected or \
            (pca.input_dim, pca.dim) != (config["input_dim"], config["dim"]):
        raise StoreMismatchError(f"{path} does not match (fingerprint {pca.fingerprint}, expected {expected}); the "
                                 "projection was modified or mixed from two fits: fit it again")
    return pca


def projection_ref(folder: str | os.PathLike[str]) -> ProjectionRef:
    """Describe a projection folder (reads its config only)."""
    config = read_config(folder)
    return ProjectionRef(kind="pca", fingerprint=config["fingerprint"], base_tag=config["base_tag"],
                         input_dim=config["input_dim"], dim=config["dim"], uri=str(Path(folder).resolve()))


# -- where a table finds its projection ------------------------------------------------------------------------------
#: a fitted projection as a folder a table depends on
PROJECTION = ArtifactKind("projection", PROJECTIONS_DIR, (PARAMS_FILE, CONFIG_FILE),
                          "written by `cope reproject --pca` (or --save-to)")


def install_projection(ref: ProjectionRef, db: str | os.PathLike[str]) -> None:
    """Copy the projection into ``<db>/_cope_projections/<fingerprint>/`` (local databases; idempotent, atomic)."""
    install(PROJECTION, ref.fingerprint, ref.uri, db)


def locate_projection(ref: ProjectionRef, db: str | os.PathLike[str] | None) -> Path:
    """The folder holding this projection: the database's copy, else the recorded absolute path, checked against
    the fingerprint (the parameters are verified again when loaded)."""
    return locate(PROJECTION, ref.fingerprint, ref.uri, db)


# -- fitting ---------------------------------------------------------------------------------------------------------
class _Moments:
    """Running sums for a covariance in float64: n, sum x, sum x x^T."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.s = np.zeros(d, np.float64)
        self.ss = np.zeros((d, d), np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        self.n += len(x)
        self.s += x.sum(axis=0)
        self.ss += x.T @ x

    def pca(self, dim: int, base_tag: str, center: bool = False, **info: Any) -> PcaProjection:
        d = len(self.s)
        if not 1 <= dim <= d:
            raise UsageError(f"a PCA keeps 1 to {d} directions of {d}-d vectors, not {dim}")
        if self.n < 2:
            raise UsageError(f"a PCA needs at least 2 non-zero vectors to fit, got {self.n}")
        mean = self.s / self.n if center else np.zeros(d)
        cov = (self.ss - self.n * np.outer(mean, mean)) / max(1, self.n - 1)
        values, vectors = np.linalg.eigh(cov)  # the SVD of the sample: eigenvectors of its (centred) moment matrix
        order = np.argsort(values)[::-1][:dim]
        components = vectors[:, order].T
        signs = np.sign(components[np.arange(dim), np.argmax(np.abs(components), axis=1)])
        components *= np.where(signs == 0, 1.0, signs)[:, None]  # a deterministic sign per direction
        total = float(np.clip(values, 0, None).sum())
        explained = float(np.clip(values[order], 0, None).sum() / total) if total > 0 else 1.0
        if self.n <= dim:
            logger.warning("fitting %d directions on %d vectors: directions beyond the sample's rank are arbitrary; "
                           "fit on more rows or keep fewer directions", dim, self.n)
        return PcaProjection(mean.astype(np.float32), components.astype(np.float32), base_tag, explained=explained,
                             n_fit=self.n, info={"center": center, **info})


def fit_pca(vectors: np.ndarray, dim: int, base_tag: str, *, center: bool = False, **info: Any) -> PcaProjection:
    """Fit a PCA keeping ``dim`` directions on the non-zero rows of ``vectors`` (n, d) made by ``base_tag``
    (uncentred unless ``center``; see the module docstring)."""
    x = np.asarray(vectors, dtype=np.float32)
    moments = _Moments(x.shape[1])
    for s in range(0, len(x), 65_536):
        part = x[s : s + 65_536]
        moments.add(part[np.any(part != 0, axis=1)])
    return moments.pca(dim, base_tag, center, **info)


def fit_table_pca(
    db: str | os.PathLike[str], dim: int, *, table: str = "items", sample: int = DEFAULT_SAMPLE, seed: int = 0,
    center: bool = False, batch_rows: int = 8192, domains: Sequence[str] | None = None,
) -> PcaProjection:
    """Fit a PCA on a uniform random sample of up to ``sample`` rows of the table's unified ``vector`` column
    (streamed: memory holds one batch and a d x d covariance). The table's model tag is the projection's base tag.
    ``domains`` restricts the sample to rows of these domains."""
    from cope.store import ItemStore

    store = ItemStore.open(db, table)
    tbl = store.table
    tag, d = store.model_tag, store.dim
    if tag is None or d is None:
        raise StoreMismatchError(f"table {table!r} in {store.uri} records no model tag or dimension: not a cope table")
    total = store.count()
    rate = 1.0 if total <= sample else sample / total
    rng = np.random.default_rng(seed)
    moments = _Moments(d)
    query = tbl.search().select(["vector", "domain"]).limit(None)
    for batch in query.to_batches(batch_rows):
        x = to_numpy(batch.column(batch.schema.get_field_index("vector")), d)
        keep = np.any(x != 0, axis=1) & (rng.random(len(x)) < rate)
        if domains is not None:
            keep &= np.isin(np.asarray(batch.column(batch.schema.get_field_index("domain")).to_pylist(), object),
                            list(domains))
        moments.add(x[keep])
    return moments.pca(dim, tag, center, table=table, rows=total, sample=sample, seed=seed)
