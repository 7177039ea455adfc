"""Extractors turn a record into :class:`cope.content.Content`, one module per domain. They know nothing of models.

>>> from extractors import extract
>>> contents = extract(record)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

from cope.content import Content, ExtractionError, ExtractOptions
from cope.records import Record

Extractor = Callable[[Record, ExtractOptions], list[Content]]
_EXTRACTORS: dict[str, Extractor] = {}


def register_extractor(domain: str) -> Callable[[Extractor], Extractor]:
    def wrap(fn: Extractor) -> Extractor:
        _EXTRACTORS[domain] = fn
        return fn

    return wrap


def known_domains() -> list[str]:
    return sorted(_EXTRACTORS)


def get_extractor(domain: str) -> Extractor:
    try:
        return _EXTRACTORS[domain]
    except KeyError:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(known_domains())}") from None


def extract(record: Record, options: ExtractOptions | None = None) -> list[Content]:
    """Decode one record into one Content (or one per live-stream slice). Raises ExtractionError on bad input."""
    return get_extractor(record.domain)(record, options or ExtractOptions())


from extractors import image, live, product, video  # noqa: E402  (registration side effects)

__all__ = ["Content", "ExtractOptions", "ExtractionError", "extract", "get_extractor", "known_domains", "register_extractor"]
_ = (image, live, product, video)
