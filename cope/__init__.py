"""cope: one content embedding per item across product pages, images, short videos and live streams."""

from __future__ import annotations

__version__ = "0.1.0"
