"""Extractors turn a record into :class:`cope.content.Content`, one module per domain. They know nothing of models.

Installed as ``cope.extractors`` (the folder stays at the top of the repository). The built-in extractors are listed
here as data (``"module:function"``) and imported on first use, so this registry imports no concrete module.

>>> from cope.extractors import extract
>>> from cope.records import ProductPage
>>> print(extract(ProductPage(item_id="p1", title="Red ball", attributes={"colour": "red"}))[0].text)
Red ball
colour: red
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from cope.content import Content, ExtractOptions
from cope.errors import ExtractionError, UsageError
from cope.records import Record

Extractor = Callable[[Record, ExtractOptions], list[Content]]

#: built-in extractors: domain -> "module:function"
BUILTINS: dict[str, str] = {
    "product": "cope.extractors.product:extract_product",
    "image": "cope.extractors.image:extract_image",
    "video": "cope.extractors.video:extract_video",
    "live": "cope.extractors.live:extract_live",
}
_EXTRACTORS: dict[str, Extractor] = {}


def register_extractor(domain: str) -> Callable[[Extractor], Extractor]:
    """Decorator: use the decorated function for records of ``domain`` (overrides a built-in)."""

    def wrap(fn: Extractor) -> Extractor:
        _EXTRACTORS[domain] = fn
        return fn

    return wrap


def known_domains() -> list[str]:
    return sorted({*BUILTINS, *_EXTRACTORS})


def get_extractor(domain: str) -> Extractor:
    if domain not in _EXTRACTORS:
        if domain not in BUILTINS:
            raise UsageError(f"unknown domain {domain!r}; known domains: {', '.join(known_domains())}")
        module, attr = BUILTINS[domain].split(":")
        _EXTRACTORS[domain] = getattr(importlib.import_module(module), attr)
    return _EXTRACTORS[domain]


def extract(record: Record, options: ExtractOptions | None = None) -> list[Content]:
    """Decode one record into one Content (or one per live-stream slice). Raises ExtractionError on bad input."""
    return get_extractor(record.domain)(record, options or ExtractOptions())


__all__ = ["BUILTINS", "Content", "ExtractOptions", "ExtractionError", "extract", "get_extractor", "known_domains",
           "register_extractor"]
