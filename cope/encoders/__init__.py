"""Encoders: images and texts to normalised vectors. ``create_encoder(name)`` is the factory."""

from cope.encoders.base import Encoder
from cope.encoders.registry import DEFAULT_MODEL, create_encoder, list_encoders, register_encoder
from cope.vectors import l2_normalize

__all__ = ["DEFAULT_MODEL", "Encoder", "create_encoder", "l2_normalize", "list_encoders", "register_encoder"]
