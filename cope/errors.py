"""The exceptions cope raises on purpose. The CLI turns every :class:`CopeError` into a one-line message and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CopeError(Exception):
    """Base class: something the user can fix (bad input, wrong model, missing file). The message says how."""


class UsageError(CopeError, ValueError):
    """Invalid options or arguments."""


class InputNotFoundError(CopeError, FileNotFoundError):
    """A manifest, database, table or checkpoint that does not exist."""


class ExtractionError(CopeError):
    """An input could not be turned into content (missing file, corrupt image, undecodable video...)."""


class StoreMismatchError(CopeError, ValueError):
    """The table holds vectors of another pipeline (model, fusion, heads) or dimension than the one in use."""


class ModelMismatchError(StoreMismatchError):
    """The encoder at hand is not the model that wrote the table's vectors."""


class HeadsMismatchError(CopeError, ValueError):
    """Heads trained on vectors of another base model (tag) or dimension than the ones at hand."""


class ItemNotFoundError(CopeError, LookupError):
    """An item id that is not in the table."""


class MissingExtraError(CopeError, ImportError):
    """An optional dependency is not installed; the message names the extra (``pip install 'cope[ray]'``)."""


class TableBusyError(CopeError):
    """Another run holds the write lease on the table (one writer per table), or this run lost it."""
