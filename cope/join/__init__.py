"""Behaviour join: user logs on videos, live streams, images and product pages onto the shared content vectors.

One entry point, :func:`join_behaviour`, configured by :class:`JoinConfig`:

>>> from cope.join import join_behaviour
>>> result = join_behaviour("events.parquet", db="./cope.lancedb", out="./joined",
...                         links=["links.csv"], threshold=0.6, last_n=50, profiles=True)  # doctest: +SKIP
>>> print(result.report.summary())  # doctest: +SKIP

DuckDB (``pip install cope[join]``) does the joins.
"""

from __future__ import annotations

try:
    import duckdb  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the behaviour join needs DuckDB: pip install 'cope[join]' (or pip install duckdb)") from e

from cope.join.config import DOMAINS, JoinConfig
from cope.join.downstream import HitRate, next_product_hit_rate
from cope.join.join import JoinResult, join_behaviour
from cope.join.links import nearest_products
from cope.join.report import JoinReport

__all__ = [
    "DOMAINS",
    "HitRate",
    "JoinConfig",
    "JoinReport",
    "JoinResult",
    "join_behaviour",
    "nearest_products",
    "next_product_hit_rate",
]
