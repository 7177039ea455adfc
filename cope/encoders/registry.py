"""Encoder registry: ``create_encoder(name)`` builds any registered encoder or any open_clip architecture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cope.encoders.base import Encoder

EncoderFactory = Callable[..., Encoder]
_REGISTRY: dict[str, EncoderFactory] = {}

#: what ``cope embed`` uses when no --model is given: real packaged weights, no network (cope/encoders/default_model.py)
DEFAULT_MODEL = "cope-default"


def register_encoder(name: str) -> Callable[[EncoderFactory], EncoderFactory]:
    """Decorator: make ``create_encoder(name, ...)`` call the decorated factory."""

    def wrap(factory: EncoderFactory) -> EncoderFactory:
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_encoders() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY) + ["open_clip:<architecture>"]


def _load_builtins() -> None:
    # Imported for their @register_encoder side effects; they import torch/open_clip lazily.
    from cope.encoders import open_clip_encoder  # noqa: F401

    try:
        from cope.encoders import default_model  # noqa: F401
    except ImportError:  # the module is optional until it exists
        pass


def create_encoder(name: str | None = None, **options: Any) -> Encoder:
    """Build an encoder by name.

    ``name`` is a registered encoder (``cope-default``), ``open_clip:<arch>`` (``open_clip:ViT-B-32``), or a plain
    open_clip architecture / ``local-dir:<folder>``. Options go to the factory (e.g. ``pretrained=``, ``threads=``).

    >>> enc = create_encoder("open_clip:ViT-S-32", pretrained=None)  # doctest: +SKIP
    """
    _load_builtins()
    name = name or DEFAULT_MODEL
    if name in _REGISTRY:
        return _REGISTRY[name](**options)
    if name.startswith("open_clip:"):
        return _REGISTRY["open_clip"](arch=name.split(":", 1)[1], **options)
    from cope.encoders.open_clip_encoder import is_open_clip_model

    if is_open_clip_model(name):
        return _REGISTRY["open_clip"](arch=name, **options)
    raise ValueError(
        f"unknown model {name!r}. Known: {', '.join(list_encoders())}; "
        "or any open_clip architecture (python -c 'import open_clip; print(open_clip.list_models())')"
    )
