"""``import lancedb``, about 1.2 s faster: the one place cope imports it from.

LanceDB imports its REST namespace client at start-up, whose ~370 methods are wrapped in ``pydantic.validate_call``;
pydantic builds each validator eagerly, which is 60 % of the import (1.2 of 2.0 s on 2 cores) and of a no-op
``cope embed``. While LanceDB is imported here, ``validate_call`` builds each validator on the method's first call
instead: the same validation, paid only by code that calls the REST client (cope never does for local folders).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pydantic

_lock = threading.Lock()


def lazy_validate_call(func: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """``pydantic.validate_call`` (with or without options) that builds its validator on the first call."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        validated: Callable[..., Any] | None = None

        @functools.wraps(f)
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal validated
            if validated is None:
                validated = pydantic.validate_call(f, **options)
            return validated(*args, **kwargs)

        return call

    return decorate(func) if func is not None else decorate


def import_lancedb() -> ModuleType:
    """The ``lancedb`` module, imported with :func:`lazy_validate_call` in place if it is not imported yet."""
    with _lock:
        if "lancedb" not in sys.modules:
            original = pydantic.validate_call
            pydantic.validate_call = lazy_validate_call
            try:
                import lancedb  # noqa: F401
            finally:
                pydantic.validate_call = original
    return sys.modules["lancedb"]


lancedb = import_lancedb()
