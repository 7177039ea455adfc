"""Product pages: text composed from title, description and attributes; the page's images (main image first)."""

from __future__ import annotations

from cope.content import Content, ExtractOptions
from cope.extractors.image import load_image
from cope.records import ProductPage


def product_text(record: ProductPage) -> str:
    """Title, description and ``key: value`` attributes, in that order, one per line."""
    parts = [record.title.strip(), record.description.strip()]
    parts += [f"{k}: {v}" for k, v in record.attributes.items() if str(v).strip()]
    return "\n".join(p for p in parts if p)


def extract_product(record: ProductPage, options: ExtractOptions) -> list[Content]:
    uris = record.images[: options.max_images_per_product]
    options.check_frames(record.record_key, len(uris), "images")
    images = [load_image(uri, options.max_image_pixels, options.image_size, options.max_image_bytes) for uri in uris]
    return [
        Content(
            item_id=record.record_key,
            domain="product",
            source_id=record.item_id,
            record_key=record.record_key,
            images=images,
            text=product_text(record),
            # attributes stay in the text and are also metadata, so they can be filtered on (metadata={"colour": ...})
            metadata={"title": record.title, **record.attributes, **record.metadata},
            media_uri=record.images[0] if record.images else None,
        )
    ]
