"""Arrow schemas of the item table and the errors table. The item table's metadata records model tag and dim."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

SCHEMA_VERSION = "1"
META_MODEL_TAG = b"cope.model_tag"
META_DIM = b"cope.dim"
META_VERSION = b"cope.schema_version"
META_PIPELINE = b"cope.pipeline"  # JSON: the pipeline spec (cope.pipeline.PipelineSpec) that made the vectors
META_LEGACY_SPEC = b"cope.model_spec"  # tables written before the pipeline spec: {"model", "pretrained", "fusion"}

VECTOR_COLUMNS = ("vector", "image_vector", "text_vector")  # plus ocr_vector in tables that read pictures


#: columns of a table whose pipeline reads text in pictures (``cope embed --ocr``)
OCR_COLUMNS = ("ocr_text", "ocr_confidence", "ocr_vector", "has_ocr")


def item_schema(
    dim: int, model_tag: str, metadata: Mapping[bytes, bytes] | None = None, *, ocr: bool = False
) -> pa.Schema:
    """The item table's schema; ``metadata`` adds entries (the pipeline spec) to the model tag, dim and version.
    ``ocr`` adds the text read in pictures, its confidence, its vector and whether the item has one."""
    vec = pa.list_(pa.float32(), dim)
    ocr_fields = [
        pa.field("ocr_text", pa.string()),
        pa.field("ocr_confidence", pa.float32()),
        pa.field("ocr_vector", vec, nullable=False),
        pa.field("has_ocr", pa.bool_(), nullable=False),
    ] if ocr else []
    return pa.schema(
        [
            pa.field("item_id", pa.string(), nullable=False),
            pa.field("record_key", pa.string(), nullable=False),
            pa.field("domain", pa.string(), nullable=False),
            pa.field("source_id", pa.string(), nullable=False),
            pa.field("slice_start", pa.float64()),
            pa.field("slice_end", pa.float64()),
            pa.field("vector", vec, nullable=False),
            pa.field("image_vector", vec, nullable=False),
            pa.field("text_vector", vec, nullable=False),
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
