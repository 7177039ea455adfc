"""Encoders: images and texts to normalised vectors. ``create_encoder(name)`` is the factory."""

from cope.encoders.base import Encoder, l2_normalize
from cope.encoders.registry import DEFAULT_MODEL, create_encoder, list_encoders, register_encoder

__all__ = ["DEFAULT_MODEL", "Encoder", "create_encoder", "l2_normalize", "list_encoders", "register_encoder"]
