"""Arrow schemas of the item table and the errors table. The item table's metadata records model tag and dim."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"
META_MODEL_TAG = b"cope.model_tag"
META_DIM = b"cope.dim"
META_VERSION = b"cope.schema_version"
META_MODEL_SPEC = b"cope.model_spec"  # JSON: how to rebuild the encoder (model name, pretrained, fusion weights)

VECTOR_COLUMNS = ("vector", "image_vector", "text_vector")


def item_schema(dim: int, model_tag: str, model_spec: str = "{}") -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
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
        ],
        metadata={
            META_MODEL_TAG: model_tag.encode(),
            META_DIM: str(dim).encode(),
            META_VERSION: SCHEMA_VERSION.encode(),
            META_MODEL_SPEC: model_spec.encode(),
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
