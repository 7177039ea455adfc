"""cope imports LanceDB with pydantic's validate_call made lazy (store/lancedb_import.py): the same validation,
built on first call."""

from __future__ import annotations

import subprocess
import sys

import pydantic
import pytest

from cope.store.lancedb_import import lazy_validate_call


def test_lazy_validate_call_validates_like_validate_call():
    built = []

    @lazy_validate_call
    def f(x: int, y: str = "a") -> str:
        built.append(1)
        return y * x

    @lazy_validate_call(config={"strict": True})
    def g(x: int) -> int:
        return x

    class C:
        @lazy_validate_call
        def m(self, x: int) -> int:
            return x + 1

    assert f("2", y="b") == "bb" and C().m("1") == 2  # coerced as pydantic does
    with pytest.raises(pydantic.ValidationError):
        f("two")
    with pytest.raises(pydantic.ValidationError):
        g("1")  # options reach pydantic: strict refuses a str
    assert f.__name__ == "f" and f.__wrapped__ is not None


def test_lancedb_rest_client_still_validates_its_arguments():
    """In a fresh interpreter: import LanceDB the cope way, then call a REST client method with a bad argument."""
    code = """
import pydantic
import cope.store.item_store  # imports lancedb through cope.store.lancedb_import
assert pydantic.validate_call.__module__.startswith("pydantic")  # put back after the import
from lance_namespace_urllib3_client.api.table_api import TableApi
api = TableApi.__new__(TableApi)
try:
    api.alter_table_add_columns(id=123, alter_table_add_columns_request=None)
except pydantic.ValidationError as e:
    print("validated", e.error_count())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.startswith("validated"), out.stdout + out.stderr
