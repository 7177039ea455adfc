"""Arrow schemas of the item table and the errors table. The item table's metadata records model tag and dim, and
how its vectors are stored (:class:`Storage`: float32 or float16, with or without the per-modality columns).

>>> schema = item_schema(4, "m", Storage(vector_dtype="float16", modalities=False).to_metadata())
>>> str(schema.field("vector").type), "image_vector" in schema.names, Storage.of(schema)
('fixed_size_list<item: halffloat>[4]', False, Storage(vector_dtype='float16', modalities=False))
>>> compute_schema(schema).field("vector").type == pa.list_(pa.float32(), 4)
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from cope.errors import UsageError

SCHEMA_VERSION = "1"
META_MODEL_TAG = b"cope.model_tag"
META_DIM = b"cope.dim"
META_VERSION = b"cope.schema_version"
META_PIPELINE = b"cope.pipeline"  # JSON: the pipeline spec (cope.pipeline.PipelineSpec) that made the vectors
META_LEGACY_SPEC = b"cope.model_spec"  # tables written before the pipeline spec: {"model", "pretrained", "fusion"}

META_STORAGE = b"cope.storage"  # JSON: how the vectors are stored (Storage); absent: float32, every column
#: on a unified-only table (``cope reproject --vector-only``): the table with every column it was written from
META_SOURCE_TABLE = b"cope.source_table"

VECTOR_COLUMNS = ("vector", "image_vector", "text_vector")  # plus ocr_vector in tables that read pictures
#: the per-modality vector columns, which a unified-only table (``Storage.modalities=False``) leaves out
MODALITY_COLUMNS = ("image_vector", "text_vector", "ocr_vector")


#: columns of a table whose pipeline reads text in pictures (``cope embed --ocr``)
OCR_COLUMNS = ("ocr_text", "ocr_confidence", "ocr_vector", "has_ocr")


class Storage(BaseModel):
    """How a table stores its vectors, recorded in its schema metadata (``cope.storage``).

    ``vector_dtype="float16"`` halves every vector column (LanceDB searches float16 columns with float32 queries,
    exactly and through IVF indexes; cosine scores move by ~1e-3). ``modalities=False`` keeps only the unified
    ``vector`` (and the ``has_image``/``has_text``/``has_ocr`` flags): searching ``image_vector``/``text_vector``,
    ``cope train``, ``cope eval --by modality`` and heads reprojection need the per-modality columns and are refused.
    Neither changes the vector space (the pipeline tag).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    vector_dtype: Literal["float32", "float16"] = "float32"
    modalities: bool = True

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.float16() if self.vector_dtype == "float16" else pa.float32()

    def to_metadata(self) -> dict[bytes, bytes]:
        return {META_STORAGE: self.model_dump_json().encode()}

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None) -> Storage:
        raw = dict(metadata or {}).get(META_STORAGE)
        return cls.model_validate(json.loads(raw)) if raw else cls()

    @classmethod
    def of(cls, schema: pa.Schema) -> Storage:
        """The storage of a table, from its columns (tables written before ``cope.storage`` existed included)."""
        vec = schema.field("vector").type
        half = pa.types.is_fixed_size_list(vec) and pa.types.is_float16(vec.value_type)
        return cls(vector_dtype="float16" if half else "float32", modalities="image_vector" in schema.names)

    def bytes_per_item(self, dim: int, ocr: bool = False) -> int:
        """Bytes of the vector columns of one row (before compression and indexes)."""
        columns = 1 + ((3 if ocr else 2) if self.modalities else 0)
        return columns * dim * (2 if self.vector_dtype == "float16" else 4)


def require_modalities(schema: pa.Schema, table: str, needs: str, *, fix: str | None = None) -> None:
    """Refuse, with a :class:`~cope.errors.UsageError` that names the table to use, what ``needs`` the per-modality
    columns on a unified-only table (``cope reproject --vector-only``)."""
    if "image_vector" in schema.names and "text_vector" in schema.names:
        return
    source = (schema.metadata or {}).get(META_SOURCE_TABLE)
    full = (f"use the full table {source.decode()!r} it was made from (--table {source.decode()})" if source
            else "use the full table it was made from (--table)")
    raise UsageError(f"table {table!r} stores only the unified vector (written by `cope reproject --vector-only`): it "
                     f"has no image_vector/text_vector columns, which {needs} needs; {full}"
                     + (f", or {fix}" if fix else ""))


def compute_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with float32 vector columns: the type rows are built in before a cast to the table's storage."""
    out = schema
    for i, f in enumerate(schema):
        if pa.types.is_fixed_size_list(f.type) and pa.types.is_float16(f.type.value_type):
            out = out.set(i, f.with_type(pa.list_(pa.float32(), f.type.list_size)))
    return out


def item_schema(
    dim: int, model_tag: str, metadata: Mapping[bytes, bytes] | None = None, *, ocr: bool = False
) -> pa.Schema:
    """The item table's schema; ``metadata`` adds entries (the pipeline spec) to the model tag, dim and version,
    and says how vectors are stored (:class:`Storage` under ``cope.storage``; default float32, every column).
    ``ocr`` adds the text read in pictures, its confidence, its vector and whether the item has one."""
    storage = Storage.from_metadata(metadata)
    vec = pa.list_(storage.arrow_type, dim)
    ocr_fields = [
        pa.field("ocr_text", pa.string()),
        pa.field("ocr_confidence", pa.float32()),
        *([pa.field("ocr_vector", vec, nullable=False)] if storage.modalities else []),
        pa.field("has_ocr", pa.bool_(), nullable=False),
    ] if ocr else []
    modality_fields = [pa.field("image_vector", vec, nullable=False),
                       pa.field("text_vector", vec, nullable=False)] if storage.modalities else []
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("record_key", pa.string(), nullable=False),
            pa.field("domain", pa.string(), nullable=False),
            pa.field("source_id", pa.string(), nullable=False),
            pa.field("slice_start", pa.float64()),
            pa.field("slice_end", pa.float64()),
            pa.field("vector", vec, nullable=False),
            *modality_fields,
            pa.field("has_image", pa.bool_(), nullable=False),
            pa.field("has_text", pa.bool_(), nullable=False),
            pa.field("n_images", pa.int32(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("media_uri", pa.string()),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("record_hash", pa.string(), nullable=False),
            pa.field("model_tag", pa.string(), nullable=False),
            pa.field("origin", pa.string()),
            pa.field("metadata", pa.string()),
            pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
            *ocr_fields,
        ],
        metadata={
            **dict(metadata or {}),
            META_MODEL_TAG: model_tag.encode(),
            META_DIM: str(dim).encode(),
            META_VERSION: SCHEMA_VERSION.encode(),
        },
    )


ERROR_SCHEMA = pa.schema(
    [
        pa.field("record_key", pa.string(), nullable=False),
        pa.field("origin", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("model_tag", pa.string()),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)
