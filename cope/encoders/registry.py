"""Encoder registry: ``create_encoder(name)`` builds any registered encoder or any open_clip architecture.

The built-in encoders are listed here as data (``"module:factory"``) and imported only when built, so the registry
imports no concrete encoder module (as open_clip lists its architectures in ``model_configs/*.json``). Third-party
encoders register a factory with :func:`register_encoder`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from cope.encoders.base import Encoder
from cope.errors import UsageError

EncoderFactory = Callable[..., Encoder]

#: what ``cope embed`` uses when no --model is given: real packaged weights, no network (cope/encoders/default_model.py)
DEFAULT_MODEL = "cope-default"

#: built-in encoders: name -> "module:factory" (imported on first use; torch and open_clip load lazily)
BUILTINS: dict[str, str] = {
    DEFAULT_MODEL: "cope.encoders.default_model:create_default",
    "open_clip": "cope.encoders.open_clip_encoder:create_open_clip",
}
_REGISTRY: dict[str, EncoderFactory] = {}


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: make ``create_encoder(name, ...)`` call the decorated factory."""

    def wrap(factory: EncoderFactory) -> EncoderFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_encoders() -> list[str]:
    return sorted({*BUILTINS, *_REGISTRY}) + ["open_clip:<architecture>"]


def _factory(name: str) -> EncoderFactory:
    if name in _REGISTRY:
        return _REGISTRY[name]
    module, attr = BUILTINS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _is_open_clip_architecture(name: str) -> bool:
    checker = importlib.import_module("cope.encoders.open_clip_encoder").is_open_clip_model
    return bool(checker(name))


def create_encoder(name: str | None = None, **options: Any) -> Encoder:
    """Build an encoder by name.

    ``name`` is a registered encoder (``cope-default``), ``open_clip:<arch>`` (``open_clip:ViT-B-32``), or a plain
    open_clip architecture / ``local-dir:<folder>``. Options go to the factory (e.g. ``pretrained=``, ``threads=``).

    >>> create_encoder("no-such-model")
    Traceback (most recent call last):
    ...
    cope.errors.UsageError: unknown model 'no-such-model'. Known: ...
    """
    name = name or DEFAULT_MODEL
    if name in _REGISTRY or name in BUILTINS:
        return _factory(name)(**options)
    if name.startswith("open_clip:"):
        return _factory("open_clip")(arch=name.split(":", 1)[1], **options)
    if _is_open_clip_architecture(name):
        return _factory("open_clip")(arch=name, **options)
    raise UsageError(
        f"unknown model {name!r}. Known: {', '.join(list_encoders())}; "
        "or any open_clip architecture (python -c 'import open_clip; print(open_clip.list_models())')"
    )
