"""cope: one content embedding per item across product pages, images, short videos and live streams.

>>> import cope
>>> summary = cope.embed(catalog, new_db, model=TINY_MODEL)  # default model: cope-default
>>> db = cope.open(new_db)
>>> sorted(db.similar("video:v1", k=2, domains=["product", "image"]).ids)
['image:i1', 'product:p1']
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["embed", "open"]


def __getattr__(name: str) -> Any:  # heavy imports only when used
    if name == "open":
        from cope.api import open_db

        return open_db
    if name == "embed":
        from cope.job import embed

        return embed
    raise AttributeError(f"module 'cope' has no attribute {name!r}")
