"""Seconds per stage: ``perf_counter`` sums in a plain dict (picklable; well under a microsecond per stage).

>>> seconds: dict[str, float] = {}
>>> with timed(seconds, "decode"):
...     pass
>>> add_seconds(seconds, {"decode": 1.0, "encode": 2.0})
>>> sorted(seconds), seconds["encode"]
(['decode', 'encode'], 2.0)
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager


@contextmanager
def timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    """Add the time the ``with`` block takes to ``seconds[stage]`` (one dict per thread, or per item)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start


def add_seconds(into: dict[str, float], seconds: Mapping[str, float]) -> None:
    """Add each stage's seconds to ``into``."""
    for stage, s in seconds.items():
        into[stage] = into.get(stage, 0.0) + s
