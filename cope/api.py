"""The similarity API: neighbours of a stored item, a vector, a text, an image or a video, within or across domains.

>>> import cope
>>> db = cope.open(db_dir)
>>> db.similar("video:v1", k=5, domains=["product"]).ids
['product:p1']
>>> len(db.search("a red ball", k=3))
3

Queries that are not vectors are encoded with the table's own model, rebuilt from the spec stored in the table and
checked against its model tag, so vectors of two models are never compared. Filters are typed arguments whose values
are bound as literals (``lancedb.expr``), never pasted into SQL text.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from cope.errors import InputNotFoundError, ItemNotFoundError, ModelMismatchError, UsageError
from cope.filters import MODALITY_FLAG as _MODALITY_FLAG
from cope.filters import Filters, MetadataValue
from cope.filters import merge_filters as _filters
from cope.pipeline import PipelineSpec
from cope.records import Domain
from cope.store import ItemStore
from cope.store.schema import require_modalities
from cope.vectors import to_numpy

if TYPE_CHECKING:
    import pandas as pd

    from cope.embedding import Pipeline
    from cope.encoders import Encoder
    from cope.fusion import FusionConfig
    from cope.store.index import IndexReport, SearchParams

logger = logging.getLogger(__name__)

VectorColumn = Literal["vector", "image_vector", "text_vector"]
QueryKind = Literal["auto", "vector", "text", "image", "video"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts"})

#: columns of a result row (those the table has), besides the score
RESULT_COLUMNS = ("item_id", "domain", "source_id", "slice_start", "slice_end", "text", "media_uri", "metadata",
                  "updated_at")


# -- results ------------------------------------------------------------------------------------------------------


class Hit(BaseModel):
    """One neighbour. ``score`` is the cosine similarity (1 = same direction)."""

    item_id: str
    domain: str | None = None
    source_id: str | None = None
    slice_start: float | None = None
    slice_end: float | None = None
    score: float
    text: str | None = None
    media_uri: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    updated_at: dt.datetime | None = None

    @property
    def product_key(self) -> str | None:
        return self.metadata.get("product_key")


class Results:
    """Neighbours of one query, best first: iterate for :class:`Hit` rows, or take them as Arrow or pandas."""

    def __init__(self, table: pa.Table, query: str = "") -> None:
        self.table = table
        self.query = query

    def __len__(self) -> int:
        return self.table.num_rows

    def __iter__(self) -> Iterator[Hit]:
        return iter(self.rows())

    def __getitem__(self, i: int) -> Hit:
        return self.rows()[i]

    def __repr__(self) -> str:
        shown = ", ".join(f"{h.item_id} ({h.score:.3f})" for h in self.rows()[:5])
        more = ", ..." if len(self) > 5 else ""
        return f"Results({self.query!r}: {shown}{more})"

    def rows(self) -> list[Hit]:
        rows = []
        for r in self.table.to_pylist():
            raw = r.pop("metadata", None)
            rows.append(Hit(**r, metadata=json.loads(raw) if raw else {}))
        return rows

    @property
    def ids(self) -> list[str]:
        return self.table.column("item_id").to_pylist()

    @property
    def scores(self) -> np.ndarray:
        return self.table.column("score").to_numpy()

    def to_arrow(self) -> pa.Table:
        return self.table

    def to_pandas(self) -> pd.DataFrame:
        """A DataFrame with ``metadata`` parsed into dicts (needs pandas: ``pip install 'cope[notebook]'``)."""
        try:
            df = self.table.to_pandas()
        except ImportError as e:
            raise ImportError("to_pandas() needs pandas: pip install pandas (or 'cope[notebook]')") from e
        if "metadata" in df:
            df["metadata"] = df["metadata"].map(lambda s: json.loads(s) if s else {})
        return df


class BatchResults(list):  # list[Results]
    """One :class:`Results` per query, in query order; ``to_arrow``/``to_pandas`` stack them with ``query_index``."""

    def to_arrow(self) -> pa.Table:
        tables = [r.table.add_column(0, "query_index", pa.array([i] * len(r), pa.int32())) for i, r in enumerate(self)]
        return pa.concat_tables(tables) if tables else pa.table({"query_index": pa.array([], pa.int32())})

    def to_pandas(self) -> pd.DataFrame:
        df = self.to_arrow().to_pandas()
        if "metadata" in df:
            df["metadata"] = df["metadata"].map(lambda s: json.loads(s) if s else {})
        return df


# -- queries ------------------------------------------------------------------------------------------------------


class Query(BaseModel):
    """A multi-part query: its parts are encoded and fused with the table's fusion weights, like an item.

    >>> Query(text="red ball", image="photo.jpg")  # doctest: +SKIP
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    text: str | None = None
    image: Any = None  # a path or a PIL image
    video: str | os.PathLike[str] | None = None


def query_kind(query: Any) -> str:
    """``vector``, ``text``, ``image``, ``video`` or ``query`` (a :class:`Query`) for an ``auto`` query."""
    if isinstance(query, Query):
        return "query"
    if isinstance(query, np.ndarray) or (
        isinstance(query, (list, tuple)) and query and all(isinstance(x, (int, float, np.floating)) for x in query)
    ):
        return "vector"
    if _is_pil(query):
        return "image"
    if isinstance(query, os.PathLike):
        return "video" if Path(query).suffix.lower() in VIDEO_SUFFIXES else "image"
    if isinstance(query, str):
        suffix = Path(query).suffix.lower() if "\n" not in query and len(query) < 4096 else ""
        if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
            if not Path(query).is_file():
                raise FileNotFoundError(
                    f"{query!r} looks like a media file but does not exist; pass kind='text' to search it as text"
                )
            return "video" if suffix in VIDEO_SUFFIXES else "image"
        return "text"
    raise TypeError(
        f"cannot search with a {type(query).__name__}: pass a vector (numpy array), a text, an image "
        "(PIL image or file path), a video file path, or a cope.api.Query"
    )


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, Image.Image)


# -- the database -------------------------------------------------------------------------------------------------


class CopeDB:
    """Similarity lookups on one item table. Make one with :func:`open_db` (``cope.open``).

    Text, image and video queries go through the table's own pipeline (rebuilt from the spec stored in the table:
    encoder, extraction options, fusion weights and trained heads), exactly like an item of the domain they stand for.

    >>> db = open_db(db_dir)
    >>> sorted(db.similar("product:p1", k=2).ids)
    ['image:i1', 'video:v1']
    >>> db.search("a red ball", k=1, domains=["product"]).ids
    ['product:p1']
    """

    def __init__(self, store: ItemStore, encoder: Encoder | None = None) -> None:
        self.store = store
        self.table = store.table  # raises with "run cope embed" when the table does not exist
        self.model_tag = store.model_tag
        self.dim = store.dim or self._vector_dim("vector")
        #: how the table's vectors were made (None: the table does not say; search it with vectors only)
        self.spec: PipelineSpec | None = PipelineSpec.from_metadata(store.metadata)
        self._columns = tuple(self.table.schema.names)
        self._pipeline: Pipeline | None = None
        self._params: dict[str, SearchParams | None] = {}
        self._warned_duplicates = False
        if encoder is not None:
            self._pipeline = self._build(encoder)

    def __repr__(self) -> str:
        return f"CopeDB({self.store.uri!r}, table={self.store.name!r}, model_tag={self.model_tag!r}, dim={self.dim})"

    def __len__(self) -> int:
        return self.table.count_rows()

    # -- the pipeline --------------------------------------------------------------------------------------------
    @property
    def fusion(self) -> FusionConfig:
        from cope.fusion import FusionConfig

        return self.spec.fusion if self.spec is not None else FusionConfig()

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains a query can stand for: the heads' domains on a heads table, else every domain."""
        from cope.records import DOMAINS

        return self.spec.heads.domains if self.spec is not None and self.spec.heads else DOMAINS

    def _build(self, encoder: Encoder | None = None) -> Pipeline:
        from cope.embedding import Pipeline

        if self.spec is None:
            raise ModelMismatchError(
                f"table {self.store.name!r} in {self.store.uri} does not record the pipeline that made its vectors "
                f"(model tag {self.model_tag!r}); search it with vectors, or re-embed it with this version of cope"
            )
        pipeline = Pipeline.build(self.spec, encoder=encoder, db=self.store.uri)
        if pipeline.tag != self.model_tag or pipeline.dim != self.dim:
            raise ModelMismatchError(
                f"table {self.store.name!r} holds vectors of {self.model_tag!r} (dim {self.dim}), but its pipeline "
                f"rebuilds as {pipeline.tag!r} (dim {pipeline.dim}): install the model files and versions that "
                "wrote the table"
            )
        return pipeline

    @property
    def pipeline(self) -> Pipeline:
        """The table's own pipeline, built on first use from the spec stored in the table and checked against it."""
        if self._pipeline is None:
            self._pipeline = self._build()
        return self._pipeline

    @property
    def encoder(self) -> Encoder:
        return self.pipeline.encoder

    def encode(self, queries: Sequence[Any], kind: QueryKind = "auto", *, as_domain: str | None = None) -> np.ndarray:
        """Query vectors (n, dim), float32, L2-normalised, each made like an item of ``as_domain``.

        ``as_domain`` matters on a heads table (each domain has its own head); by default a text or mixed query
        stands for a product page, an image for an image, a video for a video (see
        :func:`cope.embedding.default_query_domain`). Vectors are used as they are (normalised).
        """
        from cope.embedding import default_query_domain
        from cope.vectors import l2_normalize

        if as_domain is not None and as_domain not in self.domains:
            raise ValueError(f"as_domain={as_domain!r}: the table's pipeline knows {list(self.domains)}")
        kinds = [query_kind(q) if kind == "auto" else kind for q in queries]
        out = np.zeros((len(queries), self.dim), np.float32)
        contents, where, domains = [], [], []
        for i, (q, k) in enumerate(zip(queries, kinds)):
            if k == "vector":
                v = np.asarray(q, dtype=np.float32).reshape(-1)
                if v.shape[0] != self.dim:
                    raise ValueError(
                        f"query vector has {v.shape[0]} dimensions; table {self.store.name!r} holds {self.dim}-d "
                        f"vectors of {self.model_tag!r}"
                    )
                out[i] = l2_normalize(v)
                continue
            if k not in ("text", "image", "video", "query"):
                raise ValueError(f"unknown query kind {k!r}; one of auto, vector, text, image, video")
            domain = as_domain or default_query_domain(k, self.domains)
            if k == "query":
                if not (q.text or q.image is not None or q.video is not None):
                    raise ValueError("empty Query: give text, image or video")
                parts = {"text": q.text, "image": q.image, "video": q.video}
            else:
                parts = {k: str(q) if k == "text" else q}
            contents.append(self.pipeline.query_content(**parts, domain=domain))
            where.append(i)
            domains.append(domain)
        if contents:
            out[where] = self.pipeline.encode_contents(contents, domains)
        return out

    # -- lookups ----------------------------------------------------------------------------------------------------
    def get(self, item_ids: str | Sequence[str], *, with_vectors: bool = False) -> pa.Table:
        """Rows of these items (in the order given), without vectors unless asked."""
        columns = [c for c in RESULT_COLUMNS if c in self._columns]
        if with_vectors:
            columns += [c for c in ("vector", "image_vector", "text_vector", "has_image", "has_text")
                        if c in self._columns]
        return self._lookup(item_ids, columns)

    def _lookup(self, item_ids: str | Sequence[str], columns: list[str]) -> pa.Table:
        from lancedb.expr import col, lit

        ids = [item_ids] if isinstance(item_ids, str) else list(item_ids)
        bad = [i for i in ids if not isinstance(i, str)]
        if bad:
            raise UsageError(f"item ids are strings like 'product:p001', not {bad[0]!r} ({type(bad[0]).__name__})")
        # a bound expression, never SQL text (one where() call, so LanceDB keeps it an expression)
        where = col("item_id") == lit(ids[0]) if len(ids) == 1 else col("item_id").isin(ids)
        stamp = ["updated_at"] if "updated_at" in self._columns and "updated_at" not in columns else []
        found = self._one_row_per_id(self.table.search().where(where).select(columns + stamp).limit(None).to_arrow())
        if stamp:
            found = found.drop_columns(stamp)
        order = {k: i for i, k in enumerate(found.column("item_id").to_pylist())}
        missing = [i for i in ids if i not in order]
        if missing:
            sample = self.table.search().select(["item_id"]).limit(3).to_arrow().column("item_id").to_pylist()
            raise ItemNotFoundError(
                f"no item {', '.join(map(repr, missing[:5]))} in table {self.store.name!r} "
                f"({len(missing)} missing); item ids look like {sample}"
            )
        return found if list(order) == ids else found.take(pa.array([order[i] for i in ids]))

    def vectors(self, item_ids: str | Sequence[str], vector_column: VectorColumn = "vector") -> np.ndarray:
        """Stored vectors (n, dim) of these items."""
        self._check_column(vector_column)
        flag = _MODALITY_FLAG.get(vector_column)
        flag = flag if flag in self._columns else None
        rows = self._lookup(item_ids, ["item_id", vector_column] + ([flag] if flag else []))
        if flag:
            lacking = [i for i, ok in zip(rows.column("item_id").to_pylist(), rows.column(flag).to_pylist()) if not ok]
            if lacking:
                raise ValueError(
                    f"{', '.join(lacking[:5])} {'has' if len(lacking) == 1 else 'have'} no "
                    f"{flag.removeprefix('has_')} part, so no {vector_column}; use vector_column='vector'"
                )
        return to_numpy(rows.column(vector_column), self._vector_dim(vector_column))

    # -- search -----------------------------------------------------------------------------------------------------
    def search(
        self,
        query: Any,
        k: int = 10,
        *,
        kind: QueryKind = "auto",
        as_domain: Domain | None = None,
        domains: Sequence[Domain] | Domain | None = None,
        vector_column: VectorColumn = "vector",
        item_ids: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
        source_ids: Sequence[str] | None = None,
        updated_after: dt.datetime | None = None,
        updated_before: dt.datetime | None = None,
        slice_between: tuple[float, float] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        where: str | None = None,
        filters: Filters | None = None,
        columns: Sequence[str] | None = None,
    ) -> Results:
        """The ``k`` nearest items to a vector, text, image (PIL or path), video path or :class:`Query`.

        The query is made like an item of ``as_domain`` (on a heads table each domain has its own head; the
        default is a product page for text, an image for an image, a video for a video).

        ``columns`` picks the result columns (``item_id`` and ``score`` always; default: all of
        :data:`RESULT_COLUMNS`); each column costs a little per query on large tables (~0.3 ms at 1M rows).

        >>> db.search("a red ball", k=5, domains=["video", "live"])  # doctest: +SKIP
        >>> db.search(Path("photo.jpg"), vector_column="image_vector")  # doctest: +SKIP
        """
        f = _filters(filters, domains=domains, item_ids=item_ids, exclude_ids=exclude_ids, source_ids=source_ids,
                     updated_after=updated_after, updated_before=updated_before, slice_between=slice_between,
                     metadata=dict(metadata) if metadata else None, where=where)
        return self.search_many([query], k, kind=kind, as_domain=as_domain, vector_column=vector_column, filters=f,
                                columns=columns)[0]

    def search_many(
        self,
        queries: Sequence[Any],
        k: int = 10,
        *,
        kind: QueryKind = "auto",
        as_domain: Domain | None = None,
        domains: Sequence[Domain] | Domain | None = None,
        vector_column: VectorColumn = "vector",
        item_ids: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
        source_ids: Sequence[str] | None = None,
        updated_after: dt.datetime | None = None,
        updated_before: dt.datetime | None = None,
        slice_between: tuple[float, float] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        where: str | None = None,
        filters: Filters | None = None,
        columns: Sequence[str] | None = None,
    ) -> BatchResults:
        """:meth:`search` for many queries: encoded in one batch, searched in one LanceDB call.

        >>> db.search_many(["red ball", "blue box"], k=3).to_pandas()  # doctest: +SKIP
        """
        if isinstance(queries, (str, np.ndarray)) or _is_pil(queries):
            raise TypeError("search_many takes a list of queries; use search() for one")
        f = _filters(filters, domains=domains, item_ids=item_ids, exclude_ids=exclude_ids, source_ids=source_ids,
                     updated_after=updated_after, updated_before=updated_before, slice_between=slice_between,
                     metadata=dict(metadata) if metadata else None, where=where)
        vectors = self.encode(list(queries), kind, as_domain=as_domain)
        labels = [_label(q) for q in queries]
        return self._knn(vectors, k, f, vector_column, labels, columns=columns)

    def similar(
        self,
        item_id: str,
        k: int = 10,
        *,
        domains: Sequence[Domain] | Domain | None = None,
        vector_column: VectorColumn = "vector",
        item_ids: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
        source_ids: Sequence[str] | None = None,
        updated_after: dt.datetime | None = None,
        updated_before: dt.datetime | None = None,
        slice_between: tuple[float, float] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        where: str | None = None,
        filters: Filters | None = None,
        columns: Sequence[str] | None = None,
    ) -> Results:
        """Neighbours of a stored item (never the item itself), e.g. the products shown in a video:

        >>> db.similar("video:vid-p001", k=5, domains=["product"])  # doctest: +SKIP
        """
        f = _filters(filters, domains=domains, item_ids=item_ids, exclude_ids=exclude_ids, source_ids=source_ids,
                     updated_after=updated_after, updated_before=updated_before, slice_between=slice_between,
                     metadata=dict(metadata) if metadata else None, where=where)
        return self.similar_many([item_id], k, vector_column=vector_column, filters=f, columns=columns)[0]

    def similar_many(
        self,
        item_ids: Sequence[str],
        k: int = 10,
        *,
        domains: Sequence[Domain] | Domain | None = None,
        vector_column: VectorColumn = "vector",
        source_ids: Sequence[str] | None = None,
        exclude_ids: Sequence[str] | None = None,
        updated_after: dt.datetime | None = None,
        updated_before: dt.datetime | None = None,
        slice_between: tuple[float, float] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
        where: str | None = None,
        filters: Filters | None = None,
        columns: Sequence[str] | None = None,
    ) -> BatchResults:
        """:meth:`similar` for many items: their vectors read in one lookup and searched in one call."""
        if isinstance(item_ids, str):
            raise TypeError("similar_many takes a list of item ids; use similar() for one")
        f = _filters(filters, domains=domains, source_ids=source_ids, exclude_ids=exclude_ids,
                     updated_after=updated_after, updated_before=updated_before, slice_between=slice_between,
                     metadata=dict(metadata) if metadata else None, where=where)
        vectors = self.vectors(list(item_ids), vector_column)
        return self._knn(vectors, k, f, vector_column, list(item_ids), exclude_self=list(item_ids), columns=columns)

    # -- the k-NN call ------------------------------------------------------------------------------------------
    def _check_column(self, column: str) -> None:
        if column not in ("vector", "image_vector", "text_vector") or column not in self._columns:
            have = [c for c in ("vector", "image_vector", "text_vector") if c in self._columns]
            if column in ("image_vector", "text_vector"):
                try:
                    require_modalities(self.table.schema, self.store.name, f"vector_column={column!r}",
                                       fix="search the unified vector (vector_column='vector')")
                except UsageError as e:
                    raise UsageError(f"vector_column must be one of {have}, not {column!r}: {e}") from None
            raise UsageError(f"vector_column must be one of {have}, not {column!r}")

    def _vector_dim(self, column: str) -> int:
        return int(self.table.schema.field(column).type.list_size)

    def search_params(self, column: str = "vector") -> SearchParams | None:
        """How the column's index is queried (``None``: exact search); cached until :meth:`refresh`."""
        if column not in self._params:
            from cope.store.index import search_params

            self._params[column] = search_params(self.table, column)
        return self._params[column]

    def set_search_params(self, params: SearchParams | None, column: str = "vector", *, persist: bool = False) -> None:
        """Query the column's index with these settings from now on (``persist``: store them in the table for every
        reader). ``None`` goes back to the stored settings.

        >>> from cope.store.index import SearchParams
        >>> db.set_search_params(SearchParams(nprobes=80))  # doctest: +SKIP
        """
        if params is None:
            self._params.pop(column, None)
            return
        if persist:
            from cope.store.index import set_search_params

            set_search_params(self.table, params, column)
        self._params[column] = params

    def _result_columns(self, columns: Sequence[str] | None) -> list[str]:
        if columns is None:
            return [c for c in RESULT_COLUMNS if c in self._columns]
        unknown = [c for c in columns if c not in RESULT_COLUMNS]
        if unknown:
            raise ValueError(f"unknown result column(s) {unknown}; choose from {list(RESULT_COLUMNS)}")
        return ["item_id"] + [c for c in columns if c != "item_id" and c in self._columns]

    def _knn(
        self, vectors: np.ndarray, k: int, f: Filters, column: str, labels: Sequence[str],
        exclude_self: Sequence[str] | None = None, columns: Sequence[str] | None = None,
    ) -> BatchResults:
        self._check_column(column)
        if k < 1:
            raise ValueError(f"k must be >= 1, not {k}")
        n = len(vectors)
        if n == 0:
            return BatchResults()
        wanted = self._result_columns(columns)
        helpers = ["metadata"] if f.metadata and "metadata" not in wanted else []
        helpers += ["updated_at"] if "updated_at" in self._columns and "updated_at" not in wanted else []
        fetched = wanted + helpers
        extra = 1 if exclude_self else 0
        first = (k + extra) * (4 if f.metadata else 1)
        total = None
        tables = self._query(vectors, first, f, column, fetched)
        results = BatchResults()
        for i in range(n):
            t, fetch = tables[i], first
            while True:
                unique = self._one_row_per_id(t)
                kept = self._post_filter(unique, f, exclude_self[i] if exclude_self else None)
                if kept.num_rows >= k or t.num_rows < fetch or not (f.metadata or unique.num_rows < t.num_rows):
                    break
                total = total if total is not None else self.table.count_rows()
                if fetch >= total:
                    break
                fetch = min(total, fetch * 4)  # rare metadata matches: widen this query's candidate list
                t = self._query(vectors[i : i + 1], fetch, f, column, fetched)[0]
            kept = kept.slice(0, k)
            if helpers:
                kept = kept.drop_columns(helpers)
            results.append(Results(kept, labels[i]))
        return results

    def _query(self, vectors: np.ndarray, limit: int, f: Filters, column: str, columns: list[str]) -> list[pa.Table]:
        q = (
            self.table.search(vectors if len(vectors) > 1 else vectors[0], vector_column_name=column)
            .distance_type("cosine")
            .select([*columns, "_distance"])
            .limit(limit)
        )
        expr = f.expr(vector_column=column, columns=self._columns)
        if expr is not None:
            q = q.where(expr, prefilter=True)
        params = self.search_params(column)
        if params is not None:
            if params.nprobes:
                q = q.nprobes(params.nprobes)
            if params.refine_factor:
                q = q.refine_factor(params.refine_factor)
            if params.ef:  # HNSW needs a beam at least as wide as the candidates it returns
                q = q.ef(max(params.ef, limit * (params.refine_factor or 1)))
        table = q.to_arrow()
        score = pc.subtract(pa.scalar(1.0, pa.float32()), table.column("_distance").cast(pa.float32()))
        if len(vectors) == 1:
            return [table.drop_columns(["_distance"]).append_column("score", score)]
        qi = table.column("query_index").to_numpy()
        base = table.drop_columns(["_distance", "query_index"]).append_column("score", score)
        order = np.argsort(qi, kind="stable")
        base, qi = base.take(pa.array(order)), qi[order]
        bounds = np.searchsorted(qi, np.arange(len(vectors) + 1))
        return [base.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i])) for i in range(len(vectors))]

    def _one_row_per_id(self, table: pa.Table) -> pa.Table:
        """``table`` with one row per item id: the newest (``updated_at``; the first of equals), in table order.

        Tables written by older versions may store an id twice (``cope check --repair`` fixes them): lookups and
        results then use the newest row of each, with one warning per :class:`CopeDB`.
        """
        ids = table.column("item_id").to_pylist()
        if len(set(ids)) == len(ids):
            return table
        stamps = table.column("updated_at").to_pylist() if "updated_at" in table.column_names else [None] * len(ids)
        best: dict[str, int] = {}
        for i, (item, at) in enumerate(zip(ids, stamps)):
            j = best.get(item)
            if j is None or (at is not None and (stamps[j] is None or at > stamps[j])):
                best[item] = i
        if not self._warned_duplicates:
            self._warned_duplicates = True
            repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
            names = ", ".join(map(repr, repeated[:3])) + (", ..." if len(repeated) > 3 else "")
            logger.warning("table %r stores item ids more than once (%s; left by an older cope): using the newest "
                           "row of each; run `cope check --db %s --table %s --repair` to keep only those",
                           self.store.name, names, self.store.uri, self.store.name)
        return table.take(pa.array(sorted(best.values()), pa.int64()))

    @staticmethod
    def _post_filter(table: pa.Table, f: Filters, self_id: str | None) -> pa.Table:
        """Drop the query item itself and rows failing the exact metadata test (LanceDB returns best first)."""
        if self_id is None and not f.metadata:
            return table
        keep = np.ones(table.num_rows, bool)
        if self_id is not None:
            keep &= pc.not_equal(table.column("item_id"), pa.scalar(self_id)).to_numpy(zero_copy_only=False)
        if f.metadata:
            keep &= np.array([f.matches_metadata(m) for m in table.column("metadata").to_pylist()], bool)
        return table if keep.all() else table.filter(pa.array(keep))

    # -- maintenance --------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """See rows and indexes written since this handle was opened (by another process)."""
        self.table.checkout_latest()
        self._params.clear()

    def index_report(self) -> IndexReport:
        from cope.store.index import index_report

        return index_report(self.table)

    def build_index(self, **options: Any) -> IndexReport:
        """:func:`cope.store.index.build_index` on this table."""
        from cope.store.index import build_index

        report = build_index(self.table, **options)
        self._params.clear()
        return report

    def optimize(self, **options: Any) -> IndexReport:
        """:func:`cope.store.index.optimize`: fold new rows into the indexes, compact, delete old versions."""
        from cope.store.index import optimize

        report = optimize(self.table, **options)
        self._params.clear()
        return report


def _label(q: Any) -> str:
    if isinstance(q, str):
        return q if len(q) <= 80 else q[:77] + "..."
    if isinstance(q, os.PathLike):
        return str(q)
    if isinstance(q, Query):
        return " + ".join(f"{k}={_label(v)}" for k, v in q.model_dump().items() if v is not None)
    if _is_pil(q):
        return f"<image {q.size[0]}x{q.size[1]}>"
    return "<vector>"


def open_db(db_path: str | os.PathLike[str], table: str = "items", encoder: Encoder | None = None) -> CopeDB:
    """Open an item table for similarity lookups (``cope.open``).

    The encoder for text/image/video queries is rebuilt from the table's stored spec on first use and must match the
    table's model tag; pass ``encoder=`` to reuse one you have (it is checked the same way).

    >>> import cope
    >>> db = open_db(db_dir)
    >>> [h.item_id for h in db.similar("product:p1", k=1, domains=["video"])]
    ['video:v1']
    """
    uri = os.fspath(db_path)
    if "://" not in uri and not Path(uri).is_dir():
        raise InputNotFoundError(f"no LanceDB folder at {uri}; run `cope embed MANIFEST --db {uri}` first")
    return CopeDB(ItemStore.open(uri, table), encoder)


open = open_db

__all__ = [
    "BatchResults", "CopeDB", "Filters", "Hit", "ItemNotFoundError", "ModelMismatchError", "Query", "Results",
    "open_db", "query_kind",
]
