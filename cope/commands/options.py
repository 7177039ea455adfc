"""CLI flags generated from the pydantic config models, so defaults and help have one source.

>>> import argparse
>>> from cope.embed_config import EmbedConfig
>>> p = argparse.ArgumentParser()
>>> add_field(p, EmbedConfig, "batch_size")
>>> p.parse_args([]).batch_size, p.parse_args(["--batch-size", "8"]).batch_size
(32, 8)
"""

from __future__ import annotations

import argparse
import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel


def _scalar_type(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def add_field(parser: argparse.ArgumentParser | Any, model: type[BaseModel], name: str, *flags: str,
              dest: str | None = None, **overrides: Any) -> None:
    """Add ``--<name>`` (or ``flags``) for field ``name`` of ``model``: type, default and help from the field."""
    info = model.model_fields[name]
    default = info.get_default(call_default_factory=True)
    kind = _scalar_type(info.annotation)
    kwargs: dict[str, Any] = {"default": default, "help": info.description or name.replace("_", " "),
                              "dest": dest or name}
    if kind is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float, str):
        kwargs["type"] = kind
    choices = get_args(kind) if get_origin(kind) is not None and str(get_origin(kind)).endswith("Literal") else None
    if choices:
        kwargs["choices"] = list(choices)
    if default is not None and "help" in kwargs and kind is not bool:
        kwargs["help"] += f" (default {default})"
    kwargs.update(overrides)
    parser.add_argument(*(flags or (f"--{name.replace('_', '-')}",)), **kwargs)
